//! A service's end: what `shutdown` reports when it is cut short by
//! `stop`, and `run_until` when the service stops by itself.

use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use overlapped::session::{Service, ServiceConfig, Session, SessionHandler, StopSignals};

struct Quiet;

impl SessionHandler for Quiet {
    fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        Ok(data.len())
    }
}

fn service() -> Service {
    let config = ServiceConfig {
        workers: 1,
        ..ServiceConfig::default()
    };
    Service::server("127.0.0.1:0", config, Arc::new(|| Arc::new(Quiet))).unwrap()
}

/// Waits until `service` has `n` sessions.
fn sessions(service: &Service, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while service.session_count() != n {
        assert!(Instant::now() < deadline, "never reached {n} sessions");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_shutdown_cut_short_by_stop_reports_the_sessions_it_dropped() {
    let service = service();
    // Clients that never close: the drain waits for them.
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(service.local_addr().unwrap()).unwrap())
        .collect();
    sessions(&service, 3);
    let draining = service.clone();
    let shutdown = thread::spawn(move || draining.shutdown(Duration::from_secs(60)));
    // The drain has begun once the listener is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while service.local_addr().is_some() {
        assert!(Instant::now() < deadline, "the shutdown never began");
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(20));
    service.stop();
    let report = shutdown.join().unwrap();
    assert_eq!((report.closed, report.forced), (0, 3), "{report:?}");
    assert!(report.cut_short, "{report:?}");
    assert!(
        report
            .to_string()
            .contains("3 dropped when the drain was cut short"),
        "{report}"
    );
    drop(clients);
}

#[test]
fn run_until_returns_when_the_service_stops_otherwise() {
    let service = service();
    let running = {
        let service = service.clone();
        let signals = StopSignals::catch().unwrap();
        thread::spawn(move || service.run_until(signals, Duration::from_secs(1)))
    };
    thread::sleep(Duration::from_millis(20));
    service.stop();
    let report = running.join().unwrap().unwrap();
    assert_eq!((report.closed, report.forced), (0, 0));
}
