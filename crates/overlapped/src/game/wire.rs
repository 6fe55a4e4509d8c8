//! Typed packets on the session layer's framing: a bounds-checked
//! [`PacketReader`] over a payload and a [`PacketWriter`] that builds a
//! whole frame in a `BytesMut`. All numbers are little-endian, as the
//! frame header is; strings are UTF-8, prefixed by their length in bytes
//! (`u16`) unless they are the rest of the payload.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::session::framing::{HEADER_LEN, MAX_FRAME};

/// What a [`PacketReader`] could not read: the payload was shorter than
/// the field, or a string was not UTF-8. A router disconnects the sender
/// with it as the logged reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadError {
    /// What was being read ("u32", "string").
    pub what: &'static str,
    /// Where in the payload.
    pub at: usize,
    /// What it is: too short by how much, or not UTF-8.
    pub problem: ReadProblem,
}

/// Why a read failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadProblem {
    /// The field needed more bytes than were left.
    TooShort {
        /// Bytes the field takes.
        needed: usize,
        /// Bytes left in the payload.
        left: usize,
    },
    /// The bytes are not UTF-8.
    NotUtf8,
    /// Bytes were left over after the last field.
    Trailing {
        /// Bytes not read.
        left: usize,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, at) = (self.what, self.at);
        match self.problem {
            ReadProblem::TooShort { needed, left } => write!(
                f,
                "payload too short: a {what} at byte {at} needs {needed} bytes, {left} left"
            ),
            ReadProblem::NotUtf8 => write!(f, "the {what} at byte {at} is not UTF-8"),
            ReadProblem::Trailing { left } => {
                write!(
                    f,
                    "{left} bytes left over at byte {at}, after the last field"
                )
            }
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads the fields of a payload in order, checking every bound: a read
/// past the end is an `Err`, never a panic, and reads nothing.
///
/// ```
/// use overlapped::game::PacketReader;
/// let mut reader = PacketReader::new(&[7, 0, 0, 0, 2, 0, b'h', b'i']);
/// assert_eq!(reader.u32().unwrap(), 7);
/// assert_eq!(reader.str().unwrap(), "hi");
/// assert!(reader.u8().is_err());
/// reader.finish().unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct PacketReader<'a> {
    payload: &'a [u8],
    at: usize,
}

macro_rules! read_number {
    ($($name:ident: $ty:ty),* $(,)?) => {$(
        #[doc = concat!("Reads a little-endian `", stringify!($ty), "`.")]
        pub fn $name(&mut self) -> Result<$ty, ReadError> {
            let bytes = self.take(stringify!($ty), std::mem::size_of::<$ty>())?;
            Ok(<$ty>::from_le_bytes(bytes.try_into().expect("taken to size")))
        }
    )*};
}

impl<'a> PacketReader<'a> {
    /// A reader at the start of `payload`.
    pub fn new(payload: &'a [u8]) -> PacketReader<'a> {
        PacketReader { payload, at: 0 }
    }

    read_number!(u8: u8, u16: u16, u32: u32, u64: u64, i8: i8, i16: i16, i32: i32, i64: i64, f32: f32, f64: f64);

    /// Reads `len` bytes.
    pub fn bytes(&mut self, len: usize) -> Result<&'a [u8], ReadError> {
        self.take("byte string", len)
    }

    /// Reads a string prefixed by its length in bytes (`u16`).
    pub fn str(&mut self) -> Result<&'a str, ReadError> {
        let at = self.at;
        let len = self.u16()?;
        let bytes = self
            .take("string", usize::from(len))
            .inspect_err(|_| self.at = at)?;
        std::str::from_utf8(bytes).map_err(|_| {
            self.at = at;
            ReadError {
                what: "string",
                at,
                problem: ReadProblem::NotUtf8,
            }
        })
    }

    /// Reads the rest of the payload.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.payload[self.at..];
        self.at = self.payload.len();
        rest
    }

    /// Reads the rest of the payload as a string.
    pub fn rest_str(&mut self) -> Result<&'a str, ReadError> {
        let at = self.at;
        std::str::from_utf8(&self.payload[at..])
            .inspect(|_| self.at = self.payload.len())
            .map_err(|_| ReadError {
                what: "string",
                at,
                problem: ReadProblem::NotUtf8,
            })
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.payload.len() - self.at
    }

    /// `Ok` if every byte was read; an error naming the leftover otherwise.
    /// Call it after the last field and before acting on the packet (a
    /// [`Router`](super::Router) checks it again after the handler, too
    /// late to undo what the handler did).
    pub fn finish(&self) -> Result<(), ReadError> {
        match self.remaining() {
            0 => Ok(()),
            left => Err(ReadError {
                what: "payload",
                at: self.at,
                problem: ReadProblem::Trailing { left },
            }),
        }
    }

    fn take(&mut self, what: &'static str, len: usize) -> Result<&'a [u8], ReadError> {
        let left = self.remaining();
        if len > left {
            return Err(ReadError {
                what,
                at: self.at,
                problem: ReadProblem::TooShort { needed: len, left },
            });
        }
        let bytes = &self.payload[self.at..self.at + len];
        self.at += len;
        Ok(bytes)
    }
}

