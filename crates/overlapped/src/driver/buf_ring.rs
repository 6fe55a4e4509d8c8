//! A provided buffer ring: a pool of receive buffers the kernel picks from
//! when data arrives for a multishot receive, so an idle connection pins no
//! buffer at all (`IORING_REGISTER_PBUF_RING`). The epoll backend keeps the
//! same pool in user space and picks the buffers itself.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use super::ring::Ring;
use super::sys;

/// Buffers in a ring's pool (a power of two, at most 32768). Every
/// connection with data on its way holds one until its arrival is handled,
/// so the pool must outnumber the busy connections: with 4096, a server of
/// 10,000 ping-pong connections ran dry constantly (more `ENOBUFS` restarts
/// of multishot receives than messages); with 16384, never.
pub(crate) const POOL_BUFFERS: u16 = 16384;
/// Bytes per pooled buffer: a game packet fits in one (larger arrivals are
/// split across buffers). The pool is 32 MiB of address space, resident only
/// once the kernel has written into it.
pub(crate) const POOL_BUFFER_SIZE: usize = 2048;
/// The buffer group id the pool is registered under.
pub(crate) const POOL_GROUP: u16 = 0;

pub(crate) struct BufRing {
    /// `POOL_BUFFERS` buffers of `POOL_BUFFER_SIZE` bytes.
    data: NonNull<u8>,
    /// Who picks the next free buffer.
    picker: Picker,
}

enum Picker {
    /// io_uring, from a ring of entries shared with it.
    Kernel {
        /// The ring of entries the kernel reads, page aligned.
        entries: NonNull<BufRingEntry>,
        /// Our copy of the tail; the shared one is published after each refill.
        tail: Mutex<u16>,
    },
    /// The epoll backend, from a free list.
    User { free: Mutex<Vec<u16>> },
}

// SAFETY: the entries and buffers are plain memory shared with the kernel;
// every write to the entries goes through `tail`'s lock, and a buffer is
// read only by the holder of its `Lease`.
unsafe impl Send for BufRing {}
// SAFETY: as above.
unsafe impl Sync for BufRing {}

