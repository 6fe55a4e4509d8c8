//! Close means closed: an operation started while another thread closes
//! its socket still ends, and the connection itself goes at once.

mod common;

use std::io::Read;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use common::{pair, record, SOON};
use overlapped::{CompletionPort, Started};

/// Rounds of each race: enough to have hit the window many times over
/// before it was closed (about 3 rounds in 1000 left a receive pending);
/// `OVERLAPPED_STRESS_ROUNDS` asks for more.
fn rounds() -> usize {
    std::env::var("OVERLAPPED_STRESS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2_000)
}

#[test]
fn a_port_receive_started_while_another_thread_closes_the_stream_always_ends() {
    let port = CompletionPort::<usize>::new(1).unwrap();
    for round in 0..rounds() {
        let (ours, _silent_peer) = pair();
        let stream = port.associate(ours, round as u64);
        let both = Barrier::new(2);
        let started = thread::scope(|s| {
            s.spawn(|| {
                both.wait();
                stagger(round);
                let _ = stream.close();
            });
            both.wait();
            stream.recv(vec![vec![0u8; 16]], round)
        });
        if started.is_err() {
            continue;
        }
        // Completed at once or pending, its packet is queued.
        let packet = port.get_queued_completion_status(SOON).unwrap();
        let packet = packet
            .unwrap_or_else(|| panic!("round {round}: the receive stayed pending after the close"));
        assert_eq!(packet.record, Some(round));
    }
}

#[test]
fn dropping_a_stream_with_a_pending_receive_closes_the_connection_at_once() {
    let (ours, mut peer) = pair();
    let (mut ov, _event) = record();
    assert_eq!(
        ours.recv(&mut ov, vec![vec![0u8; 16]]).unwrap(),
        Started::Pending
    );
    drop(ours);
    // The record still holds its operation, and so the socket; the peer
    // sees the end of the stream all the same.
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(peer.read(&mut [0; 16]).unwrap(), 0);
    drop(ov);
}

/// Spins for a while that grows with `round` and starts over every 64
/// rounds, so that the close lands at every point of the start in turn
/// instead of wherever the two threads happen to wake.
fn stagger(round: usize) {
    for _ in 0..(round % 64) * 16 {
        std::hint::spin_loop();
    }
}

#[test]
fn closing_a_port_stream_ends_the_connection_while_the_stream_is_held() {
    let port = CompletionPort::<()>::new(1).unwrap();
    let (ours, mut peer) = pair();
    let stream = port.associate(ours, 1);
    stream.recv(vec![vec![0u8; 16]], ()).unwrap();
    stream.close().unwrap();
    assert_eq!(peer.read(&mut [0; 16]).unwrap(), 0);
    drop(stream);
}

#[test]
fn closing_with_linger_zero_resets_the_connection() {
    let (ours, mut peer) = pair();
    ours.set_linger(Some(Duration::ZERO)).unwrap();
    let (mut ov, _event) = record();
    ours.recv(&mut ov, vec![vec![0u8; 16]]).unwrap();
    drop(ours);
    let read = peer.read(&mut [0; 16]);
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
}
