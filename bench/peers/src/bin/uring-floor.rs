//! The floor: the least work an io_uring echo server can do per message on
//! this kernel, to measure every server against. No runtime and no library,
//! one thread, one ring (`SINGLE_ISSUER | DEFER_TASKRUN`), a multishot
//! accept, a multishot receive per connection into a provided buffer ring,
//! and each arrival sent straight back out of the buffer it landed in — no
//! allocation, no copy, no lock. It is a measuring instrument for
//! `bench/run.py`, not a server anyone should run: it trusts its clients and
//! keeps no state beyond the descriptors.
//!
//! What it shows: the kernel's share of a message (the TCP work on both
//! sides of loopback, which lands on whichever core sends) is most of any
//! server's CPU time, so no server can go far below this one.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;

use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue, IoUring};
use overlapped_bench_peers::uring::{set_nodelay, Pool};

/// Buffers in the pool (a power of two) and bytes per buffer: one arrival
/// at most.
const BUFFERS: u16 = 4096;
const BUFFER_SIZE: usize = 4096;

/// What a completion is for, in the top bits of its user data; the low 32
/// bits carry the descriptor, bits 32..48 a send's buffer id.
const ACCEPT: u64 = 1 << 62;
const SEND: u64 = 1 << 61;

fn main() -> io::Result<()> {
    let listener = TcpListener::bind(overlapped_bench_peers::listen_addr())?;
    let mut ring: IoUring = IoUring::builder()
        .setup_cqsize(32 * 1024)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)?;
    let mut pool = Pool::register(&ring, BUFFERS, BUFFER_SIZE)?;
    overlapped_bench_peers::announce(listener.local_addr()?);
    let mut floor = Floor {
        ring: &mut ring,
        pool: &mut pool,
    };
    floor.push(
        opcode::AcceptMulti::new(Fd(listener.as_raw_fd()))
            .build()
            .user_data(ACCEPT),
    )?;
    floor.run()
}

struct Floor<'a> {
    ring: &'a mut IoUring,
    pool: &'a mut Pool,
}

impl Floor<'_> {
    /// Submits what was queued, waits for at least one completion, handles
    /// every completion posted; forever.
    fn run(&mut self) -> io::Result<()> {
        let mut batch = Vec::with_capacity(4096);
        loop {
            match self.ring.submit_and_wait(1) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                other => other?,
            };
            batch.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (user_data, result, flags) in batch.drain(..) {
                self.handle(user_data, result, flags)?;
            }
        }
    }

    fn handle(&mut self, user_data: u64, result: i32, flags: u32) -> io::Result<()> {
        let fd = user_data as u32 as i32;
        if user_data & ACCEPT != 0 {
            if result >= 0 {
                set_nodelay(result);
                self.recv(result)?;
            }
            return Ok(());
        }
        if user_data & SEND != 0 {
            self.pool.recycle((user_data >> 32) as u16);
            return Ok(());
        }
        match cqueue::buffer_select(flags) {
            Some(bid) if result > 0 => {
                let data = self.pool.buffer(bid);
                let send = opcode::Send::new(Fd(fd), data, result as u32)
                    .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
                    .build()
                    .user_data(SEND | (u64::from(bid) << 32) | u64::from(fd as u32));
                self.push(send)?;
                if !cqueue::more(flags) {
                    self.recv(fd)?;
                }
            }
            // The pool ran dry for a moment: receive again.
            _ if result == -libc::ENOBUFS => self.recv(fd)?,
            // End of stream or an error: done with this connection.
            _ => {
                // SAFETY: `fd` came from the accept and nothing else owns it;
                // a send still in flight holds its own reference to the file.
                unsafe { libc::close(fd) };
            }
        }
        Ok(())
    }

    fn recv(&mut self, fd: i32) -> io::Result<()> {
        self.push(
            opcode::RecvMulti::new(Fd(fd), Pool::GROUP)
                .build()
                .user_data(u64::from(fd as u32)),
        )
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY: the entry points at a pool buffer (sends) or at nothing;
        // the pool lives for the whole process and a buffer is recycled
        // only when its send completed.
        unsafe { overlapped_bench_peers::uring::push(self.ring, &entry) }
    }
}
