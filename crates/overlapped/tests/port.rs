//! Completion ports: dequeue, post, batch, timeout, close, and the
//! overlapped accept/connect/disconnect that report through them.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener as StdListener;
use std::thread;
use std::time::{Duration, Instant};

use common::{pair, SOON};
use overlapped::error::{
    ERROR_ABANDONED_WAIT_0, ERROR_NOT_FOUND, WSAECONNREFUSED, WSA_INVALID_HANDLE,
    WSA_OPERATION_ABORTED,
};
use overlapped::{CompletionPort, ErrorExt, Started, TcpListener, INFINITE};

#[derive(Debug, PartialEq)]
enum Record {
    Recv,
    Send,
    Accept,
    Connect,
    Disconnect,
    Mine(u32),
}

fn port() -> CompletionPort<Record> {
    CompletionPort::new(2).unwrap()
}

#[test]
fn dequeue_with_nothing_queued_times_out_with_no_packet() {
    let port = port();
    let got = port
        .get_queued_completion_status(Some(Duration::from_millis(30)))
        .unwrap();
    assert!(got.is_none());
}

#[test]
fn posted_packet_is_dequeued_with_its_key_bytes_and_record() {
    let port = port();
    port.post(7, 42, Some(Record::Mine(1))).unwrap();
    let packet = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!(packet.key, 7);
    assert_eq!(packet.bytes(), 42);
    assert_eq!(packet.record, Some(Record::Mine(1)));
}

#[test]
fn packets_are_dequeued_in_the_order_they_were_queued() {
    let port = port();
    for i in 0..5 {
        port.post(i, 0, None).unwrap();
    }
    let keys: Vec<u64> = (0..5)
        .map(|_| {
            port.get_queued_completion_status(SOON)
                .unwrap()
                .unwrap()
                .key
        })
        .collect();
    assert_eq!(keys, vec![0, 1, 2, 3, 4]);
}

#[test]
fn batch_dequeue_takes_at_most_max_packets() {
    let port = port();
    for i in 0..10 {
        port.post(i, 0, None).unwrap();
    }
    let mut batch = Vec::new();
    assert_eq!(
        port.get_queued_completion_status_ex(&mut batch, 4, SOON)
            .unwrap(),
        4
    );
    assert_eq!(
        port.get_queued_completion_status_ex(&mut batch, 100, SOON)
            .unwrap(),
        6
    );
    let keys: Vec<u64> = batch.iter().map(|p| p.key).collect();
    assert_eq!(keys, (0..10).collect::<Vec<_>>());
}

