//! `ServiceConfig::reuse_port`: servers that share one port each take a
//! share of its connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use overlapped::session::{Service, ServiceConfig, Session, SessionHandler};

struct Echo;

impl SessionHandler for Echo {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send_copy(data);
        Ok(data.len())
    }
}

fn server(addr: &str, reuse_port: bool) -> std::io::Result<Service> {
    let config = ServiceConfig {
        workers: 1,
        reuse_port,
        ..ServiceConfig::default()
    };
    Service::server(addr, config, Arc::new(|| Arc::new(Echo)))
}

#[test]
fn two_servers_sharing_a_port_each_take_a_share_of_its_connections() {
    let first = server("127.0.0.1:0", true).unwrap();
    let addr = first.local_addr().unwrap();
    let second = server(&addr.to_string(), true).unwrap();
    let mut clients: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Every client is served, by one or the other.
    for client in &mut clients {
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        client.write_all(b"ping").unwrap();
        let mut echo = [0; 4];
        client.read_exact(&mut echo).unwrap();
    }
    let (a, b) = (first.session_count(), second.session_count());
    assert_eq!(a + b, 200);
    // Spread by a hash of 200 different source ports: both get some.
    assert!(
        a > 0 && b > 0,
        "one server took every connection: {a} and {b}"
    );
    first.stop();
    second.stop();
}

#[test]
fn without_reuse_port_a_second_server_cannot_take_the_port() {
    let first = server("127.0.0.1:0", false).unwrap();
    let addr = first.local_addr().unwrap();
    let error = server(&addr.to_string(), false).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
    first.stop();
}