/// What a [`PacketWriter`] could not write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The frame would be longer than its size field can say (65,535
    /// bytes), or than the limit the writer was given.
    TooLong {
        /// Bytes of the frame, header included.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A length-prefixed string longer than 65,535 bytes.
    StringTooLong {
        /// Bytes of the string.
        len: usize,
    },
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::TooLong { len, max } => {
                write!(f, "a frame of {len} bytes is longer than the {max} allowed")
            }
            WriteError::StringTooLong { len } => {
                write!(
                    f,
                    "a string of {len} bytes is longer than a u16 length can say"
                )
            }
        }
    }
}

impl std::error::Error for WriteError {}

/// Builds one frame — `[size: u16 LE][id: u16 LE][payload]` — field by
/// field in a `BytesMut`, and hands it out as [`Bytes`] ready for
/// [`Session::send`](crate::session::Session::send) or a
/// [`Group`](super::Group) broadcast.
///
/// ```
/// use overlapped::game::PacketWriter;
/// let frame = PacketWriter::new(14).u32(1).f32(0.5).str("hi").finish().unwrap();
/// assert_eq!(&frame[..4], &[16, 0, 14, 0]);
/// ```
#[derive(Debug)]
pub struct PacketWriter {
    frame: BytesMut,
    max: usize,
    error: Option<WriteError>,
}

macro_rules! write_number {
    ($($name:ident: $ty:ty),* $(,)?) => {$(
        #[doc = concat!("Writes a little-endian `", stringify!($ty), "`.")]
        pub fn $name(mut self, value: $ty) -> Self {
            self.frame.put_slice(&value.to_le_bytes());
            self
        }
    )*};
}

impl PacketWriter {
    /// A frame with packet id `id`, of at most 65,535 bytes.
    pub fn new(id: u16) -> PacketWriter {
        PacketWriter::with_capacity(id, 64)
    }

    /// A frame with packet id `id`, with room for `payload` bytes before it
    /// grows.
    pub fn with_capacity(id: u16, payload: usize) -> PacketWriter {
        let mut frame = BytesMut::with_capacity(HEADER_LEN + payload);
        frame.put_u16_le(0);
        frame.put_u16_le(id);
        PacketWriter {
            frame,
            max: MAX_FRAME,
            error: None,
        }
    }

    /// Refuses, at [`PacketWriter::finish`], a frame longer than `max`
    /// bytes (the peer's packet limit).
    pub fn max_len(mut self, max: usize) -> Self {
        self.max = max.min(MAX_FRAME);
        self
    }

    write_number!(u8: u8, u16: u16, u32: u32, u64: u64, i8: i8, i16: i16, i32: i32, i64: i64, f32: f32, f64: f64);

