//! The chat room a tokio user would write: a task per connection reading
//! frames, a `tokio::sync::broadcast` channel for the room, and a writer
//! task per connection that forwards the channel to its socket.
//!
//! Same protocol as `overlapped server --model port --mode chat`:
//! `[size u16 LE][id u16 LE][payload]`, size counting the header;
//! `S_WELCOME`=3 `[id u64]`, `C_CHAT`=1 text, `S_CHAT`=2 `[sender u64][text]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

const C_CHAT: u16 = 1;
const S_CHAT: u16 = 2;
const S_WELCOME: u16 = 3;
const MAX_PACKET: usize = 4096;

fn frame(id: u16, parts: &[&[u8]]) -> Arc<Vec<u8>> {
    let len = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    Arc::new(out)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind(overlapped_bench_peers::listen_addr()).await?;
    overlapped_bench_peers::announce(listener.local_addr()?);
    let (room, _) = broadcast::channel::<Arc<Vec<u8>>>(4096);
    let next_id = AtomicU64::new(1);
    loop {
        // A client that resets before its accept must not stop the server.
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        stream.set_nodelay(true)?;
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let (mut reader, mut writer) = stream.into_split();
        let mut inbox = room.subscribe();
        let room = room.clone();
        tokio::spawn(async move {
            if writer
                .write_all(&frame(S_WELCOME, &[&id.to_le_bytes()]))
                .await
                .is_err()
            {
                return;
            }
            while let Ok(said) = inbox.recv().await {
                if writer.write_all(&said).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut buffer = vec![0u8; MAX_PACKET * 2];
            let mut filled = 0;
            loop {
                let n = match reader.read(&mut buffer[filled..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                filled += n;
                let mut at = 0;
                while filled - at >= 4 {
                    let size = u16::from_le_bytes([buffer[at], buffer[at + 1]]) as usize;
                    let kind = u16::from_le_bytes([buffer[at + 2], buffer[at + 3]]);
                    if !(4..=MAX_PACKET).contains(&size) || kind != C_CHAT {
                        return;
                    }
                    if filled - at < size {
                        break;
                    }
                    let text = &buffer[at + 4..at + size];
                    if text.is_empty() || std::str::from_utf8(text).is_err() {
                        return;
                    }
                    let _ = room.send(frame(S_CHAT, &[&id.to_le_bytes(), text]));
                    at += size;
                }
                buffer.copy_within(at..filled, 0);
                filled -= at;
            }
        });
    }
}
