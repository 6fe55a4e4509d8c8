//! The PROXY protocol, version 2: the header a load balancer (HAProxy, AWS
//! NLB, Google Cloud's) sends first on each connection it relays, naming
//! the client it relays for — so that per-address limits and logs see the
//! player, not the balancer.
//!
//! With [`ServiceConfig::proxy_protocol`](super::ServiceConfig::proxy_protocol)
//! on, a session's first bytes must be such a header: the program's
//! factory learns the client's address from it, the per-address limit
//! counts it, and [`Session::peer_addr`](super::Session::peer_addr) gives
//! it. A connection whose first bytes are not a valid header is closed with
//! the reason logged; its program never sees it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use super::connection::{Session, SessionHandler};
use super::log_budget::LogBudget;

/// The twelve bytes every version 2 header starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part: signature, version and command, family, length.
const FIXED: usize = 16;
/// The longest header taken: the addresses and the extensions (TLVs) a
/// balancer adds (its own name, TLS details); more is not a header.
pub(crate) const MAX_HEADER: usize = 1024;

/// What the first bytes of a proxied connection hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// Not all of it yet.
    Partial,
    /// A whole header of `len` bytes, for a client at `client` — or `None`
    /// for a `LOCAL` connection (the balancer's own health check), which
    /// keeps the connection's own address.
    Complete {
        len: usize,
        client: Option<SocketAddr>,
    },
}

/// Reads a version 2 header from the start of `data`; why not, if it is
/// not one.
pub(crate) fn parse(data: &[u8]) -> Result<Header, String> {
    let seen = data.len().min(SIGNATURE.len());
    if data[..seen] != SIGNATURE[..seen] {
        if data.starts_with(b"PROXY ") {
            return Err("a PROXY protocol version 1 header (text); only version 2 is taken".into());
        }
        return Err("the connection did not start with a PROXY protocol v2 header".into());
    }
    if data.len() < FIXED {
        return Ok(Header::Partial);
    }
    let (version, command) = (data[12] >> 4, data[12] & 0x0f);
    if version != 2 {
        return Err(format!(
            "PROXY protocol version {version}; only version 2 is taken"
        ));
    }
    let body = usize::from(u16::from_be_bytes([data[14], data[15]]));
    let len = FIXED + body;
    if len > MAX_HEADER {
        return Err(format!(
            "a PROXY protocol header of {len} bytes (the most taken is {MAX_HEADER})"
        ));
    }
    if data.len() < len {
        return Ok(Header::Partial);
    }
    let client = match command {
        0 => None,
        1 => Some(address(data[13], &data[FIXED..len])?),
        other => {
            return Err(format!(
                "PROXY protocol command {other} (LOCAL 0 or PROXY 1 are taken)"
            ))
        }
    };
    Ok(Header::Complete { len, client })
}

/// The source address of a `PROXY` header's body, for a TCP family.
fn address(family: u8, body: &[u8]) -> Result<SocketAddr, String> {
    let short = |need: usize| {
        format!(
            "a PROXY protocol address of {} bytes, {need} needed",
            body.len()
        )
    };
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match family {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            if body.len() < 12 {
                return Err(short(12));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(SocketAddr::new(IpAddr::V4(ip), port(8)))
        }
        // TCP over IPv6.
        0x21 => {
            if body.len() < 36 {
                return Err(short(36));
            }
            let octets: [u8; 16] = body[..16].try_into().expect("16 bytes");
            Ok(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port(32),
            ))
        }
        other => Err(format!(
            "PROXY protocol family {other:#04x} (TCP over IPv4 0x11 or IPv6 0x21 are taken)"
        )),
    }
}

/// Connections closed before their header made them sessions of the
/// program: ten lines a second, then summarised.
static REFUSALS: std::sync::LazyLock<LogBudget> = std::sync::LazyLock::new(|| LogBudget::new(10));

/// The handler of a proxied connection until its header came: then the
/// program's handler, made for the client the header names.
pub(crate) struct Proxied {
    program: OnceLock<Arc<dyn SessionHandler>>,
}

impl Proxied {
    pub(crate) fn new() -> Proxied {
        Proxied {
            program: OnceLock::new(),
        }
    }
}

