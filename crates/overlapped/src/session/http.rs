//! The little HTTP/1.1 the metrics endpoint speaks: a request head parsed
//! by `httparse`, and a whole response with its length, on a connection
//! that closes after it.

use bytes::Bytes;

/// Most header lines a request may carry.
const MAX_HEADERS: usize = 32;

/// What the first bytes of a connection hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// Not all of it yet.
    Partial,
    /// A whole request head: its method and path (without the query).
    Request { method: String, path: String },
    /// Not HTTP, or more header lines than [`MAX_HEADERS`]: the reason,
    /// and the status to answer with.
    Refused { status: u16, reason: String },
}

/// Reads a request head from `data`, holding at most `max_head` bytes of
/// it: a head that does not end within them is refused with 431.
pub(crate) fn parse(data: &[u8], max_head: usize) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let window = &data[..data.len().min(max_head)];
    match request.parse(window) {
        Ok(httparse::Status::Complete(_)) => {
            let target = request.path.unwrap_or("/");
            Head::Request {
                method: request.method.unwrap_or("").to_owned(),
                path: target.split('?').next().unwrap_or(target).to_owned(),
            }
        }
        Ok(httparse::Status::Partial) if data.len() >= max_head => Head::Refused {
            status: 431,
            reason: format!("a request head longer than {max_head} bytes"),
        },
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::Refused {
            status: 431,
            reason: format!("more than {MAX_HEADERS} header lines"),
        },
        Err(e) => Head::Refused {
            status: 400,
            reason: format!("not an HTTP request: {e}"),
        },
    }
}

/// A whole response: status line, type, length, `Connection: close`, and
/// the body unless the request was a `HEAD`.
pub(crate) fn response(status: u16, content_type: &str, body: &str, head_only: bool) -> Bytes {
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut text = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    );
    if !head_only {
        text.push_str(body);
    }
    Bytes::from(text)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_head_gives_its_method_and_path_without_the_query() {
        let head = parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", 8192);
        assert_eq!(
            head,
            Head::Request {
                method: "GET".into(),
                path: "/metrics".into()
            }
        );
    }

    #[test]
    fn half_a_head_is_partial_until_it_passes_the_limit() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHo", 8192), Head::Partial);
        let long = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 100]].concat();
        assert!(matches!(
            parse(&long, 64),
            Head::Refused { status: 431, .. }
        ));
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert!(matches!(
            parse(b"\x16\x03\x01 hello", 8192),
            Head::Refused { status: 400, .. }
        ));
    }

    #[test]
    fn a_response_says_its_length_and_closes() {
        let text = response(200, "text/plain", "ok\n", false);
        assert_eq!(
            &text[..],
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
              Connection: close\r\n\r\nok\n"
        );
        let head = response(200, "text/plain", "ok\n", true);
        assert!(head.ends_with(b"\r\n\r\n"));
    }
}
