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
