//! Runs the built `overlapped` binary and watches its output.
#![allow(dead_code)]

pub mod chat;
pub mod game;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// The seed's send buffer: "Hello Server!" and 87 zero bytes.
pub fn seed_buffer() -> Vec<u8> {
    let mut buffer = vec![0u8; 100];
    buffer[..13].copy_from_slice(b"Hello Server!");
    buffer
}

pub const SEED_LINE: &str = "Recv Data : Hello Server! (100 bytes)";

pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_overlapped"))
}

/// A running `overlapped server` on a free port; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The stderr lines before the one that announced the address.
    pub startup: Vec<String>,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts `overlapped server` with extra arguments (model, mode, ...).
    pub fn start_with(extra: &[&str]) -> Server {
        let mut command = binary();
        command
            .args(["server", "--addr", "127.0.0.1:0"])
            .args(extra);
        Server::start_from(command)
    }

    /// Starts `command`, which must end up running `overlapped server`.
    pub fn start_from(mut command: Command) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start overlapped server");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        let mut startup = Vec::new();
        let addr = wait_for_line(
            &stderr,
            |l| {
                startup.push(l.to_string());
                l.contains("listening on")
            },
            Duration::from_secs(30),
        )
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("server announces its address; it said {startup:?}"));
        startup.pop();
        Server {
            child,
            addr,
            startup,
            stdout,
            stderr,
        }
    }

    /// The stderr lines logged so far that `wanted` picks (without waiting).
    pub fn logged_so_far(&self, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        self.stderr.try_iter().filter(|l| wanted(l)).collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Collects stdout lines until `count` arrived or `limit` passed.
    pub fn collect_stdout(&self, count: usize, limit: Duration) -> Vec<String> {
        collect(&self.stdout, count, limit)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forwards each line of `stream` to a channel.
pub fn lines(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn wait_for_line(
    rx: &Receiver<String>,
    mut wanted: impl FnMut(&str) -> bool,
    limit: Duration,
) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let line = rx.recv_timeout(left).ok()?;
        if wanted(&line) {
            return Some(line);
        }
    }
}

pub fn collect(rx: &Receiver<String>, count: usize, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < count {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match rx.recv_timeout(left) {
            Ok(line) => got.push(line),
            Err(_) => break,
        }
    }
    got
}

/// Fields of `/proc/PID/status` such as `Threads`.
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User plus system CPU time of a process, in clock ticks (`/proc/PID/stat`).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Everything a finished child wrote to its piped standard error.
pub fn stderr_of(child: &mut std::process::Child) -> String {
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    stderr
}
