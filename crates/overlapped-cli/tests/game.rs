//! `overlapped server --mode game` end to end: bots in three rooms join,
//! move and check every snapshot; each hostile client is disconnected
//! alone with a logged reason while the others play on; the metrics
//! endpoint answers over real HTTP.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{wait_for_line, Server};

const C_JOIN: u16 = 10;
const S_JOINED: u16 = 11;
const S_PLAYER_JOIN: u16 = 12;
const C_MOVE: u16 = 13;
const S_SNAPSHOT: u16 = 14;
const S_PLAYER_LEAVE: u16 = 15;

const ROOMS: u32 = 3;
const PER_ROOM: usize = 10;
const LIMIT: Duration = Duration::from_secs(30);

fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = ((4 + payload.len()) as u16).to_le_bytes().to_vec();
    frame.extend_from_slice(&id.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn join_payload(room: u32, name: &[u8]) -> Vec<u8> {
    let mut payload = room.to_le_bytes().to_vec();
    payload.extend_from_slice(name);
    payload
}

fn move_payload(x: f32, y: f32) -> Vec<u8> {
    let mut payload = x.to_le_bytes().to_vec();
    payload.extend_from_slice(&y.to_le_bytes());
    payload
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn f32_at(bytes: &[u8], at: usize) -> f32 {
    f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// A snapshot: its tick and its `(id, x, y)` entries.
#[derive(Debug)]
struct Snapshot {
    tick: u32,
    entries: Vec<(u64, f32, f32)>,
}

fn parse_snapshot(payload: &[u8]) -> Snapshot {
    let tick = u32::from_le_bytes(payload[..4].try_into().unwrap());
    let count = usize::from(u16::from_le_bytes(payload[4..6].try_into().unwrap()));
    assert_eq!(payload.len(), 6 + 16 * count, "snapshot length");
    let entries = (0..count)
        .map(|i| {
            let at = 6 + 16 * i;
            (
                u64_at(payload, at),
                f32_at(payload, at + 8),
                f32_at(payload, at + 12),
            )
        })
        .collect();
    Snapshot { tick, entries }
}

/// A client speaking the game's frames.
struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        Client {
            stream,
            buffer: Vec::new(),
        }
    }

    fn send(&mut self, id: u16, payload: &[u8]) {
        self.stream.write_all(&frame(id, payload)).unwrap();
    }

    /// The next frame, or `None` at the end of the stream.
    fn next(&mut self) -> Option<(u16, Vec<u8>)> {
        loop {
            if self.buffer.len() >= 4 {
                let size = usize::from(u16::from_le_bytes([self.buffer[0], self.buffer[1]]));
                if self.buffer.len() >= size {
                    let id = u16::from_le_bytes([self.buffer[2], self.buffer[3]]);
                    let payload = self.buffer[4..size].to_vec();
                    self.buffer.drain(..size);
                    return Some((id, payload));
                }
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading a frame: {e}"),
            }
        }
    }

    /// Reads until the server closes the connection; the frames before.
    fn until_closed(&mut self) -> Vec<u16> {
        let mut ids = Vec::new();
        while let Some((id, _)) = self.next() {
            ids.push(id);
        }
        ids
    }
}

/// A player that joined: its id, room, the ids it knows in its room, and
/// the last snapshot tick it saw.
struct Bot {
    client: Client,
    id: u64,
    room: u32,
    known: HashSet<u64>,
    last_tick: Option<u32>,
}

impl Bot {
    fn join(addr: SocketAddr, room: u32, name: &str) -> Bot {
        let mut client = Client::connect(addr);
        client.send(C_JOIN, &join_payload(room, name.as_bytes()));
        let (id, payload) = client.next().expect("S_JOINED");
        assert_eq!(id, S_JOINED);
        assert_eq!(payload.len(), 14);
        let me = u64_at(&payload, 0);
        assert_eq!(u32::from_le_bytes(payload[8..12].try_into().unwrap()), room);
        Bot {
            client,
            id: me,
            room,
            known: HashSet::from([me]),
            last_tick: None,
        }
    }

    /// Reads frames up to the next snapshot, checking each.
    fn next_snapshot(&mut self) -> Snapshot {
        loop {
            let (id, payload) = self.client.next().unwrap_or_else(|| {
                panic!("bot {} of room {} was disconnected", self.id, self.room)
            });
            match id {
                S_PLAYER_JOIN => {
                    self.known.insert(u64_at(&payload, 0));
                }
                S_PLAYER_LEAVE => {
                    self.known.remove(&u64_at(&payload, 0));
                }
                S_SNAPSHOT => {
                    let snapshot = parse_snapshot(&payload);
                    if let Some(last) = self.last_tick {
                        assert!(
                            snapshot.tick > last,
                            "ticks increase: {last} then {}",
                            snapshot.tick
                        );
                    }
                    self.last_tick = Some(snapshot.tick);
                    for (id, _, _) in &snapshot.entries {
                        assert!(
                            self.known.contains(id),
                            "bot {} of room {} saw player {id} of another room",
                            self.id,
                            self.room
                        );
                    }
                    return snapshot;
                }
                other => panic!("unexpected packet {other}"),
            }
        }
    }

    /// Reads snapshots until one holds `wanted` for this bot, and the room
    /// has `players` players.
    fn until_seen(&mut self, wanted: (f32, f32), players: usize) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let snapshot = self.next_snapshot();
            let mine = snapshot.entries.iter().find(|e| e.0 == self.id);
            if mine.map(|e| (e.1, e.2)) == Some(wanted) && snapshot.entries.len() == players {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bot {} never saw {wanted:?}",
                self.id
            );
        }
    }
}

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
