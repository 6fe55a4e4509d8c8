//! `overlapped server`: the seed's server, serving many clients at once.
//!
//! Each client gets the seed's `Session` (socket, 1000-byte receive buffer,
//! `OVERLAPPED` with an event). Sessions are gathered into groups; one
//! thread per group waits on its sessions' events with
//! `wait_for_multiple_events`, the Winsock way, so a thread serves up to 63
//! clients (the 64th event wakes it when a new session joins). Groups are
//! added as clients arrive.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use clap::Args;
use overlapped::error::{ErrorExt, WSA_IO_INCOMPLETE};
use overlapped::{
    get_overlapped_result, wait_for_multiple_events, Event, Overlapped, TcpListener, TcpStream,
    WaitResult, INFINITE, MAXIMUM_WAIT_EVENTS,
};

use crate::text::c_string;

/// The seed's `BUFFER_SIZE`.
const BUFFER_SIZE: usize = 1000;
/// Sessions per group: one wait slot is the group's own wake-up event.
const SESSIONS_PER_GROUP: usize = MAXIMUM_WAIT_EVENTS - 1;
/// Pause after an accept failure (such as running out of descriptors), so
/// the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Options of `overlapped server`.
#[derive(Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7777")]
    pub addr: SocketAddr,
}

pub fn run(args: ServerArgs) -> io::Result<()> {
    let listener = TcpListener::bind(args.addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.addr)))?;
    tracing::info!("listening on {}", listener.local_addr()?);
    serve(listener)
}

/// Accepts clients forever, handing each to a group with room.
pub fn serve(listener: TcpListener) -> io::Result<()> {
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
        let session = Session::new(socket, peer)?;
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

/// The seed's `Session`, plus the event its overlapped record names.
struct Session {
    socket: TcpStream,
    peer: SocketAddr,
    recv_buffer: Vec<u8>,
    overlapped: Overlapped,
    event: Event,
}

impl Session {
    fn new(socket: TcpStream, peer: SocketAddr) -> io::Result<Session> {
        // `session.overlapped.hEvent = WSACreateEvent()`
        let event = Event::new()?;
        Ok(Session {
            socket,
            peer,
            recv_buffer: vec![0; BUFFER_SIZE],
            overlapped: Overlapped::with_event(event.clone()),
            event,
        })
    }

    /// Posts the receive (`WSARecv` with the session's buffer and record).
    fn post_recv(&mut self) -> io::Result<()> {
        let buffer = std::mem::take(&mut self.recv_buffer);
        self.socket.recv(&mut self.overlapped, vec![buffer])?;
        Ok(())
    }

    /// Handles every receive that has completed and posts the next one.
    /// Returns `false` when the client is gone.
    fn service(&mut self) -> bool {
        while !self.overlapped.is_pending() {
            let result = get_overlapped_result(&self.socket, &mut self.overlapped, false);
            if let Some(mut buffers) = self.overlapped.take_buffers() {
                self.recv_buffer = buffers.swap_remove(0);
            }
            match result {
                Ok(transfer) if transfer.bytes == 0 => {
                    tracing::info!("client {} disconnected: closed by peer", self.peer);
                    return false;
                }
                Ok(transfer) => {
                    let data = &self.recv_buffer[..transfer.bytes];
                    print_line(&format!(
                        "Recv Data : {} ({} bytes)",
                        c_string(data),
                        transfer.bytes
                    ));
                }
                Err(e) if e.winsock_code() == Some(WSA_IO_INCOMPLETE) => return true,
                Err(e) => {
                    tracing::info!("client {} disconnected: {e}", self.peer);
                    return false;
                }
            }
            if let Err(e) = self.post_recv() {
                let code = e.winsock_code().unwrap_or(0);
                tracing::info!(
                    "client {} disconnected: WSARecv Error : {code} ({e})",
                    self.peer
                );
                return false;
            }
        }
        true
    }
}

/// Writes one line of the seed's output. A closed stdout ends the program
/// quietly, as for any filter whose reader went away.
fn print_line(line: &str) {
    let mut out = io::stdout().lock();
    if writeln!(out, "{line}").is_err() {
        std::process::exit(0);
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
