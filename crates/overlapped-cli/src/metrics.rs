//! `--metrics-addr`: the service's counters over HTTP, for Prometheus (and
//! Kubernetes or Agones health checks) to scrape.
//!
//! `GET /metrics` answers the counters in Prometheus' text format,
//! `GET /healthz` answers `ok` while the service runs; anything else is a
//! 404. The endpoint runs on a thread of its own and stops with the
//! process.

use std::io;
use std::net::SocketAddr;
use std::thread;

use overlapped::session::Service;
use tiny_http::{Header, Method, Response, Server};

/// The prefix of every metric's name.
const PREFIX: &str = "overlapped";

/// Serves `service`'s counters on `addr`; the bound address comes back
/// (`addr` may ask for port 0).
pub fn serve(addr: SocketAddr, service: Service) -> io::Result<SocketAddr> {
    let server = Server::http(addr).map_err(|e| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("cannot serve metrics on {addr}: {e}"),
        )
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("the metrics endpoint is not on an IP address"))?;
    thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = respond(request.method(), request.url(), &service);
                if let Err(e) = request.respond(response) {
                    tracing::debug!("metrics endpoint: cannot answer: {e}");
                }
            }
        })?;
    tracing::info!("metrics on http://{bound}/metrics, health on http://{bound}/healthz");
    Ok(bound)
}

fn respond(method: &Method, url: &str, service: &Service) -> Response<io::Cursor<Vec<u8>>> {
    let path = url.split('?').next().unwrap_or(url);
    match (method, path) {
        (Method::Get, "/metrics") => text(
            200,
            service.metrics().to_prometheus(PREFIX),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (Method::Get, "/healthz") => text(200, "ok\n".into(), "text/plain; charset=utf-8"),
        (Method::Get, _) => text(
            404,
            "not found: try /metrics or /healthz\n".into(),
            "text/plain",
        ),
        _ => text(405, "only GET is served\n".into(), "text/plain"),
    }
}

fn text(status: u16, body: String, content_type: &str) -> Response<io::Cursor<Vec<u8>>> {
    let mut response = Response::from_string(body).with_status_code(status);
    if let Ok(header) = Header::from_bytes("Content-Type", content_type) {
        response = response.with_header(header);
    }
    response
}
