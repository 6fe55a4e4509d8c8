//! `overlapped bench` against the echo server, for one second: a smoke test
//! of the load generator (figures belong to `bench/run.py`, not to tests).

mod common;

use common::{binary, Server};

fn field(json: &str, name: &str) -> f64 {
    let start = json
        .find(&format!("\"{name}\":"))
        .unwrap_or_else(|| panic!("no {name} in {json}"));
    let rest = &json[start + name.len() + 3..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].parse().unwrap()
}

fn bench(mode: &str) -> String {
    let server = Server::start_with(&["--model", "port", "--mode", "echo"]);
    let output = binary()
        .args([
            "bench",
            "--addr",
            &server.addr.to_string(),
            "--conns",
            "10",
            "--size",
            "64",
        ])
        .args(["--duration", "1", "--mode", mode, "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn pingpong_bench_against_the_echo_server_checks_every_message() {
    let json = bench("pingpong");
    assert!(field(&json, "messages") > 0.0, "{json}");
    assert_eq!(field(&json, "errors"), 0.0, "{json}");
    assert_eq!(field(&json, "mismatches"), 0.0, "{json}");
    assert_eq!(field(&json, "connected"), 10.0, "{json}");
}

#[test]
fn flood_bench_against_the_echo_server_checks_every_message() {
    let json = bench("flood");
    assert!(field(&json, "messages") > 0.0, "{json}");
    assert_eq!(field(&json, "mismatches"), 0.0, "{json}");
}

#[test]
fn bench_with_a_zero_duration_is_refused() {
    let output = binary()
        .args(["bench", "--duration", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--duration"));
}

#[test]
fn game_bench_against_the_game_server_checks_every_snapshot() {
    let server = Server::start_with(&[
        "--model",
        "port",
        "--mode",
        "game",
        "--tick-hz",
        "50",
        "--db",
        "none",
    ]);
    let output = binary()
        .args([
            "bench",
            "--addr",
            &server.addr.to_string(),
            "--mode",
            "game",
        ])
        .args(["--rooms", "2", "--players", "3", "--tick-hz", "50"])
        .args(["--duration", "1", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let json = String::from_utf8(output.stdout).unwrap();
    assert_eq!(field(&json, "joined"), 6.0, "{json}");
    assert!(field(&json, "messages") > 0.0, "{json}");
    assert_eq!(field(&json, "errors"), 0.0, "{json}");
}
