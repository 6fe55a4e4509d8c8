//! SIGINT/SIGTERM: the server stops accepting, flushes what it queued,
//! closes its sessions and exits 0.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{wait_for_line, Server};

fn signal(server: &Server, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(server: &mut Server, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = server.child.try_wait().unwrap() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// An echo client under load: a writer thread sends until the server ends
/// the stream, the reader counts every echoed byte until the end.
/// `echoing` counts the clients that had a first echo.
fn loaded_client(server: &Server, echoing: Arc<AtomicU64>) -> thread::JoinHandle<u64> {
    let stream = TcpStream::connect(server.addr).unwrap();
    let ended = Arc::new(AtomicBool::new(false));
    let mut writer = stream.try_clone().unwrap();
    let writer_ended = ended.clone();
    let writing = thread::spawn(move || {
        let chunk = vec![7u8; 1000];
        while !writer_ended.load(Ordering::Acquire) && writer.write_all(&chunk).is_ok() {}
    });
    thread::spawn(move || {
        let mut reader = stream;
        reader
            .set_read_timeout(Some(Duration::from_secs(90)))
            .unwrap();
        let mut received = 0u64;
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 {
                break;
            }
            if received == 0 {
                echoing.fetch_add(1, Ordering::AcqRel);
            }
            received += n as u64;
        }
        ended.store(true, Ordering::Release);
        let _ = reader.shutdown(std::net::Shutdown::Both);
        writing.join().unwrap();
        received
    })
}

/// An echo server on the session layer with `workers` threads (one worker
/// means multishot receives) that gives its clients `timeout_ms` to close
/// when it shuts down.
fn echo_server(workers: &str, timeout_ms: &str) -> Server {
    Server::start_with(&[
        "--model",
        "port",
        "--mode",
        "echo",
        "--threads",
        workers,
        "--shutdown-timeout-ms",
        timeout_ms,
    ])
}

/// The server's last words: `shutdown: N sessions closed cleanly, M
/// dropped at the deadline; B bytes sent` (or `shutdown cut short by ...`).
fn shutdown_report(server: &Server) -> String {
    wait_for_line(
        &server.stderr,
        |l| l.contains("shutdown:") || l.contains("shutdown cut short"),
        Duration::from_secs(5),
    )
    .expect("a shutdown report")
}

#[test]
fn sigterm_under_load_exits_zero_and_every_byte_reported_sent_arrives() {
    sigterm_under_load("2");
}

#[test]
fn sigterm_under_load_with_multishot_receives_loses_no_reported_byte() {
    sigterm_under_load("1");
}

fn sigterm_under_load(workers: &str) {
    let mut server = echo_server(workers, "60000");
    let echoed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..20)
        .map(|_| loaded_client(&server, echoed.clone()))
        .collect();
    // Under load: every client has had echoes back.
    let deadline = Instant::now() + Duration::from_secs(60);
    while echoed.load(Ordering::Acquire) < 20 {
        assert!(Instant::now() < deadline, "the clients never got echoes");
        thread::sleep(Duration::from_millis(10));
    }
    signal(&server, "TERM");
    let status = wait_exit(&mut server, Duration::from_secs(90)).expect("the server exits");
    assert!(status.success(), "exit status {status}");
    let received: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let report = shutdown_report(&server);
    assert!(report.contains("0 dropped at the deadline"), "{report}");
    let sent: u64 = report
        .split_whitespace()
        .rev()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("bytes sent in the report");
    assert!(sent > 0);
    assert_eq!(received, sent, "{report}");
}

#[test]
fn sigint_stops_an_idle_server_with_status_zero() {
    for model in ["event", "routine", "port"] {
        let mut server = Server::start_with(&["--model", model]);
        signal(&server, "INT");
        let status = wait_exit(&mut server, Duration::from_secs(10)).expect("the server exits");
        assert!(status.success(), "{model}: exit status {status}");
    }
}

#[test]
fn during_shutdown_new_clients_are_refused_and_stragglers_dropped_at_the_deadline() {
    let mut server = echo_server("2", "15000");
    let addr = server.addr;
    // Connected, but never closes its side: it keeps the server waiting.
    let mut straggler = TcpStream::connect(addr).unwrap();
    straggler.write_all(b"hello").unwrap();
    let mut echoed = [0; 5];
    straggler.read_exact(&mut echoed).unwrap();
    signal(&server, "TERM");
    wait_for_line(
        &server.stderr,
        |l| l.contains("stopped accepting"),
        Duration::from_secs(10),
    )
    .expect("the server starts shutting down");
    assert!(server.child.try_wait().unwrap().is_none(), "still draining");
    assert!(
        TcpStream::connect(addr).is_err(),
        "a new client was accepted"
    );
    let status = wait_exit(&mut server, Duration::from_secs(60)).expect("the server exits");
    assert!(status.success(), "exit status {status}");
    let report = shutdown_report(&server);
    assert!(report.contains("1 dropped at the deadline"), "{report}");
}

#[test]
fn a_second_signal_during_the_drain_stops_at_once_and_says_so() {
    // Clients get a minute to close; a second SIGTERM does not wait for it.
    let mut server = echo_server("1", "60000");
    let mut straggler = TcpStream::connect(server.addr).unwrap();
    straggler.write_all(b"hello").unwrap();
    let mut echoed = [0; 5];
    straggler.read_exact(&mut echoed).unwrap();
    signal(&server, "TERM");
    wait_for_line(
        &server.stderr,
        |l| l.contains("stopped accepting"),
        Duration::from_secs(10),
    )
    .expect("the server starts shutting down");
    signal(&server, "TERM");
    let logged = wait_for_line(
        &server.stderr,
        |l| l.contains("received during the shutdown: stopping at once"),
        Duration::from_secs(10),
    );
    assert!(logged.is_some(), "the second signal was not logged");
    let status = wait_exit(&mut server, Duration::from_secs(30)).expect("the server exits");
    assert!(status.success(), "exit status {status}");
    let report = shutdown_report(&server);
    assert!(
        report.contains("cut short by a second SIGTERM: 0 sessions closed cleanly, 1 dropped when the drain was cut short"),
        "{report}"
    );
}

#[test]
fn a_sigterm_as_soon_as_the_server_listens_drains_it_and_exits_zero() {
    // The signal follows the announcement at once, before a client could
    // have been served: a few rounds, as the window it probes is short.
    for round in 0..5 {
        let mut server = echo_server("1", "10000");
        signal(&server, "TERM");
        let status = wait_exit(&mut server, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("round {round}: the signal was lost, the server runs on"));
        assert!(status.success(), "round {round}: exit status {status}");
        let report = shutdown_report(&server);
        assert!(report.contains("0 dropped at the deadline"), "{report}");
    }
}
