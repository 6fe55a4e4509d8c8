//! Sockets and their overlapped operations: TCP ([`TcpListener`],
//! [`TcpStream`]) and UDP ([`UdpSocket`]).

mod tcp;
mod udp;

pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;

use std::io;
use std::sync::Arc;

use crate::driver::op::{IoParts, Notify, Op, OpKind, Outcome};
use crate::driver::Socket;
use crate::driver::{self, buf::IoBuf, buf::IoBufMut};
use crate::error;
pub(crate) use crate::overlapped::{driver_socket, sealed};
use crate::overlapped::{Overlapped, StartError, Started, Transfer};
use crate::routine;

/// Wraps a freshly made socket for the driver, making sure the driver can run.
fn register(sock: socket2::Socket) -> io::Result<Arc<Socket>> {
    Ok(Socket::new(sock, driver::backend()?.clone()))
}

/// Starts a receive of `kind` into `buffers` on `socket` for `overlapped`.
fn start_recv<B: IoBufMut>(
    socket: &Arc<Socket>,
    kind: OpKind,
    overlapped: &mut Overlapped<B>,
    buffers: Vec<B>,
) -> Result<Started, StartError<B>> {
    let datagram = matches!(kind, OpKind::RecvFrom);
    overlapped.start(
        |notify, buffers| {
            let mut parts = IoParts::for_recv(buffers);
            if datagram {
                parts.use_address(None);
            }
            operation(socket, kind, notify, parts)
        },
        buffers,
    )
}

/// Starts a send of `kind` from `buffers` on `socket` for `overlapped`.
fn start_send<B: IoBuf>(
    socket: &Arc<Socket>,
    kind: OpKind,
    target: Option<std::net::SocketAddr>,
    overlapped: &mut Overlapped<B>,
    buffers: Vec<B>,
) -> Result<Started, StartError<B>> {
    overlapped.start(
        |notify, buffers| {
            let mut parts = IoParts::for_send(buffers);
            if target.is_some() {
                parts.use_address(target);
            }
            operation(socket, kind, notify, parts)
        },
        buffers,
    )
}

/// Starts `kind` on `socket` with a completion routine instead of an event.
fn start_with_routine<B, F>(
    socket: &Arc<Socket>,
    kind: OpKind,
    parts: IoParts,
    routine: F,
) -> Result<Started, StartError<B>>
where
    B: Send + 'static,
    F: FnOnce(io::Result<Transfer>, Vec<B>) + 'static,
{
    let routine: routine::Routine = Box::new(move |outcome: Outcome, parts: Option<IoParts>| {
        let buffers = parts.map(IoParts::into_buffers).unwrap_or_default();
        routine(outcome.into_result().map(Transfer::from), buffers)
    });
    let (id, notify) = match routine::register(routine) {
        Ok(registered) => registered,
        Err(error) => return Err(StartError::new(error, parts.into_buffers())),
    };
    let op = operation(socket, kind, notify, parts);
    match driver::start(&op) {
        Ok(Some(outcome)) => Ok(Started::Completed(outcome.into())),
        Ok(None) => Ok(Started::Pending),
        Err(error) => {
            routine::unregister(id);
            Err(StartError::new(error, op.reclaim_buffers()))
        }
    }
}

fn operation(socket: &Arc<Socket>, kind: OpKind, notify: Notify, parts: IoParts) -> Arc<Op> {
    Op::new(kind, Some(socket.clone()), notify, Some(parts))
}

/// `CancelIoEx(socket, overlapped)` shared by every socket type.
fn cancel<B: Send + 'static>(socket: &Arc<Socket>, overlapped: &Overlapped<B>) -> io::Result<()> {
    let Some(op) = overlapped.current_op() else {
        return Err(error::not_found());
    };
    if !op.socket.as_ref().is_some_and(|s| Arc::ptr_eq(s, socket)) {
        return Err(error::not_found());
    }
    driver::cancel(op, true)
}
