//! End-to-end: `overlapped client` against a plain TCP peer.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use common::{binary, seed_buffer};

/// A plain TCP peer that accepts one client and returns all it received.
fn plain_peer() -> (String, thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let reader = thread::spawn(move || {
        let (mut peer, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        peer.read_to_end(&mut received).unwrap();
        received
    });
    (addr, reader)
}

#[test]
fn client_sends_the_seed_buffer_count_times_and_exits_zero() {
    let (addr, reader) = plain_peer();
    let output = binary()
        .args([
            "client",
            "--addr",
            &addr,
            "--count",
            "3",
            "--interval-ms",
            "200",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec!["Send Bytes : 100"; 3]
    );
    assert_eq!(reader.join().unwrap(), seed_buffer().repeat(3));
}

#[test]
fn client_sends_a_custom_message_and_size() {
    let (addr, reader) = plain_peer();
    let output = binary()
        .args([
            "client",
            "--addr",
            &addr,
            "--count",
            "1",
            "--message",
            "hi",
            "--size",
            "4",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "Send Bytes : 4\n");
    assert_eq!(reader.join().unwrap(), b"hi\0\0");
}

#[test]
fn refused_connection_is_a_one_line_error_and_nonzero_exit() {
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
    let port = closed.local_addr().unwrap().as_socket().unwrap().port();
    let output = binary()
        .args([
            "client",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--count",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
}

#[test]
fn lost_server_is_a_one_line_error_and_nonzero_exit() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut child = binary()
        .args(["client", "--addr", &addr, "--interval-ms", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    // Reset only after the first send arrived: a reset that races the
    // client's `connect` makes the connect fail instead, a different error.
    let mut first = [0u8; 100];
    peer.read_exact(&mut first).unwrap();
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer);
    drop(listener);
    let status = child.wait().unwrap();
    let stderr = common::stderr_of(&mut child);
    assert!(!status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("WSASend Error"), "{stderr}");
}

#[test]
fn message_longer_than_size_is_refused() {
    let output = binary()
        .args([
            "client",
            "--message",
            "too long",
            "--size",
            "3",
            "--count",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--size"));
}

#[test]
fn one_lost_connection_of_several_is_counted_and_the_others_go_on() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let child = binary()
        .args([
            "client",
            "--addr",
            &addr,
            "--clients",
            "3",
            "--count",
            "4",
            "--interval-ms",
            "100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peers: Vec<_> = (0..3).map(|_| listener.accept().unwrap().0).collect();
    // Every connection's first send arrived; then one is reset.
    for peer in &mut peers {
        let mut first = [0u8; 100];
        peer.read_exact(&mut first).unwrap();
    }
    let lost = peers.remove(0);
    socket2::SockRef::from(&lost)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(lost);
    let readers: Vec<_> = peers
        .into_iter()
        .map(|mut peer| {
            thread::spawn(move || {
                let mut rest = Vec::new();
                peer.read_to_end(&mut rest).unwrap();
                100 + rest.len()
            })
        })
        .collect();
    let output = child.wait_with_output().unwrap();
    let received: Vec<usize> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(received, vec![400, 400], "the others sent every round");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("1 of 3 connections failed"), "{stderr}");
    assert!(last.contains("WSASend Error"), "{stderr}");
}
