//! `overlapped server --mode game` end to end: bots in three rooms join,
//! move and check every snapshot; each hostile client is disconnected
//! alone with a logged reason while the others play on; the metrics
//! endpoint answers over real HTTP.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use common::game::*;
use common::{wait_for_line, Server};

const ROOMS: u32 = 3;
const PER_ROOM: usize = 10;

fn game_server(extra: &[&str]) -> Server {
    let mut args = vec![
        "--model",
        "port",
        "--mode",
        "game",
        "--tick-hz",
        "50",
        "--max-room-players",
        "10",
        // Nobody kept between visits: `persistence.rs` tests that.
        "--db",
        "none",
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

/// Three rooms of ten bots that joined and moved once.
fn rooms_of_bots(addr: SocketAddr) -> Vec<Bot> {
    let mut bots: Vec<Bot> = (0..ROOMS as usize * PER_ROOM)
        .map(|i| Bot::join(addr, i as u32 % ROOMS, &format!("bot{i}")))
        .collect();
    for (i, bot) in bots.iter_mut().enumerate() {
        bot.client
            .send(C_MOVE, &move_payload(i as f32, -(i as f32)));
    }
    for (i, bot) in bots.iter_mut().enumerate() {
        bot.until_seen((i as f32, -(i as f32)), PER_ROOM);
    }
    bots
}

#[test]
fn bots_in_three_rooms_see_only_their_room_with_their_latest_positions() {
    let server = game_server(&[]);
    let mut bots = rooms_of_bots(server.addr);
    for bot in &bots {
        assert_eq!(bot.known.len(), PER_ROOM, "bot {} knows its room", bot.id);
    }
    // A second move replaces the first in every snapshot after it.
    for (i, bot) in bots.iter_mut().enumerate() {
        bot.client
            .send(C_MOVE, &move_payload(100.0 + i as f32, 0.5));
    }
    for (i, bot) in bots.iter_mut().enumerate() {
        bot.until_seen((100.0 + i as f32, 0.5), PER_ROOM);
    }
}

#[test]
fn a_player_that_leaves_is_announced_and_dropped_from_the_snapshots() {
    let server = game_server(&[]);
    let mut bots = rooms_of_bots(server.addr);
    let leaving = bots.remove(0);
    let (gone, room) = (leaving.id, leaving.room);
    drop(leaving);
    for bot in bots.iter_mut().filter(|b| b.room == room) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let snapshot = bot.next_snapshot();
            if snapshot.entries.len() == PER_ROOM - 1 {
                assert!(!bot.known.contains(&gone), "S_PLAYER_LEAVE came first");
                assert!(snapshot.entries.iter().all(|e| e.0 != gone));
                break;
            }
            assert!(Instant::now() < deadline, "the leave never showed");
        }
    }
}

/// What a hostile client sends, after an optional legal join of its own
/// (to a room of its own, so the bots' rooms stay whole), and the reason
/// the server must log.
struct Attack {
    name: &'static str,
    join_first: bool,
    frames: Vec<Vec<u8>>,
    reason: &'static str,
}

