//! The results a program ported from Windows expects, each named after the
//! Winsock behaviour: errors after a reset or a shutdown, on a closed
//! socket, for an oversized datagram on every path, the order of an
//! alertable wait, and the error codes of the less common errnos.

mod common;

use std::cell::RefCell;
use std::io::Write;
use std::net::UdpSocket as StdUdp;
use std::rc::Rc;
use std::thread;
use std::time::Duration;

use common::{pair, record, SOON};
use overlapped::error::{winsock_code_of_errno, WSAECONNRESET, WSAEMSGSIZE};
use overlapped::{
    sleep_ex, wait_for_multiple_events, CompletionPort, ErrorExt, Event, Overlapped, Started,
    UdpSocket, WaitResult,
};

const WSAENOTSOCK: u32 = 10038;
const WSAESHUTDOWN: u32 = 10058;
const WSAETIMEDOUT: u32 = 10060;

/// Resets the connection from the peer's side, and waits until our side
/// has seen it (a receive fails with 10054).
fn reset_by_peer(ours: &overlapped::TcpStream, peer: std::net::TcpStream) {
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer);
    let (mut ov, _) = record();
    let first = match ours.recv(&mut ov, vec![vec![0u8; 16]]) {
        Err(e) => e.into_error(),
        Ok(_) => ov.result(true).unwrap_err(),
    };
    assert_eq!(first.winsock_code(), Some(WSAECONNRESET), "{first}");
}

#[test]
fn after_a_reset_every_receive_fails_with_wsaeconnreset() {
    let (ours, peer) = pair();
    reset_by_peer(&ours, peer);
    let (mut ov, _) = record();
    let again = match ours.recv(&mut ov, vec![vec![0u8; 16]]) {
        Ok(Started::Completed(t)) => panic!("completed with {} bytes after a reset", t.bytes),
        Ok(Started::Pending) => ov.result(true).unwrap_err(),
        Err(e) => e.into_error(),
    };
    assert_eq!(again.winsock_code(), Some(WSAECONNRESET), "{again}");
}

#[test]
fn after_a_reset_every_send_fails_with_wsaeconnreset() {
    let (ours, peer) = pair();
    reset_by_peer(&ours, peer);
    let (mut ov, _) = record();
    let sent = match ours.send(&mut ov, vec![b"late".to_vec()]) {
        Ok(Started::Completed(_)) => panic!("a send succeeded after a reset"),
        Ok(Started::Pending) => ov.result(true).unwrap_err(),
        Err(e) => e.into_error(),
    };
    assert_eq!(sent.winsock_code(), Some(WSAECONNRESET), "{sent}");
}

#[test]
fn a_send_after_shutdown_of_sending_fails_with_wsaeshutdown() {
    let (ours, _peer) = pair();
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    let (mut ov, _) = record();
    let err = ours.send(&mut ov, vec![b"late".to_vec()]).unwrap_err();
    assert_eq!(err.error().winsock_code(), Some(WSAESHUTDOWN));
    assert_eq!(err.into_buffers(), vec![b"late".to_vec()]);
}

#[test]
fn a_receive_after_shutdown_of_receiving_fails_with_wsaeshutdown() {
    let (ours, _peer) = pair();
    ours.shutdown(std::net::Shutdown::Read).unwrap();
    let (mut ov, _) = record();
    let err = ours.recv(&mut ov, vec![vec![0u8; 16]]).unwrap_err();
    assert_eq!(err.error().winsock_code(), Some(WSAESHUTDOWN));
}

#[test]
fn starting_an_operation_on_a_closed_port_stream_fails_with_wsaenotsock() {
    let port = CompletionPort::<()>::new(1).unwrap();
    let (ours, _peer) = pair();
    let stream = port.associate(ours, 1);
    stream.close().unwrap();
    let err = stream.recv(vec![vec![0u8; 16]], ()).unwrap_err();
    assert_eq!(err.error().winsock_code(), Some(WSAENOTSOCK));
}

#[test]
fn closing_a_port_stream_twice_fails_with_wsaenotsock() {
    let port = CompletionPort::<()>::new(1).unwrap();
    let (ours, _peer) = pair();
    let stream = port.associate(ours, 1);
    stream.close().unwrap();
    let again = stream.close().unwrap_err();
    assert_eq!(again.winsock_code(), Some(WSAENOTSOCK));
}

