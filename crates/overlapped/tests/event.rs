//! Behaviours 1, 6 and 7: manual-reset events and the multi-event wait.

use std::thread;
use std::time::Duration;

use overlapped::error::WSA_INVALID_PARAMETER;
use overlapped::{wait_for_multiple_events, ErrorExt, Event, WaitResult, MAXIMUM_WAIT_EVENTS};

const POLL: Option<Duration> = Some(Duration::ZERO);

#[test]
fn new_event_is_not_signaled() {
    let event = Event::new().unwrap();
    assert!(!event.is_set().unwrap());
}

#[test]
fn waiting_on_a_signaled_event_does_not_clear_it() {
    let event = Event::new().unwrap();
    event.set().unwrap();
    for _ in 0..3 {
        let seen = wait_for_multiple_events(&[&event], false, POLL, false).unwrap();
        assert_eq!(seen, WaitResult::Signaled(0));
    }
    assert!(event.is_set().unwrap());
}

#[test]
fn reset_makes_a_signaled_event_non_signaled() {
    let event = Event::new().unwrap();
    event.set().unwrap();
    event.set().unwrap();
    event.reset().unwrap();
    assert!(!event.is_set().unwrap());
}

#[test]
fn wait_any_returns_the_lowest_signaled_index() {
    let events: Vec<Event> = (0..5).map(|_| Event::new().unwrap()).collect();
    events[3].set().unwrap();
    events[1].set().unwrap();
    let refs: Vec<&Event> = events.iter().collect();
    let seen = wait_for_multiple_events(&refs, false, POLL, false).unwrap();
    assert_eq!(seen, WaitResult::Signaled(1));
}

#[test]
fn zero_timeout_polls_and_reports_timeout() {
    let event = Event::new().unwrap();
    let seen = wait_for_multiple_events(&[&event], false, POLL, false).unwrap();
    assert_eq!(seen, WaitResult::Timeout);
}

#[test]
fn expired_wait_reports_timeout() {
    let event = Event::new().unwrap();
    let seen =
        wait_for_multiple_events(&[&event], false, Some(Duration::from_millis(20)), false).unwrap();
    assert_eq!(seen, WaitResult::Timeout);
}

#[test]
fn infinite_wait_returns_when_another_thread_sets_the_event() {
    let event = Event::new().unwrap();
    let setter = event.clone();
    let handle = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        setter.set().unwrap();
    });
    let seen = wait_for_multiple_events(&[&event], false, overlapped::INFINITE, false).unwrap();
    assert_eq!(seen, WaitResult::Signaled(0));
    handle.join().unwrap();
}

#[test]
fn wait_all_times_out_while_one_event_is_not_signaled() {
    let a = Event::new().unwrap();
    let b = Event::new().unwrap();
    a.set().unwrap();
    let seen =
        wait_for_multiple_events(&[&a, &b], true, Some(Duration::from_millis(50)), false).unwrap();
    assert_eq!(seen, WaitResult::Timeout);
    assert!(a.is_set().unwrap(), "wait-all must not change any event");
}

#[test]
fn wait_all_returns_once_every_event_is_signaled() {
    let events: Vec<Event> = (0..3).map(|_| Event::new().unwrap()).collect();
    events[0].set().unwrap();
    let late: Vec<Event> = events[1..].to_vec();
    let handle = thread::spawn(move || {
        for event in late {
            thread::sleep(Duration::from_millis(30));
            event.set().unwrap();
        }
    });
    let refs: Vec<&Event> = events.iter().collect();
    let seen = wait_for_multiple_events(&refs, true, overlapped::INFINITE, false).unwrap();
    assert_eq!(seen, WaitResult::Signaled(0));
    assert!(events.iter().all(|e| e.is_set().unwrap()));
    handle.join().unwrap();
}

#[test]
fn waiting_on_no_events_is_invalid_parameter() {
    let err = wait_for_multiple_events(&[], false, POLL, false).unwrap_err();
    assert_eq!(err.winsock_code(), Some(WSA_INVALID_PARAMETER));
}

#[test]
fn waiting_on_more_than_64_events_is_invalid_parameter() {
    let events: Vec<Event> = (0..=MAXIMUM_WAIT_EVENTS)
        .map(|_| Event::new().unwrap())
        .collect();
    let refs: Vec<&Event> = events.iter().collect();
    let err = wait_for_multiple_events(&refs, false, POLL, false).unwrap_err();
    assert_eq!(err.winsock_code(), Some(WSA_INVALID_PARAMETER));
}

#[test]
fn waiting_on_exactly_64_events_is_allowed() {
    let events: Vec<Event> = (0..MAXIMUM_WAIT_EVENTS)
        .map(|_| Event::new().unwrap())
        .collect();
    events[63].set().unwrap();
    let refs: Vec<&Event> = events.iter().collect();
    let seen = wait_for_multiple_events(&refs, false, POLL, false).unwrap();
    assert_eq!(seen, WaitResult::Signaled(63));
}
