//! Cancelling, closing and dropping with operations in flight:
//! behaviours 11, 12 and 14.

mod common;

use std::io::Write;

use common::{pair, record, SOON};
use overlapped::error::{ERROR_NOT_FOUND, WSA_OPERATION_ABORTED};
use overlapped::{wait_for_multiple_events, ErrorExt, Overlapped, Started, WaitResult};

fn assert_aborted(ov: &mut Overlapped) {
    let err = ov.result(true).unwrap_err();
    assert_eq!(err.winsock_code(), Some(WSA_OPERATION_ABORTED), "{err}");
}

#[test]
fn closing_a_socket_aborts_its_pending_receive_and_signals_the_event() {
    let (ours, _peer) = pair();
    let (mut ov, event) = record();
    assert_eq!(
        ours.recv(&mut ov, vec![vec![0; 16]]).unwrap(),
        Started::Pending
    );
    ours.close();
    let seen = wait_for_multiple_events(&[&event], false, SOON, false).unwrap();
    assert_eq!(seen, WaitResult::Signaled(0));
    assert_aborted(&mut ov);
}

#[test]
fn closing_a_socket_aborts_every_pending_operation() {
    let (ours, _peer) = pair();
    let (mut first, first_event) = record();
    let (mut second, second_event) = record();
    let (mut send, send_event) = record();
    ours.recv(&mut first, vec![vec![0; 16]]).unwrap();
    ours.recv(&mut second, vec![vec![0; 16]]).unwrap();
    // Far more than the socket buffers hold while the peer does not read.
    assert_eq!(
        ours.send(&mut send, vec![vec![0; 32 << 20]]).unwrap(),
        Started::Pending
    );
    drop(ours);
    let events = [&first_event, &second_event, &send_event];
    let seen = wait_for_multiple_events(&events, true, SOON, false).unwrap();
    assert_eq!(seen, WaitResult::Signaled(0));
    assert_aborted(&mut first);
    assert_aborted(&mut second);
    assert_aborted(&mut send);
}

#[test]
fn cancelling_one_operation_aborts_only_that_one() {
    let (ours, mut peer) = pair();
    let (mut first, _) = record();
    let (mut second, second_event) = record();
    ours.recv(&mut first, vec![vec![0; 16]]).unwrap();
    ours.recv(&mut second, vec![vec![0; 16]]).unwrap();
    ours.cancel(&first).unwrap();
    assert_aborted(&mut first);
    assert!(!second_event.is_set().unwrap());
    peer.write_all(b"still here").unwrap();
    assert_eq!(second.result(true).unwrap().bytes, 10);
}

#[test]
fn cancelling_a_queued_operation_leaves_the_one_ahead_of_it() {
    let (ours, mut peer) = pair();
    let (mut first, _) = record();
    let (mut second, _) = record();
    ours.recv(&mut first, vec![vec![0; 16]]).unwrap();
    ours.recv(&mut second, vec![vec![0; 16]]).unwrap();
    ours.cancel(&second).unwrap();
    assert_aborted(&mut second);
    peer.write_all(b"first").unwrap();
    assert_eq!(first.result(true).unwrap().bytes, 5);
}

#[test]
fn cancelling_with_nothing_pending_is_not_found() {
    let (ours, _peer) = pair();
    let ov: Overlapped = Overlapped::new();
    let err = ours.cancel(&ov).unwrap_err();
    assert_eq!(err.winsock_code(), Some(ERROR_NOT_FOUND));
}

#[test]
fn cancel_that_loses_the_race_leaves_the_normal_completion() {
    let (ours, mut peer) = pair();
    let (mut ov, event) = record();
    ours.recv(&mut ov, vec![vec![0; 16]]).unwrap();
    peer.write_all(b"won").unwrap();
    wait_for_multiple_events(&[&event], false, SOON, false).unwrap();
    let err = ours.cancel(&ov).unwrap_err();
    assert_eq!(err.winsock_code(), Some(ERROR_NOT_FOUND));
    assert_eq!(ov.result(false).unwrap().bytes, 3);
}

#[test]
fn dropping_a_record_with_a_pending_receive_cancels_it() {
    let (ours, mut peer) = pair();
    let (ov, _) = record();
    let mut ov = ov;
    ours.recv(&mut ov, vec![vec![0; 16]]).unwrap();
    drop(ov);
    // The dropped receive must not take data meant for the next one.
    let (mut next, _) = record();
    ours.recv(&mut next, vec![vec![0; 16]]).unwrap();
    peer.write_all(b"for next").unwrap();
    assert_eq!(next.result(true).unwrap().bytes, 8);
    assert_eq!(&next.take_buffers().unwrap()[0][..8], b"for next");
}

#[test]
fn dropping_socket_and_record_with_operations_in_flight_is_safe() {
    let (ours, mut peer) = pair();
    let (mut recv, _) = record();
    let (mut send, _) = record();
    ours.recv(&mut recv, vec![vec![0; 64 << 10]]).unwrap();
    ours.send(&mut send, vec![vec![5; 16 << 20]]).unwrap();
    drop(recv);
    drop(send);
    drop(ours);
    // The kernel lets go of the socket only after the cancellations; the
    // peer then sees the connection end.
    let mut sink = vec![0; 1 << 20];
    peer.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    loop {
        match std::io::Read::read(&mut peer, &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
}

#[test]
fn cancelling_a_receive_started_before_the_socket_joined_a_port_finds_it() {
    let (ours, _peer) = pair();
    let (mut ov, _) = record();
    assert_eq!(
        ours.recv(&mut ov, vec![vec![0; 16]]).unwrap(),
        overlapped::Started::Pending
    );
    let port = overlapped::CompletionPort::<()>::new(1).unwrap();
    // A worker, so that whatever goes to the port's ring is reaped.
    let worker = {
        let port = port.clone();
        std::thread::spawn(move || while port.get_queued_completion_status(None).is_ok() {})
    };
    let stream = port.associate(ours, 1);
    let cancelled = stream.stream().cancel(&ov);
    port.close();
    worker.join().unwrap();
    cancelled.unwrap();
    assert_aborted(&mut ov);
}
