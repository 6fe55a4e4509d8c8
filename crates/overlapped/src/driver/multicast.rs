//! A multicast: one buffer sent to many sockets of one confined ring under
//! one record, as a room's snapshot goes to its players.
//!
//! Winsock has no counterpart: there a broadcast is a `WSASend` per socket,
//! each with an `OVERLAPPED` of its own, and so is a broadcast through
//! [`Session::send`](crate::session::Session::send). Here the kernel still
//! gets one send per socket, but they share one record: the buffer, the
//! sockets (held open until their send ends) and what hears of each
//! outcome. A member's completion names its slot in the record, and the
//! record goes when the last of them has come back — one allocation and no
//! packet per member, where a send of its own costs an operation record, a
//! start, and a packet through the port.
//!
//! Every member's outcome is still reported, one by one and as each comes
//! back ([`MemberSink::sent`]): the bytes the kernel took, or the error.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::op::Socket;

/// What hears of each member's send of a multicast.
pub(crate) trait MemberSink: Send + Sync + 'static {
    /// Member `index`'s send ended: `result` is the bytes the kernel took
    /// (all of them unless it failed part way), or `-errno`. Called on the
    /// thread that reaps the ring, once per member.
    fn sent(&self, index: usize, result: i32);
}

/// The record of one multicast, alive until every member's send ended.
pub(crate) struct Multicast {
    data: Bytes,
    members: Vec<Member>,
    sink: Box<dyn MemberSink>,
    /// Members whose completion has not been handled yet.
    left: AtomicUsize,
}

/// One member: its socket, and the way back to the record. A member's
/// completion carries the member's address (see [`user_data_of`]).
struct Member {
    /// The address of the record this member is part of.
    record: usize,
    socket: Arc<Socket>,
}

/// Set in the `user_data` of a member's send: an operation's `user_data` is
/// the address of its `Op` (at least 8-aligned), never odd.
const MEMBER_TAG: u64 = 1;

/// Whether a completion's `user_data` names a member of a multicast.
pub(crate) fn is_member(user_data: u64) -> bool {
    user_data & MEMBER_TAG != 0
}

/// The `user_data` of member `index`'s send.
fn user_data_of(record: &Multicast, index: usize) -> u64 {
    std::ptr::from_ref(&record.members[index]) as u64 | MEMBER_TAG
}

impl Multicast {
    /// A record sending `data` to each of `sockets`; member `i`'s outcome
    /// is reported to `sink` as `i`.
    pub(crate) fn new(
        data: Bytes,
        sockets: impl IntoIterator<Item = Arc<Socket>>,
        sink: Box<dyn MemberSink>,
    ) -> Arc<Multicast> {
        let members = sockets
            .into_iter()
            .map(|socket| Member { record: 0, socket })
            .collect::<Vec<_>>();
        let mut record = Arc::new(Multicast {
            left: AtomicUsize::new(members.len()),
            data,
            members,
            sink,
        });
        let address = Arc::as_ptr(&record) as usize;
        let unique = Arc::get_mut(&mut record).expect("a record just made is not shared");
        for member in &mut unique.members {
            member.record = address;
        }
        record
    }

    /// Members.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// The descriptor, buffer and `user_data` of member `index`'s send.
    pub(crate) fn send_of(&self, index: usize) -> (i32, *const u8, u32, u64) {
        use std::os::fd::AsRawFd;
        let len = u32::try_from(self.data.len()).expect("a multicast's length fits an entry");
        (
            self.members[index].socket.sock.as_raw_fd(),
            self.data.as_ptr(),
            len,
            user_data_of(self, index),
        )
    }
}

impl Multicast {
    /// Reports every member failed with `error`: the record was never
    /// handed to the kernel.
    pub(crate) fn fail_all(&self, error: &io::Error) {
        let errno = error.raw_os_error().unwrap_or(libc::EIO);
        for index in 0..self.len() {
            report(self, index, -errno);
        }
    }
}

/// The most bytes a multicast sends: what one entry's length may give.
pub(crate) const MAX_LEN: usize = i32::MAX as usize;

/// Member `index` was never handed to the kernel (its entry could not be
/// written): it ends now with `error`.
///
/// # Safety
/// As for [`complete`]: the ring holds its reference to `record`, and the
/// member has not ended yet (nor will it again).
pub(crate) unsafe fn refused(record: &Multicast, index: usize, error: &io::Error) {
    let errno = error.raw_os_error().unwrap_or(libc::EIO);
    report(record, index, -errno);
    // SAFETY: per the contract.
    unsafe { release(record) };
}

/// A member's final completion, which the reaper found by its tag.
///
/// # Safety
/// `user_data` must be that of a member whose entry the kernel took (made
/// by [`Multicast::send_of`] of a record given to the ring with
/// [`Arc::into_raw`]), and this its one completion.
pub(crate) unsafe fn complete(user_data: u64, result: i32) {
    let member = (user_data & !MEMBER_TAG) as *const Member;
    // SAFETY: the ring owns one reference to the record, given up only
    // below, once every member has come back; this member has not, so the
    // record and its member list are alive.
    let (record, index) = unsafe {
        let record = (*member).record as *const Multicast;
        let first = (*record).members.as_ptr();
        (&*record, member.offset_from(first) as usize)
    };
    report(record, index, result);
    // SAFETY: per the contract, this member's end is handled once.
    unsafe { release(record) };
}

/// One member ended: the ring's reference to the record goes with the last.
///
/// # Safety
/// Called once per member, after which the member is not touched again.
unsafe fn release(record: &Multicast) {
    if record.left.fetch_sub(1, Ordering::AcqRel) == 1 {
        // SAFETY: the last member is back: the kernel holds no pointer into
        // the record any more, and the ring's reference, made by
        // `Arc::into_raw` when it took the record, is taken back once.
        drop(unsafe { Arc::from_raw(std::ptr::from_ref(record)) });
    }
}

/// Tells the sink how member `index`'s send ended — "aborted" if its socket
/// was closed meanwhile, as every operation pending at `closesocket` ends.
fn report(record: &Multicast, index: usize, result: i32) {
    let socket = &record.members[index].socket;
    if result == -libc::ECONNRESET {
        socket.note_reset();
    }
    let result = if socket.is_closing() {
        -libc::ECANCELED
    } else {
        result
    };
    // The sink is the session layer's, which keeps its own panic boundary;
    // this one keeps the reaper's batch whole should a sink still panic.
    if catch_unwind(AssertUnwindSafe(|| record.sink.sent(index, result))).is_err() {
        tracing::error!("a multicast's member sink panicked");
    }
}
