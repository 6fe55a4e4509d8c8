//! The game-server session layer on a completion port: [`Service`],
//! [`Listener`], [`Session`] with its [`RecvBuffer`] and send queue, and
//! [`PacketSession`] framing.
//!
//! Send buffers are [`bytes::Bytes`]: a broadcast encodes its packet once
//! and every session's send queue holds a reference to the same bytes.

mod connection;
pub mod framing;
mod listener;
mod packet;
mod recv_buffer;
mod send_queue;
mod service;
mod timers;
mod worker;

pub use connection::{Session, SessionHandler};
pub use listener::Listener;
pub use packet::{recv_buffer_for, PacketHandler, PacketSession};
pub use recv_buffer::RecvBuffer;
pub use service::{Service, ServiceConfig, SessionFactory, ShutdownReport};
