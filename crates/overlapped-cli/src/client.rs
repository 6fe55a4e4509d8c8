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
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7777")]
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
    /// Number of sends, then exit 0 (default: send forever).
    #[arg(long)]
    pub count: Option<u64>,
}

pub fn run(args: ClientArgs) -> io::Result<()> {
    let mut send_buffer = zero_padded(&args.message, args.size as usize).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--message is {} bytes and does not fit in --size {}",
                args.message.len(),
                args.size
            ),
        )
    })?;
    let socket = TcpStream::connect(args.addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {}: {e}", args.addr)))?;
    let event = Event::new()?;
    let mut overlapped = Overlapped::with_event(event.clone());
    let mut sent = 0u64;
    while args.count.is_none_or(|count| sent < count) {
        let bytes = send_once(&socket, &mut overlapped, &event, send_buffer)?;
        send_buffer = overlapped.take_buffers().unwrap_or_default().swap_remove(0);
        if writeln!(io::stdout().lock(), "Send Bytes : {bytes}").is_err() {
            return Ok(());
        }
        sent += 1;
        if args.count.is_none_or(|count| sent < count) {
            thread::sleep(Duration::from_millis(args.interval_ms));
        }
    }
    Ok(())
}

/// The seed's loop body: `WSASend`, and on `WSA_IO_PENDING` wait on the
/// event and read the result.
fn send_once(
    socket: &TcpStream,
    overlapped: &mut Overlapped,
    event: &Event,
    buffer: Vec<u8>,
) -> io::Result<usize> {
    let lost = |e: io::Error| {
        let code = e.winsock_code().unwrap_or(0);
        io::Error::new(
            e.kind(),
            format!("WSASend Error : {code} (server lost: {e})"),
        )
    };
    match socket.send(overlapped, vec![buffer]) {
        Ok(Started::Completed(transfer)) => Ok(transfer.bytes),
        Ok(Started::Pending) => {
            wait_for_multiple_events(&[event], false, INFINITE, false)?;
            get_overlapped_result(socket, overlapped, false)
                .map(|t| t.bytes)
                .map_err(lost)
        }
        Err(e) => Err(lost(e.into_error())),
    }
}

/// Where the demo's client should connect.
pub fn demo_args(addr: SocketAddr, count: u64, interval_ms: u64) -> ClientArgs {
    ClientArgs {
        addr,
        message: "Hello Server!".into(),
        size: 100,
        interval_ms,
        count: Some(count),
    }
}
