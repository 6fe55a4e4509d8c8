//! Completion routines (the callback flavour) and alertable waits.
//!
//! An operation started with a routine (`WSARecv(..., lpCompletionRoutine)`)
//! does not signal an event: when it completes, its routine is queued to the
//! thread that started it (Windows' APC queue), and runs only when that
//! thread enters an alertable wait: [`crate::sleep_ex`] or
//! [`crate::wait_for_multiple_events`] with `alertable = true`, which then
//! report [`crate::WaitResult::IoCompletion`].
//!
//! The routines themselves stay on their thread (in a thread-local table),
//! so they need not be `Send` and may hold `Rc`s; only the outcome travels.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use crate::driver::op::{IoParts, Notify, Outcome, Payload, Sink};
use crate::driver::signal::Signal;

/// A routine as the thread keeps it.
pub(crate) type Routine = Box<dyn FnOnce(Outcome, Option<IoParts>)>;

/// A thread's queue of completed operations whose routines must run.
pub(crate) struct ApcQueue {
    ready: Mutex<Vec<(u64, Outcome, Option<IoParts>)>>,
    /// Signaled while `ready` is not empty; alertable waits watch it.
    pub(crate) wake: Signal,
}

impl Sink for ApcQueue {
    fn deliver(&self, id: u64, outcome: Outcome, payload: Payload) {
        // Routines never start multishot receives: only final deliveries.
        let Payload::Done { op, .. } = payload else {
            return;
        };
        let parts = op.take_parts();
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, outcome, parts));
        if let Err(e) = self.wake.set() {
            tracing::error!("cannot wake the thread of a completion routine: {e}");
        }
    }
}

struct RoutineThread {
    queue: RefCell<Option<Arc<ApcQueue>>>,
    routines: RefCell<HashMap<u64, Routine>>,
    next_id: Cell<u64>,
}

thread_local! {
    static THREAD: RoutineThread = RoutineThread {
        queue: RefCell::new(None),
        routines: RefCell::new(HashMap::new()),
        next_id: Cell::new(0),
    };
}

/// This thread's queue, created on first use.
pub(crate) fn current_queue() -> io::Result<Arc<ApcQueue>> {
    THREAD.with(|thread| {
        let mut queue = thread.queue.borrow_mut();
        if let Some(queue) = &*queue {
            return Ok(queue.clone());
        }
        let created = Arc::new(ApcQueue {
            ready: Mutex::new(Vec::new()),
            wake: Signal::new()?,
        });
        *queue = Some(created.clone());
        Ok(created)
    })
}

/// Keeps `routine` on this thread and returns the notification that queues
/// it here when its operation completes, with the key to [`unregister`] it.
pub(crate) fn register(routine: Routine) -> io::Result<(u64, Notify)> {
    let queue = current_queue()?;
    let id = THREAD.with(|thread| {
        let id = thread.next_id.get();
        thread.next_id.set(id + 1);
        thread.routines.borrow_mut().insert(id, routine);
        id
    });
    Ok((id, Notify::Deliver((queue, id))))
}

/// Forgets a routine whose operation did not start.
pub(crate) fn unregister(id: u64) {
    THREAD.with(|thread| thread.routines.borrow_mut().remove(&id));
}

/// Runs the routines queued on this thread until none is left — those
/// queued while they run too (a routine that starts an operation which
/// completes at once), as Windows delivers APCs until the queue is empty;
/// returns whether any ran. A routine that panics is logged and the others
/// still run: the panic costs that one operation's report, not the
/// thread's other routines.
pub(crate) fn run_queued() -> bool {
    let Ok(queue) = current_queue() else {
        return false;
    };
    let mut ran = false;
    loop {
        // Reset before taking, so a push after the take leaves the event set.
        let _ = queue.wake.reset();
        let ready = std::mem::take(&mut *queue.ready.lock().unwrap_or_else(|p| p.into_inner()));
        if ready.is_empty() {
            return ran;
        }
        ran = true;
        for (id, outcome, parts) in ready {
            // Take the routine out before calling it: it may start
            // operations that register routines of their own.
            let routine = THREAD.with(|thread| thread.routines.borrow_mut().remove(&id));
            if let Some(routine) = routine {
                let _ = crate::boundary::catch("a completion routine", || routine(outcome, parts));
            }
        }
    }
}
