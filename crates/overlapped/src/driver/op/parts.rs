//! The memory an operation lends to the kernel.

use std::mem;
use std::net::SocketAddr;

use smallbox::{smallbox, SmallBox};

use super::super::buf::{IoBuf, IoBufMut};
use super::outcome::Erased;

/// The message header and address buffer of the operations that need them
/// (several buffers, datagrams, accept, connect), in one allocation.
pub(crate) struct Header {
    pub(crate) msg: libc::msghdr,
    pub(crate) addr: libc::sockaddr_storage,
    /// The iovec of a single buffer, so `msg` can point at it.
    iov: libc::iovec,
}

/// The memory an operation lends to the kernel: the program's buffers, where
/// they are, and the message header if the operation needs one. Everything
/// the kernel is given a pointer to lives on the heap, so moving `IoParts`
/// moves no byte the kernel points at. A receive or send into one buffer
/// needs no header and no iovec array: the kernel gets pointer and length.
pub struct IoParts {
    /// The program's buffers, `Vec<B>`, type-erased until they go back.
    buffers: Erased,
    /// The one buffer, when there is exactly one.
    single: Option<libc::iovec>,
    /// Every buffer, when there are several (on the heap, so stable).
    several: Vec<libc::iovec>,
    header: Option<Box<Header>>,
    /// Total length of the buffers.
    pub(crate) total: usize,
    /// Bytes a send already transferred on the fast path, before the rest
    /// went to the kernel.
    pub(crate) sent_early: usize,
    /// The connection an accept produced.
    pub(crate) accepted: Option<std::os::fd::OwnedFd>,
    /// The program's own record of the operation (a completion port's
    /// `OVERLAPPED`), given back with the outcome, or on a failed start.
    record: Option<Erased>,
}

// SAFETY: the raw pointers in the iovecs and the header point into heap
// memory owned by this same value (the buffers, the iovec array, the
// header); they move between threads together with their owner.
unsafe impl Send for IoParts {}

impl IoParts {
    /// Describes buffers the kernel will write into.
    pub(crate) fn for_recv<B: IoBufMut>(mut buffers: Vec<B>) -> IoParts {
        let iovecs = buffers.iter_mut().map(|b| libc::iovec {
            iov_base: b.stable_mut_ptr().cast(),
            iov_len: b.len(),
        });
        let (single, several) = IoParts::describe(iovecs);
        IoParts::assemble(smallbox!(buffers), single, several)
    }

    /// Describes buffers the kernel will read from.
    pub(crate) fn for_send<B: IoBuf>(buffers: Vec<B>) -> IoParts {
        let iovecs = buffers.iter().map(|b| libc::iovec {
            iov_base: b.stable_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        });
        let (single, several) = IoParts::describe(iovecs);
        IoParts::assemble(smallbox!(buffers), single, several)
    }

    fn describe(
        iovecs: impl ExactSizeIterator<Item = libc::iovec>,
    ) -> (Option<libc::iovec>, Vec<libc::iovec>) {
        if iovecs.len() == 1 {
            (iovecs.into_iter().next(), Vec::new())
        } else {
            (None, iovecs.collect())
        }
    }

    fn assemble(
        buffers: Erased,
        single: Option<libc::iovec>,
        several: Vec<libc::iovec>,
    ) -> IoParts {
        let total = single.iter().chain(&several).map(|v| v.iov_len).sum();
        IoParts {
            buffers,
            single,
            several,
            header: None,
            total,
            sent_early: 0,
            accepted: None,
            record: None,
        }
    }

    /// The one buffer's pointer and length, when the operation can go to
    /// the kernel without a message header.
    pub(crate) fn single(&self) -> Option<(*mut u8, usize)> {
        match (&self.single, &self.header) {
            (Some(iov), None) => Some((iov.iov_base.cast(), iov.iov_len)),
            _ => None,
        }
    }

    /// The message header, made on first use and pointed at the buffers.
    pub(crate) fn header(&mut self) -> &mut Header {
        let header = self.header.get_or_insert_with(|| {
            Box::new(Header {
                // SAFETY: all-zero is a valid msghdr, sockaddr_storage and iovec.
                msg: unsafe { mem::zeroed() },
                // SAFETY: as above.
                addr: unsafe { mem::zeroed() },
                // SAFETY: as above.
                iov: unsafe { mem::zeroed() },
            })
        });
        match self.single {
            Some(iov) => {
                header.iov = iov;
                header.msg.msg_iov = &mut header.iov;
                header.msg.msg_iovlen = 1;
            }
            None => {
                header.msg.msg_iov = self.several.as_mut_ptr();
                header.msg.msg_iovlen = self.several.len();
            }
        }
        header
    }

    /// The header's message pointer for `recvmsg`/`sendmsg`.
    pub(crate) fn msg_ptr(&mut self) -> *mut libc::msghdr {
        &mut self.header().msg
    }

