//! A thread of a service: started with a name, and waited for until it
//! has stopped running the service's code.

use std::io;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use crate::sync::{current_thread, ThreadKey};

/// A thread of the service.
pub(super) struct Worker {
    pub(super) thread: JoinHandle<()>,
    /// The thread, as the driver knows it (see `sync::ThreadKey`).
    pub(super) key: ThreadKey,
    /// Says, once the thread has stopped running the service's code,
    /// whether it stays to reap its confined ring (then it is not waited
    /// for); disconnected if the thread ended without saying (a panic).
    stopped: mpsc::Receiver<bool>,
}

impl Worker {
    /// Starts a thread that runs `body`, then whatever `body` leaves it to
    /// do after the service (the reaping of a confined ring).
    pub(super) fn spawn<F, A>(name: String, body: F) -> io::Result<Worker>
    where
        F: FnOnce() -> Option<A> + Send + 'static,
        A: FnOnce(),
    {
        let (stopping, stopped) = mpsc::channel::<bool>();
        let (starting, started) = mpsc::channel::<ThreadKey>();
        let thread = thread::Builder::new().name(name).spawn(move || {
            let _ = starting.send(current_thread());
            let afterwards = body();
            // The receiver may be gone with a service that was never stopped.
            let _ = stopping.send(afterwards.is_some());
            drop(stopping);
            if let Some(afterwards) = afterwards {
                afterwards();
            }
        })?;
        let key = started
            .recv()
            .map_err(|_| io::Error::other("a service thread ended as it started"))?;
        Ok(Worker {
            thread,
            key,
            stopped,
        })
    }

    /// Waits until the thread has stopped running the service's code, then
    /// for it to end, unless it stays to reap a confined ring.
    pub(super) fn wait(self) {
        // An error means the thread ended without saying (a panic).
        if self.stopped.recv() != Ok(true) {
            let _ = self.thread.join();
        }
    }
}
