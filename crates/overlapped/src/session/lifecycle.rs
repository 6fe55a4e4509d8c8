//! Running a service as a server process: until SIGINT or SIGTERM, then a
//! graceful shutdown.

use std::io;
use std::thread;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::service::{Service, ShutdownReport};

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

impl Service {
    /// Serves until the process gets SIGINT or SIGTERM, then shuts down
    /// gracefully as [`Service::shutdown`] does with `grace` (sends that
    /// were accepted are flushed, clients see the end of the stream). A
    /// second signal during that drain stops the service at once, dropping
    /// every session. Returns the shutdown's report — or, if the service
    /// stopped otherwise first ([`Service::stop`] from a hook), a report of
    /// nothing closed.
    ///
    /// What it does is logged through `tracing`. The signals are caught
    /// from this call on (the program keeps its own handlers, if any, for
    /// before it). It blocks, so it is refused on one of the service's own
    /// worker threads.
    pub fn run_until_signal(&self, grace: Duration) -> io::Result<ShutdownReport> {
        if self.core().current_worker().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "run_until_signal blocks until a signal: call it from a thread of the program, \
                 not from a hook on the service's worker",
            ));
        }
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        // Should the service stop by itself, stop waiting for a signal.
        let watcher = {
            let (service, handle) = (self.clone(), handle.clone());
            thread::Builder::new()
                .name("service-watch".into())
                .spawn(move || {
                    service.wait();
                    handle.close();
                })?
        };
        let Some(signal) = signals.forever().next() else {
            let _ = watcher.join();
            return Ok(ShutdownReport {
                closed: 0,
                forced: 0,
                bytes_sent: self.bytes_sent(),
                in_background: false,
            });
        };
        tracing::info!(
            "{} received: shutting down (flushing sends, up to {} ms)",
            signal_name(signal),
            grace.as_millis()
        );
        let stopper = self.clone();
        let second = thread::Builder::new()
            .name("service-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    tracing::warn!(
                        "{} received during the shutdown: stopping at once, dropping every session",
                        signal_name(signal)
                    );
                    stopper.stop();
                }
            })?;
        let report = self.shutdown(grace);
        handle.close();
        let _ = second.join();
        let _ = watcher.join();
        tracing::info!(
            "shutdown: {} sessions closed cleanly, {} dropped at the deadline; {} bytes sent",
            report.closed,
            report.forced,
            report.bytes_sent
        );
        Ok(report)
    }
}
