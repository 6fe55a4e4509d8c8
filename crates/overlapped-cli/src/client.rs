//! `overlapped client`: the seed's client.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use clap::Args;
use overlapped::{
    get_overlapped_result, wait_for_multiple_events, ErrorExt, Event, Overlapped, Started,
    TcpStream, INFINITE,
};

use crate::text::zero_padded;

/// Options of `overlapped client`.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Server address (a name such as `localhost:7777` is resolved).
    #[arg(long, default_value = "127.0.0.1:7777", value_parser = crate::server::resolve_addr)]
    pub addr: SocketAddr,
    /// Text at the start of each buffer; the rest is zero bytes.
    #[arg(long, default_value = "Hello Server!")]
    pub message: String,
    /// Bytes per send (the seed's `char sendBuffer[100]`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=16 * 1024 * 1024))]
    pub size: u32,
    /// Pause between sends, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Number of sends per connection, then exit 0 (default: forever).
    #[arg(long)]
    pub count: Option<u64>,
    /// Connections from this process, each sending as the seed's client.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
}

pub fn run(args: ClientArgs) -> io::Result<()> {
    let send_buffer = zero_padded(&args.message, args.size as usize).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--message is {} bytes and does not fit in --size {}",
                args.message.len(),
                args.size
            ),
        )
    })?;
    let mut failures = Failures::new(args.clients);
    let mut connections: Vec<Connection> = (0..args.clients)
        .filter_map(|_| failures.check(Connection::open(args.addr, send_buffer.clone())))
        .collect();
    let mut rounds = 0u64;
    while !connections.is_empty() && args.count.is_none_or(|count| rounds < count) {
        // Post every connection's send first, then wait for each: the
        // sends of one round are in flight together.
        let pending: Vec<io::Result<Started>> = connections.iter_mut().map(|c| c.post()).collect();
        let mut failed = Vec::new();
        for (index, (connection, started)) in connections.iter_mut().zip(pending).enumerate() {
            let Some(bytes) = failures.check(started.and_then(|s| connection.finish(s))) else {
                failed.push(index);
                continue;
            };
            if writeln!(io::stdout().lock(), "Send Bytes : {bytes}").is_err() {
                return Ok(());
            }
        }
        // A failed connection is done; the others go on.
        for index in failed.into_iter().rev() {
            connections.swap_remove(index);
        }
        rounds += 1;
        if !connections.is_empty() && args.count.is_none_or(|count| rounds < count) {
            thread::sleep(Duration::from_millis(args.interval_ms));
        }
    }
    failures.into_result()
}

/// The connections that failed, and the first reason: the client goes on
/// with the others and exits non-zero at the end, saying how many.
struct Failures {
    clients: u32,
    failed: u32,
    first: Option<io::Error>,
}

impl Failures {
    fn new(clients: u32) -> Failures {
        Failures {
            clients,
            failed: 0,
            first: None,
        }
    }

    /// The value, or `None` with the failure counted (and, while other
    /// connections go on, logged).
    fn check<T>(&mut self, result: io::Result<T>) -> Option<T> {
        let error = match result {
            Ok(value) => return Some(value),
            Err(error) => error,
        };
        self.failed += 1;
        if self.clients > 1 {
            tracing::warn!("a connection failed: {error}");
        }
        self.first.get_or_insert(error);
        None
    }

    fn into_result(self) -> io::Result<()> {
        let Some(first) = self.first else {
            return Ok(());
        };
        if self.clients == 1 {
            return Err(first);
        }
        Err(io::Error::new(
            first.kind(),
            format!(
                "{} of {} connections failed; the first: {first}",
                self.failed, self.clients
            ),
        ))
    }
}

/// One connection of the client: the seed's socket, send buffer and
/// overlapped record with its event.
struct Connection {
    socket: TcpStream,
    event: Event,
    overlapped: Overlapped,
    send_buffer: Vec<u8>,
}

impl Connection {
    fn open(addr: SocketAddr, send_buffer: Vec<u8>) -> io::Result<Connection> {
        let socket = TcpStream::connect(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {addr}: {e}")))?;
        let event = Event::new()?;
        Ok(Connection {
            socket,
            overlapped: Overlapped::with_event(event.clone()),
            event,
            send_buffer,
        })
    }

    /// `WSASend` of the buffer.
    fn post(&mut self) -> io::Result<Started> {
        let buffer = std::mem::take(&mut self.send_buffer);
        self.socket
            .send(&mut self.overlapped, vec![buffer])
            .map_err(|e| lost(e.into_error()))
    }

    /// On `WSA_IO_PENDING`, waits on the event and reads the result; then
    /// takes the buffer back for the next round.
    fn finish(&mut self, started: Started) -> io::Result<usize> {
        let bytes = match started {
            Started::Completed(transfer) => transfer.bytes,
            Started::Pending => {
                wait_for_multiple_events(&[&self.event], false, INFINITE, false)?;
                get_overlapped_result(&self.socket, &mut self.overlapped, false)
                    .map_err(lost)?
                    .bytes
            }
        };
        if let Some(mut buffers) = self.overlapped.take_buffers() {
            self.send_buffer = buffers.swap_remove(0);
        }
        Ok(bytes)
    }
}

/// A send that failed means the server is gone.
fn lost(e: io::Error) -> io::Error {
    let code = e.winsock_code().unwrap_or(0);
    io::Error::new(
        e.kind(),
        format!("WSASend Error : {code} (server lost: {e})"),
    )
}

/// Where the demo's client should connect.
pub fn demo_args(addr: SocketAddr, count: u64, interval_ms: u64) -> ClientArgs {
    ClientArgs {
        addr,
        message: "Hello Server!".into(),
        size: 100,
        interval_ms,
        count: Some(count),
        clients: 1,
    }
}
