//! The echo server a tokio user would write: multi-thread runtime, a task
//! per connection, `read` then `write_all` with a 4 KiB buffer.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind(overlapped_bench_peers::listen_addr()).await?;
    overlapped_bench_peers::announce(listener.local_addr()?);
    loop {
        // A client that resets before its accept must not stop the server.
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut buffer = vec![0u8; overlapped_bench_peers::READ_BUFFER];
            loop {
                let n = match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if stream.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}
