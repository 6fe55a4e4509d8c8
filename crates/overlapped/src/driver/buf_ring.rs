//! A provided buffer ring: a pool of receive buffers the kernel picks from
//! when data arrives for a multishot receive, so an idle connection pins no
//! buffer at all (`IORING_REGISTER_PBUF_RING`). The epoll backend keeps the
//! same pool in user space and picks the buffers itself.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use io_uring::IoUring;

use super::pool_tail::PoolTail;
use super::sys;

/// Buffers in a ring's pool unless its owner asks for fewer (a power of
/// two, at most 32768). Every connection with data on its way holds one
/// until its arrival is handled, so the pool must outnumber the busy
/// connections of its ring: with 4096, a server of 10,000 ping-pong
/// connections ran dry constantly (more `ENOBUFS` restarts of multishot
/// receives than messages); with 16384, never.
pub(crate) const POOL_BUFFERS: u16 = 16384;
/// The fewest buffers a pool is made with.
pub(crate) const MIN_POOL_BUFFERS: u16 = 1024;
/// Bytes per pooled buffer: a game packet fits in one (larger arrivals are
/// split across buffers). A full pool is 32 MiB of address space, resident
/// only once the kernel has written into it — which, as the kernel takes the
/// buffers in turn, under steady traffic is all of it.
pub(crate) const POOL_BUFFER_SIZE: usize = 2048;
/// The buffer group id the pool is registered under.
pub(crate) const POOL_GROUP: u16 = 0;

/// One entry of the ring the kernel reads free buffers from: the layout of
/// `struct io_uring_buf`. The `resv` field of entry 0 is the ring's tail,
/// which the kernel reads while we write other entries, so entries are
/// written field by field through raw pointers, never through a reference
/// that would cover the tail.
#[repr(C)]
struct PoolEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<PoolEntry>() == 16);
const _: () = assert!(
    std::mem::size_of::<PoolEntry>() == std::mem::size_of::<io_uring::types::BufRingEntry>()
);

pub(crate) struct BufRing {
    /// `buffers` buffers of `POOL_BUFFER_SIZE` bytes.
    data: NonNull<u8>,
    /// How many: a power of two.
    buffers: u16,
    /// Who picks the next free buffer.
    picker: Picker,
}

enum Picker {
    /// io_uring, from a ring of entries shared with it.
    Kernel {
        /// The ring of entries the kernel reads, page aligned.
        entries: NonNull<PoolEntry>,
        /// Who writes the entries: any thread under a lock, until the
        /// issuer of a confined ring owns the pool and writes alone.
        tail: PoolTail,
    },
    /// The epoll backend, from a free list.
    User { free: Mutex<Vec<u16>> },
}

// SAFETY: the entries and buffers are plain memory shared with the kernel;
// the entries are written by one thread at a time, as `PoolTail` lets them
// (under its lock until a thread owns the pool, then only by that thread);
// a buffer is read only by the holder of its `Lease`.
unsafe impl Send for BufRing {}
// SAFETY: as above.
unsafe impl Sync for BufRing {}