impl SessionHandler for Proxied {
    // `on_connected` waits for the header: the program learns of the
    // session only once it knows who it is.

    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        if let Some(program) = self.program.get() {
            return program.on_recv(session, data);
        }
        let (len, client) = match parse(data)? {
            Header::Partial => return Ok(0),
            Header::Complete { len, client } => (len, client),
        };
        let core = session.host().ok_or("the service stopped")?;
        if let Some(client) = client {
            core.readdress(session, client)?;
        }
        let program = core.make_handler(session.peer_addr())?;
        let program = self.program.get_or_init(|| program);
        program.on_connected(session);
        let rest = &data[len..];
        if rest.is_empty() || !session.is_connected() {
            return Ok(data.len());
        }
        Ok(len + program.on_recv(session, rest)?)
    }

    fn on_sent(&self, session: &Arc<Session>, bytes: usize) {
        if let Some(program) = self.program.get() {
            program.on_sent(session, bytes);
        }
    }

    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        match self.program.get() {
            Some(program) => program.on_disconnected(session, reason),
            // Its program never saw it: the reason is logged here.
            None => REFUSALS.log(&format!("refused {}: {reason}", session.peer_addr())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_header(command: u8, ip: [u8; 4], port: u16, tlv: usize) -> Vec<u8> {
        let mut header = SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(0x11);
        header.extend_from_slice(&((12 + tlv) as u16).to_be_bytes());
        header.extend_from_slice(&ip);
        header.extend_from_slice(&[10, 0, 0, 1]);
        header.extend_from_slice(&port.to_be_bytes());
        header.extend_from_slice(&7777u16.to_be_bytes());
        header.extend(std::iter::repeat_n(0u8, tlv));
        header
    }

    #[test]
    fn a_v4_header_names_the_client_and_its_length_covers_the_extensions() {
        let header = v4_header(1, [203, 0, 113, 5], 40000, 7);
        assert_eq!(
            parse(&header),
            Ok(Header::Complete {
                len: header.len(),
                client: Some("203.0.113.5:40000".parse().unwrap())
            })
        );
    }

    #[test]
    fn a_v6_header_names_the_client() {
        let mut header = SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let ip: Ipv6Addr = "2001:db8::7".parse().unwrap();
        header.extend_from_slice(&ip.octets());
        header.extend_from_slice(&[0; 16]);
        header.extend_from_slice(&[0x1f, 0x90, 0, 80]);
        assert_eq!(
            parse(&header).unwrap(),
            Header::Complete {
                len: 52,
                client: Some("[2001:db8::7]:8080".parse().unwrap())
            }
        );
    }

    #[test]
    fn a_local_header_keeps_the_connections_own_address() {
        let header = v4_header(0, [0; 4], 0, 0);
        assert_eq!(
            parse(&header),
            Ok(Header::Complete {
                len: 28,
                client: None
            })
        );
    }

    #[test]
    fn half_a_header_is_partial_at_every_cut() {
        let header = v4_header(1, [198, 51, 100, 7], 1, 3);
        for cut in 0..header.len() {
            assert_eq!(parse(&header[..cut]), Ok(Header::Partial), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_headers_are_refused_with_the_reason() {
        let reason = |bytes: &[u8]| parse(bytes).unwrap_err();
        assert!(reason(b"GET / HTTP/1.1\r\n").contains("did not start with a PROXY"));
        assert!(reason(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").contains("version 1"));
        let mut wrong_version = v4_header(1, [1, 2, 3, 4], 1, 0);
        wrong_version[12] = 0x11;
        assert!(reason(&wrong_version).contains("version 1"));
        let mut udp = v4_header(1, [1, 2, 3, 4], 1, 0);
        udp[13] = 0x12;
        assert!(reason(&udp).contains("family 0x12"));
        let mut short = v4_header(1, [1, 2, 3, 4], 1, 0);
        short[15] = 4;
        short.truncate(20);
        assert!(reason(&short).contains("4 bytes, 12 needed"));
        let mut huge = v4_header(1, [1, 2, 3, 4], 1, 0);
        huge[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert!(reason(&huge).contains("the most taken is 1024"));
        let mut command = v4_header(1, [1, 2, 3, 4], 1, 0);
        command[12] = 0x2f;
        assert!(reason(&command).contains("command 15"));
    }
}
