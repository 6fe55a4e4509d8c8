//! How a service ends: `shutdown` (drain, then stop), `stop`, `wait`, and
//! the report of a shutdown.

use std::fmt;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::core::lock_ignoring_poison;
use super::io::Io;
use super::service::Service;
use crate::sync::current_thread;

/// What [`Service::shutdown`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Sessions whose queued sends were flushed and that closed cleanly.
    pub closed: usize,
    /// Sessions still open when the drain ended — at the deadline, or when
    /// a stop cut it short — disconnected at once.
    pub forced: usize,
    /// Bytes the service's sends delivered to the kernel over its life:
    /// all of them reach the peers that closed cleanly.
    pub bytes_sent: u64,
    /// The shutdown was asked for on one of the service's own worker
    /// threads (from a hook), which cannot wait for the sessions it serves
    /// itself: it goes on on a thread of its own, and the counts above are
    /// 0. [`Service::wait`] waits for it; the final counts are logged.
    pub in_background: bool,
    /// A [`Service::stop`] from elsewhere (a second signal in
    /// [`Service::run_until`]) ended the drain before its deadline: the
    /// `forced` sessions were dropped then, not at the deadline.
    pub cut_short: bool,
    /// Blocking calls ([`BlockingLine`](super::BlockingLine)) still waiting or running at the
    /// deadline: dropped, their results never delivered.
    pub blocking_unfinished: usize,
}

impl ShutdownReport {
    /// The report of a service that stopped before any shutdown.
    pub(crate) fn nothing(bytes_sent: u64) -> ShutdownReport {
        ShutdownReport {
            closed: 0,
            forced: 0,
            bytes_sent,
            in_background: false,
            cut_short: false,
            blocking_unfinished: 0,
        }
    }
}

/// `N sessions closed cleanly, M dropped at the deadline; B bytes sent`
/// (or `M dropped when the drain was cut short`).
impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = if self.cut_short {
            "when the drain was cut short"
        } else {
            "at the deadline"
        };
        write!(
            f,
            "{} sessions closed cleanly, {} dropped {when}; {} bytes sent",
            self.closed, self.forced, self.bytes_sent
        )?;
        if self.blocking_unfinished > 0 {
            write!(
                f,
                "; {} blocking calls unfinished",
                self.blocking_unfinished
            )?;
        }
        Ok(())
    }
}

impl Service {
    /// Shuts the service down cleanly: stops accepting, closes every
    /// session gracefully ([`Session::close_gracefully`](super::Session::close_gracefully): queued sends are
    /// flushed, then the peer sees the end of the stream), waits up to
    /// `timeout` for the peers to close, then stops the service, dropping
    /// whatever session is left.
    pub fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        if self.core.is_worker_thread() {
            return self.shutdown_in_background(timeout);
        }
        self.core.ending.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        let dropped_before = self.core.dropped_by_stop.load(Ordering::Relaxed);
        self.stop_listening();
        tracing::info!(
            "stopped accepting; closing {} sessions gracefully",
            self.session_count()
        );
        let mut closing = rustc_hash::FxHashSet::default();
        loop {
            // Each round closes whatever joined since the last (an accept
            // that completed as the listener stopped).
            for session in self.sessions() {
                if closing.insert(session.id()) {
                    session.close_gracefully();
                }
            }
            if self.session_count() == 0 || Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        // Blocking work the sessions' ends asked for (a save) finishes
        // within the same deadline.
        let blocking_unfinished = self.core.blocking.finish(deadline);
        let cut_short = self.core.stopping.load(Ordering::Acquire);
        self.stop();
        // Those still open at the deadline, or when another thread's
        // `stop` (a second signal) cut the drain short.
        let forced = self.core.dropped_by_stop.load(Ordering::Relaxed) - dropped_before;
        ShutdownReport {
            closed: closing.len().saturating_sub(forced),
            forced,
            bytes_sent: self.bytes_sent(),
            in_background: false,
            cut_short,
            blocking_unfinished,
        }
    }

    /// [`Service::shutdown`] asked for on a worker thread: it goes on on a
    /// thread of its own, so that this worker serves its sessions while
    /// they close.
    fn shutdown_in_background(&self, timeout: Duration) -> ShutdownReport {
        let service = self.clone();
        let spawned = thread::Builder::new()
            .name("service-shutdown".into())
            .spawn(move || {
                let report = service.shutdown(timeout);
                tracing::info!("shutdown: {report}");
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the shutdown's thread ({e}); stopping at once");
            self.stop();
        }
        ShutdownReport {
            in_background: true,
            ..ShutdownReport::nothing(self.bytes_sent())
        }
    }

    /// Waits until the service has stopped ([`Service::stop`], or the end
    /// of a [`Service::shutdown`], from any thread). On one of the
    /// service's own worker threads it returns at once: that worker must go
    /// on serving for the service to stop.
    pub fn wait(&self) {
        if self.core.is_worker_thread() {
            return;
        }
        let mut stopped = lock_ignoring_poison(&self.core.stopped);
        while !*stopped {
            stopped = self
                .core
                .stopped_changed
                .wait(stopped)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn stop_listening(&self) {
        if let Some(listener) = self
            .core
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            listener.close();
        }
    }

    /// Stops the service: stops listening, disconnects every session (each
    /// worker disconnects its own, so every `on_disconnected` runs on its
    /// worker), closes the ports and waits until no worker runs the
    /// service's code any more. A worker then stays on its own until the
    /// kernel has finished the requests left on its ring (the cancellations
    /// of sessions the program still holds), which only it can reap.
    ///
    /// Called from a hook, on a worker, it disconnects that worker's
    /// sessions there and does not wait for it (it leaves once the hook
    /// returns).
    pub fn stop(&self) {
        self.core.stopping.store(true, Ordering::Release);
        self.core.ending.store(true, Ordering::Release);
        self.core.blocking.stop();
        self.stop_listening();
        self.core.timers.stop();
        for schedule in &self.core.schedules {
            schedule.stop();
        }
        let me = current_thread();
        for (index, port) in self.core.ports.iter().enumerate() {
            let worker = self.core.worker_threads.get().map(|w| w[index]);
            if worker == Some(me) {
                self.core.disconnect_sessions_of(me, "service stopped");
            } else if port.post(0, 0, Some(Io::Stop)).is_err() {
                // Stopped already.
            }
        }
        let workers =
            std::mem::take(&mut *self.core.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for worker in workers {
            if worker.key != me {
                worker.wait();
            }
        }
        for port in &self.core.ports {
            port.close();
        }
        // Sessions a worker did not get to (one it was handed as it left):
        // with the ports closed, their hooks run here.
        let left = self.sessions();
        self.core
            .dropped_by_stop
            .fetch_add(left.len(), Ordering::Relaxed);
        for session in left {
            session.disconnect("service stopped");
        }
        *lock_ignoring_poison(&self.core.stopped) = true;
        self.core.stopped_changed.notify_all();
    }
}
