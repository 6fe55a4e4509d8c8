//! The echo server a monoio user would write: io_uring driver, a task per
//! connection, owned-buffer `read` then `write_all` with a 4 KiB buffer.

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpListener;

fn main() -> std::io::Result<()> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().build()?;
    runtime.block_on(serve())
}

async fn serve() -> std::io::Result<()> {
    let listener = TcpListener::bind(overlapped_bench_peers::listen_addr())?;
    overlapped_bench_peers::announce(listener.local_addr()?);
    loop {
        // A client that resets before its accept must not stop the server.
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        stream.set_nodelay(true)?;
        monoio::spawn(async move {
            let mut buffer = vec![0u8; overlapped_bench_peers::READ_BUFFER];
            loop {
                let (read, filled) = stream.read(buffer).await;
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let (written, slice) = stream
                    .write_all(monoio::buf::IoBuf::slice(filled, 0..n))
                    .await;
                if written.is_err() {
                    return;
                }
                buffer = slice.into_inner();
            }
        });
    }
}
