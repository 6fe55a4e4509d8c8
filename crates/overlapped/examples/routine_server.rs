//! The seed's server, completion-routine flavour: the receive names a
//! routine instead of an event; the routine runs on this thread while it
//! sleeps alertably (`SleepEx(INFINITE, TRUE)`), prints, and posts the next
//! receive itself.
//!
//! Run: `cargo run -p overlapped --example routine_server`, then
//! `cargo run -p overlapped --example routine_client` beside it.

use std::rc::Rc;

use overlapped::{sleep_ex, TcpListener, TcpStream, INFINITE};

const BUFFER_SIZE: usize = 1000;

fn post_recv(client_socket: Rc<TcpStream>, recv_buffer: Vec<u8>) {
    let socket = client_socket.clone();
    // WSARecv(clientSocket, &wsaBuf, 1, ..., &overlapped, RecvCallback)
    let started = client_socket.recv_with_routine(vec![recv_buffer], move |result, mut buffers| {
        let recv_buffer = buffers.remove(0);
        match result {
            Ok(transfer) if transfer.bytes > 0 => {
                let data = &recv_buffer[..transfer.bytes];
                let text = data.split(|&b| b == 0).next().unwrap_or_default();
                println!(
                    "Recv Data : {} ({} bytes)",
                    String::from_utf8_lossy(text),
                    transfer.bytes
                );
                post_recv(socket, recv_buffer);
            }
            Ok(_) => println!("Client Disconnected"),
            Err(e) => println!("Recv Error : {e}"),
        }
    });
    if let Err(e) = started {
        println!("WSARecv Error : {}", e.error());
    }
}

fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:7777")?;
    let (client_socket, peer) = listener.accept()?;
    println!("Client Connected : {peer}");
    post_recv(Rc::new(client_socket), vec![0u8; BUFFER_SIZE]);
    loop {
        // Alertable: the routines queued to this thread run in here.
        sleep_ex(INFINITE, true)?;
    }
}
