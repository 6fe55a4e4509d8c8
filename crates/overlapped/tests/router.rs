//! The router: each frame to the handler of its id with the session's own
//! `&mut` state; a malformed or unknown packet disconnects its sender
//! alone, with the reason; the factory learns the peer and may refuse it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use overlapped::game::{PacketReader, PacketResult, PacketWriter, Router, SessionState};
use overlapped::session::{DisconnectKind, Service, ServiceConfig, Session};

const COUNT: u16 = 1;
const KICK_ME: u16 = 2;
const REPLY: u16 = 3;

/// A session's state: how many `COUNT` packets it sent, and where from.
struct Counter {
    peer: SocketAddr,
    counted: u32,
    events: mpsc::Sender<String>,
}

impl SessionState for Counter {
    fn on_connected(&mut self, _: &Arc<Session>) {
        let _ = self.events.send(format!("connected {}", self.peer));
    }
    fn on_disconnected(&mut self, _: &Arc<Session>, reason: &str) {
        let _ = self
            .events
            .send(format!("disconnected after {}: {reason}", self.counted));
    }
}

fn on_count(state: &mut Counter, session: &Arc<Session>, r: &mut PacketReader) -> PacketResult {
    let by = r.u32()?;
    state.counted += by;
    session.send(PacketWriter::new(REPLY).u32(state.counted).finish()?);
    Ok(())
}

fn on_kick(state: &mut Counter, session: &Arc<Session>, _: &mut PacketReader) -> PacketResult {
    let _ = state.events.send("kicking".into());
    session.disconnect("kicked by its own packet");
    Ok(())
}

struct Harness {
    service: Service,
    events: mpsc::Receiver<String>,
}

fn harness(refuse: Option<&'static str>) -> Harness {
    let router = Router::new()
        .max_packet(64)
        .route(COUNT, on_count)
        .route(KICK_ME, on_kick);
    harness_with(router, 2, refuse)
}

/// A server of `router` on `workers` workers whose factory refuses every
/// peer with `refuse`, if given.
fn harness_with(router: Router<Counter>, workers: usize, refuse: Option<&'static str>) -> Harness {
    let (tx, events) = mpsc::channel();
    let tx = Mutex::new(tx);
    let mut config = ServiceConfig {
        workers,
        ..ServiceConfig::default()
    };
    router.configure(&mut config);
    let factory = router.factory(move |peer| {
        let events = tx.lock().unwrap().clone();
        if let Some(reason) = refuse {
            let _ = events.send(format!("refused {peer}"));
            return Err(reason.into());
        }
        Ok(Counter {
            peer,
            counted: 0,
            events,
        })
    });
    let service = Service::server_with("127.0.0.1:0", config, factory).unwrap();
    Harness { service, events }
}

fn connect(service: &Service) -> TcpStream {
    let stream = TcpStream::connect(service.local_addr().unwrap()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = ((4 + payload.len()) as u16).to_le_bytes().to_vec();
    frame.extend_from_slice(&id.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn read_reply(stream: &mut TcpStream) -> u32 {
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..4], &[8, 0, 3, 0]);
    u32::from_le_bytes(reply[4..].try_into().unwrap())
}

fn event(events: &mpsc::Receiver<String>) -> String {
    events.recv_timeout(Duration::from_secs(30)).unwrap()
}

/// Reads until the server closes the connection.
fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    rest
}

#[test]
fn each_session_keeps_its_own_state_across_packets() {
    let h = harness(None);
    let mut a = connect(&h.service);
    let mut b = connect(&h.service);
    for n in 1..=3 {
        a.write_all(&frame(COUNT, &2u32.to_le_bytes())).unwrap();
        assert_eq!(read_reply(&mut a), 2 * n);
    }
    b.write_all(&frame(COUNT, &5u32.to_le_bytes())).unwrap();
    assert_eq!(read_reply(&mut b), 5);
    h.service.stop();
}

#[test]
fn the_factory_learns_the_peer_address() {
    let h = harness(None);
    let client = connect(&h.service);
    let line = event(&h.events);
    assert_eq!(line, format!("connected {}", client.local_addr().unwrap()));
    h.service.stop();
}

