//! `--agones`: the server's life as an Agones GameServer (agones.dev), over
//! gRPC to the SDK sidecar of its pod, with the official `agones` crate:
//!
//! - `Ready` once the server listens;
//! - `Health` every `--agones-health-ms`, but only while every worker beats
//!   from its own loop ([`overlapped::session::Heartbeat`]): a worker stuck
//!   in a job stops the pings, and Agones replaces the process;
//! - players tracked as sessions connect and disconnect (`PlayerConnect`,
//!   `PlayerDisconnect`: Agones' player tracking, where the cluster has it
//!   on), and the labels `players` and `rooms` kept up to date;
//! - `Allocated` (a matchmaker took the server) seen through
//!   `WatchGameServer`, and logged;
//! - with `--agones-shutdown-when-empty`, `Shutdown` once the last room of
//!   an allocated server closed; Agones then ends the pod with SIGTERM,
//!   which drains as ever.
//!
//! The SDK is async: it runs on a Tokio runtime of one thread of its own,
//! beside the service's workers, which never wait for it.

#[cfg(test)]
pub mod fake_sdk;

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use overlapped::session::{Heartbeat, PeerFactory, Service, Session, SessionHandler};
use tokio::sync::{mpsc, oneshot};

/// Sessions' connects and disconnects waiting to be told to Agones; past
/// it they are dropped (the labels, kept from the service's own count,
/// stay right).
const EVENTS: usize = 4096;
/// The stream `WatchGameServer` answers with.
type Watch = tonic::Streaming<agones::GameServer>;

/// How long the sidecar may take to answer at start.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);

/// How the server talks to its sidecar.
#[derive(Clone, Debug)]
pub struct AgonesConfig {
    /// The sidecar's address: `None` takes Agones' own environment
    /// (`AGONES_SDK_GRPC_HOST`, `AGONES_SDK_GRPC_PORT`, default
    /// `localhost:9357`).
    pub sidecar: Option<(String, u16)>,
    /// How often health is pinged (within the GameServer's
    /// `health.periodSeconds`).
    pub health_every: Duration,
    /// Ask Agones to shut the server down once the last room of an
    /// allocated server closed.
    pub shutdown_when_empty: bool,
}

/// Players and rooms now (the labels; rooms for the shutdown when empty).
pub type Occupancy = Arc<dyn Fn() -> (usize, usize) + Send + Sync>;

enum Event {
    Connected(u64),
    Disconnected(u64),
}

/// Where a session's connect and disconnect go to be told to Agones.
#[derive(Clone)]
pub struct Tracker(mpsc::Sender<Event>);

/// The other end of a [`Tracker`], for [`Agones::start`].
pub struct Events(mpsc::Receiver<Event>);

/// A tracker and the events it will send.
pub fn channel() -> (Tracker, Events) {
    let (tx, rx) = mpsc::channel(EVENTS);
    (Tracker(tx), Events(rx))
}

/// `factory`, with each session's connect and disconnect told to `tracker`.
pub fn track(factory: PeerFactory, tracker: Tracker) -> PeerFactory {
    Arc::new(move |peer| {
        let inner = factory(peer)?;
        Ok(Arc::new(Tracked {
            inner,
            tracker: tracker.clone(),
        }) as Arc<dyn SessionHandler>)
    })
}

/// A session's handler, watched for Agones' player tracking.
struct Tracked {
    inner: Arc<dyn SessionHandler>,
    tracker: Tracker,
}

impl SessionHandler for Tracked {
    fn on_connected(&self, session: &Arc<Session>) {
        let _ = self.tracker.0.try_send(Event::Connected(session.id()));
        self.inner.on_connected(session);
    }

    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        self.inner.on_recv(session, data)
    }

    fn on_sent(&self, session: &Arc<Session>, bytes: usize) {
        self.inner.on_sent(session, bytes);
    }

    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        self.inner.on_disconnected(session, reason);
        let _ = self.tracker.0.try_send(Event::Disconnected(session.id()));
    }
}

/// The game server's life with Agones, on a thread of its own.
pub struct Agones {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Agones {
    /// Connects to the sidecar, says `Ready` (the server listens), and
    /// keeps up the rest of the game server's life until [`Agones::stop`].
    /// An error if the sidecar does not answer within 30 s.
    pub fn start(
        service: &Service,
        events: Events,
        occupancy: Occupancy,
        config: AgonesConfig,
    ) -> io::Result<Agones> {
        let heartbeat = service.heartbeat(config.health_every / 2);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel();
        let thread = thread::Builder::new()
            .name("agones".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        return drop(ready_tx.send(Err(format!("cannot start its runtime: {e}"))))
                    }
                };
                runtime.block_on(async move {
                    let sdk = match connect(&config).await {
                        Ok(sdk) => sdk,
                        Err(e) => return drop(ready_tx.send(Err(e))),
                    };
                    let _ = ready_tx.send(Ok(()));
                    let life = Life::new(sdk, heartbeat, occupancy, config);
                    life.run(events.0, stopped).await;
                });
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Agones {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(io::Error::other(format!("agones: {e}"))),
            Err(_) => Err(io::Error::other("agones: its thread ended")),
        }
    }

