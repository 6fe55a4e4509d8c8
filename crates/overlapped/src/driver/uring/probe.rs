//! Whether this kernel gives the process what the io_uring backend uses.

use std::io;

use io_uring::{opcode, IoUring, Probe};

/// Checks that this kernel lets the process set up an io_uring with what the
/// driver uses. Container seccomp profiles often refuse `io_uring_setup`.
pub(crate) fn probe() -> io::Result<()> {
    let ring: IoUring = IoUring::builder().setup_submit_all().build(8)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    let needed = [
        opcode::Recv::CODE,
        opcode::Send::CODE,
        opcode::RecvMsg::CODE,
        opcode::SendMsg::CODE,
        opcode::Accept::CODE,
        opcode::Connect::CODE,
        opcode::Shutdown::CODE,
        opcode::AsyncCancel::CODE,
    ];
    match needed.iter().find(|&&code| !probe.is_supported(code)) {
        Some(code) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("io_uring lacks opcode {code}"),
        )),
        None => Ok(()),
    }
}
