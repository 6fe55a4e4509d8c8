//! `Router`: a dispatch table from packet id to handler, over sessions
//! whose state the handlers own as `&mut`.

use std::fmt;
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use rustc_hash::FxHashMap;

use super::wire::{PacketReader, ReadError, WriteError};
use crate::session::{
    recv_buffer_for, PacketHandler, PacketSession, PeerFactory, ServiceConfig, Session,
    SessionHandler,
};

/// A session's own state under a [`Router`]: made by the router's factory
/// for each connection, owned by the session, and handed to its hooks and
/// packet handlers as `&mut` — they run one at a time on the session's
/// worker, so a flag is a `bool`, not an atomic.
pub trait SessionState: Send + 'static {
    /// The session is connected; what it sends now goes out first.
    fn on_connected(&mut self, session: &Arc<Session>) {
        let _ = session;
    }

    /// The session is gone; called exactly once, with the reason, and
    /// nothing after it (leave the room here).
    fn on_disconnected(&mut self, session: &Arc<Session>, reason: &str) {
        let _ = (session, reason);
    }
}

/// Why a packet handler refused a packet: the session is disconnected
/// with it as the logged reason (prefixed by the packet id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketError(String);

impl PacketError {
    /// A refusal with `reason`.
    pub fn new(reason: impl Into<String>) -> PacketError {
        PacketError(reason.into())
    }
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PacketError {}

impl From<ReadError> for PacketError {
    fn from(e: ReadError) -> Self {
        PacketError(e.to_string())
    }
}

impl From<WriteError> for PacketError {
    fn from(e: WriteError) -> Self {
        PacketError(e.to_string())
    }
}

/// A join refused by [`Rooms::join`](super::Rooms::join) (a full room)
/// disconnects the joiner with that reason.
impl From<super::JoinError> for PacketError {
    fn from(e: super::JoinError) -> Self {
        PacketError(e.to_string())
    }
}

impl From<String> for PacketError {
    fn from(reason: String) -> Self {
        PacketError(reason)
    }
}

impl From<&str> for PacketError {
    fn from(reason: &str) -> Self {
        PacketError(reason.to_owned())
    }
}

/// What a route returns.
pub type PacketResult = Result<(), PacketError>;

type Route<S> =
    Box<dyn Fn(&mut S, &Arc<Session>, &mut PacketReader<'_>) -> PacketResult + Send + Sync>;

/// A dispatch table from packet id to handler, for sessions framed
/// `[size: u16 LE][id: u16 LE][payload]` whose state is an `S`.
///
/// Each whole frame goes to the handler of its id with a bounds-checked
/// [`PacketReader`] over its payload. The sender is disconnected, with a
/// logged reason naming the packet, when the id has no handler, when the
/// handler returns an error (a [`ReadError`] from `?` included), or when
/// the handler left bytes of the payload unread (a malformed packet). A
/// frame larger than [`Router::max_packet`] disconnects it too.
///
/// **Decode, then act.** The leftover check runs after the handler
/// returns, so a handler that acts before it has read every field acts on
/// a packet that is then refused: read all fields and call
/// [`PacketReader::finish`]`()?` before any side effect.
///
/// **A refusal is abrupt.** The disconnect is at once, not a graceful
/// close: what the handler queued before returning its `Err` is dropped
/// with the session. To tell a client why, send the reason, call
/// [`Session::close_gracefully`] and return `Ok`.
///
/// [`Router::serve`] starts a server with the receive buffers sized for
/// [`Router::max_packet`]; with [`Router::factory`], call
/// [`Router::configure`] on the [`ServiceConfig`] yourself.
///
/// ```no_run
/// use std::sync::Arc;
/// use overlapped::game::{PacketReader, PacketResult, PacketWriter, Router, SessionState};
/// use overlapped::session::{Service, ServiceConfig, Session};
///
/// #[derive(Default)]
/// struct Player { pings: u32 }
/// impl SessionState for Player {}
///
/// fn on_ping(player: &mut Player, session: &Arc<Session>, r: &mut PacketReader) -> PacketResult {
///     let nonce = r.u32()?;
///     r.finish()?; // every field read: now act on it
///     player.pings += 1;
///     session.send(PacketWriter::new(2).u32(nonce).finish()?);
///     Ok(())
/// }
///
/// let router = Router::new().route(1, on_ping);
/// let service = router.serve("127.0.0.1:7777", ServiceConfig::default(), |_peer| Ok(Player::default()))?;
/// # service.stop();
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Router<S> {
    routes: FxHashMap<u16, Route<S>>,
    max_packet: usize,
}

impl<S> fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.routes.keys().collect();
        ids.sort();
        f.debug_struct("Router")
            .field("ids", &ids)
            .field("max_packet", &self.max_packet)
            .finish()
    }
}

impl<S: SessionState> Default for Router<S> {
    fn default() -> Self {
        Router::new()
    }
}

impl<S: SessionState> Router<S> {
    /// An empty table, for frames of up to 4,096 bytes.
    pub fn new() -> Router<S> {
        Router {
            routes: FxHashMap::default(),
            max_packet: 4096,
        }
    }

