//! The seed's server, completion-port flavour: sockets are associated with
//! a port; worker threads dequeue completions and post the next receive.
//!
//! Run: `cargo run -p overlapped --example port_server`, then
//! `cargo run -p overlapped --example port_client` beside it (or several).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;

use overlapped::{CompletionPort, PortStream, TcpListener, INFINITE};

const BUFFER_SIZE: usize = 1000;

/// The extended OVERLAPPED: which request finished. The session is found by
/// the completion key.
enum Request {
    Recv,
}

type Sessions = Arc<Mutex<HashMap<u64, Arc<PortStream<Request>>>>>;

fn worker(port: CompletionPort<Request>, sessions: Sessions) {
    // GetQueuedCompletionStatus(port, &bytes, &key, &overlapped, INFINITE)
    while let Ok(Some(mut completion)) = port.get_queued_completion_status(INFINITE) {
        let key = completion.key;
        let Some(session) = sessions.lock().unwrap().get(&key).cloned() else {
            continue;
        };
        let recv_buffer = completion
            .take_buffers::<Vec<u8>>()
            .unwrap_or_default()
            .remove(0);
        match completion.result {
            Ok(transfer) if transfer.bytes > 0 => {
                let data = &recv_buffer[..transfer.bytes];
                let text = data.split(|&b| b == 0).next().unwrap_or_default();
                println!(
                    "Recv Data : {} ({} bytes)",
                    String::from_utf8_lossy(text),
                    transfer.bytes
                );
                if session.recv(vec![recv_buffer], Request::Recv).is_err() {
                    sessions.lock().unwrap().remove(&key);
                }
            }
            _ => {
                println!("Client Disconnected");
                sessions.lock().unwrap().remove(&key);
            }
        }
    }
}

fn main() -> std::io::Result<()> {
    let port = CompletionPort::new(2)?;
    let sessions: Sessions = Arc::default();
    for _ in 0..2 {
        let (port, sessions) = (port.clone(), sessions.clone());
        thread::spawn(move || worker(port, sessions));
    }
    let listener = TcpListener::bind("127.0.0.1:7777")?;
    for key in 1.. {
        let (client_socket, peer) = listener.accept()?;
        println!("Client Connected : {peer}");
        // CreateIoCompletionPort((HANDLE)clientSocket, port, key, 0)
        let session = Arc::new(port.associate(client_socket, key));
        sessions.lock().unwrap().insert(key, session.clone());
        session.recv(vec![vec![0u8; BUFFER_SIZE]], Request::Recv)?;
    }
    Ok(())
}
