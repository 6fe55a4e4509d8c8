//! The game-server session layer on a completion port: [`Service`],
//! [`Listener`], [`Session`] with its [`RecvBuffer`] and send queue, and
//! [`PacketSession`] framing.
//!
//! Send buffers are [`bytes::Bytes`]: a broadcast encodes its packet once
//! and every session's send queue holds a reference to the same bytes.
//!
//! ## A session's life, in order
//! For every session, on the worker thread it belongs to:
//! 1. [`SessionHandler::on_connected`] exactly once — if, and only if, the
//!    session was started (a session disconnected before its start never
//!    sees it);
//! 2. then what it receives and what it sends, in the order they were
//!    accepted: nothing sent to it (a broadcast, another thread's send)
//!    reaches the peer before what `on_connected` sent;
//! 3. then [`SessionHandler::on_disconnected`] exactly once, and nothing
//!    after it — no hook, no frame to a [`PacketHandler`], no send.
//!
//! Hooks never run inside a call made on another thread (sends, closes and
//! disconnects from elsewhere are handed to the worker). A send that
//! returned `true` — from any thread — reaches the peer before a graceful
//! close ([`Session::close_gracefully`], [`Service::shutdown`]) ends the
//! stream. No order of events switches the send-queue cap off
//! ([`ServiceConfig::max_send_queue`]). `crates/overlapped/tests/
//! session_order.rs` holds a test for each of these.

pub(crate) mod blocking;
mod clock;
mod config;
mod connection;
pub(crate) mod core;
mod dispatch;
pub mod framing;
mod heartbeat;
mod http;
pub(crate) mod io;
pub(crate) mod jobs;
mod lifecycle;
mod listener;
mod log_budget;
pub(crate) mod metrics;
mod metrics_endpoint;
mod multicast;
mod packet;
mod prometheus;
mod proxy_protocol;
mod recv_buffer;
mod registry;
pub(crate) mod schedule;
mod send_gate;
mod send_queue;
pub(crate) mod service;
mod shutdown;
mod sweep;
mod timers;
mod worker;

pub use blocking::{BlockingError, BlockingLine, BlockingMetrics, BLOCKING_BOUNDS_US};
pub use config::{default_max_memory, ServiceConfig};
pub use connection::{PeerFactory, Session, SessionFactory, SessionHandler};
pub use heartbeat::Heartbeat;
pub use lifecycle::StopSignals;
pub use listener::Listener;
pub use log_budget::LogBudget;
pub use metrics::{DisconnectKind, Metrics, TICK_LATENESS_BOUNDS_US};
pub use metrics_endpoint::{EndpointConfig, MetricsEndpoint};
pub use packet::{recv_buffer_for, PacketHandler, PacketSession};
pub use recv_buffer::RecvBuffer;
pub use service::Service;
pub use shutdown::ShutdownReport;
