//! Running a service as a server process: until SIGINT or SIGTERM, then a
//! graceful shutdown.

use std::fmt;
use std::io;
use std::thread;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::service::Service;
use super::shutdown::ShutdownReport;

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// SIGINT and SIGTERM, caught from the moment this is made until it is
/// dropped: a signal that arrives in between waits for
/// [`Service::run_until`] instead of ending the process (the Windows
/// counterpart is `SetConsoleCtrlHandler`).
///
/// Make it before the service listens, so that no connection is accepted
/// while a signal would still end the process without a drain:
///
/// ```no_run
/// # use std::sync::Arc;
/// # use std::time::Duration;
/// # use overlapped::session::{Service, ServiceConfig, Session, SessionHandler, StopSignals};
/// # struct Echo;
/// # impl SessionHandler for Echo {
/// #     fn on_recv(&self, s: &Arc<Session>, d: &[u8]) -> Result<usize, String> { s.send_copy(d); Ok(d.len()) }
/// # }
/// let signals = StopSignals::catch()?;
/// let service = Service::server("127.0.0.1:7777", ServiceConfig::default(), Arc::new(|| Arc::new(Echo)))?;
/// let report = service.run_until(signals, Duration::from_secs(5))?;
/// println!("{report}");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct StopSignals {
    signals: Signals,
}

impl StopSignals {
    /// Catches SIGINT and SIGTERM from now on, for this process.
    pub fn catch() -> io::Result<StopSignals> {
        Ok(StopSignals {
            signals: Signals::new([SIGINT, SIGTERM])?,
        })
    }
}

impl fmt::Debug for StopSignals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StopSignals(SIGINT, SIGTERM)")
    }
}

impl Service {
    /// Serves until `signals` catch SIGINT or SIGTERM (one that came before
    /// this call included), then shuts down gracefully as
    /// [`Service::shutdown`] does with `grace` (sends that were accepted
    /// are flushed, clients see the end of the stream). A second signal
    /// during that drain stops the service at once, dropping every session
    /// left; the report then says the drain was cut short
    /// ([`ShutdownReport::cut_short`]). Returns the shutdown's report — or,
    /// if the service stopped otherwise first ([`Service::stop`] from a
    /// hook), a report of nothing closed.
    ///
    /// What it does is logged through `tracing`. It blocks, so it is
    /// refused on one of the service's own worker threads.
    pub fn run_until(&self, signals: StopSignals, grace: Duration) -> io::Result<ShutdownReport> {
        if self.core().current_worker().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "run_until blocks until a signal: call it from a thread of the program, \
                 not from a hook on the service's worker",
            ));
        }
        let mut signals = signals.signals;
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
            return Ok(ShutdownReport::nothing(self.bytes_sent()));
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
                let signal = signals.forever().next()?;
                tracing::warn!(
                    "{} received during the shutdown: stopping at once, dropping every session",
                    signal_name(signal)
                );
                stopper.stop();
                Some(signal)
            })?;
        let report = self.shutdown(grace);
        handle.close();
        let second_signal = second.join().ok().flatten();
        let _ = watcher.join();
        match second_signal {
            Some(signal) if report.cut_short => tracing::info!(
                "shutdown cut short by a second {}: {report}",
                signal_name(signal)
            ),
            _ => tracing::info!("shutdown: {report}"),
        }
        Ok(report)
    }
}
