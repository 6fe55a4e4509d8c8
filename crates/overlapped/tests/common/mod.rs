//! Helpers shared by the behaviour tests: real loopback connections.
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener as StdListener, TcpStream as StdStream};
use std::time::Duration;

use overlapped::{Event, Overlapped, TcpStream};

/// A connected pair over 127.0.0.1: our overlapped stream and a plain std
/// peer for the test to drive.
pub fn pair() -> (TcpStream, StdStream) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (ours, peer)
}

/// Waits until `ours` has data queued (peeked, never taken): what a test
/// of an immediate completion needs, whenever the kernel delivers it.
pub fn wait_readable(ours: &TcpStream) {
    let socket = socket2::SockRef::from(ours);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        match socket.peek(&mut byte) {
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(std::time::Instant::now() < deadline, "nothing arrived");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("peek failed: {e}"),
        }
    }
}

/// A record tied to a fresh event, and that event.
pub fn record() -> (Overlapped, Event) {
    let event = Event::new().unwrap();
    (Overlapped::with_event(event.clone()), event)
}

/// Reads exactly `n` bytes from the peer.
pub fn read_exactly(peer: &mut StdStream, n: usize) -> Vec<u8> {
    let mut data = vec![0; n];
    peer.read_exact(&mut data).unwrap();
    data
}

/// A generous bound for things that must happen "soon" on a loaded machine.
pub const SOON: Option<Duration> = Some(Duration::from_secs(10));

/// A plain client connected to a service's listener, reading with a timeout.
pub fn connect_to(service: &overlapped::session::Service) -> StdStream {
    let client = StdStream::connect(service.local_addr().unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
}

/// Threads of this process now (`/proc/self/status`).
pub fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads in /proc/self/status")
}
