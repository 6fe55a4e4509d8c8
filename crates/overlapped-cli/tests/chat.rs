//! `overlapped server --model port --mode chat`: the chat room.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{wait_for_line, Server};

const C_CHAT: u16 = 1;
const S_CHAT: u16 = 2;
const S_WELCOME: u16 = 3;

fn chat_server() -> Server {
    Server::start_with(&["--model", "port", "--mode", "chat"])
}

fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = ((payload.len() + 4) as u16).to_le_bytes().to_vec();
    frame.extend_from_slice(&id.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn read_frame(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut header = [0; 4];
    stream.read_exact(&mut header).unwrap();
    let size = u16::from_le_bytes([header[0], header[1]]) as usize;
    let mut payload = vec![0; size - 4];
    stream.read_exact(&mut payload).unwrap();
    (u16::from_le_bytes([header[2], header[3]]), payload)
}

/// Connects and reads the welcome; returns the stream and its session id.
fn join(server: &Server) -> (TcpStream, u64) {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (id, payload) = read_frame(&mut stream);
    assert_eq!(id, S_WELCOME);
    (stream, u64::from_le_bytes(payload.try_into().unwrap()))
}

fn expect_chat(stream: &mut TcpStream, sender: u64, text: &[u8]) {
    let (id, payload) = read_frame(stream);
    assert_eq!(id, S_CHAT);
    assert_eq!(u64::from_le_bytes(payload[..8].try_into().unwrap()), sender);
    assert_eq!(&payload[8..], text);
}

/// Whether the server closed `stream` (EOF or reset) within the timeout.
fn is_dropped(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn each_client_gets_a_welcome_and_every_client_gets_the_chat() {
    let server = chat_server();
    let mut clients: Vec<(TcpStream, u64)> = (0..3).map(|_| join(&server)).collect();
    let ids: Vec<u64> = clients.iter().map(|(_, id)| *id).collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    let sender = ids[1];
    clients[1].0.write_all(&frame(C_CHAT, b"hello")).unwrap();
    for (stream, _) in &mut clients {
        expect_chat(stream, sender, b"hello");
    }
}

/// Sends `bad` from one client and checks that it alone is dropped, that
/// the server logs `reason`, and that a healthy client still chats.
fn hostile_frame_drops_only_its_sender(bad: &[u8], reason: &str) {
    let server = chat_server();
    let (mut healthy, healthy_id) = join(&server);
    let (mut hostile, _) = join(&server);
    hostile.write_all(bad).unwrap();
    assert!(is_dropped(&mut hostile));
    let logged = wait_for_line(
        &server.stderr,
        |l| l.contains(reason),
        Duration::from_secs(10),
    );
    assert!(logged.is_some(), "no log line containing {reason:?}");
    healthy.write_all(&frame(C_CHAT, b"still here")).unwrap();
    expect_chat(&mut healthy, healthy_id, b"still here");
}

#[test]
fn frame_of_size_65535_disconnects_its_sender_only() {
    hostile_frame_drops_only_its_sender(&[0xFF, 0xFF, 1, 0], "exceeds the maximum packet size");
}

#[test]
fn frame_smaller_than_its_header_disconnects_its_sender_only() {
    hostile_frame_drops_only_its_sender(&[2, 0, 1, 0], "smaller than its 4-byte header");
}

#[test]
fn unknown_packet_id_disconnects_its_sender_only() {
    hostile_frame_drops_only_its_sender(&frame(99, b"x"), "unknown packet id 99");
}

#[test]
fn invalid_utf8_chat_disconnects_its_sender_only() {
    hostile_frame_drops_only_its_sender(&frame(C_CHAT, b"\xff\xfe"), "not valid UTF-8");
}

#[test]
fn empty_chat_disconnects_its_sender_only() {
    hostile_frame_drops_only_its_sender(&frame(C_CHAT, b""), "chat text is empty");
}
