//! The seed's client, completion-routine flavour: each send names a routine
//! that prints the byte count; an alertable sleep of one second runs it.
//!
//! Run beside `cargo run -p overlapped --example routine_server`.

use std::time::{Duration, Instant};

use overlapped::{sleep_ex, TcpStream, WaitResult};

fn main() -> std::io::Result<()> {
    let client_socket = TcpStream::connect("127.0.0.1:7777")?;
    let mut send_buffer = vec![0u8; 100];
    send_buffer[..13].copy_from_slice(b"Hello Server!");
    loop {
        client_socket
            .send_with_routine(vec![send_buffer.clone()], |result, _buffers| match result {
                Ok(transfer) => println!("Send Bytes : {}", transfer.bytes),
                Err(e) => println!("Send Error : {e}"),
            })
            .map_err(std::io::Error::from)?;
        // SleepEx(1000, TRUE): the routine runs inside; then sleep the rest.
        let until = Instant::now() + Duration::from_secs(1);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if sleep_ex(Some(left), true)? == WaitResult::Timeout {
                break;
            }
        }
    }
}