#[test]
fn batch_dequeue_with_nothing_queued_times_out_with_zero() {
    let port = port();
    let mut batch = Vec::new();
    let n = port
        .get_queued_completion_status_ex(&mut batch, 8, Some(Duration::from_millis(30)))
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn a_packet_posted_from_another_thread_wakes_a_sleeping_worker() {
    // A worker that missed the wake-up would still find the packet when its
    // own timeout ends; that it returns long before shows it was woken.
    const WAIT: Duration = Duration::from_secs(30);
    let port = port();
    let worker = {
        let port = port.clone();
        thread::spawn(move || port.get_queued_completion_status(Some(WAIT)))
    };
    // Long enough for the worker to be asleep reaping the port's ring.
    thread::sleep(Duration::from_millis(100));
    let posted = Instant::now();
    port.post(3, 9, Some(Record::Mine(3))).unwrap();
    let packet = worker.join().unwrap().unwrap().expect("the posted packet");
    assert!(
        posted.elapsed() < WAIT / 2,
        "the worker slept through the post until its timeout"
    );
    assert_eq!(packet.key, 3);
    assert_eq!(packet.record, Some(Record::Mine(3)));
}

#[test]
fn closing_the_port_wakes_every_waiter_with_abandoned() {
    let port = port();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let port = port.clone();
            thread::spawn(move || port.get_queued_completion_status(INFINITE).unwrap_err())
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    port.close();
    for waiter in waiters {
        assert_eq!(
            waiter.join().unwrap().winsock_code(),
            Some(ERROR_ABANDONED_WAIT_0)
        );
    }
}

#[test]
fn posting_to_a_closed_port_is_invalid_handle() {
    let port = port();
    port.close();
    let err = port.post(1, 0, None).unwrap_err();
    assert_eq!(err.winsock_code(), Some(WSA_INVALID_HANDLE));
}

#[test]
fn receive_reports_key_record_bytes_and_buffers() {
    let (ours, mut peer) = pair();
    let port = port();
    let stream = port.associate(ours, 99);
    assert_eq!(
        stream.recv(vec![vec![0u8; 16]], Record::Recv).unwrap(),
        Started::Pending
    );
    peer.write_all(b"packet").unwrap();
    let mut packet = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!((packet.key, packet.bytes()), (99, 6));
    assert_eq!(packet.record, Some(Record::Recv));
    assert_eq!(
        &packet.take_buffers::<Vec<u8>>().unwrap()[0][..6],
        b"packet"
    );
}

#[test]
fn immediate_completion_still_queues_a_packet() {
    let (ours, mut peer) = pair();
    peer.write_all(b"early").unwrap();
    common::wait_readable(&ours);
    let port = port();
    let stream = port.associate(ours, 1);
    let started = stream.recv(vec![vec![0u8; 16]], Record::Recv).unwrap();
    assert!(matches!(started, Started::Completed(t) if t.bytes == 5));
    let packet = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!(packet.bytes(), 5);
}

#[test]
fn send_reports_its_bytes_through_the_port() {
    let (ours, mut peer) = pair();
    let port = port();
    let stream = port.associate(ours, 1);
    stream
        .send(vec![b"abc".to_vec(), b"de".to_vec()], Record::Send)
        .unwrap();
    let packet = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!((packet.bytes(), packet.record), (5, Some(Record::Send)));
    let mut got = [0; 5];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abcde");
}

#[test]
fn closing_an_associated_stream_queues_aborted_packets() {
    let (ours, _peer) = pair();
    let port = port();
    let stream = port.associate(ours, 5);
    stream.recv(vec![vec![0u8; 16]], Record::Recv).unwrap();
    drop(stream);
    let packet = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!(packet.key, 5);
    let err = packet.result.unwrap_err();
    assert_eq!(err.winsock_code(), Some(WSA_OPERATION_ABORTED));
}

#[test]
fn accept_through_the_port_gives_the_connection_and_peer() {
    let port = port();
    let listener = port
        .associate_listener(TcpListener::bind("127.0.0.1:0").unwrap(), 3)
        .unwrap();
    listener.accept(Record::Accept).unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr()).unwrap();
    let mut packet = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!((packet.key, &packet.record), (3, &Some(Record::Accept)));
    let (stream, peer) = packet.take_accepted().unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    assert_eq!(stream.peer_addr().unwrap(), client.local_addr().unwrap());
}

#[test]
fn closing_a_listener_aborts_its_posted_accepts() {
    let port = port();
    let listener = port
        .associate_listener(TcpListener::bind("127.0.0.1:0").unwrap(), 3)
        .unwrap();
    listener.accept(Record::Accept).unwrap();
    listener.accept(Record::Accept).unwrap();
    drop(listener);
    for _ in 0..2 {
        let packet = port.get_queued_completion_status(SOON).unwrap().unwrap();
        assert_eq!(
            packet.result.unwrap_err().winsock_code(),
            Some(WSA_OPERATION_ABORTED)
        );
    }
}

#[test]
fn connect_through_the_port_reports_success() {
    let server = StdListener::bind("127.0.0.1:0").unwrap();
    let port = port();
    let stream = port
        .connect(server.local_addr().unwrap(), 8, Record::Connect)
        .unwrap();
    let packet = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!((packet.key, &packet.record), (8, &Some(Record::Connect)));
    assert!(packet.result.is_ok());
    let (_accepted, from) = server.accept().unwrap();
    assert_eq!(from, stream.stream().local_addr().unwrap());
}

#[test]
fn connect_to_a_closed_port_reports_refused() {
    // Bound but not listening, for the whole test: nothing else can take
    // the port, and a connection to it is refused.
    let closed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    closed
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let addr = closed.local_addr().unwrap().as_socket().unwrap();
    let port = port();
    let _stream = port.connect(addr, 8, Record::Connect).unwrap();
    let packet = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!(
        packet.result.unwrap_err().winsock_code(),
        Some(WSAECONNREFUSED)
    );
}

