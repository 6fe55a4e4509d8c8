//! The game's saves and loads, off the workers: calls go to the store on
//! one line of the service's blocking threads, in batches — every save
//! waiting goes in one transaction, every load waiting in one query — so a
//! slow database costs joins a little latency and never stalls a tick.
//!
//! Saves wait in a bounded buffer (the latest per name), which is what a
//! lost database costs: play goes on, one line says the database is gone,
//! and the saves are retried with backoff until it is back (one line says
//! so). A load answers from the buffer first, so a player who comes back
//! at once gets what was just saved. What could not be written by exit is
//! counted in [`Persistence::close`]'s report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use overlapped::session::{BlockingLine, LogBudget, Service};

use super::store::{Saved, Store};

/// Most saves the buffer holds (one per name) while the store falls
/// behind or is gone; past it a save is dropped, and counted.
pub const MAX_PENDING_SAVES: usize = 100_000;
/// The first pause before a failed call is tried again; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Deliver = Box<dyn FnOnce(Option<Saved>) + Send>;

/// The game's link to its store (or to none: `--db none`).
pub struct Persistence {
    /// The store, used by one call at a time (the line's, or `close`'s).
    store: Option<Mutex<Box<dyn Store>>>,
    /// The service's blocking line, made at the first call.
    line: OnceLock<BlockingLine>,
    pending: Mutex<Pending>,
    capacity: usize,
    log: LogBudget,
}

#[derive(Default)]
struct Pending {
    saves: HashMap<String, Saved>,
    /// The saves of the batch the store is writing now: a load sees them.
    writing: HashMap<String, Saved>,
    loads: HashMap<String, Vec<Deliver>>,
    /// A run is queued on the line, or under way.
    scheduled: bool,
    /// Since when the store has failed, and the pause before the next try.
    failing: Option<(Instant, Duration)>,
    written: u64,
    dropped: u64,
}

/// What [`Persistence::close`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseReport {
    /// Saves written over the game's life.
    pub written: u64,
    /// Saves that could not be written: still waiting at the deadline, or
    /// dropped while the buffer was full.
    pub unsaved: u64,
}

impl Persistence {
    /// Saves and loads go to `store`; none are kept with `None`.
    pub fn new(store: Option<Box<dyn Store>>) -> Arc<Persistence> {
        Persistence::with_capacity(store, MAX_PENDING_SAVES)
    }

    pub fn with_capacity(store: Option<Box<dyn Store>>, capacity: usize) -> Arc<Persistence> {
        Arc::new(Persistence {
            store: store.map(Mutex::new),
            line: OnceLock::new(),
            pending: Mutex::new(Pending::default()),
            capacity,
            log: LogBudget::new(5),
        })
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `name`'s record (or `None`: a new player, no store, or a store
    /// that failed) to `deliver`, from a blocking thread or at once.
    pub fn load(
        self: &Arc<Self>,
        service: &Service,
        name: &str,
        deliver: impl FnOnce(Option<Saved>) + Send + 'static,
    ) {
        if self.store.is_none() {
            return deliver(None);
        }
        let known = {
            let mut pending = self.pending();
            let known = pending
                .saves
                .get(name)
                .or(pending.writing.get(name))
                .copied();
            if known.is_none() {
                let waiting = pending.loads.entry(name.to_owned()).or_default();
                waiting.push(Box::new(deliver));
                drop(pending);
                self.schedule(service);
                return;
            }
            known
        };
        deliver(known);
    }

    /// Queues `saved` as `name`'s record (replacing one not written yet).
    pub fn save(self: &Arc<Self>, service: Option<&Service>, name: &str, saved: Saved) {
        if self.store.is_none() {
            return;
        }
        {
            let mut pending = self.pending();
            let full = pending.saves.len() >= self.capacity && !pending.saves.contains_key(name);
            if full {
                pending.dropped += 1;
                drop(pending);
                self.log.log(&format!(
                    "the game's database is behind: {} saves wait, the most kept; \
                     {name}'s is dropped",
                    self.capacity
                ));
                return;
            }
            pending.saves.insert(name.to_owned(), saved);
        }
        if let Some(service) = service {
            self.schedule(service);
        }
    }

    /// Queues a run on the service's blocking line unless one is queued.
    fn schedule(self: &Arc<Self>, service: &Service) {
        if std::mem::replace(&mut self.pending().scheduled, true) {
            return;
        }
        self.line.get_or_init(|| service.blocking_line());
        self.queue_run();
    }

    /// Queues a run; the run queues the next while work waits.
    fn queue_run(self: &Arc<Self>) {
        let Some(line) = self.line.get() else {
            return;
        };
        let (this, next) = (self.clone(), self.clone());
        let queued = line.run(
            move || this.run(),
            move |more| {
                // A run that panicked (in the store) may have left work.
                let more = more.unwrap_or_else(|_| next.settle());
                if more {
                    next.queue_run();
                }
            },
        );
        if let Err(e) = queued {
            // Stopping, or the pool is full: what waits is written by the
            // next run, or by `close`.
            self.pending().scheduled = false;
            self.log
                .log(&format!("cannot reach the game's database now: {e}"));
        }
    }

    /// Whether work waits; if none, no run is scheduled any more.
    fn settle(&self) -> bool {
        let mut pending = self.pending();
        let more =
            !pending.saves.is_empty() || !pending.writing.is_empty() || !pending.loads.is_empty();
        if !more {
            pending.scheduled = false;
        }
        more
    }

    /// One run on the line: the waiting saves in one transaction, then the
    /// waiting loads in one query. Whether more work waits.
    fn run(self: &Arc<Self>) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
        self.write_saves(store.as_mut());
        self.answer_loads(store.as_mut());
        if !self.settle() {
            return false;
        }
        let backoff = self.pending().failing.map(|(_, pause)| pause);
        // A failing store is tried again after its pause (this line's
        // thread waits; the workers do not).
        if let Some(pause) = backoff {
            drop(store);
            std::thread::sleep(pause);
        }
        true
    }