    /// Ends the game server's life with Agones (the process exits next).
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The SDK, connected, and `Ready` said.
async fn connect(config: &AgonesConfig) -> Result<agones::Sdk, String> {
    let connecting = match &config.sidecar {
        Some((host, port)) => agones::Sdk::new_with_host(Some(host.clone()), Some(*port), None),
        None => agones::Sdk::new_with_host(None, None, None),
    };
    let mut sdk = tokio::time::timeout(CONNECT_LIMIT, connecting)
        .await
        .map_err(|_| "the SDK sidecar did not answer within 30 s".to_owned())?
        .map_err(|e| format!("cannot reach the SDK sidecar: {e}"))?;
    sdk.ready()
        .await
        .map_err(|e| format!("Ready failed: {e}"))?;
    tracing::info!("agones: ready");
    Ok(sdk)
}

/// What the game server's life keeps track of.
struct Life {
    sdk: agones::Sdk,
    heartbeat: Heartbeat,
    occupancy: Occupancy,
    config: AgonesConfig,
    allocated: bool,
    /// The server has had a room: its last closing ends an allocated one.
    had_rooms: bool,
    shutdown_asked: bool,
    labels: Option<(usize, usize)>,
    stalled_logged: bool,
    tracking: bool,
}

impl Life {
    fn new(
        sdk: agones::Sdk,
        heartbeat: Heartbeat,
        occupancy: Occupancy,
        config: AgonesConfig,
    ) -> Life {
        Life {
            sdk,
            heartbeat,
            occupancy,
            config,
            allocated: false,
            had_rooms: false,
            shutdown_asked: false,
            labels: None,
            stalled_logged: false,
            tracking: true,
        }
    }

    async fn run(mut self, mut events: mpsc::Receiver<Event>, mut stopped: oneshot::Receiver<()>) {
        let health = self.sdk.health_check();
        let mut watch = match self.sdk.watch_gameserver().await {
            Ok(watch) => Some(watch),
            Err(e) => {
                tracing::warn!(
                    "agones: cannot watch the game server ({e}): allocation goes unseen"
                );
                None
            }
        };
        let mut beat = tokio::time::interval(self.config.health_every);
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = beat.tick() => self.beat(&health).await,
                Some(event) = events.recv() => self.tell(event).await,
                update = next_update(&mut watch) => match update {
                    Some(state) => self.saw(&state),
                    None => watch = None,
                },
            }
        }
    }

    /// A health ping, if every worker beats; the labels; the shutdown
    /// after the last room.
    async fn beat(&mut self, health: &mpsc::Sender<()>) {
        let within = self.config.health_every * 3;
        let stuck = self.heartbeat.stalled(within);
        if stuck.is_empty() {
            let _ = health.try_send(());
            if std::mem::replace(&mut self.stalled_logged, false) {
                tracing::info!("agones: every worker beats again: health pings go on");
            }
        } else if !std::mem::replace(&mut self.stalled_logged, true) {
            tracing::error!(
                "agones: workers {stuck:?} have not beat for {} ms: health pings stop, \
                 and Agones will replace this process",
                within.as_millis()
            );
        }
        let (players, rooms) = (self.occupancy)();
        if self.labels != Some((players, rooms)) {
            let set = self.sdk.set_label("players", players.to_string()).await;
            let set = match set {
                Ok(()) => self.sdk.set_label("rooms", rooms.to_string()).await,
                Err(e) => Err(e),
            };
            match set {
                Ok(()) => self.labels = Some((players, rooms)),
                Err(e) => tracing::warn!("agones: cannot set the labels: {e}"),
            }
        }
        if rooms > 0 {
            self.had_rooms = true;
        }
        let empty_again = self.allocated && self.had_rooms && rooms == 0;
        if self.config.shutdown_when_empty && empty_again && !self.shutdown_asked {
            self.shutdown_asked = true;
            match self.sdk.shutdown().await {
                Ok(()) => tracing::info!("agones: the last room closed: asked to shut down"),
                Err(e) => tracing::error!("agones: Shutdown failed: {e}"),
            }
        }
    }

    /// A session's connect or disconnect, for player tracking.
    async fn tell(&mut self, event: Event) {
        if !self.tracking {
            return;
        }
        let mut alpha = self.sdk.alpha().clone();
        let told = match event {
            Event::Connected(id) => alpha.player_connect(id.to_string()).await,
            Event::Disconnected(id) => alpha.player_disconnect(id.to_string()).await,
        };
        if let Err(e) = told {
            self.tracking = false;
            tracing::warn!(
                "agones: player tracking is off ({e}): enable the PlayerTracking feature \
                 of the cluster to have it; the players label goes on"
            );
        }
    }

    fn saw(&mut self, state: &str) {
        if state == "Allocated" && !std::mem::replace(&mut self.allocated, true) {
            tracing::info!("agones: allocated");
        }
    }
}

