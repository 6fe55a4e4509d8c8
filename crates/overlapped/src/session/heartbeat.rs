//! `Heartbeat`: each worker of a service beats from its own loop, so a
//! health check built on it fails when any worker is stuck — in a job that
//! never returns, a hook that blocks — and not only when the whole process
//! is gone. What an orchestrator's health pings (Agones, a Kubernetes
//! liveness probe) should rest on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::clock::now_millis;
use super::core::ServiceCore;
use super::service::Service;

/// The beats of a service's workers ([`Service::heartbeat`]). There is no
/// Winsock counterpart.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    /// When each worker last beat, in milliseconds on the service clock.
    beats: Arc<Vec<AtomicU64>>,
}

impl Heartbeat {
    /// Whether every worker beat within `within` (a few periods: a worker
    /// that misses that many is stuck).
    pub fn alive(&self, within: Duration) -> bool {
        self.stalled(within).is_empty()
    }

    /// The workers (by index) that have not beat within `within`.
    pub fn stalled(&self, within: Duration) -> Vec<usize> {
        let now = now_millis();
        let within = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        self.beats
            .iter()
            .enumerate()
            .filter(|(_, beat)| now.saturating_sub(beat.load(Ordering::Acquire)) > within)
            .map(|(index, _)| index)
            .collect()
    }
}

impl Service {
    /// Has every worker beat every `period` from its own loop (an entry of
    /// its schedule, run between the packets it handles) until the service
    /// stops; read the beats with [`Heartbeat::alive`].
    pub fn heartbeat(&self, period: Duration) -> Heartbeat {
        let core = self.core();
        let now = now_millis();
        let beats: Arc<Vec<AtomicU64>> = Arc::new(
            (0..core.worker_count())
                .map(|_| AtomicU64::new(now))
                .collect(),
        );
        for index in 0..core.worker_count() {
            arm(Arc::downgrade(core), beats.clone(), index, period);
        }
        Heartbeat { beats }
    }
}

/// The next beat of worker `index`, one `period` from now.
fn arm(core: Weak<ServiceCore>, beats: Arc<Vec<AtomicU64>>, index: usize, period: Duration) {
    let Some(service) = core.upgrade() else {
        return;
    };
    let beat = Box::new(move || {
        beats[index].store(now_millis(), Ordering::Release);
        arm(core, beats, index, period);
    });
    service.run_at(index, Instant::now() + period, beat);
}
