//! Rooms: jobs run one at a time, in push order, on the service's workers;
//! delayed jobs and ticks run on the grid, skip what a stall missed
//! instead of bunching up, and report their lateness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use overlapped::game::{JoinError, Room, RoomError, Rooms, Tick};
use overlapped::session::{Service, ServiceConfig, Session, SessionHandler};

/// A server with `workers` workers whose sessions do nothing.
fn service(workers: usize) -> Service {
    struct Quiet;
    impl SessionHandler for Quiet {
        fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
            Ok(data.len())
        }
    }
    let config = ServiceConfig {
        workers,
        ..ServiceConfig::default()
    };
    Service::server("127.0.0.1:0", config, Arc::new(|| Arc::new(Quiet))).expect("a server")
}

/// Waits until the room has run every job pushed before this call.
fn drain<S: Send + 'static>(room: &Room<S>) {
    let (done, wait) = mpsc::channel();
    assert!(room.push(move |_, _| done.send(()).unwrap()));
    wait.recv_timeout(Duration::from_secs(30))
        .expect("the room runs its jobs");
}

#[derive(Default)]
struct Log {
    entries: Vec<(usize, usize)>,
}

#[test]
fn jobs_pushed_from_many_threads_run_one_at_a_time_in_each_pushers_order() {
    let service = service(2);
    let room = Room::new(&service, "order", Log::default());
    let inside = Arc::new(AtomicBool::new(false));
    let (threads, per_thread) = (4, 2_000);
    let pushers: Vec<_> = (0..threads)
        .map(|t| {
            let (room, inside) = (room.clone(), inside.clone());
            thread::spawn(move || {
                for n in 0..per_thread {
                    let inside = inside.clone();
                    assert!(room.push(move |log: &mut Log, _| {
                        // Never beside another job of the room.
                        assert!(!inside.swap(true, Ordering::SeqCst), "two jobs at once");
                        log.entries.push((t, n));
                        inside.store(false, Ordering::SeqCst);
                    }));
                }
            })
        })
        .collect();
    for pusher in pushers {
        pusher.join().unwrap();
    }
    drain(&room);
    let (tx, rx) = mpsc::channel();
    room.push(move |log, _| tx.send(std::mem::take(&mut log.entries)).unwrap());
    let entries = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(entries.len(), threads * per_thread);
    for t in 0..threads {
        let order: Vec<usize> = entries.iter().filter(|e| e.0 == t).map(|e| e.1).collect();
        assert_eq!(order, (0..per_thread).collect::<Vec<_>>(), "pusher {t}");
    }
    assert_eq!(service.metrics().job_panics, 0);
    service.stop();
}

#[test]
fn jobs_run_on_one_of_the_services_worker_threads() {
    let service = service(2);
    let room = Room::new(&service, "where", ());
    let (tx, rx) = mpsc::channel();
    for _ in 0..10 {
        let tx = tx.clone();
        room.push(move |_, _| {
            let name = thread::current().name().map(str::to_owned);
            tx.send(name).unwrap();
        });
    }
    let names: Vec<_> = (0..10).map(|_| rx.recv().unwrap().unwrap()).collect();
    assert!(
        names.iter().all(|n| n.starts_with("service-worker-")),
        "{names:?}"
    );
    assert!(
        names.windows(2).all(|w| w[0] == w[1]),
        "one worker: {names:?}"
    );
    service.stop();
}

#[test]
fn a_job_may_push_more_jobs_which_run_after_it() {
    let service = service(1);
    let room = Room::new(&service, "nested", Vec::new());
    let (tx, rx) = mpsc::channel();
    room.push(move |log: &mut Vec<&str>, room| {
        log.push("outer");
        room.push(move |log, _| {
            log.push("inner");
            tx.send(log.clone()).unwrap();
        });
        log.push("outer ends");
    });
    let log = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(log, ["outer", "outer ends", "inner"]);
    service.stop();
}

#[test]
fn a_panicking_job_is_counted_and_the_room_runs_the_next() {
    let service = service(1);
    let room = Room::new(&service, "panicky", 0u32);
    room.push(|n, _| {
        *n += 1;
        panic!("a bug in a job");
    });
    let (tx, rx) = mpsc::channel();
    room.push(move |n, _| tx.send(*n).unwrap());
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), 1);
    assert_eq!(service.metrics().job_panics, 1);
    service.stop();
}