/// Sends a datagram of 10 bytes to `ours` and waits until it is there.
fn datagram_waiting(ours: &UdpSocket) -> StdUdp {
    let peer = StdUdp::bind("127.0.0.1:0").unwrap();
    peer.send_to(b"0123456789", ours.local_addr().unwrap())
        .unwrap();
    // Loopback queues it during the send; the pause only covers a machine
    // that defers that work (then the receive is pending, and the test
    // below covers that path).
    thread::sleep(Duration::from_millis(50));
    peer
}

#[test]
fn an_oversized_datagram_received_at_once_fails_with_wsaemsgsize_and_its_bytes() {
    let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = datagram_waiting(&ours);
    let (mut ov, _) = record();
    let err = match ours.recv_from(&mut ov, vec![vec![0u8; 4]]) {
        Err(err) => err,
        Ok(Started::Pending) => return, // not there yet: the pending path is tested below
        Ok(Started::Completed(t)) => panic!("an oversized datagram reported success: {t:?}"),
    };
    assert_eq!(err.error().winsock_code(), Some(WSAEMSGSIZE));
    let transfer = err.error().transfer().expect("the bytes and the sender");
    assert_eq!(transfer.bytes, 4);
    assert_eq!(transfer.source, Some(peer.local_addr().unwrap()));
    assert_eq!(err.into_buffers(), vec![b"0123".to_vec()]);
}

#[test]
fn an_oversized_datagram_received_later_keeps_its_bytes_and_sender_with_the_error() {
    let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (mut ov, event) = record();
    assert_eq!(
        ours.recv_from(&mut ov, vec![vec![0u8; 4]]).unwrap(),
        Started::Pending
    );
    let peer = StdUdp::bind("127.0.0.1:0").unwrap();
    peer.send_to(b"0123456789", ours.local_addr().unwrap())
        .unwrap();
    wait_for_multiple_events(&[&event], false, SOON, false).unwrap();
    let err = ov.result(false).unwrap_err();
    assert_eq!(err.winsock_code(), Some(WSAEMSGSIZE));
    let transfer = err.transfer().expect("the bytes and the sender");
    assert_eq!(transfer.bytes, 4);
    assert_eq!(transfer.source, Some(peer.local_addr().unwrap()));
    assert!(transfer.is_truncated());
    assert_eq!(transfer.winsock_flags(), overlapped::MSG_TRUNC);
}

type Seen = Rc<RefCell<Vec<String>>>;

#[test]
fn an_alertable_wait_runs_the_routines_that_routines_queue() {
    let (first, mut first_peer) = pair();
    let (second, mut second_peer) = pair();
    let second = Rc::new(second);
    let seen = Seen::default();
    second_peer.write_all(b"bb").unwrap();
    let (inner, again) = (seen.clone(), second.clone());
    first
        .recv_with_routine(vec![vec![0u8; 2]], move |_, buffers: Vec<Vec<u8>>| {
            inner
                .borrow_mut()
                .push(String::from_utf8_lossy(&buffers[0]).into());
            // Data is waiting: this routine's own receive completes at once,
            // and its routine is queued while this one runs.
            let inner = inner.clone();
            again
                .recv_with_routine(vec![vec![0u8; 2]], move |_, buffers: Vec<Vec<u8>>| {
                    inner
                        .borrow_mut()
                        .push(String::from_utf8_lossy(&buffers[0]).into());
                })
                .unwrap();
        })
        .unwrap();
    first_peer.write_all(b"aa").unwrap();
    thread::sleep(Duration::from_millis(50));
    assert_eq!(sleep_ex(SOON, true).unwrap(), WaitResult::IoCompletion);
    assert_eq!(*seen.borrow(), vec!["aa", "bb"]);
}

#[test]
fn an_alertable_wait_on_a_signaled_event_returns_the_event_before_running_routines() {
    let (ours, mut peer) = pair();
    let seen = Seen::default();
    let inner = seen.clone();
    ours.recv_with_routine(vec![vec![0u8; 2]], move |_, _: Vec<Vec<u8>>| {
        inner.borrow_mut().push("ran".into());
    })
    .unwrap();
    peer.write_all(b"xx").unwrap();
    thread::sleep(Duration::from_millis(50));
    let signaled = Event::new().unwrap();
    signaled.set().unwrap();
    let waited = wait_for_multiple_events(&[&signaled], false, SOON, true).unwrap();
    assert_eq!(waited, WaitResult::Signaled(0));
    assert!(seen.borrow().is_empty(), "the routine stays queued");
    assert_eq!(sleep_ex(SOON, true).unwrap(), WaitResult::IoCompletion);
    assert_eq!(*seen.borrow(), vec!["ran"]);
}

