//! A service's workers, over real loopback sockets: each worker reaps a
//! port of its own, each session belongs to one of them, and a worker
//! outlives a handler that panics.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use overlapped::session::{Service, ServiceConfig, Session, SessionHandler};
use overlapped::Bytes;

/// Echoes what it receives.
struct Echo;

impl SessionHandler for Echo {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send_copy(data);
        Ok(data.len())
    }
}

/// Sends whatever one session receives to every session, from the worker
/// that handles the sender.
struct Relay;

impl SessionHandler for Relay {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        if let Some(service) = session.service() {
            service.broadcast(&Bytes::copy_from_slice(data));
        }
        Ok(data.len())
    }
}

/// Echoes what it receives, but panics on `boom`: a bug that one client's
/// input triggers.
struct Fragile;

impl SessionHandler for Fragile {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        assert!(data != b"boom", "a handler bug");
        session.send_copy(data);
        Ok(data.len())
    }
}

fn with_workers(workers: usize, handler: fn() -> Arc<dyn SessionHandler>) -> Service {
    let config = ServiceConfig {
        workers,
        ..ServiceConfig::default()
    };
    Service::server("127.0.0.1:0", config, Arc::new(handler)).unwrap()
}

fn two_workers(handler: fn() -> Arc<dyn SessionHandler>) -> Service {
    with_workers(2, handler)
}

fn connect(service: &Service) -> TcpStream {
    common::connect_to(service)
}

