//! Protobuf messages on the session layer's framing, as the course does
//! with its `Protocol.proto`: each frame is `[size u16][id u16]` and a
//! `prost` message. A chat room of one `Room`, whose `Group` receives every
//! line; the messages are derived in Rust, so no `protoc` step is needed.
//!
//! Run: `cargo run -p overlapped --example proto_chat`. It starts the
//! server on a free port, connects two clients, has one say hello, prints
//! what both receive, and exits.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use overlapped::game::{
    Group, PacketReader, PacketResult, PacketWriter, Room, Router, SessionState,
};
use overlapped::session::{Service, ServiceConfig, Session};
use prost::Message;

const C_CHAT: u16 = 1;
const S_CHAT: u16 = 2;
const S_WELCOME: u16 = 3;

/// `message ChatRequest { string text = 1; }`
#[derive(Clone, PartialEq, Message)]
struct ChatRequest {
    #[prost(string, tag = "1")]
    text: String,
}

/// `message ChatNotice { uint64 sender = 1; string text = 2; }`
#[derive(Clone, PartialEq, Message)]
struct ChatNotice {
    #[prost(uint64, tag = "1")]
    sender: u64,
    #[prost(string, tag = "2")]
    text: String,
}

/// A frame holding `message`.
fn frame(id: u16, message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut frame = ((4 + body.len()) as u16).to_le_bytes().to_vec();
    frame.extend_from_slice(&id.to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Every member of the room, as the room's jobs keep it.
type Lobby = Room<Group>;

struct Member {
    lobby: Lobby,
}

impl SessionState for Member {
    fn on_connected(&mut self, session: &Arc<Session>) {
        let session = session.clone();
        self.lobby.push(move |group, _| {
            group.insert(&session);
            // A member from now on: every later line reaches it.
            let welcome = ChatNotice {
                sender: session.id(),
                text: "welcome".into(),
            };
            session.send(frame(S_WELCOME, &welcome).into());
        });
    }
    fn on_disconnected(&mut self, session: &Arc<Session>, _: &str) {
        let id = session.id();
        self.lobby.push(move |group, _| {
            group.remove(id);
        });
    }
}

fn on_chat(member: &mut Member, session: &Arc<Session>, r: &mut PacketReader) -> PacketResult {
    let request = ChatRequest::decode(r.rest()).map_err(|e| format!("not a ChatRequest: {e}"))?;
    let notice = ChatNotice {
        sender: session.id(),
        text: request.text,
    };
    let frame = PacketWriter::new(S_CHAT)
        .bytes(&notice.encode_to_vec())
        .finish()?;
    member.lobby.push(move |group, _| {
        group.broadcast(&frame);
    });
    Ok(())
}

fn main() -> io::Result<()> {
    // The service needs its factory, and the room its service: the room is
    // made once the service runs, and the factory waits for it.
    let lobby: Arc<std::sync::OnceLock<Lobby>> = Arc::default();
    let router = Router::new().route(C_CHAT, on_chat);
    let mut config = ServiceConfig::default();
    router.configure(&mut config);
    let for_factory = lobby.clone();
    let factory = router.factory(move |_| {
        let lobby = for_factory.get().ok_or("the lobby is not open yet")?;
        Ok(Member {
            lobby: lobby.clone(),
        })
    });
    let service = Service::server_with("127.0.0.1:0", config, factory)?;
    let _ = lobby.set(Room::new(&service, "lobby", Group::new(&service)));
    let addr = service.local_addr().expect("a server listens");

    let mut alice = TcpStream::connect(addr)?;
    let mut bob = TcpStream::connect(addr)?;
    for client in [&mut alice, &mut bob] {
        client.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (id, welcome) = read_frame(client)?;
        assert_eq!(id, S_WELCOME);
        println!("joined as {}", welcome.sender);
    }
    let hello = ChatRequest {
        text: "Hello Server!".into(),
    };
    alice.write_all(&frame(C_CHAT, &hello))?;
    for (name, client) in [("alice", &mut alice), ("bob", &mut bob)] {
        let (id, notice) = read_frame(client)?;
        assert_eq!(id, S_CHAT);
        println!("{name} got S_CHAT from {}: {}", notice.sender, notice.text);
    }
    service.stop();
    Ok(())
}

/// The next frame of `client`, its payload decoded as a `ChatNotice`.
fn read_frame(client: &mut TcpStream) -> io::Result<(u16, ChatNotice)> {
    let mut header = [0u8; 4];
    client.read_exact(&mut header)?;
    let size = usize::from(u16::from_le_bytes([header[0], header[1]]));
    let id = u16::from_le_bytes([header[2], header[3]]);
    let mut body = vec![0u8; size.saturating_sub(4)];
    client.read_exact(&mut body)?;
    let notice = ChatNotice::decode(&body[..]).map_err(io::Error::other)?;
    Ok((id, notice))
}
