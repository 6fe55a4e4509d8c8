//! Completion routines and alertable waits: behaviours 13 and 11 (routine).

mod common;

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::thread;
use std::time::Duration;

use common::{pair, SOON};
use overlapped::error::WSA_OPERATION_ABORTED;
use overlapped::{sleep_ex, wait_for_multiple_events, ErrorExt, Event, Started, WaitResult};

type Seen = Rc<RefCell<Vec<String>>>;

/// A routine that records what it got.
fn recorder(seen: &Seen) -> impl FnOnce(std::io::Result<overlapped::Transfer>, Vec<Vec<u8>>) {
    let seen = seen.clone();
    move |result, buffers| {
        let entry = match result {
            Ok(t) => String::from_utf8_lossy(&buffers[0][..t.bytes]).into_owned(),
            Err(e) => format!("error {}", e.winsock_code().unwrap_or(0)),
        };
        seen.borrow_mut().push(entry);
    }
}

#[test]
fn routine_does_not_run_outside_an_alertable_wait() {
    let (ours, mut peer) = pair();
    let seen = Seen::default();
    ours.recv_with_routine(vec![vec![0; 16]], recorder(&seen))
        .unwrap();
    peer.write_all(b"data").unwrap();
    assert_eq!(
        sleep_ex(Some(Duration::from_millis(100)), false).unwrap(),
        WaitResult::Timeout
    );
    let other = Event::new().unwrap();
    let waited =
        wait_for_multiple_events(&[&other], false, Some(Duration::from_millis(50)), false).unwrap();
    assert_eq!(waited, WaitResult::Timeout);
    assert!(seen.borrow().is_empty());
}

#[test]
fn alertable_sleep_runs_the_routine_and_reports_io_completion() {
    let (ours, mut peer) = pair();
    let seen = Seen::default();
    ours.recv_with_routine(vec![vec![0; 16]], recorder(&seen))
        .unwrap();
    peer.write_all(b"data").unwrap();
    assert_eq!(sleep_ex(SOON, true).unwrap(), WaitResult::IoCompletion);
    assert_eq!(*seen.borrow(), vec!["data"]);
}

#[test]
fn alertable_event_wait_runs_the_routine_and_reports_io_completion() {
    let (ours, mut peer) = pair();
    let seen = Seen::default();
    ours.recv_with_routine(vec![vec![0; 16]], recorder(&seen))
        .unwrap();
    peer.write_all(b"data").unwrap();
    let unrelated = Event::new().unwrap();
    let waited = wait_for_multiple_events(&[&unrelated], false, SOON, true).unwrap();
    assert_eq!(waited, WaitResult::IoCompletion);
    assert_eq!(*seen.borrow(), vec!["data"]);
}

#[test]
fn immediate_completion_still_queues_the_routine() {
    let (ours, mut peer) = pair();
    peer.write_all(b"early").unwrap();
    common::wait_readable(&ours);
    let seen = Seen::default();
    let started = ours
        .recv_with_routine(vec![vec![0; 16]], recorder(&seen))
        .unwrap();
    assert!(matches!(started, Started::Completed(t) if t.bytes == 5));
    assert!(
        seen.borrow().is_empty(),
        "routine ran before an alertable wait"
    );
    assert_eq!(
        sleep_ex(Some(Duration::ZERO), true).unwrap(),
        WaitResult::IoCompletion
    );
    assert_eq!(*seen.borrow(), vec!["early"]);
}

#[test]
fn routine_runs_only_on_the_thread_that_started_the_operation() {
    let (ours, mut peer) = pair();
    let seen = Seen::default();
    let starter = thread::current().id();
    let ran_on = Rc::new(RefCell::new(None));
    let ran = ran_on.clone();
    ours.recv_with_routine(vec![vec![0; 16]], move |_, _| {
        *ran.borrow_mut() = Some(thread::current().id());
    })
    .unwrap();
    peer.write_all(b"x").unwrap();
    let other = thread::spawn(|| sleep_ex(Some(Duration::from_millis(200)), true).unwrap());
    assert_eq!(other.join().unwrap(), WaitResult::Timeout);
    assert_eq!(sleep_ex(SOON, true).unwrap(), WaitResult::IoCompletion);
    assert_eq!(*ran_on.borrow(), Some(starter));
    drop(seen);
}

#[test]
fn routine_may_start_new_operations() {
    let (ours, mut peer) = pair();
    let ours = Rc::new(ours);
    let seen = Seen::default();
    let (again, log) = (ours.clone(), seen.clone());
    ours.recv_with_routine(vec![vec![0; 16]], move |result, buffers| {
        let n = result.unwrap().bytes;
        log.borrow_mut()
            .push(String::from_utf8_lossy(&buffers[0][..n]).into_owned());
        again
            .recv_with_routine(vec![vec![0; 16]], recorder(&log))
            .unwrap();
    })
    .unwrap();
    peer.write_all(b"one").unwrap();
    assert_eq!(sleep_ex(SOON, true).unwrap(), WaitResult::IoCompletion);
    peer.write_all(b"two").unwrap();
    assert_eq!(sleep_ex(SOON, true).unwrap(), WaitResult::IoCompletion);
    assert_eq!(*seen.borrow(), vec!["one", "two"]);
}

#[test]
fn closing_the_socket_runs_the_routine_with_aborted() {
    let (ours, _peer) = pair();
    let seen = Seen::default();
    ours.recv_with_routine(vec![vec![0; 16]], recorder(&seen))
        .unwrap();
    drop(ours);
    assert_eq!(sleep_ex(SOON, true).unwrap(), WaitResult::IoCompletion);
    assert_eq!(
        *seen.borrow(),
        vec![format!("error {WSA_OPERATION_ABORTED}")]
    );
}

#[test]
fn a_panicking_routine_does_not_lose_the_routines_queued_after_it() {
    let (first, mut first_peer) = pair();
    let (second, mut second_peer) = pair();
    let seen = Seen::default();
    first
        .recv_with_routine(vec![vec![0u8; 16]], |_, _: Vec<Vec<u8>>| {
            panic!("a completion routine panicked")
        })
        .unwrap();
    second
        .recv_with_routine(vec![vec![0; 16]], recorder(&seen))
        .unwrap();
    first_peer.write_all(b"one").unwrap();
    second_peer.write_all(b"two").unwrap();
    // Both complete meanwhile, so that one alertable wait finds both.
    thread::sleep(Duration::from_millis(100));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.borrow().is_empty() && std::time::Instant::now() < deadline {
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sleep_ex(Some(Duration::from_millis(50)), true)
        }));
        assert!(waited.is_ok(), "the routine's panic left the wait");
    }
    assert_eq!(*seen.borrow(), vec!["two"]);
}
