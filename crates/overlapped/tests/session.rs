//! The session layer over real loopback sockets: behaviour 15 and the
//! service's broadcast.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use overlapped::session::{
    framing, PacketHandler, PacketSession, Service, ServiceConfig, Session, SessionHandler,
};
use overlapped::Bytes;

/// Records what a session sees.
#[derive(Default)]
struct Log {
    packets: Mutex<Vec<(u16, Vec<u8>)>>,
    sent_calls: AtomicUsize,
    sent_bytes: AtomicUsize,
    disconnects: Mutex<Vec<String>>,
}

impl Log {
    fn wait_until(&self, what: impl Fn(&Log) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !what(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the session"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

struct Recorder {
    log: Arc<Log>,
    burst: usize,
}

impl PacketHandler for Recorder {
    fn on_connected(&self, session: &Arc<Session>) {
        for i in 0..self.burst {
            session.send(framing::encode(1, &[&[i as u8; 6]]).unwrap());
        }
    }

    fn on_packet(&self, _: &Arc<Session>, id: u16, payload: &[u8]) -> Result<(), String> {
        self.log
            .packets
            .lock()
            .unwrap()
            .push((id, payload.to_vec()));
        Ok(())
    }

    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        self.log
            .disconnects
            .lock()
            .unwrap()
            .push(reason.to_string());
        // A second disconnect from inside the hook must change nothing.
        session.disconnect("again");
    }
}

/// Counts completed sends on top of the recorder.
struct Counting(PacketSession<Recorder>, Arc<Log>);

impl SessionHandler for Counting {
    fn on_connected(&self, session: &Arc<Session>) {
        self.0.on_connected(session)
    }
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        self.0.on_recv(session, data)
    }
    fn on_sent(&self, _: &Arc<Session>, bytes: usize) {
        self.1.sent_calls.fetch_add(1, Ordering::SeqCst);
        self.1.sent_bytes.fetch_add(bytes, Ordering::SeqCst);
    }
    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        self.0.on_disconnected(session, reason)
    }
}

fn server(burst: usize) -> (Service, Arc<Log>) {
    let log = Arc::new(Log::default());
    let shared = log.clone();
    let config = ServiceConfig {
        workers: 1,
        ..ServiceConfig::default()
    };
    let service = Service::server(
        "127.0.0.1:0",
        config,
        Arc::new(move || {
            let recorder = Recorder {
                log: shared.clone(),
                burst,
            };
            Arc::new(Counting(PacketSession::new(recorder, 4096), shared.clone()))
        }),
    )
    .unwrap();
    (service, log)
}

fn connect(service: &Service) -> TcpStream {
    common::connect_to(service)
}

#[test]
fn sends_queued_while_one_is_in_flight_are_gathered_into_the_next() {
    // One worker: the first send's completion cannot be handled while
    // on_connected is still queueing, so the other 99 must wait and gather.
    let (service, log) = server(100);
    let mut client = connect(&service);
    let mut got = vec![0; 100 * 10];
    client.read_exact(&mut got).unwrap();
    log.wait_until(|l| l.sent_bytes.load(Ordering::SeqCst) == 1000);
    assert_eq!(log.sent_calls.load(Ordering::SeqCst), 2);
    for (i, frame) in got.chunks(10).enumerate() {
        assert_eq!(frame, &framing::encode(1, &[&[i as u8; 6]]).unwrap()[..]);
    }
    service.stop();
}

#[test]
fn a_backlog_larger_than_one_gathered_send_takes_goes_out_whole_and_in_order() {
    // 3000 queued buffers: more than the kernel takes in one gathered send
    // (1024 iovecs), so the backlog must go out in several.
    let (service, log) = server(3000);
    let mut client = connect(&service);
    let mut got = vec![0; 3000 * 10];
    client.read_exact(&mut got).unwrap();
    log.wait_until(|l| l.sent_bytes.load(Ordering::SeqCst) == 30_000);
    for (i, frame) in got.chunks(10).enumerate() {
        assert_eq!(frame, &framing::encode(1, &[&[i as u8; 6]]).unwrap()[..]);
    }
    assert!(log.disconnects.lock().unwrap().is_empty());
    service.stop();
}

#[test]
fn frame_split_across_receives_is_delivered_once_and_whole() {
    let (service, log) = server(0);
    let mut client = connect(&service);
    let frame = framing::encode(7, &[b"split payload"]).unwrap();
    for cut in 1..frame.len() {
        client.write_all(&frame[..cut]).unwrap();
        thread::sleep(Duration::from_millis(5));
        client.write_all(&frame[cut..]).unwrap();
    }
    let expected = frame.len() - 1;
    log.wait_until(|l| l.packets.lock().unwrap().len() >= expected);
    thread::sleep(Duration::from_millis(50));
    let packets = log.packets.lock().unwrap();
    assert_eq!(packets.len(), expected);
    assert!(packets
        .iter()
        .all(|(id, p)| *id == 7 && p == b"split payload"));
    drop(packets);
    service.stop();
}

#[test]
fn many_frames_in_one_receive_are_each_delivered() {
    let (service, log) = server(0);
    let mut client = connect(&service);
    let mut burst = Vec::new();
    for i in 0..200u16 {
        burst.extend_from_slice(&framing::encode(i, &[&i.to_le_bytes()]).unwrap());
    }
    client.write_all(&burst).unwrap();
    log.wait_until(|l| l.packets.lock().unwrap().len() == 200);
    let ids: Vec<u16> = log
        .packets
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(ids, (0..200).collect::<Vec<_>>());
    service.stop();
}

