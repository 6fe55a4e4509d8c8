//! The seed's client, completion-port flavour: the connect (`ConnectEx`)
//! and each send report to a port; this thread dequeues them.
//!
//! Run beside `cargo run -p overlapped --example port_server`.

use std::thread;
use std::time::Duration;

use overlapped::{CompletionPort, INFINITE};

enum Request {
    Connect,
    Send,
}

fn main() -> std::io::Result<()> {
    let port = CompletionPort::new(1)?;
    let addr = "127.0.0.1:7777".parse().expect("a socket address");
    let client_socket = port
        .connect(addr, 1, Request::Connect)
        .map_err(|(e, _)| e)?;
    let mut send_buffer = vec![0u8; 100];
    send_buffer[..13].copy_from_slice(b"Hello Server!");
    while let Some(mut completion) = port.get_queued_completion_status(INFINITE)? {
        match (completion.record.take(), completion.result) {
            (Some(Request::Connect), Ok(_)) => println!("Connected"),
            (Some(Request::Send), Ok(transfer)) => {
                println!("Send Bytes : {}", transfer.bytes);
                thread::sleep(Duration::from_secs(1));
            }
            (_, Err(e)) => {
                println!("Error : {e}");
                break;
            }
            (None, Ok(_)) => continue,
        }
        client_socket
            .send(vec![send_buffer.clone()], Request::Send)
            .map_err(std::io::Error::from)?;
    }
    Ok(())
}
