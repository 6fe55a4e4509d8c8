//! Which kernel interface carries the overlapped operations out.
//!
//! Windows has one: the kernel's overlapped I/O. Linux has io_uring, its true
//! counterpart, but container sandboxes often refuse it (Docker's default
//! seccomp profile blocks `io_uring_setup`), and some kernels build it out.
//! So the driver has a second backend on epoll, with the same semantics,
//! chosen like this, once per process:
//!
//! | `OVERLAPPED_BACKEND` | backend |
//! |---|---|
//! | unset, empty or `auto` | io_uring if it can be set up, else epoll (with one warning in the log) |
//! | `uring` | io_uring; every socket operation fails with the reason if it cannot be set up |
//! | `epoll` | epoll |
//!
//! Any other value is an error (`InvalidInput`) from the first operation.

pub use crate::driver::backend::{backend, Backend, BACKEND_VAR};