#[test]
fn peer_close_disconnects_exactly_once() {
    let (service, log) = server(0);
    let client = connect(&service);
    log.wait_until(|_| service.session_count() == 1);
    drop(client);
    log.wait_until(|l| !l.disconnects.lock().unwrap().is_empty());
    thread::sleep(Duration::from_millis(50));
    assert_eq!(*log.disconnects.lock().unwrap(), vec!["closed by peer"]);
    assert_eq!(service.session_count(), 0);
    service.stop();
}

#[test]
fn oversized_frame_disconnects_with_the_reason() {
    let (service, log) = server(0);
    let mut client = connect(&service);
    client.write_all(&[0xFF, 0xFF, 1, 0]).unwrap();
    log.wait_until(|l| !l.disconnects.lock().unwrap().is_empty());
    let reasons = log.disconnects.lock().unwrap().clone();
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].contains("65535"), "{reasons:?}");
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    service.stop();
}

#[test]
fn broadcast_reaches_every_session() {
    let (service, _log) = server(0);
    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(&service)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.session_count() < 3 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(5));
    }
    let frame: Bytes = framing::encode(2, &[b"to all"]).unwrap();
    assert_eq!(service.broadcast(&frame), 3);
    for client in &mut clients {
        let mut got = vec![0; frame.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, &frame[..]);
    }
    service.stop();
}

#[test]
fn stopping_the_service_disconnects_its_sessions() {
    let (service, log) = server(0);
    let mut client = connect(&service);
    log.wait_until(|_| service.session_count() == 1);
    service.stop();
    assert_eq!(*log.disconnects.lock().unwrap(), vec!["service stopped"]);
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).unwrap_or(0), 0);
}

#[test]
fn stop_returns_while_the_program_still_holds_a_session() {
    // The worker of a one-worker service stays after `stop` to reap what its
    // sessions still have in flight; `stop` must not wait for that.
    let (service, log) = server(0);
    let _client = connect(&service);
    log.wait_until(|_| service.session_count() == 1);
    let held = service.sessions();
    let (stopped, returned) = std::sync::mpsc::channel();
    let stopper = {
        let service = service.clone();
        thread::spawn(move || {
            service.stop();
            stopped.send(()).unwrap();
        })
    };
    let waited = returned.recv_timeout(Duration::from_secs(30));
    assert!(
        waited.is_ok(),
        "stop waited for a session the program holds"
    );
    stopper.join().unwrap();
    drop(held);
}

/// Echoes, and keeps a weak handle to its session.
struct Watched(Arc<Mutex<Option<std::sync::Weak<Session>>>>);

impl SessionHandler for Watched {
    fn on_connected(&self, session: &Arc<Session>) {
        *self.0.lock().unwrap() = Some(Arc::downgrade(session));
    }
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send_copy(data);
        Ok(data.len())
    }
}

#[test]
fn a_session_that_received_is_released_once_disconnected_while_the_service_runs() {
    let watched = Arc::new(Mutex::new(None));
    let shared = watched.clone();
    let config = ServiceConfig {
        workers: 1,
        ..ServiceConfig::default()
    };
    let factory = Arc::new(move || Arc::new(Watched(shared.clone())) as Arc<dyn SessionHandler>);
    let service = Service::server("127.0.0.1:0", config, factory).unwrap();
    let mut client = connect(&service);
    client.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    client.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    let session = watched
        .lock()
        .unwrap()
        .clone()
        .expect("the session connected");
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while session.upgrade().is_some() {
        assert!(
            Instant::now() < deadline,
            "the disconnected session is still held by the running service"
        );
        thread::sleep(Duration::from_millis(5));
    }
    service.stop();
}

#[test]
fn a_send_then_a_graceful_close_from_another_thread_delivers_the_send() {
    let (service, log) = server(0);
    let mut client = connect(&service);
    log.wait_until(|_| service.session_count() == 1);
    let session = service.sessions().pop().expect("one session");
    let farewell = framing::encode(3, &[b"bye"]).unwrap();
    // From this thread, not the session's worker: both are handed over.
    assert!(session.send(farewell.clone()));
    session.close_gracefully();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, &farewell[..], "the send before the close went out");
    service.stop();
}

#[test]
fn a_service_that_takes_completions_in_groups_serves_every_message_in_order() {
    struct Echo;
    impl SessionHandler for Echo {
        fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
            session.send_copy(data);
            Ok(data.len())
        }
    }
    let config = ServiceConfig {
        workers: 1,
        completion_batch_wait: Some(std::time::Duration::from_micros(300)),
        ..ServiceConfig::default()
    };
    let service = Service::server("127.0.0.1:0", config, Arc::new(|| Arc::new(Echo))).unwrap();
    let mut clients: Vec<std::net::TcpStream> =
        (0..4).map(|_| common::connect_to(&service)).collect();
    for n in 0u32..200 {
        for client in &mut clients {
            std::io::Write::write_all(client, &n.to_le_bytes()).unwrap();
        }
        for client in &mut clients {
            let mut echo = [0; 4];
            std::io::Read::read_exact(client, &mut echo).unwrap();
            assert_eq!(u32::from_le_bytes(echo), n);
        }
    }
    service.stop();
}