fn attacks() -> Vec<Attack> {
    let attack = |name, join_first, frames, reason| Attack {
        name,
        join_first,
        frames,
        reason,
    };
    vec![
        attack(
            "move before join",
            false,
            vec![frame(C_MOVE, &move_payload(1.0, 1.0))],
            "C_MOVE before C_JOIN",
        ),
        attack(
            "second join",
            true,
            vec![frame(C_JOIN, &join_payload(0, b"again"))],
            "a second C_JOIN",
        ),
        attack(
            "empty name",
            false,
            vec![frame(C_JOIN, &join_payload(1, b""))],
            "bad name: 0 bytes",
        ),
        attack(
            "long name",
            false,
            vec![frame(C_JOIN, &join_payload(1, &[b'n'; 33]))],
            "bad name: 33 bytes",
        ),
        attack(
            "name not UTF-8",
            false,
            vec![frame(C_JOIN, &join_payload(1, &[0xff, 0xfe]))],
            "bad name: not UTF-8",
        ),
        attack(
            "name with an escape",
            false,
            vec![frame(C_JOIN, &join_payload(1, b"\x1b[2Jx"))],
            "bad name: a control character",
        ),
        attack(
            "name with a newline",
            false,
            vec![frame(C_JOIN, &join_payload(1, b"a\nb"))],
            "bad name: a control character",
        ),
        attack(
            "name with a NUL",
            false,
            vec![frame(C_JOIN, &join_payload(1, b"a\0"))],
            "bad name: a control character",
        ),
        attack(
            "NaN",
            true,
            vec![frame(C_MOVE, &move_payload(f32::NAN, 0.0))],
            "bad coordinate NaN",
        ),
        attack(
            "infinity",
            true,
            vec![frame(C_MOVE, &move_payload(0.0, f32::INFINITY))],
            "bad coordinate inf",
        ),
        attack(
            "out of range",
            true,
            vec![frame(C_MOVE, &move_payload(10_000.5, 0.0))],
            "bad coordinate 10000.5",
        ),
        attack(
            "short move",
            true,
            vec![frame(C_MOVE, &[0; 7])],
            "payload too short",
        ),
        attack(
            "long move",
            true,
            vec![frame(C_MOVE, &[0; 9])],
            "1 bytes left over",
        ),
        attack(
            "unknown id",
            false,
            vec![frame(99, b"")],
            "unknown packet id 99",
        ),
        attack(
            "full room",
            false,
            vec![frame(C_JOIN, &join_payload(0, b"eleventh"))],
            "room 0 is full (10 players)",
        ),
        attack(
            "oversized frame",
            false,
            vec![frame(C_JOIN, &[b'x'; 100])],
            "frame size 104 exceeds the maximum packet size 64",
        ),
    ]
}

#[test]
fn each_hostile_client_is_disconnected_alone_with_its_reason_logged() {
    let server = game_server(&[]);
    let mut bots = rooms_of_bots(server.addr);
    for (n, attack) in attacks().into_iter().enumerate() {
        let mut hostile = Client::connect(server.addr);
        if attack.join_first {
            // A room of its own.
            hostile.send(C_JOIN, &join_payload(1000 + n as u32, b"hostile"));
            assert_eq!(
                hostile.next().map(|f| f.0),
                Some(S_JOINED),
                "{}",
                attack.name
            );
        }
        let hostile_addr = hostile.stream.local_addr().unwrap().to_string();
        for frame in &attack.frames {
            hostile.stream.write_all(frame).unwrap();
        }
        let frames = hostile.until_closed();
        assert!(
            frames.iter().all(|&id| id == S_SNAPSHOT),
            "{}: only snapshots before the close, got {frames:?}",
            attack.name
        );
        let logged = wait_for_line(
            &server.stderr,
            |l| l.contains(&hostile_addr) && l.contains("disconnected"),
            LIMIT,
        )
        .unwrap_or_else(|| panic!("{}: no disconnect logged", attack.name));
        assert!(logged.contains(attack.reason), "{}: {logged}", attack.name);
    }
    // Every bot is still in, with its room whole, and moves on.
    for (i, bot) in bots.iter_mut().enumerate() {
        bot.client.send(C_MOVE, &move_payload(-5.0, i as f32));
    }
    for (i, bot) in bots.iter_mut().enumerate() {
        bot.until_seen((-5.0, i as f32), PER_ROOM);
    }
}

/// `GET path` over HTTP/1.1: the status code and the body.
fn http_get(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

#[test]
fn the_metrics_endpoint_serves_prometheus_text_and_health_over_http() {
    let server = game_server(&["--metrics-addr", "127.0.0.1:0"]);
    let line = server
        .startup
        .iter()
        .find(|l| l.contains("metrics on http://"))
        .cloned()
        .expect("the metrics address is logged");
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap();
    let mut bot = Bot::join(server.addr, 0, "watched");
    bot.next_snapshot();
    let (status, head, body) = http_get(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(metric(&body, "overlapped_sessions_open"), 1);
    assert_eq!(metric(&body, "overlapped_sessions_accepted_total"), 1);
    assert!(metric(&body, "overlapped_packets_in_total") >= 1);
    assert!(metric(&body, "overlapped_tick_lateness_seconds_count") >= 1);
    assert!(body.contains("# TYPE overlapped_tick_lateness_seconds histogram"));
    assert!(body.contains("overlapped_disconnects_total{reason=\"rejected\"} 0"));
    let (status, _, body) = http_get(addr, "GET", "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(http_get(addr, "GET", "/nothing").0, 404);
    assert_eq!(http_get(addr, "POST", "/metrics").0, 405);
}
