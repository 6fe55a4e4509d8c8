//! Whether a session still takes sends, and how many sends other threads
//! have handed to its worker that it has not queued yet — one atomic word,
//! so that a graceful close never shuts the connection ahead of a send it
//! accepted (a protocol of its own, checked by loom: `loom_models` below).
//!
//! A send from another thread is *admitted* (counted) before it is handed
//! to the worker, unless the close has begun; the close sets `DRAINING` in
//! the same word. Both are read-modify-writes of one word, so they are
//! ordered: either the send was counted first, and the worker shuts the
//! write side only once it has queued it (and everything queued is sent),
//! or the close came first, and the send is refused (`false`).

use crate::sync::atomic::{AtomicU64, Ordering};

/// A graceful close has begun: no send is admitted any more.
const DRAINING: u64 = 1 << 63;

pub(crate) struct SendGate {
    /// `DRAINING`, and below it the sends handed over and not yet queued.
    word: AtomicU64,
}

impl SendGate {
    pub(crate) fn new() -> SendGate {
        SendGate {
            word: AtomicU64::new(0),
        }
    }

    /// Counts a send another thread is about to hand to the worker; `false`
    /// (not counted) once the close has begun.
    pub(crate) fn admit(&self) -> bool {
        self.word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                (word & DRAINING == 0).then_some(word + 1)
            })
            .is_ok()
    }

    /// A send counted by [`SendGate::admit`] was queued on the worker, or
    /// was never handed over after all.
    pub(crate) fn handed_over(&self) {
        self.word.fetch_sub(1, Ordering::AcqRel);
    }

    /// Begins the graceful close; whether this call began it.
    pub(crate) fn begin_drain(&self) -> bool {
        self.word.fetch_or(DRAINING, Ordering::AcqRel) & DRAINING == 0
    }

    /// Whether the graceful close has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.word.load(Ordering::Acquire) & DRAINING != 0
    }

    /// Whether admitted sends are still on their way to the worker.
    pub(crate) fn has_handed_over(&self) -> bool {
        self.word.load(Ordering::Acquire) & !DRAINING != 0
    }
}

/// loom models. Tried and seen failing: the close's flag and the count as
/// two atomics (the sender reads "not closing", the closer reads "nothing
/// handed over", and the write side shuts ahead of the admitted send).
#[cfg(all(test, loom))]
mod loom_models {
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    use super::*;

    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    enum Wire {
        Sent,
        Shut,
    }

    #[test]
    fn a_send_admitted_as_the_session_closes_goes_out_before_the_shut() {
        loom::model(|| {
            let gate = Arc::new(SendGate::new());
            // The worker's port: what other threads hand it, in order.
            let port = Arc::new(Mutex::new(Vec::new()));
            let sender = {
                let (gate, port) = (gate.clone(), port.clone());
                thread::spawn(move || {
                    let admitted = gate.admit();
                    if admitted {
                        port.lock().unwrap().push(());
                    }
                    admitted
                })
            };
            // This thread is the worker, and closes: it shuts the write
            // side at once if nothing is handed over, else once it has
            // queued what was.
            let mut wire = Vec::new();
            gate.begin_drain();
            if !gate.has_handed_over() {
                wire.push(Wire::Shut);
            }
            let admitted = sender.join().unwrap();
            while port.lock().unwrap().pop().is_some() {
                wire.push(Wire::Sent);
                gate.handed_over();
                if !gate.has_handed_over() && !wire.contains(&Wire::Shut) {
                    wire.push(Wire::Shut);
                }
            }
            if admitted {
                let sent = wire.iter().position(|w| *w == Wire::Sent);
                let shut = wire.iter().position(|w| *w == Wire::Shut);
                assert!(
                    sent.is_some() && sent < shut,
                    "shut ahead of a send: {wire:?}"
                );
            }
        });
    }
}
