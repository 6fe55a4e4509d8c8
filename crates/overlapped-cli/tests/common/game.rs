//! A client of the game's frames, for the tests of `--mode game`.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub const C_JOIN: u16 = 10;
pub const S_JOINED: u16 = 11;
pub const S_PLAYER_JOIN: u16 = 12;
pub const C_MOVE: u16 = 13;
pub const S_SNAPSHOT: u16 = 14;
pub const S_PLAYER_LEAVE: u16 = 15;

pub const LIMIT: Duration = Duration::from_secs(30);

pub fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = ((4 + payload.len()) as u16).to_le_bytes().to_vec();
    frame.extend_from_slice(&id.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub fn join_payload(room: u32, name: &[u8]) -> Vec<u8> {
    let mut payload = room.to_le_bytes().to_vec();
    payload.extend_from_slice(name);
    payload
}

pub fn move_payload(x: f32, y: f32) -> Vec<u8> {
    let mut payload = x.to_le_bytes().to_vec();
    payload.extend_from_slice(&y.to_le_bytes());
    payload
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

pub fn f32_at(bytes: &[u8], at: usize) -> f32 {
    f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// A snapshot: its tick and its `(id, x, y)` entries.
#[derive(Debug)]
pub struct Snapshot {
    pub tick: u32,
    pub entries: Vec<(u64, f32, f32)>,
}

pub fn parse_snapshot(payload: &[u8]) -> Snapshot {
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
pub struct Client {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        Client {
            stream,
            buffer: Vec::new(),
        }
    }

    pub fn send(&mut self, id: u16, payload: &[u8]) {
        self.stream.write_all(&frame(id, payload)).unwrap();
    }

    /// The next frame, or `None` at the end of the stream.
    pub fn next(&mut self) -> Option<(u16, Vec<u8>)> {
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
    pub fn until_closed(&mut self) -> Vec<u16> {
        let mut ids = Vec::new();
        while let Some((id, _)) = self.next() {
            ids.push(id);
        }
        ids
    }
}

/// A player that joined: its id, room, the ids it knows in its room, and
/// the last snapshot tick it saw.
pub struct Bot {
    pub client: Client,
    pub id: u64,
    pub room: u32,
    pub known: HashSet<u64>,
    pub last_tick: Option<u32>,
}

impl Bot {
    pub fn join(addr: SocketAddr, room: u32, name: &str) -> Bot {
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
    pub fn next_snapshot(&mut self) -> Snapshot {
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
    pub fn until_seen(&mut self, wanted: (f32, f32), players: usize) {
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
