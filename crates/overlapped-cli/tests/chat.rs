//! `overlapped server --model port --mode chat`: the chat room.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

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

#[test]
fn every_join_gets_its_welcome_before_any_chat_while_two_clients_chat_on_two_workers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let server = room(&["--threads", "2", "--max-chat-rate", "0"]);
    let chatting = Arc::new(AtomicBool::new(true));
    // Two clients chat as fast as they can, so that broadcasts are under
    // way on both workers while others join.
    let chatters: Vec<_> = (0..2)
        .map(|_| {
            let (mut stream, id) = join(&server);
            let chatting = chatting.clone();
            std::thread::spawn(move || {
                while chatting.load(Ordering::Relaxed) {
                    stream.write_all(&frame(C_CHAT, b"busy")).unwrap();
                    // Read until our own line comes back (the other's are
                    // in between).
                    loop {
                        let (kind, payload) = common::chat::read_frame(&mut stream);
                        if kind == common::chat::S_CHAT && payload[..8] == id.to_le_bytes() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    let mut out_of_order = 0;
    for _ in 0..300 {
        let mut joiner = TcpStream::connect(server.addr).unwrap();
        joiner
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (kind, _) = common::chat::read_frame(&mut joiner);
        if kind != common::chat::S_WELCOME {
            out_of_order += 1;
        }
    }
    chatting.store(false, Ordering::Relaxed);
    for chatter in chatters {
        chatter.join().unwrap();
    }
    assert_eq!(
        out_of_order, 0,
        "joins that got a chat before their welcome, of 300"
    );
}

#[test]
fn a_client_that_chats_then_half_closes_gets_its_own_line_back() {
    let server = chat_server();
    for round in 0..20 {
        let (mut client, id) = join(&server);
        client.write_all(&frame(C_CHAT, b"last words")).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        // The line of an earlier round's client may come first.
        let payload = loop {
            let (kind, payload) = common::chat::read_frame(&mut client);
            assert_eq!(kind, common::chat::S_CHAT, "round {round}");
            if payload[..8] == id.to_le_bytes() {
                break payload;
            }
        };
        assert_eq!(&payload[8..], b"last words", "round {round}");
        assert!(
            is_dropped(&mut client),
            "round {round}: then the end of the stream"
        );
    }
}

#[test]
fn a_ping_is_answered_to_its_sender_alone_and_keeps_a_reader_past_the_idle_timeout() {
    let server = room(&["--idle-timeout-ms", "3000"]);
    let (mut reader, _) = join(&server);
    let (mut other, _) = join(&server);
    // The other only listens: it is dropped for idling, having heard
    // nothing of the pongs.
    let other_end = std::thread::spawn(move || {
        other
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut heard = Vec::new();
        let ended = match other.read_to_end(&mut heard) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        (ended, heard)
    });
    // The reader only reads, and pings: until the other was dropped and
    // three idle timeouts passed.
    let started = Instant::now();
    while !other_end.is_finished() || started.elapsed() < Duration::from_secs(9) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the other was never dropped"
        );
        reader
            .write_all(&frame(common::chat::C_PING, b"still here"))
            .unwrap();
        let (kind, payload) = common::chat::read_frame(&mut reader);
        assert_eq!(
            (kind, &payload[..]),
            (common::chat::S_PONG, &b"still here"[..])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ended, heard) = other_end.join().unwrap();
    assert!(ended, "the other was not dropped");
    assert!(heard.is_empty(), "the other heard {} bytes", heard.len());
    reader.write_all(&frame(C_CHAT, b"hello")).unwrap();
    let (_, said) = common::chat::read_frame(&mut reader);
    assert_eq!(&said[8..], b"hello");
}

#[test]
fn a_client_chatting_past_the_rate_limit_is_dropped_and_the_room_goes_on() {
    let server = room(&["--max-chat-rate", "10"]);
    let (mut healthy, healthy_id) = join(&server);
    let (mut flooder, _) = join(&server);
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.extend_from_slice(&frame(C_CHAT, b"x"));
    }
    flooder.write_all(&flood).unwrap();
    assert!(is_dropped(&mut flooder));
    let logged = wait_for_line(
        &server.stderr,
        |l| l.contains("chat flood"),
        Duration::from_secs(10),
    );
    assert!(logged.is_some(), "no log line for the flood");
    // What the flooder said before the limit reached the room; then the
    // healthy client's line comes through.
    healthy.write_all(&frame(C_CHAT, b"calm")).unwrap();
    loop {
        let (_, said) = common::chat::read_frame(&mut healthy);
        if said[..8] == healthy_id.to_le_bytes() {
            assert_eq!(&said[8..], b"calm");
            break;
        }
    }
}

#[test]
fn the_longest_chat_text_is_the_packet_size_less_twelve_bytes() {
    let server = room(&["--max-packet", "65535"]);
    let (mut client, id) = join(&server);
    let longest = vec![b'a'; 65535 - 12];
    client.write_all(&frame(C_CHAT, &longest)).unwrap();
    expect_chat(&mut client, id, &longest);
    let (mut over, _) = join(&server);
    over.write_all(&frame(C_CHAT, &vec![b'a'; 65535 - 11]))
        .unwrap();
    assert!(is_dropped(&mut over));
    let logged = wait_for_line(
        &server.stderr,
        |l| l.contains("longer than the room's 65523"),
        Duration::from_secs(10),
    );
    assert!(logged.is_some(), "no log line naming the limit");
}
