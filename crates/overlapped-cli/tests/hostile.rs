//! Hostile clients against the chat server: each is disconnected with a
//! logged reason while a healthy client in the same room keeps its round
//! trip. (Malformed frames are in `chat.rs`.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::chat::{chat_server, frame, is_dropped, join, round_trip, C_CHAT};
use common::{proc_status, wait_for_line, Server};

/// Round trips on `healthy` every 100 ms until told to stop, so its own
/// idle timer never runs out, however long the hostile client takes.
struct Chatting {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<TcpStream>,
}

fn keep_chatting(mut healthy: TcpStream, id: u64) -> Chatting {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = thread::spawn(move || {
        while !stopped.load(Ordering::Acquire) {
            round_trip(&mut healthy, id, b"ping");
            thread::sleep(Duration::from_millis(100));
        }
        healthy
    });
    Chatting { stop, thread }
}

impl Chatting {
    /// Stops chatting; gives the stream back.
    fn stop(self) -> TcpStream {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap()
    }
}

/// Waits for the server's log line about `client` that contains `reason`.
fn logged_drop(server: &Server, client: &TcpStream, reason: &str) {
    let peer = client.local_addr().unwrap().to_string();
    let line = wait_for_line(
        &server.stderr,
        |l| l.contains(&peer) && l.contains("disconnected") && l.contains(reason),
        Duration::from_secs(15),
    );
    assert!(
        line.is_some(),
        "no log line for {peer} containing {reason:?}"
    );
}

#[test]
fn half_a_frame_then_silence_is_dropped_at_the_idle_timeout() {
    let server = chat_server(&["--idle-timeout-ms", "2000"]);
    let (healthy, id) = join(&server);
    let (mut hostile, _) = join(&server);
    hostile.write_all(&frame(C_CHAT, b"hello")[..5]).unwrap();
    let chatting = keep_chatting(healthy, id);
    assert!(is_dropped(&mut hostile));
    logged_drop(&server, &hostile, "idle timeout");
    let mut healthy = chatting.stop();
    round_trip(&mut healthy, id, b"still here");
}