#[test]
fn a_refusing_factory_closes_the_connection_and_counts_a_refusal() {
    let h = harness(Some("not on the list"));
    let mut client = connect(&h.service);
    assert!(event(&h.events).starts_with("refused 127.0.0.1:"));
    assert!(read_to_end(&mut client).is_empty());
    assert_eq!(h.service.metrics().refused, 1);
    assert_eq!(h.service.metrics().accepted, 0);
    h.service.stop();
}

#[test]
fn an_unknown_packet_id_disconnects_its_sender_with_the_reason() {
    let h = harness(None);
    let mut client = connect(&h.service);
    assert!(event(&h.events).starts_with("connected"));
    client.write_all(&frame(99, b"")).unwrap();
    assert_eq!(
        event(&h.events),
        "disconnected after 0: unknown packet id 99"
    );
    read_to_end(&mut client);
    let metrics = h.service.metrics();
    assert_eq!(metrics.disconnects_of(DisconnectKind::Rejected), 1);
    h.service.stop();
}

#[test]
fn a_payload_too_short_for_its_fields_disconnects_with_the_reason() {
    let h = harness(None);
    let mut client = connect(&h.service);
    event(&h.events);
    client.write_all(&frame(COUNT, &[1, 0])).unwrap();
    let reason = event(&h.events);
    assert!(
        reason.contains("packet 1: payload too short: a u32 at byte 0 needs 4 bytes, 2 left"),
        "{reason}"
    );
    read_to_end(&mut client);
    h.service.stop();
}

#[test]
fn bytes_left_unread_by_the_handler_disconnect_the_sender() {
    let h = harness(None);
    let mut client = connect(&h.service);
    event(&h.events);
    client.write_all(&frame(COUNT, &[1, 0, 0, 0, 9])).unwrap();
    // The handler ran (its reply was queued) before the leftover was seen.
    let reason = event(&h.events);
    assert!(reason.contains("1 bytes left over"), "{reason}");
    read_to_end(&mut client);
    h.service.stop();
}

#[test]
fn a_handler_that_disconnects_its_own_session_gets_no_later_frame() {
    let h = harness(None);
    let mut client = connect(&h.service);
    event(&h.events);
    // One write: the kick and a count behind it arrive together.
    let mut both = frame(KICK_ME, b"");
    both.extend(frame(COUNT, &1u32.to_le_bytes()));
    client.write_all(&both).unwrap();
    assert_eq!(event(&h.events), "kicking");
    assert_eq!(
        event(&h.events),
        "disconnected after 0: kicked by its own packet"
    );
    assert!(read_to_end(&mut client).is_empty());
    assert!(h.events.recv_timeout(Duration::from_millis(100)).is_err());
    h.service.stop();
}

#[test]
fn a_frame_over_the_routers_limit_disconnects_the_sender() {
    let h = harness(None);
    let mut client = connect(&h.service);
    event(&h.events);
    client.write_all(&frame(COUNT, &[0; 100])).unwrap();
    let reason = event(&h.events);
    assert!(reason.contains("64"), "{reason}");
    read_to_end(&mut client);
    h.service.stop();
}

#[test]
fn metrics_count_accepts_packets_and_bytes() {
    let h = harness(None);
    let mut client = connect(&h.service);
    for _ in 0..5 {
        client
            .write_all(&frame(COUNT, &1u32.to_le_bytes()))
            .unwrap();
        read_reply(&mut client);
    }
    // A send is counted when its completion is handled, which may come
    // after the client read the bytes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while h.service.metrics().bytes_out < 5 * 8 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let metrics = h.service.metrics();
    assert_eq!(metrics.accepted, 1);
    assert_eq!(metrics.sessions_open, 1);
    assert_eq!(metrics.packets_in, 5);
    assert_eq!(metrics.packets_out, 5);
    assert_eq!(metrics.bytes_in, 5 * 8);
    assert_eq!(metrics.bytes_out, 5 * 8);
    assert!(metrics.send_queue_high_water >= 8);
    h.service.stop();
}

