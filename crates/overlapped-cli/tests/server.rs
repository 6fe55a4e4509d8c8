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
    // Each buffer once the last was printed, so the server sees each on
    // its own, as the seed's once-a-second client sends them.
    let mut lines = Vec::new();
    for _ in 0..3 {
        client.write_all(&seed_buffer()).unwrap();
        lines.extend(server.collect_stdout(1, Duration::from_secs(30)));
    }
    assert_eq!(lines, vec![SEED_LINE; 3]);
    // And nothing more.
    assert_eq!(
        server.collect_stdout(1, Duration::from_millis(300)),
        Vec::<String>::new()
    );
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
    for round in 0..3 {
        for client in &mut clients {
            client.write_all(&seed_buffer()).unwrap();
        }
        // The next round once every buffer of this one was printed: the
        // server sees each on its own, as the seed's once-a-second client
        // sends them.
        let lines = server.collect_stdout(CLIENTS, Duration::from_secs(60));
        assert_eq!(lines.len(), CLIENTS, "round {round}");
        assert!(lines.iter().all(|l| l == SEED_LINE), "round {round}");
    }
    let threads = proc_status(server.pid(), "Threads");
    assert!(threads < 64, "{threads} threads for {CLIENTS} clients");
}

#[test]
fn idle_server_with_silent_clients_uses_no_cpu() {
    let server = Server::start();
    let clients: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    // Let the server pick every client up before measuring, and settle:
    // its CPU time stops moving.
    wait_for_connected(&server, clients.len());
    let mut settled = cpu_ticks(server.pid());
    for _ in 0..60 {
        thread::sleep(Duration::from_millis(500));
        let now = cpu_ticks(server.pid());
        if now == settled {
            break;
        }
        settled = now;
    }
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
}
