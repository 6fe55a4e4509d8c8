//! End-to-end: `overlapped server` against real loopback clients.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use common::{cpu_ticks, proc_status, seed_buffer, wait_for_line, Server, SEED_LINE};

#[test]
fn server_prints_one_seed_line_per_seed_buffer() {
    let server = Server::start();
    let mut client = TcpStream::connect(server.addr).unwrap();
    for _ in 0..3 {
        client.write_all(&seed_buffer()).unwrap();
        thread::sleep(Duration::from_millis(300));
    }
    let lines = server.collect_stdout(4, Duration::from_secs(5));
    assert_eq!(lines, vec![SEED_LINE; 3]);
}

#[test]
fn server_prints_text_up_to_the_first_zero_byte() {
    let server = Server::start();
    let mut client = TcpStream::connect(server.addr).unwrap();
    client.write_all(b"abc\0def").unwrap();
    let lines = server.collect_stdout(1, Duration::from_secs(10));
    assert_eq!(lines, vec!["Recv Data : abc (7 bytes)"]);
}

#[test]
fn server_logs_a_reset_client_and_keeps_serving_the_others() {
    let server = Server::start();
    let mut healthy = TcpStream::connect(server.addr).unwrap();
    let doomed = TcpStream::connect(server.addr).unwrap();
    socket2::SockRef::from(&doomed)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(doomed);
    let logged = wait_for_line(
        &server.stderr,
        |l| l.contains("disconnected"),
        Duration::from_secs(10),
    );
    assert!(logged.is_some(), "the reset client is logged");
    healthy.write_all(&seed_buffer()).unwrap();
    assert_eq!(
        server.collect_stdout(1, Duration::from_secs(10)),
        vec![SEED_LINE]
    );
}

#[test]
fn server_serves_1000_clients_with_few_threads() {
    const CLIENTS: usize = 1000;
    let server = Server::start();
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    for _ in 0..3 {
        for client in &mut clients {
            client.write_all(&seed_buffer()).unwrap();
        }
        // Far longer than a receive takes, so the server sees each buffer
        // on its own, as the seed's once-a-second client sends them.
        thread::sleep(Duration::from_millis(700));
    }
    let lines = server.collect_stdout(3 * CLIENTS, Duration::from_secs(60));
    assert_eq!(lines.len(), 3 * CLIENTS);
    assert!(lines.iter().all(|l| l == SEED_LINE));
    let threads = proc_status(server.pid(), "Threads");
    assert!(threads < 64, "{threads} threads for {CLIENTS} clients");
}

#[test]
fn idle_server_with_silent_clients_uses_no_cpu() {
    let server = Server::start();
    let clients: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    // Let the server pick every client up before measuring.
    wait_for_connected(&server, clients.len());
    let before = cpu_ticks(server.pid());
    thread::sleep(Duration::from_secs(5));
    let used = cpu_ticks(server.pid()) - before;
    // A busy poll would burn ~500 ticks in 5 s; blocked threads burn none.
    assert!(used <= 2, "idle server used {used} clock ticks in 5 s");
    drop(clients);
}

fn wait_for_connected(server: &Server, count: usize) {
    for _ in 0..count {
        wait_for_line(
            &server.stderr,
            |l| l.contains("connected"),
            Duration::from_secs(30),
        )
        .expect("server logs each connection");
    }
    thread::sleep(Duration::from_millis(200));
}