/// The state of the next update of the game server, or `None` once the
/// watch ended; never, without a watch.
async fn next_update(watch: &mut Option<Watch>) -> Option<String> {
    let Some(stream) = watch else {
        return std::future::pending().await;
    };
    match stream.message().await {
        Ok(Some(server)) => Some(server.status.map(|s| s.state).unwrap_or_default()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use overlapped::game::Room;
    use overlapped::session::ServiceConfig;

    use super::*;

    struct Echo;

    impl SessionHandler for Echo {
        fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
            session.send_copy(data);
            Ok(data.len())
        }
    }

    const PERIOD: Duration = Duration::from_millis(40);

    /// A tracked echo service living with a fake sidecar; the rooms it
    /// reports are the test's to set.
    fn live(shutdown_when_empty: bool) -> (Service, Agones, fake_sdk::Record, Arc<AtomicUsize>) {
        let (sidecar, record) = fake_sdk::start();
        let (tracker, events) = channel();
        let factory: PeerFactory = Arc::new(|_| Ok(Arc::new(Echo) as Arc<dyn SessionHandler>));
        let config = ServiceConfig {
            workers: 1,
            ..ServiceConfig::default()
        };
        let service = Service::server_with("127.0.0.1:0", config, track(factory, tracker)).unwrap();
        let rooms = Arc::new(AtomicUsize::new(0));
        let (counted, open) = (service.clone(), rooms.clone());
        let occupancy: Occupancy =
            Arc::new(move || (counted.session_count(), open.load(Ordering::SeqCst)));
        let config = AgonesConfig {
            sidecar: Some(("http://127.0.0.1".into(), sidecar.port())),
            health_every: PERIOD,
            shutdown_when_empty,
        };
        let agones = Agones::start(&service, events, occupancy, config).unwrap();
        (service, agones, record, rooms)
    }

    fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn position(calls: &[String], call: &str) -> usize {
        calls
            .iter()
            .position(|c| c == call)
            .unwrap_or_else(|| panic!("no {call} in {calls:?}"))
    }

    #[test]
    fn the_game_servers_life_reaches_agones_in_order() {
        let (service, agones, record, rooms) = live(true);
        assert_eq!(record.calls().first().map(String::as_str), Some("Ready"));
        until("health pings", || record.health_pings() >= 3);
        let mut player = std::net::TcpStream::connect(service.local_addr().unwrap()).unwrap();
        player.write_all(b"hi").unwrap();
        player.read_exact(&mut [0; 2]).unwrap();
        assert!(record.wait_for("PlayerConnect 1"));
        assert!(record.wait_for("SetLabel players=1"));
        // A matchmaker allocates it; a room opens, then closes.
        record.allocate();
        rooms.store(1, Ordering::SeqCst);
        assert!(record.wait_for("SetLabel rooms=1"));
        rooms.store(0, Ordering::SeqCst);
        assert!(record.wait_for("Shutdown"));
        drop(player);
        assert!(record.wait_for("PlayerDisconnect 1"));
        let calls = record.calls();
        assert!(position(&calls, "Ready") < position(&calls, "PlayerConnect 1"));
        assert!(position(&calls, "SetLabel rooms=1") < position(&calls, "Shutdown"));
        agones.stop();
        service.stop();
    }

    #[test]
    fn a_server_not_allocated_is_not_shut_down_when_empty() {
        let (service, agones, record, rooms) = live(true);
        rooms.store(1, Ordering::SeqCst);
        assert!(record.wait_for("SetLabel rooms=1"));
        rooms.store(0, Ordering::SeqCst);
        assert!(record.wait_for("SetLabel rooms=0"));
        until("more health pings", || record.health_pings() >= 5);
        assert!(!record.calls().contains(&"Shutdown".to_owned()));
        agones.stop();
        service.stop();
    }

    #[test]
    fn a_worker_stuck_in_a_job_stops_the_health_pings() {
        let (service, agones, record, _) = live(false);
        until("health pings", || record.health_pings() >= 3);
        let room = Room::new(&service, "stuck", ());
        let (release, held) = std::sync::mpsc::channel::<()>();
        assert!(room.push(move |_, _| {
            let _ = held.recv();
        }));
        // The pings stop: none come over ten periods.
        until("the pings stop", || {
            let before = record.health_pings();
            std::thread::sleep(PERIOD * 10);
            record.health_pings() == before
        });
        release.send(()).unwrap();
        let stopped_at = record.health_pings();
        until("the pings resume", || {
            record.health_pings() > stopped_at + 2
        });
        agones.stop();
        service.stop();
    }
}
