//! `overlapped server --agones` (built with `--features agones`) against a
//! fake SDK sidecar made from Agones' own sdk.proto.
#![cfg(feature = "agones")]

mod common;

#[allow(dead_code)]
#[path = "../src/agones/fake_sdk.rs"]
mod fake_sdk;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{binary, wait_for_line, Server};

#[test]
fn the_cli_says_ready_once_listening_pings_health_and_drains_on_sigterm() {
    let (sidecar, record) = fake_sdk::start();
    let mut command = binary();
    command
        .args([
            "server",
            "--addr",
            "127.0.0.1:0",
            "--model",
            "port",
            "--mode",
            "game",
            "--db",
            "none",
            "--agones",
            "--agones-health-ms",
            "50",
        ])
        .env("AGONES_SDK_GRPC_HOST", "http://127.0.0.1")
        .env("AGONES_SDK_GRPC_PORT", sidecar.port().to_string());
    let mut server = Server::start_from(command);
    // Ready once listening (the address was announced first).
    assert!(record.wait_for("Ready"));
    assert!(wait_for_line(
        &server.stderr,
        |l| l.contains("agones: ready"),
        Duration::from_secs(30)
    )
    .is_some());
    let deadline = Instant::now() + Duration::from_secs(30);
    while record.health_pings() < 3 {
        assert!(Instant::now() < deadline, "no health pings");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(record.wait_for("SetLabel players=0"));
    Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(wait_for_line(
        &server.stderr,
        |l| l.contains("shutdown:"),
        Duration::from_secs(30)
    )
    .is_some());
    assert!(server.child.wait().unwrap().success());
}

#[test]
fn without_a_sidecar_the_cli_stops_at_start_with_the_reason() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let output = binary()
        .args([
            "server",
            "--addr",
            "127.0.0.1:0",
            "--model",
            "port",
            "--mode",
            "echo",
            "--agones",
        ])
        .env("AGONES_SDK_GRPC_HOST", "http://127.0.0.1")
        .env("AGONES_SDK_GRPC_PORT", port.to_string())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("agones:"), "{stderr}");
}