    /// Sends packets with `id` to `handler` (replacing an earlier one).
    pub fn route(
        mut self,
        id: u16,
        handler: impl Fn(&mut S, &Arc<Session>, &mut PacketReader<'_>) -> PacketResult
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.routes.insert(id, Box::new(handler));
        self
    }

    /// Frames of up to `max` bytes, header included (at least 4; at most
    /// 65,535, what the size field can say).
    pub fn max_packet(mut self, max: usize) -> Self {
        self.max_packet = max.clamp(crate::session::framing::HEADER_LEN, u16::MAX as usize);
        self
    }

    /// Sizes `config`'s receive buffers so a whole frame always fits.
    pub fn configure(&self, config: &mut ServiceConfig) {
        config.recv_buffer = recv_buffer_for(self.max_packet);
        config.recv_low_water = self.max_packet;
    }

    /// The factory of a service ([`Service::server_with`]): `make` builds
    /// each session's state knowing the peer's address, or refuses the
    /// connection with a reason.
    ///
    /// [`Service::server_with`]: crate::session::Service::server_with
    pub fn factory(
        self,
        make: impl Fn(SocketAddr) -> Result<S, String> + Send + Sync + 'static,
    ) -> PeerFactory {
        let router = Arc::new(self);
        Arc::new(move |peer| {
            let state = make(peer)?;
            let routed = Routed {
                router: router.clone(),
                state: Mutex::new(state),
                deferred_disconnect: Mutex::new(None),
            };
            // The session layer's framing cuts the frames and stops at the
            // one after which the handler ended its session.
            let max_packet = router.max_packet;
            Ok(Arc::new(PacketSession::new(routed, max_packet)) as Arc<dyn SessionHandler>)
        })
    }

    /// Starts a server on `addr` with this router (`config`'s receive
    /// buffers sized by [`Router::configure`]); `make` builds each
    /// session's state knowing the peer's address, or refuses it.
    pub fn serve(
        self,
        addr: impl std::net::ToSocketAddrs,
        mut config: ServiceConfig,
        make: impl Fn(SocketAddr) -> Result<S, String> + Send + Sync + 'static,
    ) -> std::io::Result<crate::session::Service> {
        self.configure(&mut config);
        crate::session::Service::server_with(addr, config, self.factory(make))
    }

    /// Hands one frame to its route.
    fn dispatch(
        &self,
        state: &mut S,
        session: &Arc<Session>,
        id: u16,
        payload: &[u8],
    ) -> Result<(), String> {
        let Some(route) = self.routes.get(&id) else {
            return Err(format!("unknown packet id {id}"));
        };
        let mut reader = PacketReader::new(payload);
        route(state, session, &mut reader)
            .and_then(|()| reader.finish().map_err(PacketError::from))
            .map_err(|e| format!("packet {id}: {e}"))
    }
}

/// A session's handler under a router: its state, and the disconnect that
/// came while a hook held the state (a handler that disconnected its own
/// session), delivered when the hook returns.
struct Routed<S> {
    router: Arc<Router<S>>,
    state: Mutex<S>,
    deferred_disconnect: Mutex<Option<String>>,
}

impl<S: SessionState> Routed<S> {
    fn state(&self) -> MutexGuard<'_, S> {
        // Only the session's worker locks it, one hook at a time; after a
        // panicking handler the state is as the panic left it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the `on_disconnected` that came during a hook.
    fn deliver_deferred(&self, state: &mut S, session: &Arc<Session>) {
        let reason = self
            .deferred_disconnect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(reason) = reason {
            state.on_disconnected(session, &reason);
        }
    }
}

impl<S: SessionState> Routed<S> {
    /// Runs a hook on the state, then the `on_disconnected` it caused by
    /// disconnecting its own session — however the hook ends: with `Ok`,
    /// with `Err`, or with a panic, which goes on after the delivery (to
    /// the session layer's boundary, which disconnects the session).
    fn hook<T>(&self, session: &Arc<Session>, hook: impl FnOnce(&mut S) -> T) -> T {
        let mut state = self.state();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| hook(&mut state)));
        self.deliver_deferred(&mut state, session);
        outcome.unwrap_or_else(|panic| panic::resume_unwind(panic))
    }
}

impl<S: SessionState> PacketHandler for Routed<S> {
    fn on_connected(&self, session: &Arc<Session>) {
        self.hook(session, |state| state.on_connected(session));
    }

    fn on_packet(&self, session: &Arc<Session>, id: u16, payload: &[u8]) -> Result<(), String> {
        self.hook(session, |state| {
            self.router.dispatch(state, session, id, payload)
        })
    }

    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        match self.state.try_lock() {
            Ok(mut state) => state.on_disconnected(session, reason),
            Err(TryLockError::Poisoned(poisoned)) => {
                poisoned.into_inner().on_disconnected(session, reason)
            }
            // A hook of this session holds the state on this thread: it
            // disconnected its own session. Delivered when it returns.
            Err(TryLockError::WouldBlock) => {
                *self
                    .deferred_disconnect
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
            }
        }
    }
}
