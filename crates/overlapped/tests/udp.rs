//! Overlapped datagrams: send-to and receive-from.

mod common;

use std::net::UdpSocket as StdUdp;

use common::{record, SOON};
use overlapped::error::{WSAEMSGSIZE, WSA_OPERATION_ABORTED};
use overlapped::{wait_for_multiple_events, ErrorExt, Started, UdpSocket};

#[test]
fn receive_from_reports_bytes_and_sender() {
    let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = StdUdp::bind("127.0.0.1:0").unwrap();
    let (mut ov, event) = record();
    assert_eq!(
        ours.recv_from(&mut ov, vec![vec![0; 64]]).unwrap(),
        Started::Pending
    );
    peer.send_to(b"datagram", ours.local_addr().unwrap())
        .unwrap();
    wait_for_multiple_events(&[&event], false, SOON, false).unwrap();
    let transfer = ov.result(false).unwrap();
    assert_eq!(transfer.bytes, 8);
    assert_eq!(transfer.source, Some(peer.local_addr().unwrap()));
    assert_eq!(&ov.take_buffers().unwrap()[0][..8], b"datagram");
}

#[test]
fn send_to_delivers_one_gathered_datagram() {
    let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = StdUdp::bind("127.0.0.1:0").unwrap();
    let (mut ov, _) = record();
    ours.send_to(
        &mut ov,
        vec![b"one ".to_vec(), b"two".to_vec()],
        peer.local_addr().unwrap(),
    )
    .unwrap();
    assert_eq!(ov.result(true).unwrap().bytes, 7);
    let mut got = [0; 64];
    let (n, from) = peer.recv_from(&mut got).unwrap();
    assert_eq!(&got[..n], b"one two");
    assert_eq!(from, ours.local_addr().unwrap());
}

#[test]
fn datagram_larger_than_the_buffers_fails_with_message_size() {
    let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = StdUdp::bind("127.0.0.1:0").unwrap();
    let (mut ov, _) = record();
    ours.recv_from(&mut ov, vec![vec![0; 4]]).unwrap();
    peer.send_to(b"too long", ours.local_addr().unwrap())
        .unwrap();
    let err = ov.result(true).unwrap_err();
    assert_eq!(err.winsock_code(), Some(WSAEMSGSIZE));
    assert_eq!(ov.take_buffers().unwrap()[0], b"too ");
}

#[test]
fn closing_a_udp_socket_aborts_its_pending_receive() {
    let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (mut ov, event) = record();
    ours.recv_from(&mut ov, vec![vec![0; 64]]).unwrap();
    drop(ours);
    wait_for_multiple_events(&[&event], false, SOON, false).unwrap();
    let err = ov.result(false).unwrap_err();
    assert_eq!(err.winsock_code(), Some(WSA_OPERATION_ABORTED));
}