#[test]
fn a_connect_that_times_out_fails_with_wsaetimedout() {
    // A listener whose backlog is full drops the next SYN: that connect
    // can only time out.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let _fills_the_backlog = std::net::TcpStream::connect(addr).unwrap();
    let err = overlapped::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        .expect_err("the backlog is full");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert_eq!(err.winsock_code(), Some(WSAETIMEDOUT), "{err}");
}

#[test]
fn less_common_errnos_have_their_winsock_codes() {
    let expected = [
        (libc::ENETRESET, 10052),
        (libc::EHOSTDOWN, 10064),
        (libc::EOPNOTSUPP, 10045),
        (libc::EAFNOSUPPORT, 10047),
        (libc::EPROTONOSUPPORT, 10043),
        (libc::ENOPROTOOPT, 10042),
        (libc::EPROTOTYPE, 10041),
        // A non-blocking connect under way is WSAEWOULDBLOCK on Windows;
        // 10036 (WSAEINPROGRESS) means a blocking call is running.
        (libc::EINPROGRESS, 10035),
    ];
    for (errno, code) in expected {
        assert_eq!(winsock_code_of_errno(errno), Some(code), "errno {errno}");
    }
}

#[test]
fn an_overlapped_that_keeps_its_last_operation_does_not_keep_the_connection_open() {
    let (ours, mut peer) = pair();
    let mut ov: Overlapped = Overlapped::new();
    peer.write_all(b"x").unwrap();
    let _ = ours.recv(&mut ov, vec![vec![0u8; 1]]).unwrap();
    ov.result(true).unwrap();
    // A pooled record keeps its last operation, and that the socket.
    drop(ours);
    peer.set_read_timeout(Some(SOON.unwrap())).unwrap();
    let mut byte = [0; 1];
    assert_eq!(std::io::Read::read(&mut peer, &mut byte).unwrap(), 0);
    drop(ov);
}

#[test]
fn cancel_io_ex_without_an_overlapped_aborts_every_pending_operation_and_keeps_the_socket() {
    let (ours, mut peer) = pair();
    let (mut first, _) = record();
    let (mut second, _) = record();
    // One in the kernel, one waiting behind it in its lane.
    ours.recv(&mut first, vec![vec![0u8; 4]]).unwrap();
    ours.recv(&mut second, vec![vec![0u8; 4]]).unwrap();
    ours.cancel_all().unwrap();
    for ov in [&mut first, &mut second] {
        let err = ov.result(true).unwrap_err();
        assert_eq!(err.winsock_code(), Some(995), "{err}");
    }
    // The socket goes on.
    let (mut next, _) = record();
    peer.write_all(b"more").unwrap();
    if ours.recv(&mut next, vec![vec![0u8; 4]]).unwrap() == Started::Pending {
        next.result(true).unwrap();
    }
    assert_eq!(next.take_buffers().unwrap(), vec![b"more".to_vec()]);
}

#[test]
fn cancel_io_ex_without_an_overlapped_reaches_completion_routines_and_ports() {
    let (ours, _peer) = pair();
    let seen = Seen::default();
    let inner = seen.clone();
    ours.recv_with_routine(vec![vec![0u8; 4]], move |result, _: Vec<Vec<u8>>| {
        let code = result.unwrap_err().winsock_code().unwrap_or(0);
        inner.borrow_mut().push(code.to_string());
    })
    .unwrap();
    ours.cancel_all().unwrap();
    assert_eq!(sleep_ex(SOON, true).unwrap(), WaitResult::IoCompletion);
    assert_eq!(*seen.borrow(), vec!["995"]);

    let port = CompletionPort::<u32>::new(1).unwrap();
    let (ours, _peer) = pair();
    let stream = port.associate(ours, 7);
    stream.recv(vec![vec![0u8; 4]], 1).unwrap();
    stream.cancel_all().unwrap();
    let packet = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!(packet.record, Some(1));
    assert_eq!(packet.result.unwrap_err().winsock_code(), Some(995));
}

#[test]
fn cancel_io_ex_without_an_overlapped_and_nothing_pending_is_not_found() {
    let (ours, _peer) = pair();
    let err = ours.cancel_all().unwrap_err();
    assert_eq!(err.winsock_code(), Some(1168));
}
