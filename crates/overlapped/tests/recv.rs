//! Overlapped receives on TCP: behaviours 2, 3, 4, 5, 8, 9 and 10.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use common::{pair, record, SOON};
use overlapped::error::{WSAECONNRESET, WSA_INVALID_PARAMETER, WSA_IO_INCOMPLETE};
use overlapped::{
    get_overlapped_result, wait_for_multiple_events, ErrorExt, Overlapped, Started, WaitResult,
};

#[test]
fn pending_receive_clears_a_signaled_event() {
    let (ours, _peer) = pair();
    let (mut ov, event) = record();
    event.set().unwrap();
    let started = ours.recv(&mut ov, vec![vec![0; 16]]).unwrap();
    assert_eq!(started, Started::Pending);
    assert!(!event.is_set().unwrap());
}

#[test]
fn completion_signals_the_event() {
    let (ours, mut peer) = pair();
    let (mut ov, event) = record();
    assert_eq!(
        ours.recv(&mut ov, vec![vec![0; 16]]).unwrap(),
        Started::Pending
    );
    peer.write_all(b"hello").unwrap();
    let seen = wait_for_multiple_events(&[&event], false, SOON, false).unwrap();
    assert_eq!(seen, WaitResult::Signaled(0));
    assert_eq!(
        get_overlapped_result(&ours, &mut ov, false).unwrap().bytes,
        5
    );
}

#[test]
fn failed_completion_signals_the_event() {
    let (ours, peer) = pair();
    let (mut ov, event) = record();
    assert_eq!(
        ours.recv(&mut ov, vec![vec![0; 16]]).unwrap(),
        Started::Pending
    );
    reset(peer);
    let seen = wait_for_multiple_events(&[&event], false, SOON, false).unwrap();
    assert_eq!(seen, WaitResult::Signaled(0));
    assert!(ov.result(false).is_err());
}

#[test]
fn receive_with_data_queued_completes_immediately_with_event_signaled() {
    let (ours, mut peer) = pair();
    peer.write_all(b"queued").unwrap();
    let (mut ov, event) = record();
    common::wait_readable(&ours);
    let started = ours.recv(&mut ov, vec![vec![0; 16]]).unwrap();
    let Started::Completed(transfer) = started else {
        panic!("expected an immediate completion, got {started:?}");
    };
    assert_eq!(transfer.bytes, 6);
    assert!(event.is_set().unwrap());
    assert_eq!(&ov.take_buffers().unwrap()[0][..6], b"queued");
}

#[test]
fn pending_start_writes_no_outcome() {
    let (ours, _peer) = pair();
    let (mut ov, _event) = record();
    assert_eq!(
        ours.recv(&mut ov, vec![vec![0; 16]]).unwrap(),
        Started::Pending
    );
    assert!(ov.is_pending());
    assert!(ov.take_buffers().is_none());
}

#[test]
fn result_without_waiting_while_pending_is_incomplete() {
    let (ours, _peer) = pair();
    let (mut ov, _event) = record();
    ours.recv(&mut ov, vec![vec![0; 16]]).unwrap();
    let err = get_overlapped_result(&ours, &mut ov, false).unwrap_err();
    assert_eq!(err.winsock_code(), Some(WSA_IO_INCOMPLETE));
}

#[test]
fn result_with_wait_blocks_until_completion() {
    let (ours, mut peer) = pair();
    let (mut ov, _event) = record();
    ours.recv(&mut ov, vec![vec![0; 16]]).unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        peer.write_all(b"late").unwrap();
        peer
    });
    assert_eq!(
        get_overlapped_result(&ours, &mut ov, true).unwrap().bytes,
        4
    );
    writer.join().unwrap();
}

#[test]
fn result_of_a_record_never_used_is_invalid_parameter() {
    let (ours, _peer) = pair();
    let mut ov: Overlapped = Overlapped::new();
    let err = get_overlapped_result(&ours, &mut ov, false).unwrap_err();
    assert_eq!(err.winsock_code(), Some(WSA_INVALID_PARAMETER));
}

#[test]
fn result_checks_the_socket_the_operation_ran_on() {
    let (ours, _peer) = pair();
    let (other, _other_peer) = pair();
    let (mut ov, _event) = record();
    ours.recv(&mut ov, vec![vec![0; 16]]).unwrap();
    let err = get_overlapped_result(&other, &mut ov, false).unwrap_err();
    assert_eq!(err.winsock_code(), Some(WSA_INVALID_PARAMETER));
}

#[test]
fn peer_close_completes_the_receive_with_zero_bytes() {
    let (ours, peer) = pair();
    let (mut ov, event) = record();
    ours.recv(&mut ov, vec![vec![0; 16]]).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    wait_for_multiple_events(&[&event], false, SOON, false).unwrap();
    assert_eq!(ov.result(false).unwrap().bytes, 0);
}

#[test]
fn peer_reset_fails_the_receive_with_connection_reset() {
    let (ours, peer) = pair();
    let (mut ov, event) = record();
    ours.recv(&mut ov, vec![vec![0; 16]]).unwrap();
    reset(peer);
    wait_for_multiple_events(&[&event], false, SOON, false).unwrap();
    let err = ov.result(false).unwrap_err();
    assert_eq!(err.winsock_code(), Some(WSAECONNRESET));
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[test]
fn failed_receive_gives_the_buffers_back() {
    let (ours, peer) = pair();
    let (mut ov, _event) = record();
    ours.recv(&mut ov, vec![vec![7; 16]]).unwrap();
    reset(peer);
    assert!(ov.result(true).is_err());
    assert_eq!(ov.take_buffers().unwrap(), vec![vec![7; 16]]);
}

#[test]
fn scatter_receive_fills_buffers_in_order_without_gaps() {
    let (ours, mut peer) = pair();
    let (mut ov, _event) = record();
    ours.recv(&mut ov, vec![vec![0; 4], vec![0; 4], vec![0; 8]])
        .unwrap();
    peer.write_all(b"0123456789").unwrap();
    assert_eq!(ov.result(true).unwrap().bytes, 10);
    let buffers = ov.take_buffers().unwrap();
    assert_eq!(buffers[0], b"0123");
    assert_eq!(buffers[1], b"4567");
    assert_eq!(&buffers[2][..2], b"89");
}

#[test]
fn stream_receive_may_complete_partially_filled() {
    let (ours, mut peer) = pair();
    let (mut ov, _event) = record();
    ours.recv(&mut ov, vec![vec![0; 1000]]).unwrap();
    peer.write_all(b"short").unwrap();
    assert_eq!(ov.result(true).unwrap().bytes, 5);
}

#[test]
fn posted_receives_are_filled_in_posting_order() {
    let (ours, mut peer) = pair();
    let mut records: Vec<Overlapped> = (0..3).map(|_| record().0).collect();
    for ov in &mut records {
        assert_eq!(ours.recv(ov, vec![vec![0; 4]]).unwrap(), Started::Pending);
    }
    peer.write_all(b"aaaabbbbcccc").unwrap();
    let mut got = Vec::new();
    for ov in &mut records {
        assert_eq!(ov.result(true).unwrap().bytes, 4);
        got.push(ov.take_buffers().unwrap().remove(0));
    }
    assert_eq!(
        got,
        vec![b"aaaa".to_vec(), b"bbbb".to_vec(), b"cccc".to_vec()]
    );
}

/// Closes `peer` with a reset (SO_LINGER 0).
fn reset(peer: std::net::TcpStream) {
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer);
}