fn wait_for_sessions(service: &Service, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.session_count() < count {
        assert!(Instant::now() < deadline, "the sessions did not connect");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn every_session_of_a_two_worker_service_gets_its_stream_back_in_order() {
    let service = two_workers(|| Arc::new(Echo));
    let clients: Vec<_> = (0..8u8)
        .map(|client| {
            let mut stream = connect(&service);
            thread::spawn(move || {
                let pattern = |i: usize| (i % 251) as u8 ^ client;
                let total = 256 * 1024;
                let data: Vec<u8> = (0..total).map(pattern).collect();
                let mut writer = stream.try_clone().unwrap();
                let writing = thread::spawn(move || writer.write_all(&data).unwrap());
                let mut echoed = vec![0; total];
                stream.read_exact(&mut echoed).unwrap();
                writing.join().unwrap();
                let first_wrong = (0..total).find(|&i| echoed[i] != pattern(i));
                assert_eq!(first_wrong, None, "client {client}");
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    service.stop();
}

#[test]
fn a_broadcast_from_one_worker_reaches_the_sessions_of_the_other() {
    let service = two_workers(|| Arc::new(Relay));
    // Sessions alternate between the two workers, so four clients put two
    // on each.
    let mut clients: Vec<TcpStream> = (0..4).map(|_| connect(&service)).collect();
    wait_for_sessions(&service, 4);
    clients[0].write_all(b"to all").unwrap();
    for (i, client) in clients.iter_mut().enumerate() {
        let mut got = [0; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"to all", "client {i}");
    }
    service.stop();
}

#[test]
fn a_handler_that_panics_disconnects_only_its_own_session() {
    // One worker serves both clients: it must survive the first one's bug.
    let service = with_workers(1, || Arc::new(Fragile));
    let mut culprit = connect(&service);
    let mut bystander = connect(&service);
    wait_for_sessions(&service, 2);
    culprit.write_all(b"boom").unwrap();
    let mut rest = Vec::new();
    assert_eq!(culprit.read_to_end(&mut rest).unwrap_or(0), 0);
    bystander.write_all(b"ping").unwrap();
    let mut echoed = [0; 4];
    bystander.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
    assert_eq!(service.session_count(), 1);
    service.stop();
}

/// Panics as each session connects.
struct Unwelcoming;

impl SessionHandler for Unwelcoming {
    fn on_connected(&self, _: &Arc<Session>) {
        panic!("a bug in on_connected");
    }
    fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        Ok(data.len())
    }
}

#[test]
fn a_panic_in_on_connected_disconnects_the_new_session() {
    let service = with_workers(1, || Arc::new(Unwelcoming));
    let mut client = connect(&service);
    let mut rest = Vec::new();
    // The end of the stream, not the read timeout.
    assert_eq!(client.read_to_end(&mut rest).ok(), Some(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.session_count() > 0 {
        assert!(Instant::now() < deadline, "the session was not forgotten");
        thread::sleep(Duration::from_millis(5));
    }
    service.stop();
}

/// Tells each client which thread ran its session's `on_connected` and
/// which its `on_recv`.
struct WhereHooksRun;

fn thread_name() -> String {
    thread::current().name().unwrap_or("unnamed").to_string()
}

impl SessionHandler for WhereHooksRun {
    fn on_connected(&self, session: &Arc<Session>) {
        session.send(Bytes::from(format!("{:<32}", thread_name())));
    }
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send(Bytes::from(format!("{:<32}", thread_name())));
        Ok(data.len())
    }
}

#[test]
fn every_hook_of_a_session_runs_on_the_worker_it_belongs_to() {
    let service = two_workers(|| Arc::new(WhereHooksRun));
    let mut workers_seen = Vec::new();
    // Sessions alternate between the workers: four cover both.
    for _ in 0..4 {
        let mut client = connect(&service);
        let mut connected = [0u8; 32];
        client.read_exact(&mut connected).unwrap();
        client.write_all(b"x").unwrap();
        let mut received = [0u8; 32];
        client.read_exact(&mut received).unwrap();
        let (connected, received) = (
            String::from_utf8_lossy(&connected).trim().to_string(),
            String::from_utf8_lossy(&received).trim().to_string(),
        );
        assert_eq!(connected, received, "on_connected and on_recv ran apart");
        assert!(connected.starts_with("service-worker-"), "{connected}");
        workers_seen.push(connected);
    }
    workers_seen.sort();
    workers_seen.dedup();
    assert_eq!(workers_seen.len(), 2, "both workers serve sessions");
    service.stop();
}

/// Echoes each frame's payload as a frame, but panics on frame id 13.
struct FragilePackets;

impl overlapped::session::PacketHandler for FragilePackets {
    fn on_packet(&self, session: &Arc<Session>, id: u16, payload: &[u8]) -> Result<(), String> {
        assert!(id != 13, "a packet handler bug");
        session.send(overlapped::session::framing::encode(id, &[payload]).unwrap());
        Ok(())
    }
}

#[test]
fn a_panicking_packet_handler_disconnects_only_its_own_session() {
    use overlapped::session::{framing, PacketSession};
    let service = with_workers(1, || Arc::new(PacketSession::new(FragilePackets, 4096)));
    let mut culprit = connect(&service);
    let mut bystander = connect(&service);
    wait_for_sessions(&service, 2);
    culprit
        .write_all(&framing::encode(13, &[b"boom"]).unwrap())
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!(culprit.read_to_end(&mut rest).ok(), Some(0));
    let ping = framing::encode(1, &[b"ping"]).unwrap();
    bystander.write_all(&ping).unwrap();
    let mut echoed = vec![0; ping.len()];
    bystander.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, &ping[..]);
    service.stop();
}

/// Echoes, and panics in `on_sent` after the first reply to a client that
/// sent `boom`.
struct FragileOnSent;

impl SessionHandler for FragileOnSent {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send_copy(data);
        Ok(data.len())
    }
    fn on_sent(&self, _: &Arc<Session>, bytes: usize) {
        assert!(bytes != 4 + 1, "a bug in on_sent");
    }
}

#[test]
fn a_panicking_on_sent_disconnects_only_its_own_session() {
    let service = with_workers(1, || Arc::new(FragileOnSent));
    let mut culprit = connect(&service);
    let mut bystander = connect(&service);
    wait_for_sessions(&service, 2);
    // Five bytes echoed in one send make its on_sent panic.
    culprit.write_all(b"boom!").unwrap();
    let mut rest = Vec::new();
    let _ = culprit.read_to_end(&mut rest);
    assert!(rest.len() <= 5, "the echo, then the end of the stream");
    bystander.write_all(b"ping").unwrap();
    let mut echoed = [0; 4];
    bystander.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.session_count() > 1 {
        assert!(
            Instant::now() < deadline,
            "the culprit was not disconnected"
        );
        thread::sleep(Duration::from_millis(5));
    }
    service.stop();
}
