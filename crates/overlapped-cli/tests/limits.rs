//! The server's limits: too many sessions, and running out of descriptors.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::chat::{chat_server, join, round_trip};
use common::{wait_for_line, Server};

/// The open-file limit the helper gives the server, hard and soft.
const NOFILE_VAR: &str = "OVERLAPPED_TEST_NOFILE";

/// Not a test of its own: lowers the open-file limit, then becomes
/// `overlapped server` (the chat room) with it.
#[test]
#[ignore = "runs only as the child process of the descriptor-exhaustion test"]
fn limited() {
    let limit: u64 = std::env::var(NOFILE_VAR).unwrap().parse().unwrap();
    rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit).unwrap();
    let err = Command::new(env!("CARGO_BIN_EXE_overlapped"))
        .args([
            "server",
            "--addr",
            "127.0.0.1:0",
            "--model",
            "port",
            "--mode",
            "chat",
        ])
        .exec();
    panic!("cannot run overlapped: {err}");
}

#[test]
fn connections_beyond_max_sessions_are_closed_at_once_and_logged() {
    let server = chat_server(&["--max-sessions", "2"]);
    let (mut first, first_id) = join(&server);
    let (_second, _) = join(&server);
    let mut third = TcpStream::connect(server.addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let closed = third.read_to_end(&mut got).is_ok()
        || matches!(third.read(&mut [0]), Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(closed && got.is_empty(), "the third client got {got:?}");
    let refused = wait_for_line(
        &server.stderr,
        |l| l.contains("refused") && l.contains("the limit is 2"),
        Duration::from_secs(10),
    );
    assert!(refused.is_some());
    round_trip(&mut first, first_id, b"still here");
}

#[test]
fn accept_backs_off_when_descriptors_run_out_and_recovers_when_they_are_freed() {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--ignored", "--exact", "limited", "--nocapture", "--quiet"])
        .env(NOFILE_VAR, "48");
    let mut server = Server::start_from(command);
    // More clients than the server has descriptors left.
    let clients: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    let logged = wait_for_line(
        &server.stderr,
        |l| {
            l.contains("accept failed")
                && l.contains("Too many open files")
                && l.contains("retrying")
        },
        Duration::from_secs(20),
    );
    assert!(logged.is_some(), "no back-off logged");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
    // Freeing descriptors lets accepting resume.
    drop(clients);
    let (mut newcomer, id) = join(&server);
    round_trip(&mut newcomer, id, b"in at last");
}

#[test]
fn a_client_that_sends_faster_than_it_reads_is_slowed_not_dropped() {
    // Each session posts one receive at a time, and none while held back.
    sends_faster_than_it_reads(&["--threads", "2", "--single-recv"]);
}

#[test]
fn a_client_that_sends_faster_than_it_reads_is_slowed_not_dropped_with_multishot_receives() {
    // Each session keeps one multishot receive, which is cancelled to stop
    // reading and posted again to resume.
    sends_faster_than_it_reads(&["--threads", "2"]);
}

/// A client that writes 16 MiB flat out but reads slowly, against a 64 KiB
/// send queue cap: it must get every echoed byte back, intact.
fn sends_faster_than_it_reads(receives: &[&str]) {
    let mut args = vec![
        "--model",
        "port",
        "--mode",
        "echo",
        "--max-send-queue",
        "65536",
    ];
    args.extend_from_slice(receives);
    let server = Server::start_with(&args);
    let client = TcpStream::connect(server.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let total = 16 << 20;
    let pattern = |i: usize| (i % 251) as u8;
    let mut writer = client.try_clone().unwrap();
    // Sends as fast as the server lets it...
    let writing = std::thread::spawn(move || {
        let data: Vec<u8> = (0..total).map(pattern).collect();
        std::io::Write::write_all(&mut writer, &data).unwrap();
    });
    // ...and reads a little, slowly: far more than 64 KiB of echoes would
    // pile up in the server if it kept reading.
    let mut reader = client;
    let mut echoed = 0;
    let mut chunk = vec![0; 16 * 1024];
    while echoed < total {
        let n = reader.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "the server closed the connection after {echoed} bytes"
        );
        for (k, byte) in chunk[..n].iter().enumerate() {
            assert_eq!(*byte, pattern(echoed + k), "byte {}", echoed + k);
        }
        echoed += n;
        std::thread::sleep(Duration::from_micros(200));
    }
    writing.join().unwrap();
    let dropped = server.logged_so_far(|l| l.contains("disconnected"));
    assert!(dropped.is_empty(), "{dropped:?}");
}

#[test]
fn behind_proxy_protocol_a_connection_without_a_header_is_refused_with_the_reason() {
    let server = Server::start_with(&["--model", "port", "--mode", "echo", "--proxy-protocol"]);
    let mut client = std::net::TcpStream::connect(server.addr).unwrap();
    std::io::Write::write_all(&mut client, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").unwrap();
    let line = wait_for_line(
        &server.stderr,
        |l| l.contains("refused") && l.contains("version 1"),
        Duration::from_secs(30),
    );
    assert!(line.is_some(), "no refusal logged");
}
