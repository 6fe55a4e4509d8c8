//! A session's life in order, on its worker: `on_connected` exactly once
//! if it was started, then what it receives and sends in the order they
//! were accepted, then `on_disconnected` exactly once and nothing after
//! it; a send that returned true is delivered before a graceful close
//! completes; no state of the backpressure machine leaves the send-queue
//! cap switched off.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use overlapped::session::{
    framing, PacketHandler, PacketSession, Service, ServiceConfig, Session, SessionHandler,
};
use overlapped::Bytes;

const SOON: Duration = Duration::from_secs(10);

/// One worker, receiving with a multishot receive or one posted receive.
fn one_worker(multishot: bool) -> ServiceConfig {
    ServiceConfig {
        workers: 1,
        multishot,
        ..ServiceConfig::default()
    }
}

/// Runs a test body with a multishot receive and with single receives.
macro_rules! both_receive_modes {
    ($body:ident: $multishot:ident, $single:ident) => {
        #[test]
        fn $multishot() {
            $body(true);
        }
        #[test]
        fn $single() {
            $body(false);
        }
    };
}

/// What the hooks saw, in order: (hook, session id, whether the session
/// called itself connected inside the hook).
#[derive(Default)]
struct Events(Mutex<Vec<(&'static str, u64, bool)>>);

impl Events {
    fn push(&self, hook: &'static str, session: &Session) {
        let connected = session.is_connected();
        self.0.lock().unwrap().push((hook, session.id(), connected));
    }

    fn of(&self, id: u64) -> Vec<&'static str> {
        let events = self.0.lock().unwrap();
        events.iter().filter(|e| e.1 == id).map(|e| e.0).collect()
    }

    fn wait_for(&self, id: u64, hook: &str) {
        let deadline = Instant::now() + SOON;
        while !self.of(id).contains(&hook) {
            assert!(Instant::now() < deadline, "no {hook} for session {id}");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A handler the tests script: it records every hook, says "W" when a
/// session connects, and on `b` (block) holds its worker until released,
/// then broadcasts "X" from there.
struct Scripted {
    events: Arc<Events>,
    release: Mutex<mpsc::Receiver<()>>,
    blocked: Mutex<mpsc::Sender<()>>,
}

impl SessionHandler for Scripted {
    fn on_connected(&self, session: &Arc<Session>) {
        self.events.push("connected", session);
        session.send(Bytes::from_static(b"W"));
    }
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        if data == b"b" {
            let _ = self.blocked.lock().unwrap().send(());
            let _ = self.release.lock().unwrap().recv_timeout(SOON);
            if let Some(service) = session.service() {
                service.broadcast(&Bytes::from_static(b"X"));
            }
        }
        Ok(data.len())
    }
    fn on_disconnected(&self, session: &Arc<Session>, _: &str) {
        self.events.push("disconnected", session);
    }
}

struct TwoWorkers {
    service: Service,
    events: Arc<Events>,
    release: mpsc::Sender<()>,
    blocked: mpsc::Receiver<()>,
}

/// A two-worker server: sessions with odd ids belong to worker 1, even
/// ones to worker 0 (the listener's).
fn two_workers(multishot: bool) -> TwoWorkers {
    let events = Arc::new(Events::default());
    let (release, released) = mpsc::channel();
    let (blocking, blocked) = mpsc::channel();
    let handler = Arc::new(Scripted {
        events: events.clone(),
        release: Mutex::new(released),
        blocked: Mutex::new(blocking),
    });
    let config = ServiceConfig {
        workers: 2,
        multishot,
        ..ServiceConfig::default()
    };
    let service =
        Service::server("127.0.0.1:0", config, Arc::new(move || handler.clone())).unwrap();
    TwoWorkers {
        service,
        events,
        release,
        blocked,
    }
}

impl TwoWorkers {
    fn connect(&self) -> TcpStream {
        common::connect_to(&self.service)
    }

    /// Session `id`, once the service tracks it.
    fn session(&self, id: u64) -> Arc<Session> {
        let deadline = Instant::now() + SOON;
        loop {
            let found = self.service.sessions().into_iter().find(|s| s.id() == id);
            if let Some(session) = found {
                return session;
            }
            assert!(Instant::now() < deadline, "session {id} was not accepted");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Holds worker 1 inside a hook of session 1 (whose client is given).
    fn block_worker_1(&self, first: &mut TcpStream) {
        let mut welcome = [0; 1];
        first.read_exact(&mut welcome).unwrap();
        first.write_all(b"b").unwrap();
        self.blocked.recv_timeout(SOON).expect("worker 1 blocked");
    }
}

fn never_connected_after_disconnected(multishot: bool) {
    let server = two_workers(multishot);
    let mut first = server.connect(); // session 1, worker 1
    server.block_worker_1(&mut first);
    let _second = server.connect(); // session 2, worker 0
    let _third = server.connect(); // session 3: its start waits for worker 1
    let third = server.session(3);
    third.disconnect("kicked before it started");
    server.release.send(()).unwrap();
    server.events.wait_for(3, "disconnected");
    // Whatever worker 1 still had queued for it has run by now: the
    // first session's next hook comes after.
    first.write_all(b"n").unwrap();
    let events = server.events.0.lock().unwrap().clone();
    let of_third: Vec<_> = events.iter().filter(|e| e.1 == 3).collect();
    assert!(
        of_third.iter().all(|e| e.0 != "connected"),
        "on_connected ran for a session already disconnected: {of_third:?}"
    );
    assert_eq!(server.events.of(3), vec!["disconnected"]);
    server.service.stop();
}

fn welcome_first(multishot: bool) {
    let server = two_workers(multishot);
    let mut first = server.connect(); // session 1, worker 1
    server.block_worker_1(&mut first);
    let _second = server.connect(); // session 2, worker 0
    let mut third = server.connect(); // session 3: its start waits for worker 1
    let _ = server.session(3);
    // Worker 1 now broadcasts from session 1's hook, before it starts 3.
    server.release.send(()).unwrap();
    let mut first_bytes = [0; 2];
    third.read_exact(&mut first_bytes).unwrap();
    assert_eq!(&first_bytes, b"WX", "the welcome comes first");
    server.service.stop();
}

/// On `logout`, has another thread send a farewell (and waits until that
/// send was accepted), then closes gracefully.
struct Farewell;

impl SessionHandler for Farewell {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        if data == b"logout" {
            let other = session.clone();
            let accepted = thread::spawn(move || other.send(Bytes::from_static(b"bye")))
                .join()
                .unwrap();
            assert!(accepted, "the farewell was accepted");
            session.close_gracefully();
        }
        Ok(data.len())
    }
}

fn farewell_delivered(multishot: bool) {
    let config = one_worker(multishot);
    let service = Service::server("127.0.0.1:0", config, Arc::new(|| Arc::new(Farewell))).unwrap();
    let mut client = common::connect_to(&service);
    client.write_all(b"logout").unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye", "the farewell, then the end of the stream");
    service.stop();
}

/// Kicks its session on the first frame it gets, and records every frame.
struct KickOnFirst(Arc<Events>);

impl PacketHandler for KickOnFirst {
    fn on_packet(&self, session: &Arc<Session>, _: u16, _: &[u8]) -> Result<(), String> {
        self.0.push("packet", session);
        session.disconnect("kicked");
        Ok(())
    }
    fn on_disconnected(&self, session: &Arc<Session>, _: &str) {
        self.0.push("disconnected", session);
    }
}

fn no_frame_after_kick(multishot: bool) {
    let events = Arc::new(Events::default());
    let shared = events.clone();
    let config = one_worker(multishot);
    let factory = Arc::new(move || -> Arc<dyn SessionHandler> {
        Arc::new(PacketSession::new(KickOnFirst(shared.clone()), 4096))
    });
    let service = Service::server("127.0.0.1:0", config, factory).unwrap();
    let mut client = common::connect_to(&service);
    // Three frames in one write: one read on the server.
    let mut frames = Vec::new();
    for id in 1..=3u16 {
        frames.extend_from_slice(&framing::encode(id, &[b"x"]).unwrap());
    }
    client.write_all(&frames).unwrap();
    events.wait_for(1, "disconnected");
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert_eq!(events.of(1), vec!["packet", "disconnected"]);
    service.stop();
}

/// Calls `Service::shutdown` from its hook on `stop`, and records why each
/// session ended.
struct ShutsDown {
    reports: Mutex<mpsc::Sender<overlapped::session::ShutdownReport>>,
    reasons: Mutex<Vec<String>>,
}

impl SessionHandler for ShutsDown {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        if data == b"stop" {
            if let Some(service) = session.service() {
                let report = service.shutdown(Duration::from_secs(30));
                let _ = self.reports.lock().unwrap().send(report);
            }
        }
        Ok(data.len())
    }
    fn on_disconnected(&self, _: &Arc<Session>, reason: &str) {
        self.reasons.lock().unwrap().push(reason.to_owned());
    }
}

fn shutdown_from_a_hook(multishot: bool) {
    let (reports, report) = mpsc::channel();
    let handler = Arc::new(ShutsDown {
        reports: Mutex::new(reports),
        reasons: Mutex::new(Vec::new()),
    });
    let shared = handler.clone();
    let config = one_worker(multishot);
    let service = Service::server("127.0.0.1:0", config, Arc::new(move || shared.clone())).unwrap();
    let mut clients: Vec<TcpStream> = (0..3).map(|_| common::connect_to(&service)).collect();
    let deadline = Instant::now() + SOON;
    while service.session_count() < 3 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(5));
    }
    clients[0].write_all(b"stop").unwrap();
    // The hook returns at once: a worker cannot wait for its own sessions.
    let report = report.recv_timeout(SOON).expect("shutdown returned");
    assert!(report.in_background, "{report:?}");
    // Each client sees the end of the stream and closes: a clean close,
    // which the worker serves while the shutdown waits elsewhere.
    for client in &mut clients {
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).ok(), Some(0));
    }
    drop(clients);
    service.wait();
    assert_eq!(service.session_count(), 0);
    let reasons = handler.reasons.lock().unwrap().clone();
    assert_eq!(
        reasons,
        vec!["closed by server shutdown"; 3],
        "every session closed cleanly, none dropped at the deadline"
    );
}