    fn write_saves(&self, store: &mut dyn Store) {
        let batch: Vec<(String, Saved)> = {
            let mut pending = self.pending();
            // A batch a panicking store call left behind goes again.
            for (name, saved) in std::mem::take(&mut pending.writing) {
                pending.saves.entry(name).or_insert(saved);
            }
            let saves = std::mem::take(&mut pending.saves);
            pending.writing = saves.clone();
            saves.into_iter().collect()
        };
        if batch.is_empty() {
            return;
        }
        let outcome = store.save(&batch);
        let mut pending = self.pending();
        let writing = std::mem::take(&mut pending.writing);
        match outcome {
            Ok(()) => {
                pending.written += batch.len() as u64;
                if let Some((since, _)) = pending.failing.take() {
                    tracing::info!(
                        "the game's database is back after {:.1} s: {} saves written",
                        since.elapsed().as_secs_f64(),
                        batch.len()
                    );
                }
            }
            Err(e) => {
                // Kept for the next try, unless a newer save replaced it.
                for (name, saved) in writing {
                    pending.saves.entry(name).or_insert(saved);
                }
                let waiting = pending.saves.len();
                match &mut pending.failing {
                    None => {
                        pending.failing = Some((Instant::now(), FIRST_BACKOFF));
                        tracing::error!(
                            "the game's database is unavailable ({e}): play goes on; \
                             {waiting} saves are kept and retried with backoff"
                        );
                    }
                    Some((_, pause)) => *pause = (*pause * 2).min(MAX_BACKOFF),
                }
            }
        }
    }

