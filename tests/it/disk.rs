//! The fault suite's disk half (issue 16): the real binary with its journal's writes
//! failing with ENOSPC, or its fsyncs with EIO, made by an LD_PRELOAD shim
//! (`tests/shim/faulty_io.c`, built with `cc`) that touches only the data directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::contract::{FAST, callback, config, op_of};
use crate::endpoint::Endpoint;
use crate::support::{Conn, Gateway, Headers};

const LONG: Duration = Duration::from_secs(30);

/// The shim, built once per test run into Cargo's scratch directory.
fn shim() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/shim/faulty_io.c");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = dir.join("libfaulty_io.so");
        // Built aside and renamed: another test run may be loading the last one.
        let partial = dir.join(format!("libfaulty_io.so.{}", std::process::id()));
        let status = std::process::Command::new(std::env::var("CC").unwrap_or("cc".into()))
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&partial)
            .arg(&source)
            .arg("-ldl")
            .status()
            .expect("cc runs (a C compiler is needed to build Rust anyway)");
        assert!(status.success(), "cc failed on {}", source.display());
        std::fs::rename(&partial, &out).unwrap();
        out
    })
}

/// Control over the shim for one gateway: faults are on while their file exists.
struct Faulty {
    ctl: tempfile::TempDir,
}

impl Faulty {
    /// Loads the shim into `g` (before its first spawn), aimed at its data directory.
    fn attach(g: &mut Gateway) -> Faulty {
        std::fs::create_dir_all(g.data_dir()).unwrap();
        let dir = g.data_dir();
        Self::attach_to(g, &dir)
    }

    /// As `attach`, aimed at `target` only (a file or a directory).
    fn attach_to(g: &mut Gateway, target: &Path) -> Faulty {
        let ctl = tempfile::tempdir().unwrap();
        g.env = vec![
            ("LD_PRELOAD".into(), shim().display().to_string()),
            ("CBGATE_FAULT_DIR".into(), target.display().to_string()),
            ("CBGATE_FAULT_CTL".into(), ctl.path().display().to_string()),
        ];
        Faulty { ctl }
    }

