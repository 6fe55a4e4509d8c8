//! Finished operations kept for reuse, per thread.

use std::cell::RefCell;
use std::sync::Arc;

use super::{IoParts, Op, OpKind};

/// A completed operation as a sink hands it on: when the last reference to
/// it goes, its allocation is kept for the next operation this thread
/// starts. A server starts one per message; reusing the record saves an
/// allocation and a free each time.
pub(crate) struct Finished(Option<Arc<Op>>);

impl Finished {
    pub(super) fn new(op: Arc<Op>) -> Finished {
        Finished(Some(op))
    }

    /// The operation's memory (see [`Op::take_parts`]).
    pub(crate) fn take_parts(&self) -> Option<IoParts> {
        self.0.as_ref().and_then(|op| op.take_parts())
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(op) = self.0.take() {
            keep_spare(op);
        }
    }
}

/// Most finished operations a thread keeps for reuse: enough for a burst of
/// completions handled between two starts, small enough not to matter.
const SPARE_OPS: usize = 256;

thread_local! {
    static SPARE: RefCell<Vec<Arc<Op>>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `op` for reuse if nothing else refers to it: no kernel request,
/// no cancel naming it, no `Overlapped`, no weak reference.
fn keep_spare(mut op: Arc<Op>) {
    let Some(unshared) = Arc::get_mut(&mut op) else {
        return;
    };
    // Let go of what the operation held now, not when it is reused.
    unshared.kind = OpKind::CancelAll;
    unshared.socket = None;
    unshared.event = None;
    unshared.deliver = None;
    unshared.phase = super::Phase::new(None, super::Outcome::aborted());
    // During thread teardown the list may be gone: then the op is freed.
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_OPS {
            spare.push(op);
        }
    });
}

pub(super) fn take_spare() -> Option<Arc<Op>> {
    SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
}
