//! `overlapped server --model port --mode chat`: the chat room.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::chat::{chat_server as room, expect_chat, frame, is_dropped, join, C_CHAT};
use common::{wait_for_line, Server};

fn chat_server() -> Server {
    room(&[])
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