    fn set(&self, fault: &str, on: bool) {
        let path = self.ctl.path().join(fault);
        if on {
            std::fs::write(path, b"").unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    }

    /// How many calls the shim failed with `fault`.
    fn injected(&self, fault: &str) -> usize {
        std::fs::read_to_string(self.ctl.path().join("injected.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(fault))
            .count()
    }
}

/// Status, headers and body.
type Answer = (u16, Headers, String);

/// Posts a callback (the connection may be refused: `None`).
fn post(g: &Gateway, body: &[u8]) -> Option<Answer> {
    let (status, headers, body) = Conn::open(g.addr)
        .and_then(|mut c| {
            c.exchange(
                "POST",
                "/callbacks",
                &[("Content-Type", "application/json")],
                body,
            )
        })
        .ok()?;
    Some((status, headers, String::from_utf8(body).unwrap()))
}

fn answer(g: &Gateway, body: &[u8]) -> String {
    let (status, _, text) = post(g, body).expect("an answer");
    assert_eq!(status, 200, "{text}\n{}", g.log());
    text
}

/// A 503 with a JSON reason and `Retry-After`: the platform will send it again.
fn assert_refused(answer: &Answer, g: &Gateway) {
    let (status, headers, text) = answer;
    assert_eq!(*status, 503, "{text}\n{}", g.log());
    let v: Value = serde_json::from_str(text).expect("a JSON reason");
    assert_eq!(v["status"], "unavailable", "{text}");
    assert!(
        v["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{text}"
    );
    assert!(
        headers.iter().any(|(k, v)| k == "retry-after" && v == "1"),
        "{headers:?}"
    );
}

/// The operation ids of payment `payment`'s events in the journal.
fn stored(g: &Gateway, payment: &str) -> BTreeSet<u64> {
    let (status, text) = g.admin_get(&format!("/admin/payments/77/{payment}"));
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let ops: Vec<u64> = v["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["body"]["operation"]["id"].as_u64().unwrap())
        .collect();
    let set: BTreeSet<u64> = ops.iter().copied().collect();
    assert_eq!(set.len(), ops.len(), "an event stored twice: {ops:?}");
    set
}

fn ops(bodies: &[Vec<u8>]) -> BTreeSet<u64> {
    bodies.iter().map(|b| op_of(b)).collect()
}

fn readyz(g: &Gateway) -> (u16, String) {
    crate::support::request(g.admin, "GET", "/readyz", &[], b"")
}

#[test]
fn a_full_disk_turns_intake_to_503_and_it_recovers_by_itself_losing_nothing() {
    let ep = Endpoint::ok();
    let mut g = Gateway::configure(&config(FAST, &[("disk", &ep.url(), "")]), "", "");
    let faulty = Faulty::attach(&mut g);
    g.spawn();
    let pay = |i: u64| callback("disk-full", 100 + i, "kassa24", "success");
    let before: Vec<_> = (0..20).map(pay).collect();
    for b in &before {
        assert_eq!(answer(&g, b), r#"{"status":"accepted"}"#);
    }
    assert!(ep.wait_delivered(before.len(), LONG), "{}", g.log());

    faulty.set("enospc", true);
    // Nothing new can be written: each callback is refused, none answered 200, sent at
    // once so that the failing commit holds several.
    let during: Vec<_> = (20..30).map(pay).collect();
    std::thread::scope(|s| {
        for b in &during {
            let g = &g;
            s.spawn(move || assert_refused(&post(g, b).expect("an answer"), g));
        }
    });
    assert!(faulty.injected("enospc") > 0, "the shim failed no write");
    assert!(g.log().contains("No space left on device"), "{}", g.log());
    // What is durable is still known: the platform's retries of it are duplicates.
    for b in &before[..5] {
        assert_eq!(answer(&g, b), r#"{"status":"duplicate"}"#);
    }
    let (status, text) = readyz(&g);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("disk full"), "{text}");
    assert_eq!(g.metric("cbgate_journal_writable", &[]), 0.0);

    // Space returns: without a restart, a new callback is accepted once the gateway
    // has seen it (probing with a file of its own), and the process is the same one.
    faulty.set("enospc", false);
    let pid = g.child.as_ref().unwrap().id();
    let recovered = pay(30);
    let started = Instant::now();
    loop {
        let answer = post(&g, &recovered).expect("an answer");
        if answer.0 == 200 {
            assert_eq!(answer.2, r#"{"status":"accepted"}"#);
            break;
        }
        assert_refused(&answer, &g);
        assert!(started.elapsed() < LONG, "no recovery\n{}", g.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "disk full: {} writes failed; accepting again {} ms after space returned",
        faulty.injected("enospc"),
        started.elapsed().as_millis()
    );
    assert_eq!(g.child.as_ref().unwrap().id(), pid);
    assert!(g.child.as_mut().unwrap().try_wait().unwrap().is_none());
    assert_eq!(readyz(&g).0, 200);
    assert_eq!(g.metric("cbgate_journal_writable", &[]), 1.0);

    // The journal holds exactly what was answered "accepted": none of the refused ones.
    let mut accepted = before.clone();
    accepted.push(recovered);
    assert_eq!(stored(&g, "disk-full"), ops(&accepted));
    // The platform sends the refused ones again; now they are taken.
    for b in &during {
        assert_eq!(answer(&g, b), r#"{"status":"accepted"}"#);
    }
    accepted.extend(during);

    // After a SIGKILL and a restart every 200 is there, nothing else, and all of it is
    // delivered.
    g.kill();
    g.spawn();
    assert_eq!(stored(&g, "disk-full"), ops(&accepted));
    for b in &accepted {
        assert_eq!(answer(&g, b), r#"{"status":"duplicate"}"#);
    }
    assert!(ep.wait_delivered(accepted.len(), LONG), "{}", g.log());
    g.wait_idle(LONG);
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

#[test]
fn a_failed_fsync_is_answered_503_and_the_process_exits_to_recover_from_the_disk() {
    // No endpoint: no delivery progress is committed, so the first commit to fail is
    // the callback's own.
    let mut g = Gateway::configure(&config(FAST, &[]), "", "");
    let faulty = Faulty::attach(&mut g);
    g.spawn();
    let pay = |i: u64| callback("fsync", 200 + i, "kassa24", "success");
    let before: Vec<_> = (0..10).map(pay).collect();
    for b in &before {
        assert_eq!(answer(&g, b), r#"{"status":"accepted"}"#);
    }

    faulty.set("eio", true);
    // The batch whose fsync failed is refused...
    let failed = pay(10);
    assert_refused(&post(&g, &failed).expect("an answer"), &g);
    assert!(faulty.injected("eio") > 0, "the shim failed no fsync");
    // ...and so is everything after it, until the process has gone.
    let mut refused = 0;
    for i in 11..1000 {
        match post(&g, &pay(i)) {
            Some(answer) => {
                assert_refused(&answer, &g);
                refused += 1;
            }
            None => break,
        }
    }
    let status = g.wait_exit(LONG);
    assert_eq!(status.code(), Some(1), "{}", g.log());
    let log = g.log();
    assert!(log.contains("an fsync of the journal failed"), "{log}");
    assert!(log.contains("Input/output error"), "{log}");
    eprintln!("fsync failed: {refused} more callbacks refused before the exit");

    // The restart recovers from the disk: every 200 is there. The refused batch may be
    // too (a failed fsync says nothing either way; the shim wrote it); the platform's
    // retry finds it stored or stores it now.
    faulty.set("eio", false);
    g.spawn();
    for b in &before {
        assert_eq!(answer(&g, b), r#"{"status":"duplicate"}"#);
    }
    let retry = answer(&g, &failed);
    assert!(
        [r#"{"status":"accepted"}"#, r#"{"status":"duplicate"}"#].contains(&retry.as_str()),
        "{retry}"
    );
    let mut all = before.clone();
    all.push(failed);
    assert_eq!(stored(&g, "fsync"), ops(&all));
    eprintln!("fsync failed: the refused callback was {retry} after the restart");
}

#[test]
fn a_commit_is_answered_as_durable_when_only_its_mark_cannot_be_written() {
    // `commit.mark` is rewritten after each commit, outside it. A failure there once
    // turned a durable commit into a 503 and gave its sequence numbers out again, so
    // the next commit overwrote its events.
    let ep = Endpoint::ok();
    let mut g = Gateway::configure(&config(FAST, &[("disk", &ep.url(), "")]), "", "");
    let mark = g.data_dir().join("commit.mark");
    let faulty = Faulty::attach_to(&mut g, &mark);
    g.spawn();
    let pay = |i: u64| callback("mark", 300 + i, "kassa24", "success");
    faulty.set("enospc", true);
    let bodies: Vec<_> = (0..10).map(pay).collect();
    for b in &bodies {
        assert_eq!(answer(&g, b), r#"{"status":"accepted"}"#);
    }
    assert!(
        faulty.injected("enospc") >= bodies.len(),
        "the mark was written"
    );
    assert!(g.log().contains("commit mark not written"), "{}", g.log());
    assert_eq!(stored(&g, "mark"), ops(&bodies));
    faulty.set("enospc", false);
    g.kill();
    g.spawn();
    for b in &bodies {
        assert_eq!(answer(&g, b), r#"{"status":"duplicate"}"#);
    }
    assert_eq!(stored(&g, "mark"), ops(&bodies));
    assert!(ep.wait_delivered(bodies.len(), LONG), "{}", g.log());
    let mut got = ep.delivered();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), bodies.len());
}
