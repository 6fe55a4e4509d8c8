//! Blocking work: a bounded pool of threads runs what the workers must
//! not, and hands each result back as a job of the room that asked.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use overlapped::game::Room;
use overlapped::session::{BlockingError, Service, ServiceConfig, Session, SessionHandler};

fn service(threads: usize, queue: usize) -> Service {
    struct Quiet;
    impl SessionHandler for Quiet {
        fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
            Ok(data.len())
        }
    }
    let config = ServiceConfig {
        workers: 1,
        blocking_threads: threads,
        blocking_queue: queue,
        ..ServiceConfig::default()
    };
    Service::server("127.0.0.1:0", config, Arc::new(|| Arc::new(Quiet))).unwrap()
}

const LONG: Duration = Duration::from_secs(30);

fn thread_name() -> String {
    thread::current().name().unwrap_or("").to_owned()
}

#[test]
fn a_blocking_call_runs_off_the_workers_and_its_value_comes_back_as_a_room_job() {
    let service = service(2, 16);
    let room = Room::new(&service, "db", Vec::<String>::new());
    let (tx, rx) = mpsc::channel();
    room.blocking(thread_name, move |log, _, ran_on| {
        log.push(ran_on.unwrap());
        tx.send((log.clone(), thread_name())).unwrap();
    })
    .unwrap();
    let (log, then_on) = rx.recv_timeout(LONG).unwrap();
    assert_eq!(log, ["service-blocking"]);
    assert!(then_on.starts_with("service-worker-"), "{then_on}");
    service.stop();
}

#[test]
fn a_rooms_blocking_calls_run_one_at_a_time_in_the_order_made() {
    let service = service(4, 1024);
    let room = Room::new(&service, "ordered", Vec::<usize>::new());
    let inside = Arc::new(AtomicBool::new(false));
    for n in 0..200 {
        let inside = inside.clone();
        let work = move || {
            assert!(
                !inside.swap(true, Ordering::SeqCst),
                "two calls of a room at once"
            );
            thread::yield_now();
            inside.store(false, Ordering::SeqCst);
            n
        };
        room.blocking(work, |seen, _, n| seen.push(n.unwrap()))
            .unwrap();
    }
    // The last call's value comes back last.
    let (tx, rx) = mpsc::channel();
    room.blocking(|| (), move |seen, _, _| tx.send(seen.clone()).unwrap())
        .unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), (0..200).collect::<Vec<_>>());
    service.stop();
}

/// A gate that opens once `n` have arrived (or 30 s passed).
struct Gate {
    arrived: Mutex<usize>,
    all: Condvar,
    n: usize,
}

impl Gate {
    fn pass(&self) -> bool {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.all.notify_all();
        let deadline = Instant::now() + LONG;
        while *arrived < self.n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            arrived = self.all.wait_timeout(arrived, left).unwrap().0;
        }
        true
    }
}

#[test]
fn the_calls_of_different_rooms_run_beside_each_other() {
    let service = service(4, 16);
    let gate = Arc::new(Gate {
        arrived: Mutex::new(0),
        all: Condvar::new(),
        n: 4,
    });
    let (tx, rx) = mpsc::channel();
    let rooms: Vec<Room<()>> = (0..4)
        .map(|n| Room::new(&service, format!("r{n}"), ()))
        .collect();
    for room in &rooms {
        let (gate, tx) = (gate.clone(), tx.clone());
        room.blocking(
            move || gate.pass(),
            move |_, _, met| tx.send(met.unwrap()).unwrap(),
        )
        .unwrap();
    }
    for _ in 0..4 {
        assert!(
            rx.recv_timeout(LONG).unwrap(),
            "four rooms' calls never ran at once"
        );
    }
    service.stop();
}

#[test]
fn a_full_queue_refuses_a_call_at_once() {
    let service = service(1, 2);
    let room = Room::new(&service, "busy", ());
    let (release, held) = mpsc::channel::<()>();
    let (started, running) = mpsc::channel();
    room.blocking(
        move || {
            started.send(()).unwrap();
            let _ = held.recv();
        },
        |_, _, _| {},
    )
    .unwrap();
    running.recv_timeout(LONG).unwrap();
    // The one thread is busy: two may wait, the third is refused.
    room.blocking(|| (), |_, _, _| {}).unwrap();
    room.blocking(|| (), |_, _, _| {}).unwrap();
    assert_eq!(
        room.blocking(|| (), |_, _, _| {}),
        Err(BlockingError::Full { capacity: 2 })
    );
    assert_eq!(service.metrics().blocking.refused, 1);
    assert_eq!(service.metrics().blocking.waiting, 2);
    release.send(()).unwrap();
    service.stop();
}

