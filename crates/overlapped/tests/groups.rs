//! Groups: one broadcast reaches every member once, on every worker, or
//! every member but the sender.

use std::io::Read;
use std::net::TcpStream;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use overlapped::game::{Group, Room};
use overlapped::session::{Service, ServiceConfig, Session, SessionHandler};

/// Hands every connected session to the test.
struct Joining(Mutex<mpsc::Sender<Arc<Session>>>);

impl SessionHandler for Joining {
    fn on_connected(&self, session: &Arc<Session>) {
        let _ = self.0.lock().unwrap().send(session.clone());
    }
    fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        Ok(data.len())
    }
}

struct Harness {
    service: Service,
    clients: Vec<TcpStream>,
    sessions: Vec<Arc<Session>>,
}

/// `n` clients of a service with `workers` workers, and their sessions in
/// the same order.
fn harness(workers: usize, n: usize) -> Harness {
    let (tx, rx) = mpsc::channel();
    let handler = Arc::new(Joining(Mutex::new(tx)));
    let config = ServiceConfig {
        workers,
        ..ServiceConfig::default()
    };
    let service =
        Service::server("127.0.0.1:0", config, Arc::new(move || handler.clone())).unwrap();
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..n {
        let client = TcpStream::connect(service.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let session = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(session.peer_addr(), client.local_addr().unwrap());
        clients.push(client);
        sessions.push(session);
    }
    Harness {
        service,
        clients,
        sessions,
    }
}

fn read_exactly(client: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    client.read_exact(&mut got).unwrap();
    got
}

/// Whether `client` has nothing more to read right now, checked after a
/// marker sent behind everything else arrives.
fn nothing_but(client: &mut TcpStream, session: &Arc<Session>, marker: &[u8]) -> bool {
    session.send(Bytes::copy_from_slice(marker));
    read_exactly(client, marker.len()) == marker
}

#[test]
fn a_group_broadcast_reaches_every_member_on_every_worker_once() {
    let mut h = harness(2, 6);
    let mut group = Group::new(&h.service);
    for session in &h.sessions {
        assert!(group.insert(session));
    }
    assert!(!group.insert(&h.sessions[0]), "a member already");
    assert_eq!(group.len(), 6);
    let data = Bytes::from(vec![7u8; 3000]);
    assert_eq!(group.broadcast(&data), 6);
    for (client, session) in h.clients.iter_mut().zip(&h.sessions) {
        assert_eq!(read_exactly(client, 3000), data);
        assert!(nothing_but(client, session, b"end"));
    }
    h.service.stop();
}

#[test]
fn broadcast_except_skips_the_sender() {
    let mut h = harness(2, 4);
    let mut group = Group::new(&h.service);
    for session in &h.sessions {
        group.insert(session);
    }
    let sender = h.sessions[1].id();
    assert_eq!(
        group.broadcast_except(&Bytes::from_static(b"hi"), Some(sender)),
        3
    );
    for (i, (client, session)) in h.clients.iter_mut().zip(&h.sessions).enumerate() {
        if i == 1 {
            assert!(nothing_but(client, session, b"only this"));
        } else {
            assert_eq!(read_exactly(client, 2), b"hi");
        }
    }
    h.service.stop();
}

#[test]
fn a_removed_member_gets_no_broadcast() {
    let mut h = harness(1, 2);
    let mut group = Group::new(&h.service);
    group.insert(&h.sessions[0]);
    group.insert(&h.sessions[1]);
    assert_eq!(
        group.remove(h.sessions[0].id()).map(|s| s.id()),
        Some(h.sessions[0].id())
    );
    assert!(!group.contains(h.sessions[0].id()));
    assert_eq!(group.broadcast(&Bytes::from_static(b"x")), 1);
    assert_eq!(read_exactly(&mut h.clients[1], 1), b"x");
    let session = h.sessions[0].clone();
    assert!(nothing_but(&mut h.clients[0], &session, b"none"));
    h.service.stop();
}

#[test]
fn a_room_job_broadcasts_to_its_group_in_order_with_its_other_sends() {
    let mut h = harness(2, 4);
    let mut group = Group::new(&h.service);
    for session in &h.sessions {
        group.insert(session);
    }
    let room = Room::new(&h.service, "cast", group);
    let first = h.sessions[0].clone();
    for n in 0..50u8 {
        let first = first.clone();
        room.push(move |group, _| {
            group.broadcast(&Bytes::copy_from_slice(&[n]));
            first.send(Bytes::copy_from_slice(&[100 + n]));
        });
    }
    for (i, client) in h.clients.iter_mut().enumerate() {
        let got = read_exactly(client, if i == 0 { 100 } else { 50 });
        let expected: Vec<u8> = if i == 0 {
            (0..50).flat_map(|n| [n, 100 + n]).collect()
        } else {
            (0..50).collect()
        };
        assert_eq!(got, expected, "client {i}");
    }
    h.service.stop();
}

#[test]
fn a_session_of_another_service_cannot_join_a_group() {
    let h = harness(1, 1);
    let other = harness(1, 0);
    let mut group = Group::new(&other.service);
    assert!(!group.insert(&h.sessions[0]));
    assert!(group.is_empty());
    h.service.stop();
    other.service.stop();
}

/// Polls `f` until it holds, for up to 10 s.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn a_broadcast_is_held_against_each_members_send_queue_until_its_send_ends() {
    let mut h = harness(1, 2);
    let mut group = Group::new(&h.service);
    for session in &h.sessions {
        group.insert(session);
    }
    let before: Vec<usize> = h.sessions.iter().map(|s| s.held_bytes()).collect();
    let room = Room::new(&h.service, "held", group);
    let (tx, rx) = mpsc::channel();
    let big = Bytes::from(vec![7u8; 256 << 10]);
    let data = big.clone();
    room.push(move |group, _| {
        group.broadcast(&data);
        let held: Vec<usize> = group.sessions().map(|s| s.held_bytes()).collect();
        tx.send(held).unwrap();
    });
    let held = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    for (held, before) in held.iter().zip(&before) {
        assert!(
            *held >= before + big.len(),
            "held {held} bytes with a {}-byte broadcast on its way",
            big.len()
        );
    }
    for client in &mut h.clients {
        assert_eq!(read_exactly(client, big.len()), big);
    }
    for (session, before) in h.sessions.iter().zip(&before) {
        assert!(
            eventually(|| session.held_bytes() == *before),
            "still holds {} bytes once the broadcast went out",
            session.held_bytes()
        );
    }
    h.service.stop();
}

#[test]
fn a_member_reset_by_its_peer_is_dropped_and_the_others_still_receive_every_broadcast() {
    let mut h = harness(1, 3);
    let mut group = Group::new(&h.service);
    for session in &h.sessions {
        group.insert(session);
    }
    let reset = h.clients.remove(0);
    socket2::SockRef::from(&reset)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(reset);
    let room = Room::new(&h.service, "reset", group);
    for n in 0..200u8 {
        room.push(move |group, _| {
            group.broadcast(&Bytes::from(vec![n; 100]));
        });
    }
    for client in &mut h.clients {
        let got = read_exactly(client, 200 * 100);
        let expected: Vec<u8> = (0..200u8).flat_map(|n| [n; 100]).collect();
        assert!(got == expected, "a healthy member lost or reordered bytes");
    }
    assert!(
        eventually(|| !h.sessions[0].is_connected()),
        "the reset member is still connected"
    );
    assert!(h.sessions[1].is_connected() && h.sessions[2].is_connected());
    h.service.stop();
}