impl BufRing {
    /// Maps the pool and registers it with `ring`.
    ///
    /// The memory is never unmapped: the kernel may still write into it while
    /// it tears a ring down, after the last handle is gone. There is one
    /// pool per completion port.
    pub(crate) fn register(ring: &IoUring) -> io::Result<BufRing> {
        let entries = sys::map_anonymous(ENTRIES_BYTES)?;
        let data = match sys::map_anonymous(DATA_BYTES) {
            Ok(data) => data,
            Err(e) => {
                // SAFETY: the mapping was made just above and nothing uses it.
                unsafe { sys::unmap(entries, ENTRIES_BYTES) };
                return Err(e);
            }
        };
        // SAFETY: `entries` is a page-aligned, zeroed array of POOL_BUFFERS
        // entries that lives for the rest of the process once registered.
        let registered = unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                POOL_BUFFERS,
                POOL_GROUP,
                0,
            )
        };
        if let Err(e) = registered {
            // SAFETY: the kernel refused the ring, so it holds neither
            // address; nothing else uses the mappings.
            unsafe {
                sys::unmap(entries, ENTRIES_BYTES);
                sys::unmap(data, DATA_BYTES);
            }
            return Err(e);
        }
        let entries = entries.cast::<BufRingEntry>();
        let pool = BufRing {
            data,
            picker: Picker::Kernel {
                entries,
                tail: Mutex::new(0),
            },
        };
        for bid in 0..POOL_BUFFERS {
            pool.recycle(bid);
        }
        Ok(pool)
    }

    /// A pool the epoll backend picks from itself. Its memory is freed with
    /// it: no kernel ever holds its address.
    pub(crate) fn in_memory() -> io::Result<BufRing> {
        let data = sys::map_anonymous(DATA_BYTES)?;
        Ok(BufRing {
            data,
            picker: Picker::User {
                free: Mutex::new((0..POOL_BUFFERS).rev().collect()),
            },
        })
    }

    /// Takes a free buffer for a receive, in a user-space pool; `None` when
    /// the pool is dry. The pointer is valid for `POOL_BUFFER_SIZE` bytes
    /// until the buffer is recycled.
    pub(crate) fn pick(&self) -> Option<(u16, *mut u8)> {
        let Picker::User { free } = &self.picker else {
            return None;
        };
        let bid = free.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
        // SAFETY: `bid` < POOL_BUFFERS, so the buffer lies inside `data`.
        let ptr = unsafe { self.data.as_ptr().add(usize::from(bid) * POOL_BUFFER_SIZE) };
        Some((bid, ptr))
    }

    /// Gives buffer `bid` back to whoever picks the buffers.
    pub(crate) fn recycle(&self, bid: u16) {
        let (entries, tail) = match &self.picker {
            Picker::Kernel { entries, tail } => (*entries, tail),
            Picker::User { free } => {
                free.lock().unwrap_or_else(|p| p.into_inner()).push(bid);
                return;
            }
        };
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        let slot = usize::from(*tail & (POOL_BUFFERS - 1));
        // SAFETY: `slot` is inside the entries array; the lock makes this the
        // only writer, and the kernel reads the slot only after the tail
        // below is published.
        let entry = unsafe { &mut *entries.as_ptr().add(slot) };
        // SAFETY: `bid` < POOL_BUFFERS, so the buffer lies inside `data`.
        entry.set_addr(
            unsafe { self.data.as_ptr().add(usize::from(bid) * POOL_BUFFER_SIZE) } as u64,
        );
        entry.set_len(POOL_BUFFER_SIZE as u32);
        entry.set_bid(bid);
        *tail = tail.wrapping_add(1);
        // SAFETY: the tail field of the first entry is the ring's shared tail,
        // a u16 the kernel reads; it is aligned for an atomic access.
        let shared = unsafe { &*(BufRingEntry::tail(entries.as_ptr()) as *const AtomicU16) };
        shared.store(*tail, Ordering::Release);
    }

    /// The `len` bytes the kernel wrote into buffer `bid`.
    ///
    /// # Safety
    /// The caller holds the buffer (the kernel reported it filled and it was
    /// not recycled since), and `len` is what the kernel reported.
    unsafe fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(POOL_BUFFER_SIZE);
        // SAFETY: per the contract, these bytes were written by the kernel
        // and nobody writes them until the buffer is recycled.
        unsafe {
            std::slice::from_raw_parts(
                self.data.as_ptr().add(usize::from(bid) * POOL_BUFFER_SIZE),
                len,
            )
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // A kernel pool is never freed (see `register`).
        if let Picker::User { .. } = self.picker {
            // SAFETY: `data` is the mapping of DATA_BYTES made in `in_memory`,
            // and no lease outlives the pool (each holds its ring).
            unsafe { sys::unmap(self.data, DATA_BYTES) };
        }
    }
}

/// Bytes of the pool's buffers. The pool (and the kernel's ring of entries)
/// is a mapping of its own rather than heap memory: the allocator may back
/// its heap with transparent huge pages, and then one write into an idle
/// pool would make 2 MiB resident; here a page is resident only once a
/// buffer in it was used.
const DATA_BYTES: usize = POOL_BUFFERS as usize * POOL_BUFFER_SIZE;
/// Bytes of the ring of entries the kernel reads the free buffers from.
const ENTRIES_BYTES: usize = POOL_BUFFERS as usize * std::mem::size_of::<BufRingEntry>();

/// One filled buffer of the pool, handed to the program; dropping it gives
/// the buffer back to the kernel.
pub struct Lease {
    ring: Arc<Ring>,
    bid: u16,
    len: usize,
}

impl Lease {
    pub(crate) fn new(ring: Arc<Ring>, bid: u16, len: usize) -> Lease {
        Lease { ring, bid, len }
    }

    /// The received bytes.
    pub fn bytes(&self) -> &[u8] {
        match self.ring.pool() {
            // SAFETY: the lease holds buffer `bid`, filled with `len` bytes,
            // until it is dropped.
            Some(pool) => unsafe { pool.filled(self.bid, self.len) },
            None => &[],
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pool) = self.ring.pool() {
            pool.recycle(self.bid);
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("len", &self.len).finish()
    }
}