#[test]
fn disconnect_completes_and_the_peer_sees_the_end_of_the_stream() {
    let (ours, mut peer) = pair();
    let port = port();
    let stream = port.associate(ours, 1);
    stream.disconnect(Record::Disconnect).unwrap();
    let packet = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!(packet.record, Some(Record::Disconnect));
    assert!(packet.result.is_ok());
    let mut rest = Vec::new();
    assert_eq!(peer.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn multishot_receive_reports_each_arrival_then_ends_with_its_record() {
    let (ours, mut peer) = pair();
    let port = port();
    let stream = port.associate(ours, 4);
    stream.recv_multishot(Record::Recv).unwrap();
    let mut got = Vec::new();
    for part in [&b"one"[..], b"two", b"three"] {
        peer.write_all(part).unwrap();
        let packet = port.get_queued_completion_status(SOON).unwrap().unwrap();
        assert_eq!((packet.key, packet.record.is_none()), (4, true));
        got.extend_from_slice(packet.received().unwrap());
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(got, b"onetwothree");
    drop(peer);
    let last = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!(last.record, Some(Record::Recv));
    assert_eq!(last.bytes(), 0, "the peer's close ends it with 0 bytes");
}

#[test]
fn closing_a_stream_ends_its_multishot_receive_with_aborted() {
    let (ours, _peer) = pair();
    let port = port();
    let stream = port.associate(ours, 4);
    stream.recv_multishot(Record::Recv).unwrap();
    stream.close().unwrap();
    let last = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!(last.record, Some(Record::Recv));
    assert_eq!(
        last.result.unwrap_err().winsock_code(),
        Some(WSA_OPERATION_ABORTED)
    );
}

#[test]
fn cancelling_a_multishot_receive_ends_it_with_aborted_and_leaves_the_stream_open() {
    let (ours, mut peer) = pair();
    let port = port();
    let stream = port.associate(ours, 4);
    stream.recv_multishot(Record::Recv).unwrap();
    stream.cancel_multishot().unwrap();
    let last = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!(last.record, Some(Record::Recv));
    assert_eq!(
        last.result.unwrap_err().winsock_code(),
        Some(WSA_OPERATION_ABORTED)
    );
    // Bytes sent meanwhile wait in the socket for the next receive.
    peer.write_all(b"later").unwrap();
    stream.recv_multishot(Record::Recv).unwrap();
    let arrival = port.get_queued_completion_status(SOON).unwrap().unwrap();
    assert_eq!(arrival.received(), Some(&b"later"[..]));
}

#[test]
fn cancelling_when_no_multishot_receive_runs_is_not_found() {
    let (ours, _peer) = pair();
    let port = port();
    let stream = port.associate(ours, 4);
    assert_eq!(
        stream.cancel_multishot().unwrap_err().winsock_code(),
        Some(ERROR_NOT_FOUND)
    );
}

#[test]
fn a_worker_that_panics_holding_a_packet_leaves_the_port_to_the_others() {
    let port = port();
    port.post(1, 0, Some(Record::Mine(1))).unwrap();
    let doomed = {
        let port = port.clone();
        thread::spawn(move || {
            let _packet = port.get_queued_completion_status(SOON).unwrap();
            panic!("a worker's bug while handling its packet");
        })
    };
    assert!(doomed.join().is_err());
    // The port goes on: another worker gets the packets that follow,
    // completions included.
    let (ours, mut peer) = pair();
    let stream = port.associate(ours, 2);
    stream.recv(vec![vec![0u8; 8]], Record::Recv).unwrap();
    peer.write_all(b"after").unwrap();
    let survivor = {
        let port = port.clone();
        thread::spawn(move || port.get_queued_completion_status(SOON).unwrap())
    };
    let packet = survivor.join().unwrap().expect("a packet");
    assert_eq!((packet.key, packet.bytes()), (2, 5));
    assert_eq!(packet.record, Some(Record::Recv));
}