#[test]
fn a_panicking_call_hands_back_the_panic_and_the_pool_goes_on() {
    let service = service(1, 16);
    let room = Room::new(&service, "careless", ());
    let (tx, rx) = mpsc::channel();
    let first = tx.clone();
    room.blocking(
        || -> u32 { panic!("the database driver fell over") },
        move |_, _, value| first.send(value).unwrap(),
    )
    .unwrap();
    room.blocking(|| 7, move |_, _, value| tx.send(value).unwrap())
        .unwrap();
    assert_eq!(
        rx.recv_timeout(LONG).unwrap(),
        Err(BlockingError::Panicked(
            "the database driver fell over".into()
        ))
    );
    assert_eq!(rx.recv_timeout(LONG).unwrap(), Ok(7));
    assert_eq!(service.metrics().blocking.panics, 1);
    service.stop();
}

#[test]
fn a_blocked_call_never_stalls_its_rooms_ticks() {
    let service = service(1, 16);
    let room = Room::new(&service, "ticking", ());
    let ticker = room.every(Duration::from_millis(2), |_, _, _| {}).unwrap();
    let (release, held) = mpsc::channel::<()>();
    room.blocking(move || held.recv().is_ok(), |_, _, _| {})
        .unwrap();
    // The call holds its thread; the room's worker ticks on.
    let ran = ticker.ran();
    let deadline = Instant::now() + LONG;
    while ticker.ran() < ran + 10 {
        assert!(Instant::now() < deadline, "the ticks stalled");
        thread::sleep(Duration::from_millis(1));
    }
    release.send(()).unwrap();
    service.stop();
}

#[test]
fn a_shutdown_lets_pending_calls_finish_within_its_grace() {
    let service = service(1, 16);
    let room = Room::new(&service, "saving", ());
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let done = done.clone();
        room.blocking(
            move || {
                thread::sleep(Duration::from_millis(50));
                done.fetch_add(1, Ordering::SeqCst);
            },
            |_, _, _| {},
        )
        .unwrap();
    }
    let report = service.shutdown(LONG);
    assert_eq!(done.load(Ordering::SeqCst), 3);
    assert_eq!(report.blocking_unfinished, 0, "{report}");
    assert_eq!(
        room.blocking(|| (), |_, _, _| {}),
        Err(BlockingError::Stopped)
    );
}

#[test]
fn a_shutdown_reports_the_calls_its_grace_could_not_wait_for() {
    let service = service(1, 16);
    let room = Room::new(&service, "stuck", ());
    let (_never, held) = mpsc::channel::<()>();
    let (started, running) = mpsc::channel();
    room.blocking(
        move || {
            started.send(()).unwrap();
            let _ = held.recv_timeout(LONG);
        },
        |_, _, _| {},
    )
    .unwrap();
    room.blocking(|| (), |_, _, _| {}).unwrap();
    running.recv_timeout(LONG).unwrap();
    let report = service.shutdown(Duration::from_millis(100));
    assert_eq!(report.blocking_unfinished, 2, "{report}");
    assert!(
        report.to_string().contains("2 blocking calls unfinished"),
        "{report}"
    );
}

#[test]
fn the_metrics_count_each_call_with_its_wait_and_run_time() {
    let service = service(2, 16);
    let room = Room::new(&service, "measured", ());
    let (tx, rx) = mpsc::channel();
    for _ in 0..5 {
        let tx = tx.clone();
        room.blocking(
            || thread::sleep(Duration::from_millis(2)),
            move |_, _, _| tx.send(()).unwrap(),
        )
        .unwrap();
    }
    for _ in 0..5 {
        rx.recv_timeout(LONG).unwrap();
    }
    let blocking = service.metrics().blocking;
    assert_eq!(blocking.calls, 5);
    assert_eq!(blocking.wait.iter().sum::<u64>(), 5);
    assert_eq!(blocking.run.iter().sum::<u64>(), 5);
    assert!(blocking.run_sum_us >= 5 * 2_000, "{blocking:?}");
    let text = service.metrics().to_prometheus("t");
    assert!(text.contains("t_blocking_calls_total 5"), "{text}");
    assert!(text.contains("t_blocking_run_seconds_count 5"), "{text}");
    service.stop();
}
