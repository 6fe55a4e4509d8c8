//! The driver's promises where a public test cannot reach: the
//! process-wide ring, raw rings and injected kernel failures.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use super::op::{IoParts, Notify, Op, OpKind};
use super::ring::Ring;
use super::Socket;
use super::{close, fault, start};
use crate::event::{wait_for_multiple_events, Event, WaitResult};

const SOON: Option<Duration> = Some(Duration::from_secs(10));

/// Our side of a loopback connection as a driver socket on `ring`, and
/// the peer.
fn pair_on(ring: &Arc<Ring>) -> (Arc<Socket>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    (Socket::new(ours.into(), ring.clone()), peer)
}

/// A receive of up to 16 bytes on `socket` that signals `event`.
fn receive(socket: &Arc<Socket>, event: &Event) -> Arc<Op> {
    let parts = IoParts::for_recv(vec![vec![0u8; 16]]);
    Op::new(
        OpKind::Recv,
        Some(socket.clone()),
        Notify::Event(event.signal().clone()),
        Some(parts),
    )
}

fn signaled_soon(event: &Event) -> bool {
    wait_for_multiple_events(&[event], false, SOON, false).unwrap() == WaitResult::Signaled(0)
}

#[test]
fn an_operation_started_as_its_socket_closes_on_the_process_wide_ring_still_ends() {
    let ring = Ring::global().unwrap();
    let rounds = std::env::var("OVERLAPPED_STRESS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2_000);
    for round in 0..rounds {
        let (socket, _silent_peer) = pair_on(ring);
        let event = Event::new().unwrap();
        let op = receive(&socket, &event);
        let both = Barrier::new(2);
        let started = thread::scope(|s| {
            s.spawn(|| {
                both.wait();
                stagger(round);
                close(&socket);
            });
            both.wait();
            start(&op)
        });
        if let Ok(None) = started {
            assert!(
                signaled_soon(&event),
                "round {round}: the receive stayed pending after the close"
            );
        }
    }
}

#[test]
fn an_entry_written_before_a_failed_enter_stays_the_rings_until_it_completes() {
    let ring = Ring::new(false).unwrap();
    if !ring.is_uring() {
        return; // the epoll backend never enters a kernel ring
    }
    let (socket, mut peer) = pair_on(&ring);
    let event = Event::new().unwrap();
    let op = receive(&socket, &event);
    fault::fail_enters(1, libc::ENOMEM);
    let started = start(&op);
    fault::fail_enters(0, 0);
    assert!(
        matches!(started, Ok(None)),
        "a written entry is pending, not failed: {started:?}"
    );
    peer.write_all(b"after").unwrap();
    // The next reap enters the kernel, which then takes the entry.
    while !event.is_set().unwrap() {
        ring.reap(Some(Duration::from_millis(100)), None).unwrap();
    }
    let outcome = op.outcome().expect("completed");
    assert_eq!((outcome.bytes, outcome.error), (5, None));
    let buffers = op.take_buffers::<Vec<u8>>().unwrap();
    assert_eq!(&buffers[0][..5], b"after");
}

#[test]
fn an_entry_handed_over_before_a_failed_doorbell_reaches_the_issuer() {
    let ring = Ring::confined().unwrap();
    // This thread becomes the issuer, where the kernel can confine a ring.
    ring.reap(Some(Duration::ZERO), None).unwrap();
    if !ring.is_confined_to_this_thread() {
        return; // an ordinary ring (epoll, OVERLAPPED_WAIT=poll): no doorbell
    }
    let (socket, mut peer) = pair_on(&ring);
    let event = Event::new().unwrap();
    let op = receive(&socket, &event);
    let started = thread::scope(|s| {
        s.spawn(|| {
            fault::fail_doorbells(1, libc::EAGAIN);
            start(&op)
        })
        .join()
        .unwrap()
    });
    assert!(
        matches!(started, Ok(None)),
        "a handed-over entry is pending, not failed: {started:?}"
    );
    peer.write_all(b"later").unwrap();
    while !event.is_set().unwrap() {
        ring.reap(Some(Duration::from_millis(100)), None).unwrap();
    }
    let outcome = op.outcome().unwrap();
    assert_eq!((outcome.bytes, outcome.error), (5, None));
}

#[test]
fn a_send_that_went_out_in_part_before_a_refused_submit_completes_with_its_bytes() {
    let ring = Ring::new(false).unwrap();
    if !ring.is_uring() {
        return; // the epoll backend refuses no submission
    }
    let (socket, _peer) = pair_on(&ring);
    let event = Event::new().unwrap();
    // Far more than the socket buffers take while the peer does not read,
    // so the fast path sends part of it and the rest must be submitted.
    let parts = IoParts::for_send(vec![vec![7u8; 64 << 20]]);
    let op = Op::new(
        OpKind::Send,
        Some(socket.clone()),
        Notify::Event(event.signal().clone()),
        Some(parts),
    );
    // The queue is empty, so a refused submit needs a full queue: fill it
    // with entries whose enters fail, until the write itself is refused.
    fault::fail_enters(u32::MAX, libc::ENOMEM);
    let started = ring_refusing(&ring, || start(&op));
    fault::fail_enters(0, 0);
    assert!(matches!(started, Ok(None)), "it started: {started:?}");
    assert!(signaled_soon(&event));
    let outcome = op.outcome().unwrap();
    assert!(outcome.bytes > 0, "the bytes that went out are reported");
    assert_eq!(outcome.error, Some(libc::ENOMEM));
}

/// Runs `f` while `ring`'s submission queue is full and the kernel cannot
/// be entered, so that no entry can be written.
fn ring_refusing<R>(ring: &Arc<Ring>, f: impl FnOnce() -> R) -> R {
    ring.fill_submission_queue_for_test();
    f()
}

/// Spins for a while that grows with `round` and starts over every 64
/// rounds, so that the close lands at every point of the start in turn
/// instead of wherever the two threads happen to wake.
fn stagger(round: usize) {
    for _ in 0..(round % 64) * 16 {
        std::hint::spin_loop();
    }
}

/// A sink that holds up the delivery of a multishot receive's first
/// arrival until its final completion is delivered too (or a while has
/// passed), and notes whether that final completion overtook it.
#[derive(Default)]
struct HoldingFirstArrival {
    state: std::sync::Mutex<Holding>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct Holding {
    arrivals: usize,
    delivering_arrival: bool,
    final_delivered: bool,
    final_overtook_an_arrival: bool,
}

impl super::op::Sink for HoldingFirstArrival {
    fn deliver(&self, _: u64, _: super::op::Outcome, payload: super::op::Payload) {
        let mut state = self.state.lock().unwrap();
        match payload {
            super::op::Payload::Lease(_) => {
                state.arrivals += 1;
                state.delivering_arrival = true;
                self.changed.notify_all();
                if state.arrivals == 1 {
                    let waited =
                        self.changed
                            .wait_timeout_while(state, Duration::from_millis(500), |s| {
                                !s.final_delivered
                            });
                    state = waited.unwrap().0;
                }
                state.delivering_arrival = false;
            }
            super::op::Payload::Done { .. } => {
                state.final_overtook_an_arrival |= state.delivering_arrival;
                state.final_delivered = true;
                self.changed.notify_all();
            }
        }
    }
}

#[test]
fn one_reaper_at_a_time_handles_a_rings_completions_in_the_order_they_were_posted() {
    let ring = Ring::new(false).unwrap();
    ring.ensure_pool_of(super::buf_ring::MIN_POOL_BUFFERS)
        .unwrap();
    let (socket, mut peer) = pair_on(&ring);
    let sink = Arc::new(HoldingFirstArrival::default());
    let delivery: Arc<dyn super::op::Sink> = sink.clone();
    let op = Op::new(
        OpKind::RecvMulti,
        Some(socket.clone()),
        Notify::Deliver((delivery, 1)),
        Some(IoParts::empty()),
    );
    assert!(matches!(start(&op), Ok(None)));
    peer.write_all(b"first").unwrap();
    thread::scope(|s| {
        // The first reaper, held up inside the first arrival's delivery.
        s.spawn(|| {
            while sink.state.lock().unwrap().arrivals == 0 {
                ring.reap(Some(Duration::from_millis(100)), None).unwrap();
            }
        });
        {
            let state = sink.state.lock().unwrap();
            let state = sink.changed.wait_while(state, |s| !s.delivering_arrival);
            drop(state.unwrap());
        }
        // The final completion, which a second reaper now tries to handle.
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !sink.state.lock().unwrap().final_delivered {
            assert!(std::time::Instant::now() < deadline, "no final completion");
            ring.reap(Some(Duration::from_millis(100)), None).unwrap();
        }
    });
    assert!(
        !sink.state.lock().unwrap().final_overtook_an_arrival,
        "a second reaper handled the final completion while an arrival was delivered"
    );
}

#[test]
fn an_accept_that_completes_as_its_listener_closes_closes_the_connection() {
    use std::io::Read;
    let ring = Ring::new(false).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let socket = Socket::new(listener.into(), ring.clone());
    let accept = Op::new(
        OpKind::Accept,
        Some(socket.clone()),
        Notify::Silent,
        Some(IoParts::for_address(None)),
    );
    assert!(matches!(start(&accept), Ok(None)));
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The accept has completed in the kernel; the listener closes before
    // the completion is reaped.
    close(&socket);
    while !accept.is_done() {
        ring.reap(Some(Duration::from_millis(100)), None).unwrap();
    }
    assert_eq!(accept.outcome().unwrap().error, Some(libc::ECANCELED));
    // The connection it accepted was closed, not leaked. (A blocking read
    // on the ring's own thread may be interrupted by the kernel's task
    // work for it: read again.)
    let read = loop {
        match client.read(&mut [0; 8]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    let ended = match &read {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    assert!(ended, "the accepted connection stayed open: {read:?}");
}

/// Records what a multicast's sink hears, and is dropped with its record.
struct Heard(std::sync::Mutex<Vec<(usize, i32)>>, Arc<()>);

impl super::multicast::MemberSink for Arc<Heard> {
    fn sent(&self, index: usize, result: i32) {
        self.0.lock().unwrap().push((index, result));
    }
}

/// A multicast of `data` to `sockets` on `ring` (confined to this thread),
/// reaped until every member has been heard of; what was heard, by index.
fn multicast_heard(ring: &Arc<Ring>, data: &'static [u8], sockets: &[Arc<Socket>]) -> Vec<i32> {
    use super::multicast::Multicast;
    let heard = Arc::new(Heard(Default::default(), Arc::new(())));
    let record = Multicast::new(
        bytes::Bytes::from_static(data),
        sockets.iter().cloned(),
        Box::new(heard.clone()),
    );
    ring.multicast(&record).unwrap();
    drop(record);
    while heard.0.lock().unwrap().len() < sockets.len() {
        ring.reap(Some(Duration::from_millis(100)), None).unwrap();
    }
    let mut results = heard.0.lock().unwrap().clone();
    results.sort_unstable();
    assert_eq!(
        Arc::strong_count(&heard.1),
        1,
        "the record let go of its sink"
    );
    results.into_iter().map(|(_, result)| result).collect()
}

/// A ring confined to this thread, or `None` where the kernel (or
/// `OVERLAPPED_WAIT=poll`, or the epoll backend) makes an ordinary one.
fn confined_here() -> Option<Arc<Ring>> {
    let ring = Ring::confined().unwrap();
    ring.reap(Some(Duration::ZERO), None).unwrap();
    ring.is_confined_to_this_thread().then_some(ring)
}

#[test]
fn a_multicast_sends_its_one_buffer_to_every_member_and_reports_each() {
    let Some(ring) = confined_here() else { return };
    let pairs: Vec<_> = (0..3).map(|_| pair_on(&ring)).collect();
    let sockets: Vec<_> = pairs.iter().map(|(socket, _)| socket.clone()).collect();
    assert_eq!(multicast_heard(&ring, b"snapshot", &sockets), [8, 8, 8]);
    for (socket, mut peer) in pairs {
        let mut got = [0u8; 8];
        std::io::Read::read_exact(&mut peer, &mut got).unwrap();
        assert_eq!(&got, b"snapshot");
        assert_eq!(
            Arc::strong_count(&socket),
            2,
            "the record let go of the socket"
        );
    }
}

#[test]
fn a_multicast_member_closed_before_its_send_reports_aborted_and_the_others_their_bytes() {
    let Some(ring) = confined_here() else { return };
    let pairs: Vec<_> = (0..3).map(|_| pair_on(&ring)).collect();
    let sockets: Vec<_> = pairs.iter().map(|(socket, _)| socket.clone()).collect();
    assert!(close(&sockets[1]));
    let heard = multicast_heard(&ring, b"snapshot", &sockets);
    assert_eq!(heard, [8, -libc::ECANCELED, 8]);
}
