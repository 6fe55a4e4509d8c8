//! Setting a ring up with what this kernel offers.

use std::io;

use io_uring::IoUring;

use super::confinement::Confinement;

/// Submission queue size. Requests waiting on sockets do not occupy it, only
/// requests not yet handed to the kernel, so this bounds a burst, not the
/// number of operations in flight.
const SQ_ENTRIES: u32 = 4096;
/// Completion queue size: room for a large burst of completions between two
/// reaps (the kernel keeps any overflow, see IORING_FEAT_NODROP).
const CQ_ENTRIES: u32 = 32 * 1024;

/// A ring as set up, with what the kernel let it have.
pub(super) struct Built {
    pub(super) ring: IoUring,
    /// Threads with nothing to reap may sleep in the ring.
    pub(super) sleeps_in_ring: bool,
    /// Set when the ring is confined to one thread.
    pub(super) confinement: Option<Confinement>,
}

/// Sets up a ring (see `Uring::new`): a confined one where asked for and
/// the kernel can make it, otherwise an ordinary one.
pub(super) fn build(cooperative: bool, sleep_in_ring: bool, confined: bool) -> io::Result<Built> {
    if confined && sleep_in_ring {
        if let Some(built) = build_confined()? {
            return Ok(built);
        }
    }
    let mut builder = IoUring::builder();
    builder
        .setup_cqsize(CQ_ENTRIES)
        // Submit every entry even if an earlier one fails to prepare; its
        // error then arrives as a completion like any other.
        .setup_submit_all();
    if cooperative {
        builder.setup_coop_taskrun();
    }
    let ring = match builder.build(SQ_ENTRIES) {
        // Kernels before 5.19 do not know the flag: do without it.
        Err(e) if cooperative && e.raw_os_error() == Some(libc::EINVAL) => {
            return build(false, sleep_in_ring, false);
        }
        other => other?,
    };
    // A wait with a timeout needs IORING_FEAT_EXT_ARG (5.11), the
    // multishot wake-up poll 5.13, the kernel that brought
    // IORING_FEAT_RSRC_TAGS, which stands for it here.
    let params = ring.params();
    let sleeps_in_ring =
        sleep_in_ring && params.is_feature_ext_arg() && params.is_feature_resource_tagging();
    Ok(Built {
        ring,
        sleeps_in_ring,
        confinement: None,
    })
}

/// A confined ring, or `None` where the kernel cannot make one.
fn build_confined() -> io::Result<Option<Built>> {
    let built = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_r_disabled()
        .build(SQ_ENTRIES);
    let ring = match built {
        // Kernels before 6.1 do not know the flags.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        other => other?,
    };
    let params = ring.params();
    if !(params.is_feature_ext_arg() && params.is_feature_resource_tagging()) {
        return Ok(None);
    }
    Ok(Some(Built {
        ring,
        sleeps_in_ring: true,
        confinement: Some(Confinement::new()?),
    }))
}