#[test]
fn a_delayed_job_runs_no_sooner_than_its_delay_and_after_earlier_jobs() {
    let service = service(1);
    let room = Room::new(&service, "later", Vec::new());
    let (tx, rx) = mpsc::channel();
    let pushed = Instant::now();
    room.push_after(Duration::from_millis(50), move |log: &mut Vec<&str>, _| {
        log.push("delayed");
        tx.send((pushed.elapsed(), log.clone())).unwrap();
    })
    .unwrap();
    room.push(|log, _| log.push("at once"));
    let (waited, log) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
    assert_eq!(log, ["at once", "delayed"]);
    service.stop();
}

#[test]
fn ticks_sit_on_the_grid_and_their_lateness_is_recorded() {
    let service = service(1);
    let room = Room::new(&service, "ticking", Vec::<Tick>::new());
    let period = Duration::from_millis(5);
    let started = Instant::now();
    let ticker = room
        .every(period, |ticks: &mut Vec<Tick>, _, tick| ticks.push(tick))
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    ticker.cancel();
    let window = started.elapsed();
    let (tx, rx) = mpsc::channel();
    room.push(move |ticks, _| tx.send(ticks.clone()).unwrap());
    let ticks = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(!ticks.is_empty());
    // Every run is a slot of its own, never more slots than the window had.
    let slots = (window.as_nanos() / period.as_nanos()) as u64 + 1;
    let last = ticks.last().unwrap();
    assert!(
        last.number <= slots,
        "{} ticks in {slots} slots",
        last.number
    );
    let mut expected = 0;
    for tick in &ticks {
        expected += 1 + tick.skipped;
        assert_eq!(tick.number, expected, "slot numbers follow the grid");
        assert_eq!(tick.due, ticks[0].due + period * (tick.number - 1) as u32);
    }
    assert_eq!(ticker.ran(), ticks.len() as u64);
    assert_eq!(ticker.ran() + ticker.skipped(), last.number);
    let metrics = service.metrics();
    assert_eq!(metrics.ticks, ticks.len() as u64);
    assert_eq!(metrics.tick_lateness.iter().sum::<u64>(), metrics.ticks);
    service.stop();
}

#[test]
fn a_stalled_room_skips_the_slots_it_missed_instead_of_bunching_up() {
    let service = service(1);
    let room = Room::new(&service, "stalled", Vec::<Tick>::new());
    let period = Duration::from_millis(10);
    let ticker = room
        .every(period, |ticks: &mut Vec<Tick>, _, tick| {
            ticks.push(tick);
            if ticks.len() == 1 {
                // The room's worker is held up for five periods and more
                // (the first tick that runs, whatever its number: a late
                // start may have skipped some already).
                thread::sleep(Duration::from_millis(55));
            }
        })
        .unwrap();
    while ticker.ran() < 5 {
        thread::sleep(Duration::from_millis(5));
    }
    ticker.cancel();
    let (tx, rx) = mpsc::channel();
    room.push(move |ticks, _| tx.send(ticks.clone()).unwrap());
    let ticks = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let (stalled, after_stall) = (ticks[0], ticks[1]);
    // The stalled tick ended at least 5.5 periods after its slot: the next
    // five slots passed during it, and none of them ran late one after
    // another.
    assert!(after_stall.skipped >= 5, "{ticks:#?}");
    assert_eq!(after_stall.number, stalled.number + 1 + after_stall.skipped);
    assert!(ticker.skipped() >= 5);
    assert_eq!(service.metrics().ticks_skipped, ticker.skipped());
    service.stop();
}

#[test]
fn a_cancelled_ticker_runs_no_more() {
    let service = service(1);
    let room = Room::new(&service, "cancelled", 0u64);
    let ticker = room
        .every(Duration::from_millis(2), |n: &mut u64, _, _| *n += 1)
        .unwrap();
    while ticker.ran() < 3 {
        thread::sleep(Duration::from_millis(2));
    }
    ticker.cancel();
    drain(&room);
    let ran = ticker.ran();
    thread::sleep(Duration::from_millis(30));
    drain(&room);
    assert_eq!(ticker.ran(), ran);
    service.stop();
}

#[test]
fn a_zero_period_is_an_error() {
    let service = service(1);
    let room = Room::new(&service, "zero", ());
    let refused = room.every(Duration::ZERO, |_, _, _| {}).unwrap_err();
    assert_eq!(refused, RoomError::ZeroPeriod);
    service.stop();
}