    /// Attaches the program's record of the operation.
    pub(crate) fn with_record<T: Send + 'static>(mut self, record: T) -> IoParts {
        self.record = Some(smallbox!(record));
        self
    }

    /// Takes the program's record out, whatever its type (for a sink).
    pub(crate) fn take_erased_record(&mut self) -> Option<Erased> {
        self.record.take()
    }

    /// Takes the program's record back, if it is of type `T`.
    pub(crate) fn take_record<T: 'static>(&mut self) -> Option<T> {
        downcast(self.record.take()?)
    }

    /// Memory for an operation that lends no buffer of the program's.
    pub(crate) fn empty() -> IoParts {
        IoParts::assemble(smallbox!(Vec::<Vec<u8>>::new()), None, Vec::new())
    }

    /// Memory for an operation that moves no data (accept, connect): only
    /// the address buffer.
    pub(crate) fn for_address(target: Option<SocketAddr>) -> IoParts {
        let mut parts = IoParts::assemble(smallbox!(Vec::<Vec<u8>>::new()), None, Vec::new());
        parts.use_address(target);
        parts
    }

    /// Takes the connection an accept produced.
    pub(crate) fn take_accepted(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.accepted.take()
    }

    /// The program's buffers, if they are of type `B`.
    pub(crate) fn try_into_buffers<B: 'static>(self) -> Option<Vec<B>> {
        downcast(self.buffers)
    }

    /// Points the header's name at the address buffer, for a datagram
    /// receive (the kernel writes the source) or send (we write the target).
    pub(crate) fn use_address(&mut self, target: Option<SocketAddr>) {
        let header = self.header();
        let len = match target {
            Some(target) => {
                let target = socket2::SockAddr::from(target);
                // SAFETY: `target` holds `len()` valid bytes of a sockaddr, and
                // sockaddr_storage is large enough for any address family.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        target.as_ptr().cast::<u8>(),
                        (&mut header.addr as *mut libc::sockaddr_storage).cast::<u8>(),
                        target.len() as usize,
                    );
                }
                target.len()
            }
            None => mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        };
        header.msg.msg_name = (&mut header.addr as *mut libc::sockaddr_storage).cast();
        header.msg.msg_namelen = len;
    }

    /// The address buffer and its length field, for accept and connect.
    pub(crate) fn addr_ptrs(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        let header = self.header();
        (
            (&mut header.addr as *mut libc::sockaddr_storage).cast(),
            &mut header.msg.msg_namelen,
        )
    }

    /// The `msg_flags` a `recvmsg` reported.
    pub(crate) fn msg_flags(&self) -> u32 {
        self.header.as_ref().map_or(0, |h| h.msg.msg_flags as u32)
    }

    /// The source address the kernel wrote for a datagram receive.
    pub(crate) fn source(&self) -> Option<SocketAddr> {
        let header = self.header.as_ref()?;
        let len = header.msg.msg_namelen;
        if len == 0 {
            return None;
        }
        // SAFETY: the kernel wrote a sockaddr of `len` bytes into `addr`, and
        // the storage is copied, not referenced.
        let addr = unsafe { socket2::SockAddr::new(header.addr, len) };
        addr.as_socket()
    }

    /// Bytes not yet transferred: the total less what [`IoParts::advance`]
    /// skipped.
    pub(crate) fn remaining(&self) -> usize {
        self.total - self.sent_early
    }

    /// Skips the first `n` bytes after a partial send on the fast path, so
    /// the kernel sends only the rest.
    pub(crate) fn advance(&mut self, mut n: usize) {
        self.sent_early += n;
        if let Some(iov) = &mut self.single {
            // SAFETY: n < iov_len (the send was partial), so the new base
            // stays inside the buffer.
            iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
            iov.iov_len -= n;
        } else {
            let mut first = 0;
            while first < self.several.len() && n >= self.several[first].iov_len {
                n -= self.several[first].iov_len;
                first += 1;
            }
            self.several.drain(..first);
            if let Some(iov) = self.several.first_mut() {
                // SAFETY: n < iov_len, so the new base stays inside the buffer.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                iov.iov_len -= n;
            }
        }
        if self.header.is_some() {
            // Re-point the header at what is left.
            self.header();
        }
    }

    /// Gives the program's buffers back.
    pub(crate) fn into_buffers<B: 'static>(self) -> Vec<B> {
        match self.try_into_buffers() {
            Some(buffers) => buffers,
            // An `Overlapped<B>` only ever starts operations with `Vec<B>`.
            None => unreachable!("buffers of an operation changed type"),
        }
    }
}

/// The value inside `erased`, if it is a `T`.
pub(crate) fn downcast<T: 'static>(erased: Erased) -> Option<T> {
    erased.downcast::<T>().ok().map(SmallBox::into_inner)
}
