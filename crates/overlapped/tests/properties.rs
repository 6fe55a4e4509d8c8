//! Property tests of the receive path's pure parts: `RecvBuffer` and the
//! framer. Whatever the network does to a stream (any split into
//! receives), the frames that come out are the same; whatever bytes a
//! client sends, the framer yields frames or a clean error, never a panic.

use std::collections::VecDeque;

use overlapped::session::framing::{encode, next_frame, FrameError, HEADER_LEN};
use overlapped::session::RecvBuffer;
use proptest::prelude::*;

const MAX_PACKET: usize = 1024;

fn frames() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    prop::collection::vec(
        (
            any::<u16>(),
            prop::collection::vec(any::<u8>(), 0..MAX_PACKET - HEADER_LEN),
        ),
        0..40,
    )
}

/// Cuts every whole frame off the buffer, as a session does.
fn take_frames(buffer: &mut RecvBuffer, out: &mut Vec<(u16, Vec<u8>)>) -> Result<(), FrameError> {
    loop {
        let consumed = match next_frame(buffer.readable(), MAX_PACKET)? {
            Some(frame) => {
                out.push((frame.id, frame.payload.to_vec()));
                frame.wire_len()
            }
            None => return Ok(()),
        };
        buffer
            .consume(consumed)
            .expect("a frame lies within the readable bytes");
        buffer.compact_if_needed();
    }
}

proptest! {
    #[test]
    fn any_split_of_a_valid_stream_yields_the_same_frames(
        sent in frames(),
        cuts in prop::collection::vec(1usize..700, 1..200),
    ) {
        let stream: Vec<u8> = sent
            .iter()
            .flat_map(|(id, payload)| encode(*id, &[payload]).unwrap().to_vec())
            .collect();
        let mut buffer = RecvBuffer::new(2 * MAX_PACKET + 700, MAX_PACKET);
        let mut received = Vec::new();
        let mut at = 0;
        for cut in cuts.iter().cycle() {
            if at == stream.len() {
                break;
            }
            let end = (at + cut).min(stream.len());
            prop_assert!(buffer.append(&stream[at..end]), "a receive did not fit");
            at = end;
            take_frames(&mut buffer, &mut received).unwrap();
        }
        prop_assert_eq!(received, sent);
        prop_assert!(buffer.readable().is_empty());
    }

    #[test]
    fn any_bytes_yield_frames_or_a_clean_error(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        max in HEADER_LEN..=65535usize,
    ) {
        let mut rest = &bytes[..];
        loop {
            match next_frame(rest, max) {
                Ok(Some(frame)) => {
                    let len = frame.wire_len();
                    prop_assert!((HEADER_LEN..=max).contains(&len));
                    prop_assert!(len <= rest.len());
                    rest = &rest[len..];
                }
                Ok(None) => {
                    // Only an incomplete frame can be left.
                    if rest.len() >= HEADER_LEN {
                        let size = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
                        prop_assert!(size > rest.len());
                    }
                    break;
                }
                Err(FrameError::TooShort(size)) => {
                    prop_assert!(size < HEADER_LEN);
                    break;
                }
                Err(FrameError::TooLong { size, max: limit }) => {
                    prop_assert!(size > limit);
                    break;
                }
            }
        }
    }

    #[test]
    fn recv_buffer_keeps_exactly_the_unconsumed_bytes(
        steps in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..300), 0usize..400), 1..100),
    ) {
        let mut buffer = RecvBuffer::new(1024, 256);
        let mut model: VecDeque<u8> = VecDeque::new();
        for (incoming, consume) in steps {
            if buffer.append(&incoming) {
                model.extend(&incoming);
            } else {
                prop_assert!(model.len() + incoming.len() > buffer.capacity());
            }
            let consume = consume.min(model.len());
            buffer.consume(consume).unwrap();
            model.drain(..consume);
            buffer.compact_if_needed();
            let expected: Vec<u8> = model.iter().copied().collect();
            prop_assert_eq!(buffer.readable(), expected.as_slice());
        }
    }

    #[test]
    fn consuming_more_than_was_received_is_an_error_that_changes_nothing(
        data in prop::collection::vec(any::<u8>(), 0..500),
        extra in 1usize..100,
    ) {
        let mut buffer = RecvBuffer::new(1024, 256);
        prop_assert!(buffer.append(&data));
        prop_assert!(buffer.consume(data.len() + extra).is_err());
        prop_assert_eq!(buffer.readable(), &data[..]);
    }
}
