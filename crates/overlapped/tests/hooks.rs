//! Where and when a session's hooks run: always on its worker, never
//! inside the caller of `disconnect`; a panicking hook costs its own
//! session and no thread of the service; a disconnect closes the
//! connection whoever still holds the session.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use overlapped::session::{Service, ServiceConfig, Session, SessionHandler};

/// Hands each connected session to the test, and says on which thread
/// each `on_disconnected` ran.
struct Reporting {
    connected: Mutex<mpsc::Sender<Arc<Session>>>,
    disconnected: Mutex<mpsc::Sender<String>>,
    panic_on_disconnect: bool,
}

impl SessionHandler for Reporting {
    fn on_connected(&self, session: &Arc<Session>) {
        let _ = self.connected.lock().unwrap().send(session.clone());
    }
    fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        Ok(data.len())
    }
    fn on_disconnected(&self, _: &Arc<Session>, _: &str) {
        let thread = thread::current().name().unwrap_or("unnamed").to_string();
        let _ = self.disconnected.lock().unwrap().send(thread);
        assert!(!self.panic_on_disconnect, "a bug in on_disconnected");
    }
}

struct Harness {
    service: Service,
    connected: mpsc::Receiver<Arc<Session>>,
    disconnected: mpsc::Receiver<String>,
}

fn harness(config: ServiceConfig, panic_on_disconnect: bool) -> Harness {
    let (connected_tx, connected) = mpsc::channel();
    let (disconnected_tx, disconnected) = mpsc::channel();
    let handler = Arc::new(Reporting {
        connected: Mutex::new(connected_tx),
        disconnected: Mutex::new(disconnected_tx),
        panic_on_disconnect,
    });
    let service = Service::server("127.0.0.1:0", config, Arc::new(move || handler.clone()))
        .expect("a server");
    Harness {
        service,
        connected,
        disconnected,
    }
}

fn one_worker() -> ServiceConfig {
    ServiceConfig {
        workers: 1,
        ..ServiceConfig::default()
    }
}

const SOON: Duration = Duration::from_secs(10);

impl Harness {
    /// A client, and its session as `on_connected` handed it over.
    fn client(&self) -> (TcpStream, Arc<Session>) {
        let client = common::connect_to(&self.service);
        let session = self.connected.recv_timeout(SOON).expect("on_connected");
        (client, session)
    }
}

#[test]
fn disconnecting_a_held_session_closes_its_connection_at_once() {
    let harness = harness(one_worker(), false);
    let (mut client, session) = harness.client();
    // The program keeps the session (a room's member list, say).
    let held = session.clone();
    session.disconnect("kicked");
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).ok(), Some(0), "end of stream");
    assert!(!held.is_connected());
    assert!(!held.send_copy(b"to a kicked player"), "an inert handle");
    harness.service.stop();
}

#[test]
fn on_disconnected_runs_on_the_sessions_worker_when_another_thread_disconnects() {
    let harness = harness(one_worker(), false);
    let (_client, session) = harness.client();
    session.disconnect("kicked from the test's thread");
    let ran_on = harness.disconnected.recv_timeout(SOON).expect("the hook");
    assert_eq!(ran_on, "service-worker-0");
    harness.service.stop();
}

#[test]
fn disconnecting_while_holding_a_lock_the_hook_takes_does_not_deadlock() {
    // The hook takes the program's lock; the program disconnects under it.
    struct Locking(Arc<Mutex<Vec<u64>>>, Mutex<mpsc::Sender<()>>);
    impl SessionHandler for Locking {
        fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
            Ok(data.len())
        }
        fn on_disconnected(&self, session: &Arc<Session>, _: &str) {
            self.0.lock().unwrap().retain(|&id| id != session.id());
            let _ = self.1.lock().unwrap().send(());
        }
    }
    let players = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done) = mpsc::channel();
    let handler = Arc::new(Locking(players.clone(), Mutex::new(done_tx)));
    let service = Service::server(
        "127.0.0.1:0",
        one_worker(),
        Arc::new(move || handler.clone()),
    )
    .unwrap();
    let _client = common::connect_to(&service);
    let deadline = Instant::now() + SOON;
    while service.session_count() == 0 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(5));
    }
    let session = service.sessions().remove(0);
    players.lock().unwrap().push(session.id());
    let (finished_tx, finished) = mpsc::channel();
    // On a thread of its own, so that a deadlock fails the test instead of
    // hanging it.
    let program = players.clone();
    thread::spawn(move || {
        let players = program.lock().unwrap();
        session.disconnect("kicked");
        let _ = finished_tx.send(players.len());
    });
    assert!(finished.recv_timeout(SOON).is_ok(), "disconnect deadlocked");
    done.recv_timeout(SOON).expect("the hook ran");
    assert!(players.lock().unwrap().is_empty());
    service.stop();
}

#[test]
fn a_panicking_on_disconnected_at_an_idle_timeout_leaves_the_timer_running() {
    let config = ServiceConfig {
        idle_timeout: Some(Duration::from_millis(200)),
        ..one_worker()
    };
    let harness = harness(config, true);
    let (mut first, _) = harness.client();
    let mut rest = Vec::new();
    assert_eq!(first.read_to_end(&mut rest).ok(), Some(0), "timed out");
    harness
        .disconnected
        .recv_timeout(SOON)
        .expect("its hook ran");
    // The idle sweep still runs for a session that came after.
    let (mut second, _) = harness.client();
    assert_eq!(second.read_to_end(&mut rest).ok(), Some(0), "timed out too");
    harness.service.stop();
}

#[test]
fn a_panicking_on_disconnected_during_stop_leaves_the_service_stopped() {
    let harness = harness(one_worker(), true);
    let (mut client, _) = harness.client();
    let addr = harness.service.local_addr().unwrap();
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        harness.service.stop();
    }));
    assert!(stopped.is_ok(), "the hook's panic came out of stop");
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).ok(), Some(0));
    assert!(TcpStream::connect(addr).is_err(), "still listening");
    assert_eq!(harness.service.session_count(), 0);
}