impl BufRing {
    /// Maps a pool of `buffers` buffers (rounded to a power of two between
    /// `MIN_POOL_BUFFERS` and `POOL_BUFFERS`) and registers it with `ring`.
    ///
    /// The memory is never unmapped: the kernel may still write into it while
    /// it tears a ring down, after the last handle is gone. There is one
    /// pool per completion port.
    pub(crate) fn register(ring: &IoUring, buffers: u16) -> io::Result<BufRing> {
        let buffers = pool_size(buffers);
        let entries = sys::map_anonymous(entries_bytes(buffers))?;
        let data = match sys::map_anonymous(data_bytes(buffers)) {
            Ok(data) => data,
            Err(e) => {
                // SAFETY: the mapping was made just above and nothing uses it.
                unsafe { sys::unmap(entries, entries_bytes(buffers)) };
                return Err(e);
            }
        };
        // SAFETY: `entries` is a page-aligned, zeroed array of `buffers`
        // entries that lives for the rest of the process once registered.
        let registered = unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                buffers,
                POOL_GROUP,
                0,
            )
        };
        if let Err(e) = registered {
            // SAFETY: the kernel refused the ring, so it holds neither
            // address; nothing else uses the mappings.
            unsafe {
                sys::unmap(entries, entries_bytes(buffers));
                sys::unmap(data, data_bytes(buffers));
            }
            return Err(e);
        }
        let entries = entries.cast::<PoolEntry>();
        let pool = BufRing {
            data,
            buffers,
            picker: Picker::Kernel {
                entries,
                tail: PoolTail::new(),
            },
        };
        for bid in 0..buffers {
            pool.recycle(bid);
        }
        Ok(pool)
    }

    /// A pool the epoll backend picks from itself, sized as in
    /// [`BufRing::register`]. Its memory is freed with it: no kernel ever
    /// holds its address.
    pub(crate) fn in_memory(buffers: u16) -> io::Result<BufRing> {
        let buffers = pool_size(buffers);
        let data = sys::map_anonymous(data_bytes(buffers))?;
        Ok(BufRing {
            data,
            buffers,
            picker: Picker::User {
                free: Mutex::new((0..buffers).rev().collect()),
            },
        })
    }

    /// The address of buffer `bid`.
    fn buffer(&self, bid: u16) -> *mut u8 {
        // Kernel-reported ids are below `buffers`; masking keeps any other
        // inside the mapping all the same.
        let bid = usize::from(bid & (self.buffers - 1));
        // SAFETY: `bid` < `buffers`, so the buffer lies inside `data`.
        unsafe { self.data.as_ptr().add(bid * POOL_BUFFER_SIZE) }
    }

    /// Takes a free buffer for a receive, in a user-space pool; `None` when
    /// the pool is dry. The pointer is valid for `POOL_BUFFER_SIZE` bytes
    /// until the buffer is recycled.
    pub(crate) fn pick(&self) -> Option<(u16, *mut u8)> {
        let Picker::User { free } = &self.picker else {
            return None;
        };
        let bid = free.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
        Some((bid, self.buffer(bid)))
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
        // SAFETY: `PoolTail` calls the writer with one writer at a time.
        tail.give_back(bid, |tail, bids| unsafe {
            self.refill(entries, tail, bids)
        });
    }

    /// Makes the calling thread, the issuer of the confined ring the pool
    /// belongs to, the only writer of its entries; then puts back what
    /// other threads gave back meanwhile. Called by the issuer at each reap.
    pub(crate) fn settle_on_issuer(&self) {
        let Picker::Kernel { entries, tail } = &self.picker else {
            return;
        };
        // SAFETY: `PoolTail` calls the writer with one writer at a time.
        tail.settle_on_owner(|tail, bids| unsafe { self.refill(*entries, tail, bids) });
    }

    /// Writes `bids` into the entries at `tail` and publishes the new tail.
    ///
    /// # Safety
    /// The caller must be the only writer of the entries (see `PoolTail`).
    unsafe fn refill(&self, entries: NonNull<PoolEntry>, tail: &mut u16, bids: &[u16]) {
        for &bid in bids {
            let slot = usize::from(*tail & (self.buffers - 1));
            // SAFETY: `slot` is inside the entries array, and only the three
            // fields the kernel reads a buffer from are written, through raw
            // pointers (entry 0's fourth field is the shared tail). The
            // caller is the only writer, and the kernel reads the slot only
            // after the tail below is published.
            unsafe {
                let entry = entries.as_ptr().add(slot);
                std::ptr::addr_of_mut!((*entry).addr).write(self.buffer(bid) as u64);
                std::ptr::addr_of_mut!((*entry).len).write(POOL_BUFFER_SIZE as u32);
                std::ptr::addr_of_mut!((*entry).bid).write(bid);
            }
            *tail = tail.wrapping_add(1);
        }
        shared_tail(entries).store(*tail, Ordering::Release);
    }

    /// The tail the kernel sees, for tests.
    #[cfg(all(test, not(loom)))]
    fn published_tail(&self) -> Option<u16> {
        let Picker::Kernel { entries, .. } = &self.picker else {
            return None;
        };
        Some(shared_tail(*entries).load(Ordering::Acquire))
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
        unsafe { std::slice::from_raw_parts(self.buffer(bid), len) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // A kernel pool is never freed (see `register`).
        if let Picker::User { .. } = self.picker {
            // SAFETY: `data` is the mapping made in `in_memory`, and no
            // lease outlives the pool (each holds it).
            unsafe { sys::unmap(self.data, data_bytes(self.buffers)) };
        }
    }
}

