//! Thin, checked wrappers over the few raw syscalls the driver needs that
//! neither `std` nor `socket2` expose: eventfd, poll, and non-blocking
//! `recvmsg`/`sendmsg` on a prepared `msghdr`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::time::Duration;

/// Retries `f` while it fails with `EINTR`.
fn retry_eintr(mut f: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let rc = f();
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Creates a non-blocking, close-on-exec eventfd with a zero counter.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; the flags are valid constants.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter, making it readable.
pub(crate) fn eventfd_signal(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes exactly 8 bytes from a live local u64, as eventfd requires.
    let rc = retry_eintr(|| unsafe { libc::write(fd, (&one as *const u64).cast(), 8) });
    match rc {
        Ok(_) => Ok(()),
        // The counter is saturated: the event is as signaled as it can be.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Drains an eventfd's counter to zero, making it unreadable.
pub(crate) fn eventfd_clear(fd: RawFd) -> io::Result<()> {
    let mut value: u64 = 0;
    // SAFETY: reads exactly 8 bytes into a live local u64, as eventfd requires.
    let rc = retry_eintr(|| unsafe { libc::read(fd, (&mut value as *mut u64).cast(), 8) });
    match rc {
        Ok(_) => Ok(()),
        // Already zero: nothing to clear.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// A private anonymous mapping of `len` bytes: page aligned, zeroed, and
/// resident only page by page as it is written.
pub(crate) fn map_anonymous(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: asks for a fresh mapping at an address of the kernel's choice;
    // no existing memory is affected.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(addr.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Removes a mapping made by [`map_anonymous`].
///
/// # Safety
/// `addr` and `len` are those of a mapping from [`map_anonymous`] that
/// nothing uses any more.
pub(crate) unsafe fn unmap(addr: NonNull<u8>, len: usize) {
    // SAFETY: per the contract, the range is a whole mapping of ours that
    // nothing refers to.
    if unsafe { libc::munmap(addr.as_ptr().cast(), len) } != 0 {
        tracing::error!("munmap failed: {}", io::Error::last_os_error());
    }
}

/// Milliseconds of `CLOCK_MONOTONIC_COARSE`: the time of the last timer
/// tick (a few milliseconds' resolution), read without touching the clock
/// hardware.
pub(crate) fn coarse_millis() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a live timespec the call writes into; the clock id is
    // valid on every kernel since 2.6.32, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

/// Converts an optional timeout into poll's milliseconds, rounding up so a
/// short non-zero timeout never turns into a busy poll.
fn poll_millis(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            ms.min(libc::c_int::MAX as u128) as libc::c_int
        }
    }
}

/// Waits until at least one of `fds` is readable or `timeout` passes, and
/// returns which are readable. Retries on `EINTR` with the same timeout,
/// which the callers bound by their own deadline.
pub(crate) fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pollfds: Vec<libc::pollfd> = fds.iter().map(|&fd| pollfd(fd)).collect();
    poll(&mut pollfds, timeout)?;
    Ok(pollfds.iter().map(is_readable).collect())
}

/// Sleeps until one of a fixed handful of descriptors is readable or
/// `timeout` passes, with the poll set on the stack: a reaper about to sleep
/// calls it, so it must not allocate. A negative descriptor is skipped
/// (poll(2) ignores it).
pub(crate) fn wait_readable<const N: usize>(
    fds: [RawFd; N],
    timeout: Option<Duration>,
) -> io::Result<()> {
    poll(&mut fds.map(pollfd), timeout)
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn is_readable(p: &libc::pollfd) -> bool {
    p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0
}

fn poll(pollfds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let millis = poll_millis(timeout);
    // SAFETY: `pollfds` is a live, correctly sized array for the whole call.
    retry_eintr(|| unsafe {
        libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, millis) as isize
    })?;
    Ok(())
}

/// Non-blocking `recv` into one buffer; `Ok(None)` when it would block.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes for the duration of the call.
pub(crate) unsafe fn recv_now(
    fd: &impl AsRawFd,
    ptr: *mut u8,
    len: usize,
    flags: i32,
) -> io::Result<Option<usize>> {
    // SAFETY: the caller guarantees `ptr..ptr+len` is writable for the call.
    let rc = retry_eintr(|| unsafe {
        libc::recv(fd.as_raw_fd(), ptr.cast(), len, flags | libc::MSG_DONTWAIT)
    });
    would_block_to_none(rc)
}

/// Non-blocking `send` of one buffer; `Ok(None)` when it would block.
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes for the duration of the call.
pub(crate) unsafe fn send_now(
    fd: &impl AsRawFd,
    ptr: *const u8,
    len: usize,
    flags: i32,
) -> io::Result<Option<usize>> {
    // SAFETY: the caller guarantees `ptr..ptr+len` is readable for the call.
    let rc = retry_eintr(|| unsafe {
        libc::send(fd.as_raw_fd(), ptr.cast(), len, flags | libc::MSG_DONTWAIT)
    });
    would_block_to_none(rc)
}

/// Non-blocking `recvmsg` on a prepared header; `Ok(None)` when it would block.
///
/// # Safety
/// `msg` must point to a valid `msghdr` whose iovecs and name buffer are live
/// and writable for the duration of the call.
pub(crate) unsafe fn recvmsg_now(
    fd: &impl AsRawFd,
    msg: *mut libc::msghdr,
    flags: i32,
) -> io::Result<Option<usize>> {
    // SAFETY: the caller guarantees `msg` is valid for the call.
    let rc =
        retry_eintr(|| unsafe { libc::recvmsg(fd.as_raw_fd(), msg, flags | libc::MSG_DONTWAIT) });
    would_block_to_none(rc)
}

/// Non-blocking `sendmsg` on a prepared header; `Ok(None)` when it would block.
///
/// # Safety
/// `msg` must point to a valid `msghdr` whose iovecs and name are live and
/// readable for the duration of the call.
pub(crate) unsafe fn sendmsg_now(
    fd: &impl AsRawFd,
    msg: *const libc::msghdr,
    flags: i32,
) -> io::Result<Option<usize>> {
    // SAFETY: the caller guarantees `msg` is valid for the call.
    let rc =
        retry_eintr(|| unsafe { libc::sendmsg(fd.as_raw_fd(), msg, flags | libc::MSG_DONTWAIT) });
    would_block_to_none(rc)
}

/// Non-blocking `accept4` (the listener must be non-blocking); the new
/// descriptor is close-on-exec. `Ok(None)` when no connection is waiting.
///
/// # Safety
/// `addr` and `len` must be valid for writes for the duration of the call,
/// `*len` giving the size of the buffer at `addr`.
pub(crate) unsafe fn accept_now(
    fd: &impl AsRawFd,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> io::Result<Option<RawFd>> {
    // SAFETY: the caller guarantees `addr` and `len` are valid for the call.
    let rc = retry_eintr(|| unsafe {
        libc::accept4(fd.as_raw_fd(), addr, len, libc::SOCK_CLOEXEC) as isize
    });
    would_block_to_none(rc).map(|fd| fd.map(|fd| fd as RawFd))
}

/// Starts a connect on a non-blocking socket: `Ok(true)` when connected at
/// once, `Ok(false)` when in progress (writability then tells the outcome).
///
/// # Safety
/// `addr` must point to a valid socket address of `*len` bytes, and `len`
/// must be valid for reads, for the duration of the call.
pub(crate) unsafe fn connect_now(
    fd: &impl AsRawFd,
    addr: *const libc::sockaddr,
    len: *const libc::socklen_t,
) -> io::Result<bool> {
    // SAFETY: the caller guarantees `addr` and `len` are valid for the call.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), addr, *len) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // EINTR: the connect goes on in the background, as EINPROGRESS.
        Some(libc::EINPROGRESS | libc::EINTR) => Ok(false),
        _ => Err(err),
    }
}

/// Bytes of memory the machine has (`_SC_PHYS_PAGES` × page size).
pub(crate) fn physical_memory() -> Option<usize> {
    // SAFETY: sysconf reads a configuration value; no memory is passed.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let pages = usize::try_from(pages).ok()?;
    let page = usize::try_from(page).ok()?;
    pages.checked_mul(page)
}

/// Aborts a TCP connection at once with a reset: `connect` to an
/// `AF_UNSPEC` address dissolves the association (`tcp_disconnect`), what
/// `closesocket` does on Windows with `SO_LINGER` set to zero.
pub(crate) fn abort_connection(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr; only its family is read.
    let mut unspec: libc::sockaddr = unsafe { std::mem::zeroed() };
    unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    let len = std::mem::size_of::<libc::sockaddr>() as libc::socklen_t;
    // SAFETY: `unspec` is a valid address of `len` bytes for the call.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), &unspec, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn would_block_to_none(rc: io::Result<usize>) -> io::Result<Option<usize>> {
    match rc {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}
