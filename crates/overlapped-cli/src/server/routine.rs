//! The completion-routine model: each routine thread starts its sessions'
//! operations with routines and sleeps in alertable waits; the routines run
//! there, and start the next operation themselves.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread;

use overlapped::{wait_for_multiple_events, Event, TcpListener, TcpStream, WaitResult, INFINITE};

use super::{print_line, recv_line, set_nodelay, Mode};

const BUFFER_SIZE: usize = 1000;

/// Accepts clients and deals them out to `threads` routine threads.
pub fn serve(listener: TcpListener, mode: Mode, threads: usize) -> io::Result<()> {
    let inboxes: Vec<Arc<Inbox>> = (0..threads)
        .map(|index| Inbox::spawn(index, mode))
        .collect::<io::Result<_>>()?;
    for next in (0..threads).cycle() {
        match listener.accept() {
            Ok((socket, peer)) => {
                tracing::info!("client {peer} connected");
                inboxes[next].hand_over(socket, peer)?;
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

/// New clients waiting for their routine thread.
struct Inbox {
    arrived: Mutex<Vec<(TcpStream, SocketAddr)>>,
    wake: Event,
}

impl Inbox {
    fn spawn(index: usize, mode: Mode) -> io::Result<Arc<Inbox>> {
        let inbox = Arc::new(Inbox {
            arrived: Mutex::new(Vec::new()),
            wake: Event::new()?,
        });
        let mine = inbox.clone();
        thread::Builder::new()
            .name(format!("routines-{index}"))
            .spawn(move || mine.run(mode))?;
        Ok(inbox)
    }

    fn hand_over(&self, socket: TcpStream, peer: SocketAddr) -> io::Result<()> {
        self.arrived
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((socket, peer));
        self.wake.set()
    }

    /// The routine thread: an alertable wait on the inbox's event. Routines
    /// run inside the wait; the event brings new clients.
    fn run(&self, mode: Mode) {
        loop {
            match wait_for_multiple_events(&[&self.wake], false, INFINITE, true) {
                Ok(WaitResult::IoCompletion) => {}
                Ok(_) => self.start_arrivals(mode),
                Err(e) => {
                    tracing::error!("alertable wait failed: {e}");
                    thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }

    fn start_arrivals(&self, mode: Mode) {
        let _ = self.wake.reset();
        let arrived = std::mem::take(&mut *self.arrived.lock().unwrap_or_else(|p| p.into_inner()));
        for (socket, peer) in arrived {
            if mode == Mode::Echo {
                set_nodelay(&socket);
            }
            let session = Rc::new(Session { socket, peer, mode });
            session.post_recv(vec![0; BUFFER_SIZE]);
        }
    }
}

/// A client on a routine thread. Its routines hold the `Rc`; when the last
/// routine is done with it, the socket closes.
struct Session {
    socket: TcpStream,
    peer: SocketAddr,
    mode: Mode,
}

impl Session {
    fn post_recv(self: Rc<Self>, buffer: Vec<u8>) {
        let me = self.clone();
        let started = self
            .socket
            .recv_with_routine(vec![buffer], move |result, mut buffers| {
                let buffer = buffers.swap_remove(0);
                match result {
                    Ok(t) if t.bytes == 0 => {
                        tracing::info!("client {} disconnected: closed by peer", me.peer)
                    }
                    Ok(t) => me.on_received(buffer, t.bytes),
                    Err(e) => tracing::info!("client {} disconnected: {e}", me.peer),
                }
            });
        if let Err(e) = started {
            tracing::info!(
                "client {} disconnected: WSARecv Error : {}",
                self.peer,
                e.error()
            );
        }
    }

    fn on_received(self: Rc<Self>, mut buffer: Vec<u8>, n: usize) {
        if self.mode != Mode::Echo {
            print_line(&recv_line(&buffer[..n]));
            return self.post_recv(buffer);
        }
        buffer.truncate(n);
        let me = self.clone();
        let started = self
            .socket
            .send_with_routine(vec![buffer], move |result, mut buffers| {
                let mut buffer = buffers.swap_remove(0);
                match result {
                    Ok(_) => {
                        buffer.resize(BUFFER_SIZE, 0);
                        me.post_recv(buffer);
                    }
                    Err(e) => tracing::info!("client {} disconnected: {e}", me.peer),
                }
            });
        if let Err(e) = started {
            tracing::info!(
                "client {} disconnected: WSASend Error : {}",
                self.peer,
                e.error()
            );
        }
    }
}
