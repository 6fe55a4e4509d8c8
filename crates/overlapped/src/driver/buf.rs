//! Buffers that can be lent to the kernel: the `WSABUF` counterpart.
//!
//! A Winsock `WSABUF` is a pointer and a length that the program promises to
//! keep valid until the operation completes. Here a buffer *moves into* the
//! operation instead, and comes back with its outcome, so the promise is kept
//! by the compiler. The traits below are implemented by the crate for owned,
//! heap-backed types whose bytes do not move when the value moves; they are
//! `unsafe` to implement because the kernel relies on that.

/// A buffer the kernel may read from while an operation is in flight
/// (a `WSABUF` given to `WSASend`).
///
/// The whole `len()` bytes are sent, as a `WSABUF` sends `len` bytes.
///
/// # Safety
/// `stable_ptr()` must point to `len()` initialized bytes that stay at the
/// same address, unchanged, while the value is alive and not accessed
/// through `&mut`, even when the value itself is moved.
pub unsafe trait IoBuf: Send + 'static {
    /// Start of the bytes.
    fn stable_ptr(&self) -> *const u8;
    /// Number of bytes, the `WSABUF::len`.
    fn len(&self) -> usize;
    /// Whether the buffer holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A buffer the kernel may write into while an operation is in flight
/// (a `WSABUF` given to `WSARecv`).
///
/// The receive window is the buffer's current `len()`, as a `WSABUF`'s
/// `len`: allocate it at the size you want to receive (`vec![0; 1000]`).
/// The bytes received are reported by the outcome; the buffer's length does
/// not change.
///
/// # Safety
/// As for [`IoBuf`], and `stable_mut_ptr()` must be valid for writes of
/// `len()` bytes.
pub unsafe trait IoBufMut: IoBuf {
    /// Start of the writable bytes.
    fn stable_mut_ptr(&mut self) -> *mut u8;
}

// SAFETY: a Vec's heap allocation does not move when the Vec moves, and
// nothing can resize it while the driver owns it.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

// SAFETY: as for IoBuf; `as_mut_ptr` is valid for writes of `len()` bytes.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
}

// SAFETY: a boxed slice's allocation does not move when the box moves.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: as for IoBuf; the slice is valid for writes of `len()` bytes.
unsafe impl IoBufMut for Box<[u8]> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
}

// SAFETY: static bytes never move and are never freed.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: `Bytes` is immutable and reference-counted; its bytes stay at the
// same address, unchanged, while any handle to them lives.
unsafe impl IoBuf for bytes::Bytes {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn len(&self) -> usize {
        bytes::Bytes::len(self)
    }
}

/// A `Vec<u8>` lent from an offset to its end: a `WSABUF` that points into
/// the middle of a larger buffer (the free tail of a receive buffer).
#[derive(Debug, Default)]
pub struct Tail {
    vec: Vec<u8>,
    start: usize,
}

impl Tail {
    /// Lends `vec[start..]`; `start` past the end lends nothing.
    pub fn new(vec: Vec<u8>, start: usize) -> Tail {
        let start = start.min(vec.len());
        Tail { vec, start }
    }

    /// The whole vector back.
    pub fn into_inner(self) -> Vec<u8> {
        self.vec
    }
}

// SAFETY: the window is inside the Vec's heap allocation, which does not
// move when the Tail moves and cannot be resized while the driver owns it.
unsafe impl IoBuf for Tail {
    fn stable_ptr(&self) -> *const u8 {
        self.vec[self.start..].as_ptr()
    }
    fn len(&self) -> usize {
        self.vec.len() - self.start
    }
}

// SAFETY: as for IoBuf; the window is valid for writes of `len()` bytes.
unsafe impl IoBufMut for Tail {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.vec[self.start..].as_mut_ptr()
    }
}
