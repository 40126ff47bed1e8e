//! Dead critical threads through the real binary (issue 16.5): before, a dead journal
//! writer or delivery dispatcher went unnoticed and `/readyz` still answered 200. Now
//! readiness turns red at once, the process drains and exits 70, and a restart
//! delivers everything that was answered 200. The thread is killed by the debug-build
//! hook `CBGATE_TEST_PANIC_THREAD=NAME:N` (`watchdog::Tripwire`). An endpoint that
//! holds its answers keeps an attempt in flight, so the drain lasts until the test has
//! seen readiness red (no race with the exit).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::contract::{callback, config};
use crate::endpoint::{Endpoint, Gate, Reply};
use crate::support::{Conn, Gateway};

const LONG: Duration = Duration::from_secs(30);
/// An attempt holds as long as the gate stays shut (well past the test's wait).
const HOLDING: &str = "schedule = [\"0s\", \"100ms\"]\nrepeat_every = \"200ms\"\ntimeout = \"60s\"";
const HOOK: &str = "CBGATE_TEST_PANIC_THREAD";

fn held_endpoint() -> (Endpoint, Gate) {
    let gate = Gate::default();
    let held = gate.clone();
    (
        Endpoint::start(move |_, _| Reply::Block(held.clone(), 200)),
        gate,
    )
}

/// Polls `/readyz` until it answers 503 with a body that `says`. The process must
/// still be up to answer: it drains while an attempt is held.
fn wait_not_ready(g: &Gateway, says: &str) {
    let started = Instant::now();
    loop {
        let answer = Conn::open(g.admin).and_then(|mut c| c.request("GET", "/readyz", &[], b""));
        match answer {
            Ok((503, body)) if String::from_utf8_lossy(&body).contains(says) => return,
            Ok((200 | 503, _)) => {}
            other => panic!("/readyz: {other:?}\n{}", g.log()),
        }
        assert!(started.elapsed() < LONG, "still ready:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn distinct(endpoint: &Endpoint) -> HashSet<Vec<u8>> {
    endpoint.delivered().into_iter().collect()
}

#[test]
fn a_dead_dispatcher_turns_readiness_red_exits_70_and_the_restart_delivers_everything() {
    let (endpoint, gate) = held_endpoint();
    let mut g = Gateway::start_env(
        &config(HOLDING, &[("a", &endpoint.url(), "")]),
        "",
        "",
        &[(HOOK, "delivery-dispatch:2")],
    );
    let bodies: Vec<Vec<u8>> = (1..=3)
        .map(|i| callback(&format!("pay-{i}"), i, "kassa24", "success"))
        .collect();
    g.accept_callback(&bodies[0]);
    g.accept_callback(&bodies[1]);
    assert!(endpoint.wait_arrived(1, LONG), "{}", g.log());
    // Durable and answered 200; the dispatcher dies handing it out.
    g.accept_callback(&bodies[2]);
    wait_not_ready(&g, "not ready");
    gate.open();
    let status = g.wait_exit(LONG);
    assert_eq!(status.code(), Some(70), "{}", g.log());
    let log = g.log();
    assert!(
        log.contains("the delivery-dispatch thread panicked"),
        "{log}"
    );

    g.env.clear();
    g.spawn();
    assert!(endpoint.wait_delivered(3, LONG), "{}", g.log());
    g.wait_idle(LONG);
    assert_eq!(distinct(&endpoint), bodies.iter().cloned().collect());
    for body in &bodies {
        assert_eq!(
            g.post("/callbacks", body),
            (200, r#"{"status":"duplicate"}"#.into())
        );
    }
}

#[test]
fn a_dead_journal_writer_answers_503_turns_readiness_red_exits_70_and_loses_nothing() {
    let (endpoint, gate) = held_endpoint();
    let mut g = Gateway::start_env(
        &config(HOLDING, &[("a", &endpoint.url(), "")]),
        "",
        "",
        &[(HOOK, "journal-writer:2")],
    );
    let bodies: Vec<Vec<u8>> = (1..=4)
        .map(|i| callback(&format!("pay-{i}"), i, "kassa24", "success"))
        .collect();
    g.accept_callback(&bodies[0]);
    g.accept_callback(&bodies[1]);
    assert!(endpoint.wait_arrived(1, LONG), "{}", g.log());
    // The writer dies with the third in hand: never answered 200, nor is anything after.
    let (status, text) = g.post("/callbacks", &bodies[2]);
    assert_eq!(status, 503, "{text}");
    // The store says why, beside the watchdog's red.
    wait_not_ready(&g, "the journal writer stopped");
    // Draining: refused at the door, or 503.
    let late = Conn::open(g.addr).and_then(|mut c| c.post("/callbacks", &bodies[3]));
    assert!(
        !matches!(late, Ok((status, _)) if status != 503),
        "{late:?}"
    );
    gate.open();
    let status = g.wait_exit(LONG);
    assert_eq!(status.code(), Some(70), "{}", g.log());
    // The cause is named, not the dispatcher that ends with it.
    let log = g.log();
    assert!(log.contains("the journal-writer thread panicked"), "{log}");
    assert!(!log.contains("delivery-dispatch thread"), "{log}");

    g.env.clear();
    g.spawn();
    // What was answered 200 is there; what was answered 503 the platform sends again.
    for body in &bodies[..2] {
        assert_eq!(
            g.post("/callbacks", body),
            (200, r#"{"status":"duplicate"}"#.into())
        );
    }
    for body in &bodies[2..] {
        g.accept_callback(body);
    }
    assert!(endpoint.wait_delivered(4, LONG), "{}", g.log());
    g.wait_idle(LONG);
    assert_eq!(distinct(&endpoint), bodies.iter().cloned().collect());
}
