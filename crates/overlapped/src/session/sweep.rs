//! What the timer thread does to a service's sessions: drops those stalled
//! past the idle or handshake timeout, and sheds the heaviest past the
//! memory budget.

use std::time::Duration;

use super::clock::now_millis;
use super::config::ServiceConfig;
use super::core::ServiceCore;
use super::timers::Sweeps;

/// The sweeps of `core` for its timer thread.
pub(super) fn of(core: &ServiceCore) -> Sweeps<impl Fn() + '_, impl Fn(usize) -> usize + '_> {
    Sweeps {
        sweep_every: sweep_every(core.config()),
        drop_stalled: move || drop_stalled_sessions(core),
        budget: core.config().max_memory,
        hold_to_budget: move |budget| hold_to_budget(core, budget),
    }
}

/// How often stalled sessions are looked for: a quarter of the shorter
/// timeout, within 10 ms and a second.
fn sweep_every(config: &ServiceConfig) -> Option<Duration> {
    [config.idle_timeout, config.handshake_timeout]
        .into_iter()
        .flatten()
        .min()
        .map(|t| (t / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)))
}

/// Disconnects the sessions holding the most while the service holds more
/// than half of `budget` for them, down to nine twentieths. The other half
/// is room for what the bytes held cost the allocator and for the server's
/// own memory, so that the process stays within the budget. Broadcasts on
/// their way to a busy worker count too, but no session holds them: a
/// session is shed only for bytes of its own, never one that holds
/// nothing, which would free nothing. Returns what the service holds
/// afterwards.
fn hold_to_budget(core: &ServiceCore, budget: usize) -> usize {
    let mut sessions: Vec<(usize, _)> = core
        .session_snapshot()
        .into_iter()
        .map(|session| (session.held_bytes(), session))
        .collect();
    let in_transit = core.held_in_transit();
    let mut held = sessions.iter().map(|(bytes, _)| bytes).sum::<usize>() + in_transit;
    let limit = budget / 2;
    if held <= limit {
        return held;
    }
    sessions.sort_unstable_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    let target = limit / 10 * 9;
    for (bytes, session) in sessions {
        // Heaviest first: past the first that holds nothing, none holds any.
        if held <= target || bytes == 0 {
            break;
        }
        session.disconnect(&format!(
            "memory budget: the server holds {held} bytes for its sessions ({in_transit} of \
             them broadcasts on their way to a busy worker), past half of its {budget}; \
             this one held the most ({bytes} bytes)"
        ));
        held = held.saturating_sub(bytes);
    }
    held
}

/// Disconnects the sessions of `core` that completed no packet for longer
/// than its idle timeout, or no first packet within its handshake timeout.
fn drop_stalled_sessions(core: &ServiceCore) {
    let config = core.config();
    let millis = |t: Option<Duration>| t.map(|t| t.as_millis() as u64);
    let (idle, handshake) = (
        millis(config.idle_timeout),
        millis(config.handshake_timeout),
    );
    if idle.is_none() && handshake.is_none() {
        return;
    }
    let now = now_millis();
    for session in core.session_snapshot() {
        if let Some(limit) = handshake {
            if let Some(silent) = session.silent_for(now).filter(|&s| s > limit) {
                session.disconnect(&format!(
                    "handshake timeout: no first packet in {silent} ms (limit {limit} ms)"
                ));
                continue;
            }
        }
        if let Some(limit) = idle {
            let stalled = session.stalled_for(now);
            if stalled > limit {
                session.disconnect(&format!(
                    "idle timeout: no complete packet for {stalled} ms (limit {limit} ms)"
                ));
            }
        }
    }
}
