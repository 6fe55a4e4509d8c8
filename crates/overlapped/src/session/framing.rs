//! Packet framing: `[size: u16 LE][id: u16 LE][payload]`, where `size`
//! counts the 4-byte header too.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of the header: size and id.
pub const HEADER_LEN: usize = 4;

/// The longest frame the size field can describe.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// One whole frame found in a byte stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The packet id.
    pub id: u16,
    /// The payload, after the header.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// The frame's length on the wire, header included.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// A stream that cannot be cut into frames: the sender is broken or hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The size field is below the header's own 4 bytes.
    TooShort(usize),
    /// The size field is above the maximum packet size.
    TooLong {
        /// The size field.
        size: usize,
        /// The limit in force.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooShort(size) => {
                write!(
                    f,
                    "frame size {size} is smaller than its {HEADER_LEN}-byte header"
                )
            }
            FrameError::TooLong { size, max } => {
                write!(f, "frame size {size} exceeds the maximum packet size {max}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Cuts the first frame off `stream`: `Ok(None)` when the stream does not
/// hold a whole frame yet (wait for more bytes), an error when the size field
/// is out of bounds (`max` counts the header).
pub fn next_frame(stream: &[u8], max: usize) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(header) = stream.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let size = usize::from(u16::from_le_bytes([header[0], header[1]]));
    let id = u16::from_le_bytes([header[2], header[3]]);
    if size < HEADER_LEN {
        return Err(FrameError::TooShort(size));
    }
    if size > max {
        return Err(FrameError::TooLong { size, max });
    }
    Ok(stream
        .get(HEADER_LEN..size)
        .map(|payload| Frame { id, payload }))
}

/// Builds a frame from `id` and the parts of its payload, once, as shared
/// bytes for any number of sessions. `None` when the frame would not fit
/// the 16-bit size field.
pub fn encode(id: u16, payload: &[&[u8]]) -> Option<Bytes> {
    let len = HEADER_LEN + payload.iter().map(|p| p.len()).sum::<usize>();
    let size = u16::try_from(len).ok()?;
    let mut frame = BytesMut::with_capacity(len);
    frame.put_u16_le(size);
    frame.put_u16_le(id);
    for part in payload {
        frame.put_slice(part);
    }
    Some(frame.freeze())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const MAX: usize = 4096;

    /// Cuts every frame out of `stream` the way a session does.
    fn frames(stream: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, FrameError> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(frame) = next_frame(&stream[at..], MAX)? {
            at += frame.wire_len();
            out.push((frame.id, frame.payload.to_vec()));
        }
        Ok(out)
    }

    #[test]
    fn encoded_frame_has_size_including_header_and_id_little_endian() {
        let frame = encode(0x0102, &[b"hi"]).unwrap();
        assert_eq!(&frame[..], &[6, 0, 2, 1, b'h', b'i']);
    }

    #[test]
    fn frame_round_trips() {
        let frame = encode(7, &[b"abc", b"de"]).unwrap();
        let parsed = next_frame(&frame, MAX).unwrap().unwrap();
        assert_eq!(
            parsed,
            Frame {
                id: 7,
                payload: b"abcde"
            }
        );
    }

    #[test]
    fn header_only_frame_has_empty_payload() {
        let frame = encode(9, &[]).unwrap();
        assert_eq!(next_frame(&frame, MAX).unwrap().unwrap().payload, b"");
    }

    #[test]
    fn frame_split_at_every_byte_position_is_whole_only_at_the_end() {
        let frame = encode(3, &[b"split me"]).unwrap();
        for cut in 0..frame.len() {
            assert_eq!(
                next_frame(&frame[..cut], MAX).unwrap(),
                None,
                "cut at {cut}"
            );
        }
        assert!(next_frame(&frame, MAX).unwrap().is_some());
    }

    #[test]
    fn many_frames_in_one_receive_come_out_in_order() {
        let mut stream = Vec::new();
        for i in 0..50u16 {
            stream.extend_from_slice(&encode(i, &[&i.to_le_bytes()]).unwrap());
        }
        let got = frames(&stream).unwrap();
        assert_eq!(got.len(), 50);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, (id, p))| *id == i as u16 && p == &(i as u16).to_le_bytes()));
    }

    #[test]
    fn maximum_size_frame_is_accepted() {
        let payload = vec![0xAB; MAX - HEADER_LEN];
        let frame = encode(1, &[&payload]).unwrap();
        assert_eq!(
            next_frame(&frame, MAX).unwrap().unwrap().payload.len(),
            MAX - HEADER_LEN
        );
    }

    #[test]
    fn frame_one_byte_over_the_maximum_is_refused() {
        let frame = encode(1, &[&vec![0; MAX - HEADER_LEN + 1]]).unwrap();
        assert_eq!(
            next_frame(&frame, MAX),
            Err(FrameError::TooLong {
                size: MAX + 1,
                max: MAX
            })
        );
    }

    #[test]
    fn size_field_of_65535_is_refused_before_the_payload_arrives() {
        let header = [0xFF, 0xFF, 1, 0];
        assert_eq!(
            next_frame(&header, MAX),
            Err(FrameError::TooLong {
                size: 65535,
                max: MAX
            })
        );
    }

    #[test]
    fn size_field_below_the_header_is_refused() {
        for size in 0..HEADER_LEN as u16 {
            let mut header = size.to_le_bytes().to_vec();
            header.extend_from_slice(&[1, 0]);
            assert_eq!(
                next_frame(&header, MAX),
                Err(FrameError::TooShort(size as usize))
            );
        }
    }

    #[test]
    fn payload_too_big_for_the_size_field_cannot_be_encoded() {
        assert!(encode(1, &[&vec![0; 65536]]).is_none());
    }
}
