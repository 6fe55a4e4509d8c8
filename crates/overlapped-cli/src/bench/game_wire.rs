//! The game's frames as the bots write and read them: little-endian
//! fields, and moves whose positions name their number.

/// Positions encode the move number `k` as `(k % SPAN, k / SPAN)`, both
/// whole numbers within the protocol's ±10000.
pub(super) const SPAN: u32 = 10_000;

pub(super) fn frame(id: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
}

pub(super) fn position(k: u32) -> (f32, f32) {
    ((k % SPAN) as f32, (k / SPAN) as f32)
}

/// The move number a position encodes, if it is one of ours.
pub(super) fn move_number(x: f32, y: f32) -> Option<u32> {
    let whole = |v: f32| v >= 0.0 && v <= SPAN as f32 && v.fract() == 0.0;
    if !whole(x) || !whole(y) || x >= SPAN as f32 {
        return None;
    }
    Some(y as u32 * SPAN + x as u32)
}

pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

pub(super) fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