#[test]
fn a_closed_room_drops_its_queued_jobs_and_refuses_more() {
    let service = service(1);
    let room = Room::new(&service, "closing", Vec::new());
    let (tx, rx) = mpsc::channel();
    let gate = Arc::new(std::sync::Barrier::new(2));
    let held = gate.clone();
    let (release, released) = mpsc::channel::<()>();
    // The first job holds the worker until the next one is queued and the
    // room closed.
    room.push(move |_, _| {
        held.wait();
        let _ = released.recv();
    });
    gate.wait();
    let queued = tx.clone();
    room.push(move |log: &mut Vec<&str>, _| {
        log.push("queued");
        queued.send(()).unwrap();
    });
    room.close();
    assert!(room.is_closed());
    assert!(!room.push(move |_, _| tx.send(()).unwrap()));
    assert_eq!(
        room.push_after(Duration::ZERO, |_, _| {}).unwrap_err(),
        RoomError::Closed
    );
    release.send(()).unwrap();
    drop(room);
    // Every sender is gone with the dropped jobs: the queued one never ran.
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)),
        Err(mpsc::RecvTimeoutError::Disconnected)
    );
    service.stop();
}

#[test]
fn a_room_of_a_stopped_service_refuses_jobs() {
    let service = service(1);
    let room = Room::new(&service, "orphan", ());
    service.stop();
    assert!(!room.push(|_, _| {}));
    assert!(room.is_closed());
}

