//! Who gets a session: no address takes every slot, and a client that
//! never speaks does not keep one.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use overlapped::session::{Service, ServiceConfig, Session, SessionHandler};

/// Echoes, and records why each session ended.
#[derive(Default)]
struct Echo(Mutex<Vec<String>>);

impl SessionHandler for Echo {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send_copy(data);
        Ok(data.len())
    }
    fn on_disconnected(&self, _: &Arc<Session>, reason: &str) {
        self.0.lock().unwrap().push(reason.to_owned());
    }
}

fn server(config: ServiceConfig) -> (Service, Arc<Echo>) {
    let echo = Arc::new(Echo::default());
    let shared = echo.clone();
    let service = Service::server("127.0.0.1:0", config, Arc::new(move || shared.clone())).unwrap();
    (service, echo)
}

/// A client from `local` (any 127.x.y.z address is this machine).
fn connect_from(local: &str, service: &Service) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{local}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket
        .connect(&service.local_addr().unwrap().into())
        .unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn echoes(client: &mut TcpStream) -> bool {
    if client.write_all(b"ping").is_err() {
        return false;
    }
    let mut got = [0; 4];
    client.read_exact(&mut got).is_ok() && &got == b"ping"
}

#[test]
fn one_address_cannot_take_more_than_its_share_of_sessions() {
    let config = ServiceConfig {
        workers: 1,
        max_sessions_per_ip: 2,
        ..ServiceConfig::default()
    };
    let (service, _) = server(config);
    let mut first = connect_from("127.0.0.1", &service);
    let mut second = connect_from("127.0.0.1", &service);
    assert!(echoes(&mut first) && echoes(&mut second));
    let mut third = connect_from("127.0.0.1", &service);
    assert!(!echoes(&mut third), "a third session from one address");
    // Another address still gets in.
    let mut elsewhere = connect_from("127.0.0.2", &service);
    assert!(echoes(&mut elsewhere), "another address was kept out");
    // A slot freed is a slot to take again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = connect_from("127.0.0.1", &service);
        if echoes(&mut again) {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        thread::sleep(Duration::from_millis(20));
    }
    service.stop();
}

#[test]
fn a_client_that_sends_no_first_packet_is_dropped_at_the_handshake_timeout() {
    let config = ServiceConfig {
        workers: 1,
        handshake_timeout: Some(Duration::from_millis(300)),
        idle_timeout: None,
        ..ServiceConfig::default()
    };
    let (service, echo) = server(config);
    let mut silent = common::connect_to(&service);
    let mut speaks = common::connect_to(&service);
    assert!(echoes(&mut speaks));
    let mut rest = Vec::new();
    assert_eq!(silent.read_to_end(&mut rest).ok(), Some(0), "dropped");
    // Its hook runs on its worker, after the connection ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !echo
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.starts_with("handshake timeout"))
    {
        assert!(Instant::now() < deadline, "{:?}", echo.0.lock().unwrap());
        thread::sleep(Duration::from_millis(5));
    }
    // The one that spoke stays, long past the handshake timeout.
    thread::sleep(Duration::from_millis(600));
    assert!(echoes(&mut speaks));
    service.stop();
}
