//! A chat-room client for the tests: frames, joining, expected chats.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use super::Server;

pub const C_CHAT: u16 = 1;
pub const S_CHAT: u16 = 2;
pub const S_WELCOME: u16 = 3;
pub const C_PING: u16 = 4;
pub const S_PONG: u16 = 5;

/// `overlapped server --model port --mode chat` with `extra` flags.
pub fn chat_server(extra: &[&str]) -> Server {
    let mut args = vec!["--model", "port", "--mode", "chat"];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

pub fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = ((payload.len() + 4) as u16).to_le_bytes().to_vec();
    frame.extend_from_slice(&id.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub fn read_frame(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut header = [0; 4];
    stream.read_exact(&mut header).unwrap();
    let size = u16::from_le_bytes([header[0], header[1]]) as usize;
    let mut payload = vec![0; size - 4];
    stream.read_exact(&mut payload).unwrap();
    (u16::from_le_bytes([header[2], header[3]]), payload)
}

/// Connects and reads the welcome; returns the stream and its session id.
pub fn join(server: &Server) -> (TcpStream, u64) {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (id, payload) = read_frame(&mut stream);
    assert_eq!(id, S_WELCOME);
    (stream, u64::from_le_bytes(payload.try_into().unwrap()))
}

pub fn expect_chat(stream: &mut TcpStream, sender: u64, text: &[u8]) {
    let (id, payload) = read_frame(stream);
    assert_eq!(id, S_CHAT);
    assert_eq!(u64::from_le_bytes(payload[..8].try_into().unwrap()), sender);
    assert_eq!(&payload[8..], text);
}

/// Sends a chat line and reads it back: the healthy client's round trip.
pub fn round_trip(stream: &mut TcpStream, id: u64, text: &[u8]) {
    use std::io::Write;
    stream.write_all(&frame(C_CHAT, text)).unwrap();
    expect_chat(stream, id, text);
}

/// Whether the server closed `stream` (EOF or reset) within the timeout.
pub fn is_dropped(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}
