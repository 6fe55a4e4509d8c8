//! `ServiceConfig::proxy_protocol`: behind a load balancer, each
//! connection's PROXY protocol v2 header names the client, and the
//! factory, the per-address limit and `peer_addr` see that client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use overlapped::session::{Service, ServiceConfig, Session, SessionHandler};

struct Echo {
    events: Mutex<mpsc::Sender<String>>,
}

impl SessionHandler for Echo {
    fn on_connected(&self, session: &Arc<Session>) {
        let _ = self
            .events
            .lock()
            .unwrap()
            .send(format!("connected {}", session.peer_addr()));
    }
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send_copy(data);
        Ok(data.len())
    }
    fn on_disconnected(&self, session: &Arc<Session>, _: &str) {
        let _ = self
            .events
            .lock()
            .unwrap()
            .send(format!("left {}", session.peer_addr()));
    }
}

/// A proxied echo server whose factory reports each peer it is asked for.
fn server(max_per_ip: usize) -> (Service, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let config = ServiceConfig {
        workers: 1,
        proxy_protocol: true,
        max_sessions_per_ip: max_per_ip,
        ..ServiceConfig::default()
    };
    let factory = Arc::new(move |peer: SocketAddr| {
        let events = tx.lock().unwrap().clone();
        let _ = events.send(format!("made for {peer}"));
        Ok(Arc::new(Echo {
            events: Mutex::new(events),
        }) as Arc<dyn SessionHandler>)
    });
    (
        Service::server_with("127.0.0.1:0", config, factory).unwrap(),
        rx,
    )
}

/// A version 2 `PROXY` header for a TCP client at `client` (IPv4).
fn header(client: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(client) = client else {
        panic!("IPv4 only here")
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&client.ip().octets());
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&client.port().to_be_bytes());
    header.extend_from_slice(&7777u16.to_be_bytes());
    header
}

fn connect(service: &Service) -> TcpStream {
    let stream = TcpStream::connect(service.local_addr().unwrap()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

fn event(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(30)).unwrap()
}

/// Whether the server closed `stream` without a byte for it.
fn closed_unanswered(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => rest.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn the_header_names_the_client_the_program_sees() {
    let (service, events) = server(0);
    let mut client = connect(&service);
    // The header and the first bytes arrive together.
    let mut first = header("203.0.113.5:40000".parse().unwrap());
    first.extend_from_slice(b"hello");
    client.write_all(&first).unwrap();
    let mut echo = [0; 5];
    client.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello");
    assert_eq!(event(&events), "made for 203.0.113.5:40000");
    assert_eq!(event(&events), "connected 203.0.113.5:40000");
    assert_eq!(
        service.sessions()[0].peer_addr().to_string(),
        "203.0.113.5:40000"
    );
    service.stop();
}

#[test]
fn the_per_address_limit_counts_the_client_the_header_names() {
    let (service, events) = server(1);
    let mut first = connect(&service);
    first
        .write_all(&header("203.0.113.5:1".parse().unwrap()))
        .unwrap();
    assert_eq!(event(&events), "made for 203.0.113.5:1");
    // A second session from that client is one too many...
    let mut second = connect(&service);
    second
        .write_all(&header("203.0.113.5:2".parse().unwrap()))
        .unwrap();
    assert!(closed_unanswered(&mut second));
    // ...while another client behind the same balancer gets in.
    let mut other = connect(&service);
    other
        .write_all(&header("198.51.100.7:3".parse().unwrap()))
        .unwrap();
    other.write_all(b"ping").unwrap();
    let mut echo = [0; 4];
    other.read_exact(&mut echo).unwrap();
    assert_eq!(event(&events), "connected 203.0.113.5:1");
    assert_eq!(event(&events), "made for 198.51.100.7:3");
    assert_eq!(service.metrics().refused, 1);
    drop(first);
    service.stop();
}

#[test]
fn a_connection_without_a_header_is_closed_and_its_program_never_sees_it() {
    let (service, events) = server(0);
    let mut client = connect(&service);
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed_unanswered(&mut client));
    assert!(events.recv_timeout(Duration::from_millis(300)).is_err());
    service.stop();
}
