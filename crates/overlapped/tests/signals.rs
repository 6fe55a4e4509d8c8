//! `StopSignals` and `Service::run_until`: a signal that comes before
//! anyone waits for it still drains the sessions. A file of its own: a
//! signal's disposition belongs to the whole process.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use overlapped::session::{Service, ServiceConfig, Session, SessionHandler, StopSignals};

struct Echo;

impl SessionHandler for Echo {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send_copy(data);
        Ok(data.len())
    }
}

#[test]
fn a_sigterm_before_run_until_drains_the_sessions_already_served() {
    let signals = StopSignals::catch().unwrap();
    let config = ServiceConfig {
        workers: 1,
        ..ServiceConfig::default()
    };
    let service = Service::server("127.0.0.1:0", config, Arc::new(|| Arc::new(Echo))).unwrap();
    let mut client = common::connect_to(&service);
    client.write_all(b"ping").unwrap();
    let mut echoed = [0; 4];
    client.read_exact(&mut echoed).unwrap();
    // The signal lands while nobody waits for it: caught, not fatal.
    signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
    // The client reads to the end of the stream the drain gives it, then
    // closes, which lets the drain finish cleanly.
    let reader = thread::spawn(move || {
        let mut rest = Vec::new();
        let end = client.read_to_end(&mut rest).map(|_| rest);
        drop(client);
        end
    });
    let report = service.run_until(signals, Duration::from_secs(60)).unwrap();
    assert_eq!(
        reader.join().unwrap().unwrap(),
        b"",
        "nothing after the echo"
    );
    assert_eq!((report.closed, report.forced), (1, 0), "{report}");
    assert!(!report.cut_short, "{report}");
}
