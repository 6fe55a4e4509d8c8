//! The session layer's clock: milliseconds of the coarse monotonic clock.

/// Milliseconds on the clock of idle timeouts: the coarse monotonic clock,
/// read once per completed packet, which needs no precision finer than its
/// few milliseconds and costs a fraction of a precise read.
pub(crate) fn now_millis() -> u64 {
    crate::driver::sys::coarse_millis()
}
