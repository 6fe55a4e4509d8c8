//! The seed's server, event flavour, for one client: post `WSARecv`, and
//! when it is pending wait on the event and read the result.
//!
//! Run: `cargo run -p overlapped --example event_server`, then
//! `cargo run -p overlapped --example event_client` beside it.

use overlapped::{
    get_overlapped_result, wait_for_multiple_events, ErrorExt, Event, Overlapped, Started,
    TcpListener, INFINITE,
};

const BUFFER_SIZE: usize = 1000;

fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:7777")?;
    let (client_socket, peer) = listener.accept()?;
    println!("Client Connected : {peer}");

    // Session { socket, recvBuffer[BUFFER_SIZE], overlapped } with hEvent set.
    let wsa_event = Event::new()?;
    let mut overlapped = Overlapped::with_event(wsa_event.clone());
    let mut recv_buffer = vec![0u8; BUFFER_SIZE];

    loop {
        let num_of_bytes = match client_socket.recv(&mut overlapped, vec![recv_buffer]) {
            Ok(Started::Completed(transfer)) => transfer.bytes,
            Ok(Started::Pending) => {
                wait_for_multiple_events(&[&wsa_event], false, INFINITE, false)?;
                get_overlapped_result(&client_socket, &mut overlapped, false)?.bytes
            }
            Err(e) => {
                println!("WSARecv Error : {}", e.error().winsock_code().unwrap_or(0));
                break;
            }
        };
        // The buffer comes back with the outcome.
        recv_buffer = overlapped.take_buffers().unwrap_or_default().remove(0);
        if num_of_bytes == 0 {
            break;
        }
        let data = &recv_buffer[..num_of_bytes];
        let text = data.split(|&b| b == 0).next().unwrap_or_default();
        println!(
            "Recv Data : {} ({num_of_bytes} bytes)",
            String::from_utf8_lossy(text)
        );
    }
    Ok(())
}
