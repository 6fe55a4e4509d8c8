//! Overlapped sends on TCP: completion, ordering and start errors.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{pair, read_exactly, record, SOON};
use overlapped::error::WSA_INVALID_PARAMETER;
use overlapped::{wait_for_multiple_events, ErrorExt, Overlapped, Started, WaitResult};

#[test]
fn send_completes_with_every_byte_taken() {
    let (ours, mut peer) = pair();
    let (mut ov, event) = record();
    let started = ours.send(&mut ov, vec![b"Hello Server!".to_vec()]).unwrap();
    if started == Started::Pending {
        wait_for_multiple_events(&[&event], false, SOON, false).unwrap();
    }
    assert_eq!(ov.result(false).unwrap().bytes, 13);
    assert!(event.is_set().unwrap());
    assert_eq!(read_exactly(&mut peer, 13), b"Hello Server!");
}

#[test]
fn gather_send_transmits_buffers_in_order() {
    let (ours, mut peer) = pair();
    let (mut ov, _event) = record();
    ours.send(
        &mut ov,
        vec![b"ab".to_vec(), b"cde".to_vec(), b"f".to_vec()],
    )
    .unwrap();
    assert_eq!(ov.result(true).unwrap().bytes, 6);
    assert_eq!(read_exactly(&mut peer, 6), b"abcdef");
}

#[test]
fn posted_sends_are_transmitted_in_posting_order() {
    // Each send is far larger than the socket buffers, so they cannot all
    // complete at once and must wait for one another.
    const SIZE: usize = 4 << 20;
    let (ours, mut peer) = pair();
    let mut records: Vec<Overlapped> = (0..3).map(|_| record().0).collect();
    for (i, ov) in records.iter_mut().enumerate() {
        ours.send(ov, vec![vec![b'a' + i as u8; SIZE]]).unwrap();
    }
    let mut received = Vec::with_capacity(3 * SIZE);
    peer.read_to_end_until(&mut received, 3 * SIZE);
    for ov in &mut records {
        assert_eq!(ov.result(true).unwrap().bytes, SIZE);
    }
    for (i, chunk) in received.chunks(SIZE).enumerate() {
        assert!(
            chunk.iter().all(|&b| b == b'a' + i as u8),
            "send {i} interleaved"
        );
    }
}

#[test]
fn start_error_produces_no_completion_and_returns_the_buffers() {
    let (ours, peer) = pair();
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer);
    let (mut ov, event) = record();
    // A send before the reset arrived may still be taken; once it has, a
    // send fails to start.
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        match ours.send(&mut ov, vec![vec![1u8; 100]]) {
            Ok(_) => {
                let _ = ov.result(true);
                event.reset().unwrap();
                assert!(
                    Instant::now() < deadline,
                    "sending on a reset connection kept succeeding"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => break e,
        }
    };
    assert!(failed.error().winsock_code().is_some());
    assert_eq!(failed.into_buffers(), vec![vec![1u8; 100]]);
    assert!(!ov.is_pending());
    let seen =
        wait_for_multiple_events(&[&event], false, Some(Duration::from_millis(50)), false).unwrap();
    assert_eq!(seen, WaitResult::Timeout, "a failed start must not signal");
}

#[test]
fn reusing_a_pending_record_is_refused_and_returns_the_buffers() {
    let (ours, _peer) = pair();
    let (mut ov, _event) = record();
    ours.recv(&mut ov, vec![vec![0; 16]]).unwrap();
    let refused = ours.recv(&mut ov, vec![vec![9; 8]]).unwrap_err();
    assert_eq!(refused.error().winsock_code(), Some(WSA_INVALID_PARAMETER));
    assert_eq!(refused.into_buffers(), vec![vec![9; 8]]);
    assert!(ov.is_pending(), "the first operation must be untouched");
}

trait ReadUntil {
    fn read_to_end_until(&mut self, into: &mut Vec<u8>, total: usize);
}

impl ReadUntil for std::net::TcpStream {
    fn read_to_end_until(&mut self, into: &mut Vec<u8>, total: usize) {
        let mut chunk = vec![0; 64 * 1024];
        while into.len() < total {
            let n = self.read(&mut chunk).unwrap();
            assert!(n > 0, "peer closed early");
            into.extend_from_slice(&chunk[..n]);
        }
    }
}

#[test]
fn a_send_of_more_than_4_gib_from_one_buffer_sends_every_byte() {
    // Past what an io_uring entry's 32-bit length holds. The pages are
    // never written, so they cost address space, not memory.
    const LEN: usize = (4 << 30) + 4096;
    let (ours, mut peer) = pair();
    let reader = std::thread::spawn(move || {
        let mut chunk = vec![0u8; 4 << 20];
        let mut total = 0usize;
        loop {
            match peer.read(&mut chunk) {
                Ok(0) => return total,
                Ok(n) => total += n,
                Err(e) => panic!("the peer's read failed after {total} bytes: {e}"),
            }
        }
    });
    let (mut ov, _event) = record();
    ours.send(&mut ov, vec![vec![0u8; LEN]]).unwrap();
    let sent = ov.result(true).map(|t| t.bytes);
    drop(ov);
    drop(ours);
    assert_eq!(sent.unwrap(), LEN);
    assert_eq!(reader.join().unwrap(), LEN);
}
