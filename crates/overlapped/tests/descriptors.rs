//! A stopped service gives back every descriptor it made once the program
//! drops it — the ring of its one worker included, which only that worker
//! can reap. One test in its own process, so that nothing else opens
//! descriptors meanwhile.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use overlapped::session::{Service, ServiceConfig, Session, SessionHandler};

/// Echoes what it receives.
struct Echo;

impl SessionHandler for Echo {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send_copy(data);
        Ok(data.len())
    }
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The number of open descriptors once it has not changed for half a
/// second (what the last service left is closed by its worker meanwhile).
fn settled_count() -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = open_descriptors();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        let now = open_descriptors();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// Runs a one-worker echo service through one exchange, then stops it.
fn serve_one_client() {
    let config = ServiceConfig {
        workers: 1,
        ..ServiceConfig::default()
    };
    let service = Service::server("127.0.0.1:0", config, Arc::new(|| Arc::new(Echo))).unwrap();
    let mut client = TcpStream::connect(service.local_addr().unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"ping").unwrap();
    let mut echoed = [0; 4];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
    service.stop();
}

#[test]
fn a_stopped_one_worker_service_closes_every_descriptor_once_dropped() {
    // The first run makes what lives for the whole process (the
    // process-wide ring and its thread).
    serve_one_client();
    let baseline = settled_count();
    serve_one_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = open_descriptors();
        if open <= baseline {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} descriptors open, {baseline} before the service"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
