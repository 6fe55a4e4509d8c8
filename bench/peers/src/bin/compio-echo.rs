//! The echo server a compio user would write: compio runtime, a task per
//! connection, owned-buffer `read` then `write_all` with a 4 KiB buffer.

use compio::buf::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::TcpListener;

#[compio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind(overlapped_bench_peers::listen_addr()).await?;
    overlapped_bench_peers::announce(listener.local_addr()?);
    loop {
        // A client that resets before its accept must not stop the server.
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        stream.set_nodelay(true)?;
        compio::runtime::spawn(async move {
            // compio reads into a Vec's spare capacity.
            let mut buffer = Vec::with_capacity(overlapped_bench_peers::READ_BUFFER);
            loop {
                let BufResult(read, filled) = stream.read(buffer).await;
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let BufResult(written, sent) = stream.write_all(filled).await;
                if written.is_err() {
                    return;
                }
                buffer = sent;
                buffer.clear();
            }
        })
        .detach();
    }
}
