//! `--metrics-addr`: the service's counters over HTTP, for Prometheus (and
//! Kubernetes or Agones health checks) to scrape, on the library's
//! [`MetricsEndpoint`]: its threads, connections, request bytes and time
//! per request are bounded, whatever a client does.

use std::io;
use std::net::SocketAddr;

use overlapped::session::{EndpointConfig, MetricsEndpoint, Service};

/// Serves `service`'s counters on `addr` (`addr` may ask for port 0).
pub fn serve(addr: SocketAddr, service: &Service) -> io::Result<MetricsEndpoint> {
    let endpoint = MetricsEndpoint::serve(addr, service, EndpointConfig::default())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}")))?;
    let bound = endpoint.local_addr();
    tracing::info!("metrics on http://{bound}/metrics, health on http://{bound}/healthz");
    Ok(endpoint)
}
