//! The hot path allocates nothing per message: once warmed up, an echo
//! session answers thousands of messages over real loopback sockets with
//! next to no heap allocation — operation records, packets, the kernel's
//! completions and the reply's bytes all reuse memory.
//!
//! The binary's allocator counts the allocations of every thread, the
//! service's worker included, so the tests take turns: two at once would
//! count each other's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use overlapped::session::{Service, ServiceConfig, Session, SessionHandler};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// One test at a time: the allocation count is process-wide.
static ALONE: Mutex<()> = Mutex::new(());

const CLIENTS: usize = 4;
const WARM_UP_ROUNDS: usize = 500;
const COUNTED_ROUNDS: usize = 2_500;
const MESSAGE: usize = 64;

/// Sends every received byte back, copied into the session's reused memory.
struct Echo;

impl SessionHandler for Echo {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send_copy(data);
        Ok(data.len())
    }
}

fn echo_service(multishot: bool) -> (Service, SocketAddr) {
    // No budget check and no timeouts: the service's timer thread would
    // allocate a little every 100 ms, as often as the clock says, not per
    // message, and a slow run would count more of it.
    let config = ServiceConfig {
        workers: 1,
        multishot,
        max_memory: 0,
        handshake_timeout: None,
        idle_timeout: None,
        ..ServiceConfig::default()
    };
    let service = Service::server("127.0.0.1:0", config, Arc::new(|| Arc::new(Echo)))
        .expect("the echo service starts");
    let addr = service.local_addr().expect("a listening service");
    (service, addr)
}

/// One message per client and its echo, checked; allocates nothing itself.
fn round(clients: &mut [TcpStream], n: usize) {
    let mut message = [0u8; MESSAGE];
    let mut echo = [0u8; MESSAGE];
    message[..8].copy_from_slice(&(n as u64).to_le_bytes());
    for client in clients.iter_mut() {
        client.write_all(&message).expect("the message goes out");
        client.read_exact(&mut echo).expect("the echo comes back");
        assert!(echo == message, "the echo matches the message");
    }
}

/// Allocations (and reallocations) while `COUNTED_ROUNDS` rounds of
/// ping-pong run on warmed-up sessions, and the messages they carried.
fn allocations_per_echo(multishot: bool) -> (usize, usize) {
    let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
    let (service, addr) = echo_service(multishot);
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| TcpStream::connect(addr).expect("the client connects"))
        .collect();
    for client in &clients {
        client.set_nodelay(true).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }
    for n in 0..WARM_UP_ROUNDS {
        round(&mut clients, n);
    }
    let region = Region::new(GLOBAL);
    for n in 0..COUNTED_ROUNDS {
        round(&mut clients, n);
    }
    let change = region.change();
    drop(clients);
    service.shutdown(Duration::from_secs(5));
    (
        change.allocations + change.reallocations,
        COUNTED_ROUNDS * CLIENTS,
    )
}

/// At most one allocation per hundred echoed messages: none per message.
fn assert_allocation_free(multishot: bool) {
    let (allocations, messages) = allocations_per_echo(multishot);
    assert!(
        allocations * 100 <= messages,
        "{allocations} allocations for {messages} echoed messages"
    );
}

#[test]
fn an_echo_over_a_multishot_receive_allocates_nothing_per_message() {
    assert_allocation_free(true);
}

#[test]
fn an_echo_over_single_receives_allocates_nothing_per_message() {
    assert_allocation_free(false);
}

/// Hands every connected session to the test.
struct Joining(Mutex<std::sync::mpsc::Sender<Arc<Session>>>);

impl SessionHandler for Joining {
    fn on_connected(&self, session: &Arc<Session>) {
        let _ = self.0.lock().unwrap().send(session.clone());
    }
    fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        Ok(data.len())
    }
}

#[test]
fn a_group_broadcast_writes_its_bytes_once_for_every_member() {
    const MEMBERS: usize = 20;
    const PAYLOAD: usize = 16 * 1024;
    let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
    let (tx, rx) = std::sync::mpsc::channel();
    let handler = Arc::new(Joining(Mutex::new(tx)));
    // No budget check and no timeouts, whose timer allocates by the clock.
    let config = ServiceConfig {
        workers: 2,
        max_memory: 0,
        handshake_timeout: None,
        idle_timeout: None,
        ..ServiceConfig::default()
    };
    let service =
        Service::server("127.0.0.1:0", config, Arc::new(move || handler.clone())).unwrap();
    let mut group = overlapped::game::Group::new(&service);
    let mut clients = Vec::new();
    for _ in 0..MEMBERS {
        let client = TcpStream::connect(service.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        clients.push(client);
        group.insert(&rx.recv_timeout(Duration::from_secs(30)).unwrap());
    }
    let data = bytes::Bytes::from(vec![5u8; PAYLOAD]);
    let mut received = vec![0u8; PAYLOAD];
    let region = Region::new(GLOBAL);
    assert_eq!(group.broadcast(&data), MEMBERS);
    for client in &mut clients {
        client.read_exact(&mut received).unwrap();
        assert!(received == *data);
    }
    let allocated = region.change().bytes_allocated;
    // One copy per member would be 320 KiB; the members share one.
    assert!(
        allocated < PAYLOAD,
        "{allocated} bytes allocated to broadcast {PAYLOAD} bytes to {MEMBERS} members"
    );
    service.stop();
}