    /// Writes `bytes` as they are.
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        self.frame.put_slice(bytes);
        self
    }

    /// Writes a string prefixed by its length in bytes (`u16`).
    pub fn str(mut self, s: &str) -> Self {
        match u16::try_from(s.len()) {
            Ok(len) => {
                self.frame.put_u16_le(len);
                self.frame.put_slice(s.as_bytes());
            }
            Err(_) => self.error = Some(WriteError::StringTooLong { len: s.len() }),
        }
        self
    }

    /// Bytes written so far, header included.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Whether only the header is written.
    pub fn is_empty(&self) -> bool {
        self.frame.len() == HEADER_LEN
    }

    /// The frame, with its size filled in.
    pub fn finish(mut self) -> Result<Bytes, WriteError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let len = self.frame.len();
        if len > self.max {
            return Err(WriteError::TooLong { len, max: self.max });
        }
        let size = u16::try_from(len)
            .expect("checked against MAX_FRAME")
            .to_le_bytes();
        self.frame[..2].copy_from_slice(&size);
        Ok(self.frame.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::framing::next_frame;
    use proptest::prelude::*;

    #[test]
    fn every_field_round_trips_through_a_frame() {
        let frame = PacketWriter::new(9)
            .u8(1)
            .u16(2)
            .u32(3)
            .u64(4)
            .i32(-5)
            .f32(6.5)
            .f64(-7.25)
            .str("név")
            .bytes(b"tail")
            .finish()
            .unwrap();
        let parsed = next_frame(&frame, MAX_FRAME).unwrap().unwrap();
        assert_eq!(parsed.id, 9);
        assert_eq!(parsed.wire_len(), frame.len());
        let mut r = PacketReader::new(parsed.payload);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 2);
        assert_eq!(r.u32().unwrap(), 3);
        assert_eq!(r.u64().unwrap(), 4);
        assert_eq!(r.i32().unwrap(), -5);
        assert_eq!(r.f32().unwrap(), 6.5);
        assert_eq!(r.f64().unwrap(), -7.25);
        assert_eq!(r.str().unwrap(), "név");
        assert_eq!(r.rest(), b"tail");
        r.finish().unwrap();
    }

    #[test]
    fn a_read_past_the_end_is_an_error_that_reads_nothing() {
        let mut r = PacketReader::new(&[1, 2, 3]);
        let error = r.u32().unwrap_err();
        assert_eq!(error.problem, ReadProblem::TooShort { needed: 4, left: 3 });
        assert_eq!(r.remaining(), 3);
        assert_eq!(r.u16().unwrap(), 0x0201);
    }

    #[test]
    fn a_string_whose_length_runs_past_the_end_is_an_error() {
        let mut r = PacketReader::new(&[10, 0, b'a']);
        assert!(r.str().is_err());
        assert_eq!(r.remaining(), 3);
    }

    #[test]
    fn a_string_that_is_not_utf8_is_an_error() {
        let mut r = PacketReader::new(&[2, 0, 0xff, 0xfe]);
        let error = r.str().unwrap_err();
        assert_eq!(error.problem, ReadProblem::NotUtf8);
        assert!(PacketReader::new(&[0xc3]).rest_str().is_err());
    }

    #[test]
    fn leftover_bytes_fail_finish() {
        let mut r = PacketReader::new(&[1, 2]);
        r.u8().unwrap();
        assert_eq!(
            r.finish().unwrap_err().problem,
            ReadProblem::Trailing { left: 1 }
        );
    }

    #[test]
    fn a_frame_longer_than_its_limit_is_refused() {
        let writer = PacketWriter::new(1).max_len(8).u32(1).u32(2);
        assert_eq!(
            writer.finish().unwrap_err(),
            WriteError::TooLong { len: 12, max: 8 }
        );
        let huge = vec![0u8; MAX_FRAME];
        assert!(PacketWriter::new(1).bytes(&huge).finish().is_err());
        let long = "x".repeat(70_000);
        assert_eq!(
            PacketWriter::new(1).str(&long).finish().unwrap_err(),
            WriteError::StringTooLong { len: 70_000 }
        );
    }

    #[derive(Debug, Clone)]
    enum Field {
        U8,
        U16,
        U32,
        U64,
        F32,
        F64,
        Str,
        RestStr,
        Bytes(usize),
    }

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![
            Just(Field::U8),
            Just(Field::U16),
            Just(Field::U32),
            Just(Field::U64),
            Just(Field::F32),
            Just(Field::F64),
            Just(Field::Str),
            Just(Field::RestStr),
            (0usize..80).prop_map(Field::Bytes),
        ]
    }

    proptest! {
        /// Any sequence of reads over any payload returns values or
        /// errors, never panics, and never reads past the end.
        #[test]
        fn reads_over_any_payload_never_panic_or_overrun(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            reads in proptest::collection::vec(field(), 0..16),
        ) {
            let mut r = PacketReader::new(&payload);
            let mut consumed = 0;
            for read in reads {
                let before = r.remaining();
                let ok = match read {
                    Field::U8 => r.u8().is_ok(),
                    Field::U16 => r.u16().is_ok(),
                    Field::U32 => r.u32().is_ok(),
                    Field::U64 => r.u64().is_ok(),
                    Field::F32 => r.f32().is_ok(),
                    Field::F64 => r.f64().is_ok(),
                    Field::Str => r.str().is_ok(),
                    Field::RestStr => r.rest_str().is_ok(),
                    Field::Bytes(n) => r.bytes(n).is_ok(),
                };
                if !ok {
                    prop_assert_eq!(r.remaining(), before, "a failed read consumed bytes");
                }
                consumed += before - r.remaining();
                prop_assert!(consumed <= payload.len());
            }
            prop_assert_eq!(consumed + r.remaining(), payload.len());
        }
    }
}