/// Sends a hello of `hello` bytes when it connects, and echoes.
struct LargeHello(usize);

impl SessionHandler for LargeHello {
    fn on_connected(&self, session: &Arc<Session>) {
        session.send(Bytes::from(vec![b'h'; self.0]));
    }
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send_copy(data);
        Ok(data.len())
    }
}

const CAP: usize = 256 * 1024;

/// Most bytes a client's writes can put in flight towards a server that
/// no longer reads: both kernels' socket buffers at their largest, and
/// what the server holds against its cap.
fn flow_control_bound(cap: usize) -> usize {
    let max = |path: &str| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let max = text.split_whitespace().nth(2).and_then(|m| m.parse().ok());
        max.unwrap_or(64 << 20)
    };
    max("/proc/sys/net/ipv4/tcp_rmem") + max("/proc/sys/net/ipv4/tcp_wmem") + 4 * cap
}

fn large_hello_keeps_the_cap(multishot: bool) {
    let config = ServiceConfig {
        max_send_queue: CAP,
        ..one_worker(multishot)
    };
    let hello = CAP / 2 + 1024;
    let service = Service::server(
        "127.0.0.1:0",
        config,
        Arc::new(move || Arc::new(LargeHello(hello))),
    )
    .unwrap();
    // A client that never reads floods the echo: the server must stop
    // reading (flow control stalls the client) or drop it at the cap,
    // never queue without bound.
    let mut client = common::connect_to(&service);
    client
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let budget = 2 * flow_control_bound(CAP);
    let chunk = vec![b'f'; 64 * 1024];
    let mut written = 0;
    let held = loop {
        if written >= budget {
            break false;
        }
        match client.write(&chunk) {
            Ok(n) => written += n,
            // Stalled by flow control, or dropped at the cap.
            Err(_) => break true,
        }
    };
    assert!(
        held,
        "{written} bytes went into a server that queues them all"
    );
    service.stop();
}