/// The tail of the ring of entries, which the kernel reads.
fn shared_tail(entries: NonNull<PoolEntry>) -> &'static AtomicU16 {
    // SAFETY: the `resv` field of the first entry is the ring's shared tail
    // (`struct io_uring_buf_ring`), a u16 inside a mapping that is never
    // unmapped (see `register`), aligned for an atomic access, and only
    // ever reached as an atomic.
    unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*entries.as_ptr()).resv)) }
}

/// A pool size that the kernel takes: a power of two, within bounds.
fn pool_size(asked: u16) -> u16 {
    asked
        .clamp(MIN_POOL_BUFFERS, POOL_BUFFERS)
        .checked_next_power_of_two()
        .unwrap_or(POOL_BUFFERS)
}

/// Bytes of a pool's buffers. The pool (and the kernel's ring of entries)
/// is a mapping of its own rather than heap memory: the allocator may back
/// its heap with transparent huge pages, and then one write into an idle
/// pool would make 2 MiB resident; here a page is resident only once a
/// buffer in it was used.
fn data_bytes(buffers: u16) -> usize {
    usize::from(buffers) * POOL_BUFFER_SIZE
}

/// Bytes of the ring of entries the kernel reads the free buffers from.
fn entries_bytes(buffers: u16) -> usize {
    usize::from(buffers) * std::mem::size_of::<PoolEntry>()
}

/// One filled buffer of the pool, handed to the program; dropping it gives
/// the buffer back to the kernel.
pub struct Lease {
    /// The pool the buffer belongs to, kept alive by the lease.
    pool: Arc<BufRing>,
    bid: u16,
    len: usize,
}

impl Lease {
    /// The lease of buffer `bid` of `pool`, which the kernel (or the epoll
    /// backend) filled with `len` bytes and handed to this thread.
    pub(crate) fn new(pool: Arc<BufRing>, bid: u16, len: usize) -> Lease {
        Lease { pool, bid, len }
    }

    /// The received bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the lease holds buffer `bid`, filled with `len` bytes,
        // until it is dropped.
        unsafe { self.pool.filled(self.bid, self.len) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.recycle(self.bid);
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("len", &self.len).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::ring::Ring;
    use super::*;

    #[test]
    fn a_pool_size_is_a_power_of_two_within_bounds() {
        assert_eq!(pool_size(POOL_BUFFERS), POOL_BUFFERS);
        assert_eq!(pool_size(POOL_BUFFERS / 2), POOL_BUFFERS / 2);
        assert_eq!(pool_size(POOL_BUFFERS / 3), POOL_BUFFERS / 2);
        assert_eq!(pool_size(1), MIN_POOL_BUFFERS);
        assert_eq!(pool_size(u16::MAX), POOL_BUFFERS);
    }

    #[test]
    fn a_smaller_pool_hands_out_only_its_own_buffers() {
        let pool = BufRing::in_memory(MIN_POOL_BUFFERS).unwrap();
        let mut taken = Vec::new();
        while let Some((bid, _)) = pool.pick() {
            taken.push(bid);
        }
        assert_eq!(taken.len(), usize::from(MIN_POOL_BUFFERS));
        assert!(taken.iter().all(|&bid| bid < MIN_POOL_BUFFERS));
    }

    #[test]
    fn a_buffer_given_back_off_the_issuer_reaches_the_kernel_at_its_next_reap() {
        let ring = Ring::confined().unwrap();
        let pool = ring.ensure_pool_of(MIN_POOL_BUFFERS).unwrap();
        ring.reap(Some(std::time::Duration::ZERO), None).unwrap();
        let Some(before) = pool.published_tail() else {
            return; // the epoll backend picks buffers itself
        };
        pool.recycle(0);
        let by_this_thread = pool.published_tail().unwrap();
        assert_eq!(by_this_thread, before.wrapping_add(1), "published at once");
        std::thread::scope(|s| {
            s.spawn(|| pool.recycle(1));
        });
        let after_other = pool.published_tail().unwrap();
        if ring.is_confined_to_this_thread() {
            assert_eq!(after_other, by_this_thread, "the issuer alone writes");
            ring.reap(Some(std::time::Duration::ZERO), None).unwrap();
            let after_reap = pool.published_tail().unwrap();
            assert_eq!(after_reap, by_this_thread.wrapping_add(1));
        } else {
            assert_eq!(after_other, by_this_thread.wrapping_add(1));
        }
    }
}
