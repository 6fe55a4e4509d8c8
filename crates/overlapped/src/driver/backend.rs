//! The choice of backend, made once per process (the crate's `backend`
//! module documents it for programs).

use std::fmt;
use std::io;
use std::sync::OnceLock;

/// The environment variable that picks the backend.
pub const BACKEND_VAR: &str = "OVERLAPPED_BACKEND";

/// A kernel interface the driver can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: the kernel carries out each operation and posts its
    /// completion, as Windows' overlapped I/O does.
    IoUring,
    /// epoll readiness: the driver carries out each operation itself once
    /// the socket is ready, and posts its completion.
    Epoll,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::IoUring => "io_uring",
            Backend::Epoll => "epoll",
        })
    }
}

/// The backend this process uses, chosen on first call (see the module
/// docs). `Err` if `OVERLAPPED_BACKEND` is invalid, or is `uring` where
/// io_uring cannot be set up.
pub fn backend() -> io::Result<Backend> {
    chosen()
}

pub(crate) fn chosen() -> io::Result<Backend> {
    static CHOICE: OnceLock<Result<Backend, (io::ErrorKind, String)>> = OnceLock::new();
    let choice = CHOICE.get_or_init(|| {
        let requested = std::env::var(BACKEND_VAR).unwrap_or_default();
        choose(&requested).map_err(|e| (e.kind(), e.to_string()))
    });
    choice
        .clone()
        .map_err(|(kind, message)| io::Error::new(kind, message))
}

fn choose(requested: &str) -> io::Result<Backend> {
    match requested.trim() {
        "" | "auto" => match super::uring::probe::probe() {
            Ok(()) => Ok(Backend::IoUring),
            Err(e) => {
                tracing::warn!("io_uring is unavailable ({e}); using the epoll backend");
                Ok(Backend::Epoll)
            }
        },
        "uring" | "io_uring" => match super::uring::probe::probe() {
            Ok(()) => Ok(Backend::IoUring),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("{BACKEND_VAR}=uring, but io_uring cannot be set up here: {e}"),
            )),
        },
        "epoll" => Ok(Backend::Epoll),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{BACKEND_VAR}={other:?} is not a backend; use uring, epoll or auto"),
        )),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_backend_name_is_invalid_input() {
        let err = choose("kqueue").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("kqueue"));
    }

    #[test]
    fn epoll_can_always_be_chosen() {
        assert_eq!(choose("epoll").unwrap(), Backend::Epoll);
    }
}
