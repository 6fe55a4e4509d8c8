//! The seed's client, event flavour: post `WSASend` of a 100-byte buffer
//! once a second, waiting on the event when the send is pending.
//!
//! Run beside `cargo run -p overlapped --example event_server`.

use std::thread;
use std::time::Duration;

use overlapped::{
    get_overlapped_result, wait_for_multiple_events, ErrorExt, Event, Overlapped, Started,
    TcpStream, INFINITE,
};

fn main() -> std::io::Result<()> {
    let client_socket = TcpStream::connect("127.0.0.1:7777")?;

    // char sendBuffer[100] = "Hello Server!";
    let mut send_buffer = vec![0u8; 100];
    send_buffer[..13].copy_from_slice(b"Hello Server!");

    let wsa_event = Event::new()?;
    let mut overlapped = Overlapped::with_event(wsa_event.clone());
    loop {
        let num_of_bytes = match client_socket.send(&mut overlapped, vec![send_buffer]) {
            Ok(Started::Completed(transfer)) => transfer.bytes,
            Ok(Started::Pending) => {
                wait_for_multiple_events(&[&wsa_event], false, INFINITE, false)?;
                get_overlapped_result(&client_socket, &mut overlapped, false)?.bytes
            }
            Err(e) => {
                println!("WSASend Error : {}", e.error().winsock_code().unwrap_or(0));
                break;
            }
        };
        send_buffer = overlapped.take_buffers().unwrap_or_default().remove(0);
        println!("Send Bytes : {num_of_bytes}");
        thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}
