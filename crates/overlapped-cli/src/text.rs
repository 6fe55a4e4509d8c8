//! The seed's text conventions: C strings in fixed-size buffers.

use std::borrow::Cow;

/// The received bytes up to the first zero byte, as `cout << char*` prints
/// them (invalid UTF-8 is replaced, not rejected).
pub fn c_string(bytes: &[u8]) -> Cow<'_, str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
}

/// `char buffer[size] = "message"`: the message followed by zero bytes.
/// `None` when the message does not fit.
pub fn zero_padded(message: &str, size: usize) -> Option<Vec<u8>> {
    let bytes = message.as_bytes();
    if bytes.len() > size {
        return None;
    }
    let mut buffer = vec![0; size];
    buffer[..bytes.len()].copy_from_slice(bytes);
    Some(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_string_stops_at_the_first_zero() {
        assert_eq!(c_string(b"Hello Server!\0\0junk"), "Hello Server!");
    }

    #[test]
    fn c_string_without_zero_takes_everything() {
        assert_eq!(c_string(b"abc"), "abc");
    }

    #[test]
    fn c_string_replaces_invalid_utf8() {
        assert_eq!(c_string(b"a\xffb\0"), "a\u{fffd}b");
    }

    #[test]
    fn zero_padded_is_the_seeds_buffer() {
        let buffer = zero_padded("Hello Server!", 100).unwrap();
        assert_eq!(buffer.len(), 100);
        assert_eq!(&buffer[..13], b"Hello Server!");
        assert!(buffer[13..].iter().all(|&b| b == 0));
    }

    #[test]
    fn zero_padded_refuses_a_message_longer_than_the_buffer() {
        assert_eq!(zero_padded("toolong", 3), None);
    }
}
