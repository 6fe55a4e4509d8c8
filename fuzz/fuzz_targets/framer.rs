//! Any bytes, cut into receives at the points the input picks, must come
//! out of `RecvBuffer` + the framer as frames or a clean error: never a
//! panic, never a frame outside the limits, and the same frames whatever
//! the cuts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlapped::session::framing::{next_frame, HEADER_LEN};
use overlapped::session::RecvBuffer;

const MAX_PACKET: usize = 512;

/// Largest piece fed at once: with at most an incomplete frame left in the
/// buffer, a piece always fits.
const LARGEST_PIECE: usize = 256;

/// Frames cut from `stream` fed in pieces of `piece` bytes; stops at the
/// first error.
fn frames(stream: &[u8], piece: usize) -> (Vec<(u16, Vec<u8>)>, bool) {
    let mut buffer = RecvBuffer::new(2 * MAX_PACKET + LARGEST_PIECE, MAX_PACKET);
    let mut out = Vec::new();
    for chunk in stream.chunks(piece.max(1)) {
        assert!(buffer.append(chunk), "a piece never fits");
        loop {
            match next_frame(buffer.readable(), MAX_PACKET) {
                Ok(Some(frame)) => {
                    let len = frame.wire_len();
                    assert!((HEADER_LEN..=MAX_PACKET).contains(&len));
                    out.push((frame.id, frame.payload.to_vec()));
                    buffer.consume(len).unwrap();
                    buffer.compact_if_needed();
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece) % LARGEST_PIECE + 1;
    let whole = frames(stream, LARGEST_PIECE);
    let cut = frames(stream, piece);
    assert_eq!(whole, cut);
});