    fn answer_loads(&self, store: &mut dyn Store) {
        let loads = std::mem::take(&mut self.pending().loads);
        if loads.is_empty() {
            return;
        }
        let names: Vec<String> = loads.keys().cloned().collect();
        let found: HashMap<String, Saved> = match store.load(&names) {
            Ok(found) => found.into_iter().collect(),
            Err(e) => {
                // The players start afresh rather than wait.
                self.log.log(&format!(
                    "cannot load {} players from the game's database ({e}): they start at (0, 0)",
                    names.len()
                ));
                HashMap::new()
            }
        };
        for (name, waiting) in loads {
            let saved = found.get(&name).copied();
            for deliver in waiting {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| deliver(saved)));
            }
        }
    }

    /// Writes what waits, on this thread, until done or `deadline`: the
    /// last saves before exit (the service has stopped; nothing else calls
    /// the store now but a run under way, which this waits for).
    pub fn close(&self, deadline: Instant) -> CloseReport {
        let Some(store) = &self.store else {
            return CloseReport {
                written: 0,
                unsaved: 0,
            };
        };
        let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
        let mut pause = FIRST_BACKOFF;
        loop {
            let waiting = self.pending().saves.len();
            if waiting == 0 || Instant::now() >= deadline {
                break;
            }
            self.write_saves(store.as_mut());
            if !self.pending().saves.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
        let pending = self.pending();
        CloseReport {
            written: pending.written,
            unsaved: pending.saves.len() as u64 + pending.dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc;

    use overlapped::session::{ServiceConfig, Session, SessionHandler};

    use super::*;

    /// A store in memory that fails while `down`, and panics once if asked.
    #[derive(Clone, Default)]
    struct Flaky {
        rows: Arc<Mutex<HashMap<String, Saved>>>,
        down: Arc<AtomicBool>,
        panic_once: Arc<AtomicBool>,
        failed: Arc<AtomicUsize>,
    }

    impl Store for Flaky {
        fn load(&mut self, names: &[String]) -> Result<Vec<(String, Saved)>, String> {
            if self.down.load(Ordering::SeqCst) {
                self.failed.fetch_add(1, Ordering::SeqCst);
                return Err("connection refused".into());
            }
            let rows = self.rows.lock().unwrap();
            Ok(names
                .iter()
                .filter_map(|n| rows.get(n).map(|s| (n.clone(), *s)))
                .collect())
        }

        fn save(&mut self, batch: &[(String, Saved)]) -> Result<(), String> {
            if self.panic_once.swap(false, Ordering::SeqCst) {
                panic!("the driver fell over");
            }
            if self.down.load(Ordering::SeqCst) {
                self.failed.fetch_add(1, Ordering::SeqCst);
                return Err("connection refused".into());
            }
            self.rows.lock().unwrap().extend(batch.iter().cloned());
            Ok(())
        }
    }

    fn service() -> Service {
        struct Quiet;
        impl SessionHandler for Quiet {
            fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
                Ok(data.len())
            }
        }
        let config = ServiceConfig {
            workers: 1,
            ..ServiceConfig::default()
        };
        Service::server("127.0.0.1:0", config, Arc::new(|| Arc::new(Quiet))).unwrap()
    }

    fn at(x: f32) -> Saved {
        Saved {
            x,
            y: x,
            play_time_ms: 1,
        }
    }

    fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn saves_wait_in_a_bounded_buffer_while_the_store_is_down_and_are_written_when_it_is_back() {
        let service = service();
        let store = Flaky::default();
        store.down.store(true, Ordering::SeqCst);
        let persistence = Persistence::with_capacity(Some(Box::new(store.clone())), 3);
        for (n, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            persistence.save(Some(&service), name, at(n as f32));
        }
        until("a failed save", || store.failed.load(Ordering::SeqCst) > 0);
        store.down.store(false, Ordering::SeqCst);
        until("the kept saves written", || {
            store.rows.lock().unwrap().len() == 3
        });
        let rows = store.rows.lock().unwrap().clone();
        assert_eq!(rows.get("a"), Some(&at(0.0)));
        assert!(!rows.contains_key("d") && !rows.contains_key("e"));
        let report = persistence.close(Instant::now());
        assert_eq!((report.written, report.unsaved), (3, 2));
        service.stop();
    }

    #[test]
    fn a_load_sees_a_save_not_written_yet() {
        let service = service();
        let store = Flaky::default();
        store.down.store(true, Ordering::SeqCst);
        let persistence = Persistence::new(Some(Box::new(store.clone())));
        persistence.save(Some(&service), "ann", at(7.0));
        let (tx, rx) = mpsc::channel();
        persistence.load(&service, "ann", move |saved| tx.send(saved).unwrap());
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)).unwrap(),
            Some(at(7.0))
        );
        service.stop();
    }

    #[test]
    fn a_load_from_a_store_that_is_down_starts_the_player_afresh() {
        let service = service();
        let store = Flaky::default();
        store.down.store(true, Ordering::SeqCst);
        let persistence = Persistence::new(Some(Box::new(store)));
        let (tx, rx) = mpsc::channel();
        persistence.load(&service, "new", move |saved| tx.send(saved).unwrap());
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), None);
        service.stop();
    }

    #[test]
    fn close_counts_the_saves_it_could_not_write_by_its_deadline() {
        let service = service();
        let store = Flaky::default();
        store.down.store(true, Ordering::SeqCst);
        let persistence = Persistence::new(Some(Box::new(store)));
        persistence.save(None, "stuck", at(1.0));
        let report = persistence.close(Instant::now() + Duration::from_millis(300));
        assert_eq!((report.written, report.unsaved), (0, 1));
        service.stop();
    }

    #[test]
    fn a_store_that_panics_loses_no_save() {
        let service = service();
        let store = Flaky::default();
        store.panic_once.store(true, Ordering::SeqCst);
        let persistence = Persistence::new(Some(Box::new(store.clone())));
        persistence.save(Some(&service), "first", at(1.0));
        until("the panic", || !store.panic_once.load(Ordering::SeqCst));
        persistence.save(Some(&service), "second", at(2.0));
        until("both written", || store.rows.lock().unwrap().len() == 2);
        service.stop();
    }
}
