//! What the bare io_uring servers (the floors) share: the provided buffer
//! ring their multishot receives pick from.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::{squeue, IoUring};

/// The provided buffer ring multishot receives pick from.
pub struct Pool {
    entries: *mut BufRingEntry,
    data: *mut u8,
    buffers: u16,
    size: usize,
    tail: u16,
}

impl Pool {
    /// The buffer group the pool is registered under.
    pub const GROUP: u16 = 0;

    /// Allocates `buffers` buffers (a power of two) of `size` bytes (never
    /// freed: the process ends with them) and registers them with the ring.
    pub fn register(ring: &IoUring, buffers: u16, size: usize) -> io::Result<Pool> {
        if !buffers.is_power_of_two() || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a pool is a power of two of buffers, each of 1 byte to 4 GiB",
            ));
        }
        let entries_layout = std::alloc::Layout::from_size_align(usize::from(buffers) * 16, 4096)
            .map_err(io::Error::other)?;
        let data_layout = std::alloc::Layout::from_size_align(usize::from(buffers) * size, 4096)
            .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (checked above).
        let (entries, data) = unsafe {
            (
                std::alloc::alloc_zeroed(entries_layout).cast::<BufRingEntry>(),
                std::alloc::alloc_zeroed(data_layout),
            )
        };
        if entries.is_null() || data.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // SAFETY: `entries` is a page-aligned, zeroed array of `buffers`
        // entries that is never freed.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries as u64,
                buffers,
                Self::GROUP,
                0,
            )?
        };
        let mut pool = Pool {
            entries,
            data,
            buffers,
            size,
            tail: 0,
        };
        for bid in 0..buffers {
            pool.recycle(bid);
        }
        Ok(pool)
    }

    /// Where buffer `bid` starts.
    pub fn buffer(&self, bid: u16) -> *const u8 {
        assert!(bid < self.buffers, "buffer {bid} is not the pool's");
        // SAFETY: bid < buffers, so the offset stays inside `data`.
        unsafe { self.data.add(usize::from(bid) * self.size) }
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.buffers - 1));
        // SAFETY: `slot` < buffers; this thread is the ring's only writer and
        // the kernel reads the slot only after the tail below moves past it.
        let entry = unsafe { &mut *self.entries.add(slot) };
        entry.set_addr(self.buffer(bid) as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the first entry's tail field is the ring's shared tail, a
        // u16 the kernel reads, aligned for an atomic access.
        let shared = unsafe { &*(BufRingEntry::tail(self.entries) as *const AtomicU16) };
        shared.store(self.tail, Ordering::Release);
    }
}

/// Sets `TCP_NODELAY` on an accepted descriptor.
pub fn set_nodelay(fd: i32) {
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor and a pointer to an int of the given size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Queues `entry`, handing the kernel what waits when the queue is full.
///
/// # Safety
///
/// What `entry` points at must stay valid until its completion is reaped.
pub unsafe fn push(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: the caller keeps what the entry points at valid.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}
