//! `MetricsEndpoint`: one request and its answer per connection, and a
//! cost bounded in threads, connections, request bytes and time, whatever
//! clients do.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use overlapped::session::{
    EndpointConfig, MetricsEndpoint, Service, ServiceConfig, Session, SessionHandler,
};

/// One test at a time: one of them counts the process's threads.
static ALONE: Mutex<()> = Mutex::new(());

fn alone() -> MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|p| p.into_inner())
}

struct Quiet;

impl SessionHandler for Quiet {
    fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        Ok(data.len())
    }
}

fn game() -> Service {
    let config = ServiceConfig {
        workers: 1,
        ..ServiceConfig::default()
    };
    Service::server("127.0.0.1:0", config, Arc::new(|| Arc::new(Quiet))).unwrap()
}

fn endpoint(game: &Service, config: EndpointConfig) -> MetricsEndpoint {
    MetricsEndpoint::serve("127.0.0.1:0", game, config).unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Sends `request` whole and reads the answer to the end of the stream.
fn ask(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = connect(addr);
    stream.write_all(request).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn get(addr: SocketAddr, path: &str) -> String {
    ask(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// Whether the endpoint ended `stream` (EOF or reset) within its timeout.
fn ended(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn a_scrape_gets_the_services_counters_and_the_connection_closes() {
    let _alone = alone();
    let game = game();
    let endpoint = endpoint(&game, EndpointConfig::default());
    let answer = get(endpoint.local_addr(), "/metrics?ignored=1");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("Content-Type: text/plain; version=0.0.4"),
        "{answer}"
    );
    assert!(answer.contains("Connection: close"), "{answer}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    assert!(body.contains("overlapped_sessions_open 0"), "{body}");
    assert_eq!(
        get(endpoint.local_addr(), "/healthz")
            .split_once("\r\n\r\n")
            .unwrap()
            .1,
        "ok\n"
    );
    assert!(get(endpoint.local_addr(), "/other").starts_with("HTTP/1.1 404"));
    let post = ask(endpoint.local_addr(), b"POST /metrics HTTP/1.1\r\n\r\n");
    assert!(
        post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"),
        "{post}"
    );
    let head_only = ask(endpoint.local_addr(), b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(head_only.starts_with("HTTP/1.1 200") && head_only.ends_with("\r\n\r\n"));
    endpoint.stop();
    game.stop();
}

#[test]
fn health_answers_503_once_the_service_is_shutting_down() {
    let _alone = alone();
    let game = game();
    let endpoint = endpoint(&game, EndpointConfig::default());
    game.shutdown(Duration::from_secs(1));
    assert!(get(endpoint.local_addr(), "/healthz").starts_with("HTTP/1.1 503"));
    endpoint.stop();
}

#[test]
fn a_request_head_over_the_limit_is_answered_431_and_closed() {
    let _alone = alone();
    let game = game();
    let config = EndpointConfig {
        max_request_head: 1024,
        ..EndpointConfig::default()
    };
    let endpoint = endpoint(&game, config);
    let mut stream = connect(endpoint.local_addr());
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    // The endpoint answers and closes before it has read all of it.
    let _ = stream.write_all(huge.as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    endpoint.stop();
    game.stop();
}

#[test]
fn a_request_that_is_not_http_is_answered_400_and_closed() {
    let _alone = alone();
    let game = game();
    let endpoint = endpoint(&game, EndpointConfig::default());
    let answer = ask(
        endpoint.local_addr(),
        b"\x16\x03\x01\x02\x00 a TLS hello\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    endpoint.stop();
    game.stop();
}

#[test]
fn a_request_that_never_completes_is_dropped_at_the_request_timeout() {
    let _alone = alone();
    let game = game();
    let config = EndpointConfig {
        request_timeout: Duration::from_millis(500),
        ..EndpointConfig::default()
    };
    let endpoint = endpoint(&game, config);
    let mut slow = connect(endpoint.local_addr());
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: sl")
        .unwrap();
    let mut silent = connect(endpoint.local_addr());
    assert!(ended(&mut slow), "a partial request was kept");
    assert!(ended(&mut silent), "a silent connection was kept");
    endpoint.stop();
    game.stop();
}

#[test]
fn idle_connections_past_the_limit_never_keep_an_honest_scrape_out() {
    let _alone = alone();
    let game = game();
    let config = EndpointConfig {
        max_connections: 8,
        ..EndpointConfig::default()
    };
    let endpoint = endpoint(&game, config);
    let threads = common::threads();
    let idle: Vec<TcpStream> = (0..500).map(|_| connect(endpoint.local_addr())).collect();
    let answer = get(endpoint.local_addr(), "/metrics");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The oldest idle ones made room; the endpoint holds a few only, and
    // no thread more.
    assert!(
        endpoint.connections() <= 9,
        "{} connections held",
        endpoint.connections()
    );
    assert_eq!(
        common::threads(),
        threads,
        "threads grew with the connections"
    );
    drop(idle);
    endpoint.stop();
    game.stop();
}

#[test]
fn health_answers_503_while_a_worker_is_stuck_in_a_job() {
    let _alone = alone();
    let game = game();
    let endpoint = endpoint(&game, EndpointConfig::default());
    let room = overlapped::game::Room::new(&game, "stuck", ());
    let (release, held) = std::sync::mpsc::channel::<()>();
    assert!(room.push(move |_, _| {
        let _ = held.recv();
    }));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = get(endpoint.local_addr(), "/healthz");
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.contains("workers [0] are stuck"), "{answer}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never unhealthy: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    release.send(()).unwrap();
    endpoint.stop();
    game.stop();
}