#[test]
fn a_stream_of_frames_near_the_receive_buffers_size_is_received_whole_with_multishot() {
    // The buffer guarantees room for a packet of up to capacity − low
    // water: 3584 bytes here, frames arriving in 2 KiB pool buffers.
    let frames_seen = Arc::new(Events::default());
    struct Counting(Arc<Events>);
    impl PacketHandler for Counting {
        fn on_packet(&self, session: &Arc<Session>, _: u16, p: &[u8]) -> Result<(), String> {
            assert_eq!(p.len(), 3580);
            self.0.push("packet", session);
            Ok(())
        }
    }
    let shared = frames_seen.clone();
    let config = ServiceConfig {
        workers: 1,
        recv_buffer: 4096,
        recv_low_water: 512,
        multishot: true,
        ..ServiceConfig::default()
    };
    let factory = Arc::new(move || -> Arc<dyn SessionHandler> {
        Arc::new(PacketSession::new(Counting(shared.clone()), 3584))
    });
    let service = Service::server("127.0.0.1:0", config, factory).unwrap();
    let mut client = common::connect_to(&service);
    let frame = framing::encode(1, &[&[7u8; 3580]]).unwrap();
    let stream: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 100)
        .collect();
    client.write_all(&stream).unwrap();
    let deadline = Instant::now() + SOON;
    while frames_seen.of(1).len() < 100 {
        let gone = service.session_count() == 0;
        assert!(
            !gone,
            "the session was dropped after {} frames",
            frames_seen.of(1).len()
        );
        assert!(
            Instant::now() < deadline,
            "{} frames",
            frames_seen.of(1).len()
        );
        thread::sleep(Duration::from_millis(5));
    }
    service.stop();
}

