//! Winsock's **overlapped I/O model** on Linux, built on io_uring, with an
//! epoll fallback where io_uring is refused (see [`mod@backend`]).
//!
//! A Winsock program posts `WSARecv`/`WSASend` with an `OVERLAPPED` record,
//! and learns the outcome through an event (`WSAWaitForMultipleEvents` +
//! `WSAGetOverlappedResult`). This crate gives the same model, in safe Rust:
//!
//! | Winsock | here |
//! |---|---|
//! | `WSACreateEvent`, `WSASetEvent`, `WSAResetEvent`, `WSACloseEvent` | [`Event::new`], [`Event::set`], [`Event::reset`], drop |
//! | `WSAOVERLAPPED` with `hEvent` | [`Overlapped::with_event`] |
//! | `WSABUF` | any [`IoBuf`] / [`IoBufMut`] (`Vec<u8>`, …), moved into the operation |
//! | `WSARecv`, `WSASend` | [`TcpStream::recv`], [`TcpStream::send`] |
//! | `WSARecvFrom`, `WSASendTo` | [`UdpSocket::recv_from`], [`UdpSocket::send_to`] |
//! | `WSAWaitForMultipleEvents` | [`wait_for_multiple_events`] |
//! | `WSAGetOverlappedResult` | [`get_overlapped_result`], [`Overlapped::result`] |
//! | `CancelIoEx` | [`TcpStream::cancel`], [`UdpSocket::cancel`] |
//! | `closesocket` | drop the socket, or [`TcpStream::close`] |
//! | `WSAGetLastError` | [`ErrorExt::winsock_code`] on the `io::Error` |
//! | `WSARecv` with `lpCompletionRoutine`, `SleepEx` | [`TcpStream::recv_with_routine`], [`sleep_ex`] |
//! | `CreateIoCompletionPort`, `GetQueuedCompletionStatus(Ex)`, `PostQueuedCompletionStatus` | [`CompletionPort`] |
//! | `AcceptEx`, `ConnectEx`, `DisconnectEx` | [`PortListener::accept`], [`CompletionPort::connect`], [`PortStream::disconnect`] |
//!
//! On top of the completion port, [`session`] holds the server core —
//! `Service`, `Listener`, `Session`, `RecvBuffer`, `PacketSession`, its
//! metrics and its shutdown on a signal — and [`game`] the game-server
//! layer on it: `Room`s whose jobs and ticks run on the service's workers,
//! `Router` and `SessionState` for typed packets and per-session state,
//! `Group` broadcasts, `PacketReader` / `PacketWriter`.
//!
//! The difference that matters: buffers *move into* an operation and come
//! back with its outcome, so the rule "do not touch the buffer or the
//! `OVERLAPPED` until the operation completes" is enforced by the compiler,
//! and dropping anything early is safe (the kernel is told to stop, and the
//! memory is freed only once it has).
//!
//! ```no_run
//! use overlapped::{wait_for_multiple_events, get_overlapped_result, Event, Overlapped,
//!                  Started, TcpListener, INFINITE};
//!
//! # fn main() -> std::io::Result<()> {
//! let listener = TcpListener::bind("127.0.0.1:7777")?;
//! let (client, _) = listener.accept()?;
//! let event = Event::new()?;
//! let mut overlapped = Overlapped::with_event(event.clone());
//! let mut recv_buffer = vec![0u8; 1000];
//! loop {
//!     let bytes = match client.recv(&mut overlapped, vec![recv_buffer])? {
//!         Started::Completed(transfer) => transfer.bytes,
//!         Started::Pending => {
//!             wait_for_multiple_events(&[&event], false, INFINITE, false)?;
//!             get_overlapped_result(&client, &mut overlapped, false)?.bytes
//!         }
//!     };
//!     recv_buffer = overlapped.take_buffers().unwrap().remove(0);
//!     if bytes == 0 { break; }
//!     println!("Recv Data : {} ({bytes} bytes)", String::from_utf8_lossy(&recv_buffer[..bytes]));
//! }
//! # Ok(()) }
//! ```
//!
//! io_uring needs Linux 6.0 or later (cancellation by file descriptor,
//! multishot receive, provided buffer rings); where it is missing or
//! refused, the epoll backend gives the same semantics.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub use bytes::Bytes;

pub mod backend;
mod boundary;
mod driver;
pub mod error;
mod event;
pub mod game;
pub mod net;
mod overlapped;
pub mod port;
mod routine;
pub mod session;
/// The primitives of the lock-free protocols (std, or loom under `--cfg loom`).
pub(crate) use driver::sync;

pub use backend::{backend, Backend};
pub use driver::buf::{IoBuf, IoBufMut, Tail};
pub use error::ErrorExt;
pub use event::{
    sleep_ex, wait_for_multiple_events, Event, WaitResult, INFINITE, MAXIMUM_WAIT_EVENTS,
};
pub use net::{TcpListener, TcpStream, UdpSocket};
pub use overlapped::{
    get_overlapped_result, AsOverlappedSocket, Overlapped, StartError, Started, Transfer,
    MSG_CTRUNC, MSG_OOB, MSG_TRUNC,
};
pub use port::{Completion, CompletionPort, PortListener, PortStream};

/// The README's Rust examples, compiled (and, where they can, run) as
/// doctests, so the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
