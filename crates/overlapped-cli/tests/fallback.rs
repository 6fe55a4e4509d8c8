//! Where io_uring is refused, as container seccomp profiles commonly do,
//! the server says so once and serves on the epoll backend.
//!
//! The server runs in a child process with a seccomp filter that makes
//! `io_uring_setup` fail with `EPERM` (what Docker's default profile does).
//! The child is this test binary itself, re-run as the `jailed` helper: it
//! installs the filter and then executes `overlapped server`, which inherits
//! the filter.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_for_line, Server, SEED_LINE};

/// The `overlapped` arguments the jailed helper runs, space-separated.
const JAILED_ARGS: &str = "OVERLAPPED_TEST_JAILED_ARGS";

/// Not a test of its own: the body of the jailed child of the tests below.
#[test]
#[ignore = "runs only as the jailed child process of the fallback tests"]
fn jailed() {
    let args = std::env::var(JAILED_ARGS).expect("run by the fallback tests");
    refuse_io_uring_setup();
    let err = Command::new(env!("CARGO_BIN_EXE_overlapped"))
        .args(args.split(' '))
        .exec();
    panic!("cannot run overlapped: {err}");
}

/// Makes `io_uring_setup` fail with `EPERM` for this thread and whatever it
/// executes.
fn refuse_io_uring_setup() {
    use seccompiler::{apply_filter, BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let arch = TargetArch::try_from(std::env::consts::ARCH).expect("a seccomp architecture");
    let filter = SeccompFilter::new(
        [(libc::SYS_io_uring_setup, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .expect("a valid filter");
    let program: BpfProgram = filter.try_into().expect("a filter that compiles");
    apply_filter(&program).expect("seccomp filter installed");
}

/// This test binary, set to run `overlapped` with `args` in the jail.
fn jailed_command(args: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--ignored", "--exact", "jailed", "--nocapture", "--quiet"])
        .env(JAILED_ARGS, args)
        .env_remove("OVERLAPPED_BACKEND");
    command
}

fn jailed_server(extra: &str) -> Server {
    Server::start_from(jailed_command(&format!(
        "server --addr 127.0.0.1:0 {extra}"
    )))
}

fn says_it_fell_back(server: &Server) {
    assert!(
        server
            .startup
            .iter()
            .any(|l| l.contains("io_uring is unavailable") && l.contains("epoll")),
        "no fallback line in {:?}",
        server.startup
    );
}

#[test]
fn port_server_falls_back_to_epoll_and_echoes() {
    let server = jailed_server("--model port --mode echo");
    says_it_fell_back(&server);
    let mut client = TcpStream::connect(server.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let message: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&message).unwrap();
    let mut echoed = vec![0; message.len()];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, message);
}

#[test]
fn seed_server_falls_back_to_epoll_and_prints_the_seed_line() {
    let server = jailed_server("--model event");
    says_it_fell_back(&server);
    let mut client = TcpStream::connect(server.addr).unwrap();
    client.write_all(&common::seed_buffer()).unwrap();
    let line = wait_for_line(
        &server.stdout,
        |l| l.starts_with("Recv"),
        Duration::from_secs(10),
    );
    assert_eq!(line.as_deref(), Some(SEED_LINE));
}

/// Runs `command` to its end and checks that it failed saying each of
/// `reasons` on stderr.
fn fails_saying(mut command: Command, reasons: &[&str]) {
    let output = command.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    for reason in reasons {
        assert!(
            stderr.contains(reason),
            "{reason:?} not in stderr: {stderr}"
        );
    }
}

#[test]
fn forcing_io_uring_where_it_is_refused_fails_with_the_reason() {
    let mut command = jailed_command("server --addr 127.0.0.1:0");
    command.env("OVERLAPPED_BACKEND", "uring");
    fails_saying(
        command,
        &["OVERLAPPED_BACKEND=uring", "io_uring cannot be set up"],
    );
}

#[test]
fn an_unknown_backend_name_stops_the_server_with_the_reason() {
    let mut command = common::binary();
    command
        .args(["server", "--addr", "127.0.0.1:0"])
        .env("OVERLAPPED_BACKEND", "kqueue");
    fails_saying(command, &["\"kqueue\" is not a backend"]);
}