both_receive_modes!(never_connected_after_disconnected: on_connected_never_runs_for_a_session_disconnected_before_it_started, on_connected_never_runs_for_a_session_disconnected_before_it_started_single_recv);

both_receive_modes!(welcome_first: a_broadcast_never_reaches_a_session_before_its_on_connected, a_broadcast_never_reaches_a_session_before_its_on_connected_single_recv);

both_receive_modes!(farewell_delivered: a_send_accepted_from_another_thread_before_a_graceful_close_is_delivered, a_send_accepted_from_another_thread_before_a_graceful_close_is_delivered_single_recv);

both_receive_modes!(no_frame_after_kick: no_frame_reaches_on_packet_after_on_disconnected, no_frame_reaches_on_packet_after_on_disconnected_single_recv);

both_receive_modes!(shutdown_from_a_hook: shutdown_called_from_a_hook_closes_every_session_without_stalling_its_worker, shutdown_called_from_a_hook_closes_every_session_without_stalling_its_worker_single_recv);

both_receive_modes!(large_hello_keeps_the_cap: a_hello_over_half_the_send_cap_leaves_the_cap_enforced, a_hello_over_half_the_send_cap_leaves_the_cap_enforced_single_recv);

/// Echoes what it receives.
struct Echo;

impl SessionHandler for Echo {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send_copy(data);
        Ok(data.len())
    }
}

fn half_close_keeps_every_reply(multishot: bool) {
    let service = Service::server(
        "127.0.0.1:0",
        one_worker(multishot),
        Arc::new(|| Arc::new(Echo)),
    )
    .unwrap();
    for round in 0..5 {
        let mut client = common::connect_to(&service);
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
        let mut writer = client.try_clone().unwrap();
        let sending = thread::spawn(move || {
            writer.write_all(&data).unwrap();
            // No more input; the client still reads its echo.
            writer.shutdown(std::net::Shutdown::Write).unwrap();
            data
        });
        let mut echoed = Vec::new();
        client.read_to_end(&mut echoed).unwrap();
        let data = sending.join().unwrap();
        assert_eq!(
            echoed.len(),
            data.len(),
            "round {round}: the echo was cut short"
        );
        assert!(echoed == data, "round {round}: the echo differs");
    }
    service.stop();
}

both_receive_modes!(
    half_close_keeps_every_reply: a_client_that_half_closes_gets_every_reply_queued_for_it,
    a_client_that_half_closes_gets_every_reply_queued_for_it_single_recv
);