#[test]
fn a_byte_per_second_is_dropped_at_the_idle_timeout() {
    let server = chat_server(&["--idle-timeout-ms", "2500"]);
    let (healthy, id) = join(&server);
    let (hostile, _) = join(&server);
    let mut trickle = hostile.try_clone().unwrap();
    let trickler = thread::spawn(move || {
        for byte in frame(C_CHAT, b"slowly, very slowly") {
            if trickle.write_all(&[byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_secs(1));
        }
    });
    let chatting = keep_chatting(healthy, id);
    let mut hostile = hostile;
    assert!(is_dropped(&mut hostile));
    logged_drop(&server, &hostile, "idle timeout");
    let mut healthy = chatting.stop();
    round_trip(&mut healthy, id, b"still here");
    drop(hostile);
    trickler.join().unwrap();
}

#[test]
fn a_reset_in_the_middle_of_a_send_drops_only_that_client() {
    let server = chat_server(&[]);
    let (mut healthy, id) = join(&server);
    let (hostile, _) = join(&server);
    // The server is sending to the hostile client, which does not read...
    let line = vec![b'x'; 1000];
    for _ in 0..200 {
        round_trip(&mut healthy, id, &line);
    }
    // ...when it resets the connection halfway through a frame of its own.
    let hostile_addr = hostile.local_addr().unwrap().to_string();
    (&hostile)
        .write_all(&frame(C_CHAT, b"cut short")[..6])
        .unwrap();
    socket2::SockRef::from(&hostile)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(hostile);
    let logged = wait_for_line(
        &server.stderr,
        |l| l.contains(&hostile_addr) && l.contains("disconnected"),
        Duration::from_secs(15),
    );
    assert!(logged.is_some(), "no disconnect logged for {hostile_addr}");
    round_trip(&mut healthy, id, b"still here");
}

#[test]
fn a_client_that_never_reads_during_a_broadcast_storm_is_dropped_and_memory_stays_bounded() {
    const CAP: usize = 65536;
    let cap = CAP.to_string();
    // The hostile client never speaks: no handshake timeout may drop it
    // first, however long the storm takes.
    let server = chat_server(&[
        "--max-send-queue",
        &cap,
        "--max-packet",
        "65535",
        "--handshake-timeout-ms",
        "0",
    ]);
    let (mut healthy, id) = join(&server);
    // A small receive window, so the hostile client's own socket absorbs
    // next to nothing of the storm.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let hostile: TcpStream = socket.into();
    let hostile_addr = hostile.local_addr().unwrap().to_string();
    // The server's socket for it still takes whatever its send buffer may
    // grow to (`tcp_wmem`, autotuned), so storm until more than that and
    // the cap have been broadcast: only then must the queue be full.
    let budget = 2 * (tcp_wmem_max() + CAP) + (1 << 20);
    let line = vec![b'y'; 60_000];
    let mut broadcast = 0;
    let mut dropped = false;
    while broadcast < budget && !dropped {
        round_trip(&mut healthy, id, &line);
        broadcast += line.len();
        dropped = !server
            .logged_so_far(|l| {
                l.contains(&hostile_addr)
                    && l.contains("disconnected")
                    && l.contains("send queue full")
            })
            .is_empty();
    }
    if !dropped {
        logged_drop(&server, &hostile, "send queue full");
    }
    round_trip(&mut healthy, id, b"still here");
    let rss_kib = proc_status(server.pid(), "VmRSS");
    assert!(rss_kib < 256 * 1024, "server RSS {rss_kib} KiB");
}

/// The most a TCP socket's send buffer grows to on this machine.
fn tcp_wmem_max() -> usize {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").unwrap_or_default();
    let max = wmem.split_whitespace().nth(2).and_then(|m| m.parse().ok());
    max.unwrap_or(64 << 20)
}

#[test]
fn ten_thousand_connect_close_cycles_leave_the_fd_count_at_its_baseline() {
    let server = chat_server(&[]);
    let (mut healthy, id) = join(&server);
    // A first packet, so no handshake timeout drops it during the cycles.
    round_trip(&mut healthy, id, b"hello");
    let baseline = fd_count(server.pid());
    for _ in 0..10_000 {
        drop(TcpStream::connect(server.addr).unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while fd_count(server.pid()) > baseline && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fd_count(server.pid()), baseline);
    round_trip(&mut healthy, id, b"still here");
}

#[test]
fn random_garbage_from_many_clients_never_takes_the_server_down() {
    let server = chat_server(&[]);
    let (mut healthy, id) = join(&server);
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..50 {
        let mut client = TcpStream::connect(server.addr).unwrap();
        let garbage: Vec<u8> = (0..512)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = client.write_all(&garbage);
        let _ = client.read(&mut [0; 64]);
    }
    round_trip(&mut healthy, id, b"still here");
    let panicked = server.logged_so_far(|l| l.contains("panicked"));
    assert!(panicked.is_empty(), "the server panicked: {panicked:?}");
}

/// `N` of a summary line `(N more like the next were not logged)`.
fn held_back_in(line: &str) -> usize {
    let Some(at) = line.find(" more like the next were not logged") else {
        return 0;
    };
    let count = line[..at].rsplit('(').next().unwrap_or_default();
    count.parse().unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_connection_storm_is_logged_in_summary_not_a_line_per_connection() {
    let server = chat_server(&["--max-sessions-per-ip", "0"]);
    for _ in 0..3000 {
        drop(TcpStream::connect(server.addr).unwrap());
    }
    // A later second's first line says how many were held back: join now
    // and then until it comes, however long the storm took to serve.
    let mut lines = 0;
    let mut held_back = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while held_back == 0 {
        assert!(
            Instant::now() < deadline,
            "no summary: every connection was logged"
        );
        drop(join(&server));
        thread::sleep(Duration::from_millis(200));
        for line in server.logged_so_far(|_| true) {
            lines += 1;
            held_back += held_back_in(&line);
        }
    }
    // Two lines a connection (joined, left) without the budget.
    assert!(lines < 2 * 3000, "{lines} lines for 3000 connections");
}
