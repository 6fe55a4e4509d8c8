//! `Service::heartbeat`: every worker beats from its own loop, so a worker
//! stuck in a job shows as stalled while the others beat on.

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use overlapped::game::Room;
use overlapped::session::{Service, ServiceConfig, Session, SessionHandler};

fn service() -> Service {
    struct Quiet;
    impl SessionHandler for Quiet {
        fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
            Ok(data.len())
        }
    }
    let config = ServiceConfig {
        workers: 2,
        ..ServiceConfig::default()
    };
    Service::server("127.0.0.1:0", config, Arc::new(|| Arc::new(Quiet))).unwrap()
}

fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_worker_stuck_in_a_job_stops_beating_and_the_others_go_on() {
    let service = service();
    let heartbeat = service.heartbeat(Duration::from_millis(10));
    let within = Duration::from_millis(200);
    assert!(heartbeat.alive(within));
    // The first room goes to worker 0: its job holds the worker.
    let room = Room::new(&service, "stuck", ());
    let (release, held) = mpsc::channel::<()>();
    assert!(room.push(move |_, _| {
        let _ = held.recv();
    }));
    until("worker 0 is seen stalled", || {
        heartbeat.stalled(within) == [0]
    });
    assert!(!heartbeat.alive(within));
    release.send(()).unwrap();
    until("worker 0 beats again", || heartbeat.alive(within));
    service.stop();
}