const PANIC: u16 = 4;

#[test]
fn a_panicking_route_costs_its_own_session_only() {
    let router = Router::new().route(COUNT, on_count).route(
        PANIC,
        |_: &mut Counter, _: &Arc<Session>, _: &mut PacketReader| panic!("a bug in a handler"),
    );
    let Harness { service, events } = harness_with(router, 1, None);
    let mut doomed = connect(&service);
    let mut healthy = connect(&service);
    event(&events);
    event(&events);
    doomed.write_all(&frame(PANIC, b"")).unwrap();
    let reason = event(&events);
    assert!(
        reason.contains("its handler panicked: a bug in a handler"),
        "{reason}"
    );
    read_to_end(&mut doomed);
    healthy
        .write_all(&frame(COUNT, &3u32.to_le_bytes()))
        .unwrap();
    assert_eq!(read_reply(&mut healthy), 3);
    assert_eq!(service.metrics().disconnects_of(DisconnectKind::Panic), 1);
    service.stop();
}

#[test]
fn a_panicking_factory_closes_that_connection_and_the_server_accepts_the_next() {
    let (tx, events) = mpsc::channel();
    let tx = Mutex::new(tx);
    let first = std::sync::atomic::AtomicBool::new(true);
    let router = Router::new().route(COUNT, on_count);
    let factory = router.factory(move |peer| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("a bug in the factory");
        }
        Ok(Counter {
            peer,
            counted: 0,
            events: tx.lock().unwrap().clone(),
        })
    });
    let config = ServiceConfig {
        workers: 1,
        ..ServiceConfig::default()
    };
    let service = Service::server_with("127.0.0.1:0", config, factory).unwrap();
    let mut refused = connect(&service);
    assert!(read_to_end(&mut refused).is_empty());
    let mut next = connect(&service);
    assert!(event(&events).starts_with("connected"));
    next.write_all(&frame(COUNT, &1u32.to_le_bytes())).unwrap();
    assert_eq!(read_reply(&mut next), 1);
    service.stop();
}

/// Routes that disconnect their own session, then end badly.
const KICK_THEN_ERR: u16 = 5;
const KICK_THEN_LEAVE_BYTES: u16 = 6;
const KICK_THEN_PANIC: u16 = 7;

fn kick_then_end_badly(id: u16) {
    let router = Router::new()
        .route(
            KICK_THEN_ERR,
            |_: &mut Counter, s: &Arc<Session>, _: &mut PacketReader| {
                s.disconnect("kicked");
                Err("and then an error".into())
            },
        )
        .route(
            KICK_THEN_LEAVE_BYTES,
            |_: &mut Counter, s: &Arc<Session>, _: &mut PacketReader| {
                s.disconnect("kicked");
                Ok(())
            },
        )
        .route(
            KICK_THEN_PANIC,
            |_: &mut Counter, s: &Arc<Session>, _: &mut PacketReader| {
                s.disconnect("kicked");
                panic!("and then a panic")
            },
        );
    let Harness { service, events } = harness_with(router, 1, None);
    let mut client = connect(&service);
    assert!(event(&events).starts_with("connected"));
    client.write_all(&frame(id, b"unread")).unwrap();
    // `on_disconnected` runs, once, with the reason of the disconnect the
    // route made itself.
    assert_eq!(event(&events), "disconnected after 0: kicked");
    read_to_end(&mut client);
    assert!(
        events.recv_timeout(Duration::from_millis(200)).is_err(),
        "on_disconnected ran twice"
    );
    service.stop();
}

#[test]
fn a_route_that_disconnects_its_session_then_errs_still_delivers_on_disconnected() {
    kick_then_end_badly(KICK_THEN_ERR);
}

#[test]
fn a_route_that_disconnects_its_session_then_leaves_bytes_still_delivers_on_disconnected() {
    kick_then_end_badly(KICK_THEN_LEAVE_BYTES);
}

#[test]
fn a_route_that_disconnects_its_session_then_panics_still_delivers_on_disconnected() {
    kick_then_end_badly(KICK_THEN_PANIC);
}
