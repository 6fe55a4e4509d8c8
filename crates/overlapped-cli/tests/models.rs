//! The three notification models serving the same echo traffic.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use common::Server;

const CLIENTS: usize = 200;
const THREADS: usize = 4;
const MESSAGE: usize = 1024;
const RUN_FOR: Duration = Duration::from_secs(3);

/// The bytes of message `seq` of client `client`: different for every
/// message, so a byte from the wrong message or place shows.
fn pattern(client: usize, seq: u64) -> Vec<u8> {
    (0..MESSAGE)
        .map(|i| (client as u64 * 131 + seq * 31 + i as u64 * 7) as u8)
        .collect()
}

#[derive(Default, Debug)]
struct Tally {
    messages: u64,
    mismatches: u64,
    errors: u64,
}

/// Drives `clients` connections: each round sends one message on each, then
/// reads every echo back and checks it byte for byte.
fn drive(addr: std::net::SocketAddr, first: usize, clients: usize) -> Tally {
    let mut tally = Tally::default();
    let mut streams: Vec<TcpStream> = (0..clients)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    for stream in &streams {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }
    let started = Instant::now();
    let mut seq = 0;
    let mut echo = vec![0; MESSAGE];
    while started.elapsed() < RUN_FOR {
        for (i, stream) in streams.iter_mut().enumerate() {
            if stream.write_all(&pattern(first + i, seq)).is_err() {
                tally.errors += 1;
            }
        }
        for (i, stream) in streams.iter_mut().enumerate() {
            match stream.read_exact(&mut echo) {
                Ok(()) if echo == pattern(first + i, seq) => tally.messages += 1,
                Ok(()) => tally.mismatches += 1,
                Err(_) => tally.errors += 1,
            }
        }
        seq += 1;
    }
    tally
}

fn echo_is_byte_exact_for_200_clients(model: &str) {
    let mut args = vec!["--model", model, "--mode", "echo"];
    if model == "port" {
        // 200 clients from one address: more than its default share.
        args.extend(["--max-sessions-per-ip", "0"]);
    }
    let server = Server::start_with(&args);
    let per_thread = CLIENTS / THREADS;
    let drivers: Vec<_> = (0..THREADS)
        .map(|t| {
            let addr = server.addr;
            thread::spawn(move || drive(addr, t * per_thread, per_thread))
        })
        .collect();
    let mut total = Tally::default();
    for driver in drivers {
        let tally = driver.join().unwrap();
        total.messages += tally.messages;
        total.mismatches += tally.mismatches;
        total.errors += tally.errors;
    }
    eprintln!("{model}: {total:?}");
    assert_eq!(
        (total.mismatches, total.errors),
        (0, 0),
        "{model}: {total:?}"
    );
    assert!(total.messages >= CLIENTS as u64, "{model}: {total:?}");
}

#[test]
fn event_model_echoes_200_clients_byte_exact() {
    echo_is_byte_exact_for_200_clients("event");
}

#[test]
fn routine_model_echoes_200_clients_byte_exact() {
    echo_is_byte_exact_for_200_clients("routine");
}

#[test]
fn port_model_echoes_200_clients_byte_exact() {
    echo_is_byte_exact_for_200_clients("port");
}

#[test]
fn routine_model_prints_the_seed_line() {
    let server = Server::start_with(&["--model", "routine"]);
    let mut client = TcpStream::connect(server.addr).unwrap();
    client.write_all(&common::seed_buffer()).unwrap();
    let lines = server.collect_stdout(1, Duration::from_secs(10));
    assert_eq!(lines, vec![common::SEED_LINE]);
}

#[test]
fn port_model_prints_the_seed_line() {
    let server = Server::start_with(&["--model", "port"]);
    let mut client = TcpStream::connect(server.addr).unwrap();
    client.write_all(&common::seed_buffer()).unwrap();
    let lines = server.collect_stdout(1, Duration::from_secs(10));
    assert_eq!(lines, vec![common::SEED_LINE]);
}

#[test]
fn chat_mode_outside_the_port_model_is_refused() {
    let output = common::binary()
        .args(["server", "--addr", "127.0.0.1:0", "--mode", "chat"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--model port"));
}

#[test]
fn session_layer_options_outside_the_port_model_are_refused() {
    for option in [&["--single-recv"][..], &["--max-sessions", "5"][..]] {
        let mut child = common::binary()
            .args(["server", "--addr", "127.0.0.1:0", "--model", "event"])
            .args(option)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A refused option ends the program at once; one that was taken
        // leaves a server running.
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{option:?} was accepted: the server runs");
            }
            thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success());
        let stderr = common::stderr_of(&mut child);
        assert!(stderr.contains("--model port"), "{option:?}: {stderr}");
    }
}

#[test]
fn reuse_port_is_refused_for_the_game_whose_rooms_would_split() {
    let output = common::binary()
        .args([
            "server",
            "--model",
            "port",
            "--mode",
            "game",
            "--reuse-port",
            "--db",
            "none",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--reuse-port"), "{stderr}");
}

#[cfg(not(feature = "agones"))]
#[test]
fn agones_in_a_build_without_it_is_refused_with_how_to_build_it() {
    let output = common::binary()
        .args(["server", "--model", "port", "--mode", "echo", "--agones"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--features agones"), "{stderr}");
}
