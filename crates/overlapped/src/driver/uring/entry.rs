//! The submission entry of each kind of operation.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, squeue, types};

use super::super::buf_ring::POOL_GROUP;
use super::super::op::{IoParts, Op, OpKind};

/// Builds the submission entry of `op` from its memory, which the caller
/// has claimed. Its pointers stay valid until the completion, because the
/// op owns the memory and the ring owns the op.
pub(super) fn entry_for(op: &Op, parts: Option<&mut IoParts>) -> io::Result<squeue::Entry> {
    let fd = op
        .socket
        .as_ref()
        .map(|s| types::Fd(s.sock.as_raw_fd()))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF));
    Ok(match (&op.kind, parts) {
        (OpKind::Cancel(target), _) => opcode::AsyncCancel::new(Arc::as_ptr(target) as u64).build(),
        (OpKind::CancelAll, _) => {
            opcode::AsyncCancel2::new(types::CancelBuilder::fd(fd?).all()).build()
        }
        (OpKind::Shutdown(how), _) => opcode::Shutdown::new(fd?, *how).build(),
        (OpKind::RecvMulti, _) => opcode::RecvMulti::new(fd?, POOL_GROUP).build(),
        (kind, Some(parts)) => data_entry(kind, fd?, parts),
        (_, None) => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    })
}

/// The most bytes one entry's length may give.
const MAX_LEN: u32 = i32::MAX as u32;

/// The entry of an operation that uses the op's memory.
fn data_entry(kind: &OpKind, fd: types::Fd, parts: &mut IoParts) -> squeue::Entry {
    // A stream send completes only when every byte is taken, as an
    // overlapped WSASend does: MSG_WAITALL.
    let stream_send = (libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32;
    // The kernel takes at most `i32::MAX` bytes in an entry's length (more
    // is `EINVAL`): a larger single buffer is received into in part (a
    // stream receive may complete short), and sent through a message
    // header, whose iovec takes any length.
    let single = parts.single();
    let small = single.map(|(ptr, len)| (ptr, u32::try_from(len).ok().filter(|&l| l <= MAX_LEN)));
    match (kind, small) {
        (OpKind::Recv, Some((ptr, len))) => {
            opcode::Recv::new(fd, ptr, len.unwrap_or(MAX_LEN)).build()
        }
        (OpKind::Send, Some((ptr, Some(len)))) => opcode::Send::new(fd, ptr, len)
            .flags(stream_send as i32)
            .build(),
        (OpKind::Send, Some((_, None))) => opcode::SendMsg::new(fd, parts.msg_ptr())
            .flags(stream_send)
            .build(),
        (OpKind::Recv, None) => opcode::RecvMsg::new(fd, parts.msg_ptr()).build(),
        (OpKind::Send, None) => opcode::SendMsg::new(fd, parts.msg_ptr())
            .flags(stream_send)
            .build(),
        // With MSG_TRUNC the kernel reports a datagram's real length, which
        // tells us it did not fit (Winsock's WSAEMSGSIZE).
        (OpKind::RecvFrom, _) => opcode::RecvMsg::new(fd, parts.msg_ptr())
            .flags(libc::MSG_TRUNC as u32)
            .build(),
        (OpKind::SendTo, _) => opcode::SendMsg::new(fd, parts.msg_ptr())
            .flags(libc::MSG_NOSIGNAL as u32)
            .build(),
        (OpKind::Accept, _) => {
            let (addr, len) = parts.addr_ptrs();
            opcode::Accept::new(fd, addr, len)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        }
        (OpKind::Connect, _) => {
            let (addr, len) = parts.addr_ptrs();
            // SAFETY: `len` points into the op's header, set by `use_address`
            // and not changed by a connect; read here before submission.
            opcode::Connect::new(fd, addr, unsafe { *len }).build()
        }
        (OpKind::Cancel(_) | OpKind::CancelAll | OpKind::Shutdown(_) | OpKind::RecvMulti, _) => {
            unreachable!("operations without memory are built in entry_for")
        }
    }
}
