//! The event model: the seed's server, serving many clients at once.
//!
//! Each client gets the seed's `Session` (socket, 1000-byte receive buffer,
//! `OVERLAPPED` with an event). Sessions are gathered into groups; one
//! thread per group waits on its sessions' events with
//! `wait_for_multiple_events`, the Winsock way, so a thread serves up to 63
//! clients (the 64th event wakes it when a new session joins). Groups are
//! added as clients arrive.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use overlapped::error::{ErrorExt, WSA_IO_INCOMPLETE};
use overlapped::{
    get_overlapped_result, wait_for_multiple_events, Event, Overlapped, TcpListener, TcpStream,
    WaitResult, INFINITE, MAXIMUM_WAIT_EVENTS,
};

use super::{print_line, recv_line, set_nodelay, Mode};

/// The seed's `BUFFER_SIZE`.
const BUFFER_SIZE: usize = 1000;
/// Sessions per group: one wait slot is the group's own wake-up event.
const SESSIONS_PER_GROUP: usize = MAXIMUM_WAIT_EVENTS - 1;
/// Pause after an accept failure (such as running out of descriptors), so
/// the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts clients forever, handing each to a group with room.
pub fn serve(listener: TcpListener, mode: Mode) -> io::Result<()> {
    let mut groups: Vec<Arc<Group>> = Vec::new();
    loop {
        let (socket, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        tracing::info!("client {peer} connected");
        if mode == Mode::Echo {
            set_nodelay(&socket);
        }
        let session = Session::new(socket, peer, mode)?;
        let group = match groups.iter().find(|g| g.has_room()) {
            Some(group) => group.clone(),
            None => {
                let group = Group::spawn(groups.len())?;
                groups.push(group.clone());
                group
            }
        };
        group.join(session)?;
    }
}

/// The seed's `Session`, plus the event its overlapped record names and,
/// for echo, whether the record currently carries the echo's send.
struct Session {
    socket: TcpStream,
    peer: SocketAddr,
    recv_buffer: Vec<u8>,
    overlapped: Overlapped,
    event: Event,
    mode: Mode,
    sending: bool,
}

impl Session {
    fn new(socket: TcpStream, peer: SocketAddr, mode: Mode) -> io::Result<Session> {
        // `session.overlapped.hEvent = WSACreateEvent()`
        let event = Event::new()?;
        Ok(Session {
            socket,
            peer,
            recv_buffer: vec![0; BUFFER_SIZE],
            overlapped: Overlapped::with_event(event.clone()),
            event,
            mode,
            sending: false,
        })
    }

    /// Posts the receive (`WSARecv` with the session's buffer and record).
    fn post_recv(&mut self) -> io::Result<()> {
        let buffer = std::mem::take(&mut self.recv_buffer);
        self.socket.recv(&mut self.overlapped, vec![buffer])?;
        Ok(())
    }

    /// Posts the echo of the `n` bytes just received (`WSASend` with the
    /// same record: one operation at a time per session).
    fn post_echo(&mut self, n: usize) -> io::Result<()> {
        let mut buffer = std::mem::take(&mut self.recv_buffer);
        buffer.truncate(n);
        self.sending = true;
        self.socket.send(&mut self.overlapped, vec![buffer])?;
        Ok(())
    }

    /// Handles every operation that has completed and posts the next one.
    /// Returns `false` when the client is gone.
    fn service(&mut self) -> bool {
        while !self.overlapped.is_pending() {
            let result = get_overlapped_result(&self.socket, &mut self.overlapped, false);
            if let Some(mut buffers) = self.overlapped.take_buffers() {
                self.recv_buffer = buffers.swap_remove(0);
                self.recv_buffer.resize(BUFFER_SIZE, 0);
            }
            let transfer = match result {
                Ok(transfer) => transfer,
                Err(e) if e.winsock_code() == Some(WSA_IO_INCOMPLETE) => return true,
                Err(e) => {
                    tracing::info!("client {} disconnected: {e}", self.peer);
                    return false;
                }
            };
            let posted = if std::mem::take(&mut self.sending) {
                self.post_recv()
            } else if transfer.bytes == 0 {
                tracing::info!("client {} disconnected: closed by peer", self.peer);
                return false;
            } else if self.mode == Mode::Echo {
                self.post_echo(transfer.bytes)
            } else {
                print_line(&recv_line(&self.recv_buffer[..transfer.bytes]));
                self.post_recv()
            };
            if let Err(e) = posted {
                let code = e.winsock_code().unwrap_or(0);
                tracing::info!(
                    "client {} disconnected: WSARecv/WSASend Error : {code} ({e})",
                    self.peer
                );
                return false;
            }
        }
        true
    }
}

/// Up to [`SESSIONS_PER_GROUP`] sessions served by one thread.
struct Group {
    /// Sessions handed over by the acceptor, not yet picked up.
    inbox: Mutex<Vec<Session>>,
    /// Wakes the group's thread when the inbox fills.
    wake: Event,
    /// Sessions assigned to the group, picked up or not.
    members: AtomicUsize,
}

impl Group {
    fn spawn(index: usize) -> io::Result<Arc<Group>> {
        let group = Arc::new(Group {
            inbox: Mutex::new(Vec::new()),
            wake: Event::new()?,
            members: AtomicUsize::new(0),
        });
        let worker = group.clone();
        thread::Builder::new()
            .name(format!("group-{index}"))
            .spawn(move || worker.serve())?;
        Ok(group)
    }

    fn has_room(&self) -> bool {
        self.members.load(Ordering::Acquire) < SESSIONS_PER_GROUP
    }

    fn join(&self, session: Session) -> io::Result<()> {
        self.members.fetch_add(1, Ordering::AcqRel);
        self.inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session);
        self.wake.set()
    }

    fn serve(&self) {
        let mut sessions: Vec<Session> = Vec::new();
        loop {
            let events: Vec<&Event> = std::iter::once(&self.wake)
                .chain(sessions.iter().map(|s| &s.event))
                .collect();
            match wait_for_multiple_events(&events, false, INFINITE, false) {
                Ok(WaitResult::Signaled(_)) => {}
                Ok(other) => {
                    tracing::warn!("unexpected wait result {other:?}");
                    continue;
                }
                Err(e) => {
                    tracing::error!("wait failed: {e}");
                    thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            }
            self.admit_new_sessions(&mut sessions);
            // The wait names only the lowest signaled event; serve every
            // session that is ready so none is starved.
            let before = sessions.len();
            sessions.retain_mut(Session::service);
            self.members
                .fetch_sub(before - sessions.len(), Ordering::AcqRel);
        }
    }

    fn admit_new_sessions(&self, sessions: &mut Vec<Session>) {
        if let Err(e) = self.wake.reset() {
            tracing::error!("cannot reset the wake-up event: {e}");
        }
        let arrived = std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|p| p.into_inner()));
        for mut session in arrived {
            match session.post_recv() {
                Ok(()) => sessions.push(session),
                Err(e) => {
                    tracing::info!("client {} disconnected: WSARecv Error : {e}", session.peer);
                    self.members.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }
}