#[test]
fn a_panicking_tick_is_counted_and_the_next_slot_still_comes() {
    let service = service(1);
    let room = Room::new(&service, "panicky ticks", ());
    let ticker = room
        .every(Duration::from_millis(2), |_, _, tick| {
            if tick.number == 1 {
                panic!("a bug in a tick");
            }
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticker.ran() < 3 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    ticker.cancel();
    assert!(ticker.ran() >= 3, "ticking went on after the panic");
    assert_eq!(service.metrics().job_panics, 1);
    service.stop();
}

/// Rooms by key, each a log of what its jobs saw.
fn open_log(service: &Service, opened: &Arc<std::sync::atomic::AtomicUsize>) -> Room<Vec<String>> {
    opened.fetch_add(1, Ordering::SeqCst);
    Room::new(service, "keyed", Vec::new())
}

#[test]
fn a_keyed_room_is_made_on_the_first_join_and_closed_after_the_last_leave() {
    let service = service(2);
    let rooms: Rooms<u32, Vec<String>> = Rooms::new(8);
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let open = || Ok(open_log(&service, &opened));
    let first = rooms
        .join(1, open, |log, _| log.push("a joined".into()))
        .unwrap();
    let again = rooms
        .join(
            1,
            || Ok(open_log(&service, &opened)),
            |log, _| log.push("b joined".into()),
        )
        .unwrap();
    assert!(first.same_room(&again));
    assert_eq!(opened.load(Ordering::SeqCst), 1);
    assert_eq!(rooms.members(&1), 2);
    let (tx, rx) = mpsc::channel();
    rooms.leave(&1, |log, _| log.push("a left".into()));
    rooms.leave(&1, move |log, _| {
        log.push("b left".into());
        tx.send(log.clone()).unwrap();
    });
    // The last leave's job ran before the close it pushed.
    let log = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(log, ["a joined", "b joined", "a left", "b left"]);
    assert!(rooms.is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !first.is_closed() {
        assert!(Instant::now() < deadline, "the room never closed");
        thread::sleep(Duration::from_millis(1));
    }
    // A join after the last leave makes a new room.
    let next = rooms
        .join(1, || Ok(open_log(&service, &opened)), |_, _| {})
        .unwrap();
    assert!(!next.same_room(&first));
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    service.stop();
}

#[test]
fn a_full_keyed_room_refuses_the_next_join_until_someone_leaves() {
    let service = service(1);
    let rooms: Rooms<&str, ()> = Rooms::new(2);
    let open = || Ok(Room::new(&service, "small", ()));
    rooms.join("r", open, |_, _| {}).unwrap();
    rooms.join("r", open, |_, _| {}).unwrap();
    assert_eq!(
        rooms.join("r", open, |_, _| {}).unwrap_err(),
        JoinError::Full { capacity: 2 }
    );
    rooms.leave(&"r", |_, _| {});
    rooms.join("r", open, |_, _| {}).unwrap();
    assert_eq!(rooms.members(&"r"), 2);
    service.stop();
}

#[test]
fn a_keyed_room_that_cannot_open_refuses_the_join_with_the_reason() {
    let rooms: Rooms<u8, ()> = Rooms::new(4);
    let refused = rooms
        .join(3, || Err("no such map".into()), |_, _| {})
        .unwrap_err();
    assert_eq!(refused, JoinError::Open("no such map".into()));
    assert!(rooms.is_empty());
}

#[test]
fn a_join_to_a_keyed_room_that_closed_itself_is_refused_until_its_members_left() {
    let service = service(1);
    let rooms: Rooms<u8, ()> = Rooms::new(8);
    let open = || Ok(Room::new(&service, "match", ()));
    let first = rooms.join(1, open, |_, _| {}).unwrap();
    // The match ends: the room closes itself.
    first.close();
    assert_eq!(
        rooms.join(1, open, |_, _| {}).unwrap_err(),
        JoinError::Closed
    );
    assert_eq!(rooms.members(&1), 1, "the refused join was counted");
    // Once its member left, the key opens a new room.
    rooms.leave(&1, |_, _| {});
    let next = rooms.join(1, open, |_, _| {}).unwrap();
    assert!(!next.same_room(&first));
    assert!(!next.is_closed());
    service.stop();
}

#[test]
fn a_join_after_the_service_stopped_is_refused() {
    let service = service(1);
    let rooms: Rooms<u8, ()> = Rooms::new(8);
    service.stop();
    let refused = rooms.join(1, || Ok(Room::new(&service, "late", ())), |_, _| {});
    assert_eq!(refused.unwrap_err(), JoinError::Closed);
    assert!(rooms.is_empty(), "a dead room stayed registered");
}

#[test]
fn keyed_rooms_of_capacity_zero_refuse_without_opening_a_room() {
    let service = service(1);
    let rooms: Rooms<u8, ()> = Rooms::new(0);
    let opened = AtomicBool::new(false);
    let refused = rooms.join(
        1,
        || {
            opened.store(true, Ordering::SeqCst);
            Ok(Room::new(&service, "never", ()))
        },
        |_, _| {},
    );
    assert_eq!(refused.unwrap_err(), JoinError::Full { capacity: 0 });
    assert!(!opened.load(Ordering::SeqCst), "a room was opened");
    assert!(rooms.is_empty());
    service.stop();
}

#[test]
fn a_scrape_counts_every_tick_in_its_histogram_at_one_moment() {
    let service = service(2);
    let rooms: Vec<Room<()>> = (0..64)
        .map(|n| {
            let room = Room::new(&service, format!("busy {n}"), ());
            room.every(Duration::from_millis(1), |_, _, _| {}).unwrap();
            room
        })
        .collect();
    for scrape in 0..3000 {
        let metrics = service.metrics();
        let in_buckets: u64 = metrics.tick_lateness.iter().sum();
        assert_eq!(metrics.ticks, in_buckets, "scrape {scrape}");
        // The text Prometheus reads: `_count` is the `+Inf` bucket.
        let text = metrics.to_prometheus("t");
        let value = |prefix: &str| {
            let line = text.lines().find(|l| l.starts_with(prefix)).unwrap();
            line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
        };
        assert_eq!(
            value("t_tick_lateness_seconds_count"),
            value("t_tick_lateness_seconds_bucket{le=\"+Inf\"}"),
            "scrape {scrape}"
        );
    }
    drop(rooms);
    service.stop();
}

#[test]
fn no_tick_starts_after_a_cancel_from_another_thread_returns() {
    let service = service(1);
    for round in 0..200 {
        let room = Room::new(&service, "cancelled from afar", ());
        let ticker = room
            .every(Duration::from_micros(200), |_, _, _| {
                thread::sleep(Duration::from_micros(50))
            })
            .unwrap();
        while ticker.ran() < 1 + round % 3 {
            thread::yield_now();
        }
        ticker.cancel();
        let ran = ticker.ran();
        // Whatever was queued of the room runs; no tick among it.
        drain(&room);
        assert_eq!(
            ticker.ran(),
            ran,
            "round {round}: a tick ran after cancel returned"
        );
        room.close();
    }
    service.stop();
}
