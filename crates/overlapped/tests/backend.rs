//! The backend is the one `OVERLAPPED_BACKEND` names, so that the suite run
//! with `OVERLAPPED_BACKEND=epoll` really tests the epoll backend.

use overlapped::{backend, Backend, TcpListener, TcpStream};

#[test]
fn the_backend_in_use_is_the_one_the_environment_names() {
    let expected = match std::env::var("OVERLAPPED_BACKEND").as_deref() {
        Ok("epoll") => Some(Backend::Epoll),
        Ok("uring") => Some(Backend::IoUring),
        _ => None,
    };
    let chosen = backend().expect("a backend can be chosen");
    if let Some(expected) = expected {
        assert_eq!(chosen, expected);
    }
    // Sockets work on whichever it is.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    TcpStream::connect(listener.local_addr().unwrap()).unwrap();
}
