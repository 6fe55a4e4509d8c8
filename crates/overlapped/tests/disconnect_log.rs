//! The library logs why it dropped a client: a program that logs nothing
//! of its own still sees, through `tracing`, every disconnect that is not
//! the peer leaving or the server stopping — and a program that logs its
//! own lines can turn that off.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use overlapped::session::{Service, ServiceConfig, Session, SessionHandler};

/// Every line the library logged in this test binary.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .init();
        lines
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured lines that name `peer`.
fn lines_naming(peer: SocketAddr) -> Vec<String> {
    let text = String::from_utf8_lossy(&captured().lock().unwrap()).into_owned();
    // As the line writes it: the whole address, not a prefix of another.
    let peer = format!("({peer})");
    text.lines()
        .filter(|line| line.contains(&peer))
        .map(str::to_string)
        .collect()
}

/// Refuses any byte, and says when each session's `on_disconnected` ran.
struct RefuseEverything {
    disconnected: Mutex<mpsc::Sender<SocketAddr>>,
}

impl SessionHandler for RefuseEverything {
    fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        Err(format!("refused byte {:#04x}", data[0]))
    }
    fn on_disconnected(&self, session: &Arc<Session>, _: &str) {
        let _ = self.disconnected.lock().unwrap().send(session.peer_addr());
    }
}

fn server(config: ServiceConfig) -> (Service, mpsc::Receiver<SocketAddr>) {
    captured();
    let (tx, rx) = mpsc::channel();
    let handler = Arc::new(RefuseEverything {
        disconnected: Mutex::new(tx),
    });
    let service = Service::server("127.0.0.1:0", config, Arc::new(move || handler.clone()))
        .expect("a server");
    (service, rx)
}

/// Waits for the hook of the session from `peer`: the library logs before
/// it runs the hook.
fn wait_for_hook(disconnected: &mpsc::Receiver<SocketAddr>, peer: SocketAddr) {
    loop {
        let gone = disconnected
            .recv_timeout(Duration::from_secs(10))
            .expect("on_disconnected ran");
        if gone == peer {
            return;
        }
    }
}

/// A client sends one byte, which the handler refuses: the session's
/// address, once its hook ran.
fn send_a_refused_byte(service: &Service, disconnected: &mpsc::Receiver<SocketAddr>) -> SocketAddr {
    let mut client = common::connect_to(service);
    let peer = client.local_addr().unwrap();
    client.write_all(b"B").unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    wait_for_hook(disconnected, peer);
    peer
}

#[test]
fn a_handler_refusal_is_logged_by_the_library_with_its_reason() {
    let (service, disconnected) = server(ServiceConfig::default());
    let peer = send_a_refused_byte(&service, &disconnected);
    let lines = lines_naming(peer);
    assert!(
        lines
            .iter()
            .any(|line| line.contains("disconnected: refused byte 0x42")),
        "no line gives the reason: {lines:?}"
    );
}

#[test]
fn a_peer_that_leaves_is_not_logged() {
    let (service, disconnected) = server(ServiceConfig::default());
    let client = common::connect_to(&service);
    let peer = client.local_addr().unwrap();
    drop(client);
    wait_for_hook(&disconnected, peer);
    assert_eq!(lines_naming(peer), Vec::<String>::new());
}

#[test]
fn with_log_disconnects_off_a_refusal_is_left_to_the_program() {
    let config = ServiceConfig {
        log_disconnects: false,
        ..ServiceConfig::default()
    };
    let (service, disconnected) = server(config);
    let peer = send_a_refused_byte(&service, &disconnected);
    assert_eq!(lines_naming(peer), Vec::<String>::new());
}
