//! Callback ingestion through the real binary: seeds accepted once, retries answered
//! as duplicates, bad input refused with its reason, nothing lost across SIGKILL, and
//! a damaged journal never served with silent loss.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cbgate::store::Event;

use crate::support::{Conn, Gateway, seed_callbacks, signed_for};

const SECRET: &str = "test-secret";

/// One project per seed callback (several seeds reuse the same operation ids), plus
/// project 1234.
fn projects() -> String {
    (0..12)
        .map(|i| {
            format!(
                "[[projects]]\nid = {}\nsecrets = [\"{SECRET}\"]\n",
                9000 + i
            )
        })
        .chain(std::iter::once(format!(
            "[[projects]]\nid = 1234\nsecrets = [\"old-secret\", \"{SECRET}\"]\n"
        )))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every event in a stopped gateway's journal, read with redb directly.
fn journal_events(dir: &Path) -> Vec<Event> {
    const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
    let db = redb::Database::open(dir.join("cbgate.redb")).expect("journal opens");
    let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
    let table = tx.open_table(EVENTS).unwrap();
    redb::ReadableTable::iter(&table)
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            cbgate::store::record::decode(k.value(), v.value()).unwrap()
        })
        .collect()
}

fn clarification(otp_round: u32) -> Vec<u8> {
    let body = serde_json::json!({
        "project_id": 1234,
        "payment": {"id": "payment_47", "type": "purchase", "status": "awaiting clarification",
                    "method": "mobile", "sum": {"amount": 100000, "currency": "KZT"}},
        "operation": {"id": 47, "type": "sale", "status": "awaiting clarification",
                      "request_id": "1a23456bc7890de", "code": "0", "message": format!("OTP round {otp_round}")},
        "account": {"number": "71234567890", "type": "TELE2"}
    });
    cbgate::signature::attach(body.to_string().as_bytes(), SECRET).unwrap()
}

#[test]
fn re_sent_otp_requests_are_new_events_but_retries_are_duplicates() {
    let g = Gateway::start(&projects());
    let first = clarification(1);
    let second = clarification(2);
    assert_eq!(g.post("/callbacks", &first).1, r#"{"status":"accepted"}"#);
    assert_eq!(g.post("/callbacks", &second).1, r#"{"status":"accepted"}"#);
    assert_eq!(g.post("/callbacks", &second).1, r#"{"status":"duplicate"}"#);
    assert_eq!(g.post("/callbacks", &first).1, r#"{"status":"duplicate"}"#);
}

#[test]
fn bad_input_gets_a_clear_answer_and_never_reaches_the_journal() {
    let mut g = Gateway::start_with(&projects(), "max_body_bytes = 4096\nmax_json_depth = 8\n");
    let good = signed_for(1234, &seed_callbacks()[0].payload_json, SECRET);
    let wrong_key = signed_for(1234, &seed_callbacks()[0].payload_json, "not-the-secret");
    let unknown = signed_for(77, &seed_callbacks()[0].payload_json, SECRET);
    let deep = format!("{}1{}", "{\"a\":".repeat(20), "}".repeat(20));
    let huge = format!("{{\"project_id\":1234,\"x\":\"{}\"}}", "y".repeat(5000));
    let cases: Vec<(&[u8], u16, &str, &str)> = vec![
        (b"{\"project_id\":1234,", 400, "not valid JSON", "malformed"),
        (b"[1,2,3]", 400, "not a JSON object", "malformed"),
        (
            b"{\"payment\":{\"id\":\"p\"},\"signature\":\"x\"}",
            400,
            "missing field project_id",
            "missing_field",
        ),
        (
            b"{\"project_id\":1234,\"operation\":{\"id\":1}}",
            400,
            "no signature",
            "missing_signature",
        ),
        (&wrong_key, 400, "invalid signature", "bad_signature"),
        (&unknown, 404, "unknown project 77", "unknown_project"),
        (deep.as_bytes(), 400, "nested deeper than 8", "malformed"),
        (huge.as_bytes(), 413, "over 4096 bytes", "too_large"),
    ];
    for (body, status, says, outcome) in &cases {
        let (got, answer) = g.post("/callbacks", body);
        assert_eq!(got, *status, "{says}: {answer}");
        assert!(answer.contains(says), "{says}: {answer}");
        assert!(
            g.metric("cbgate_requests_total", &[("outcome", outcome)]) >= 1.0,
            "{outcome}"
        );
    }
    let (status, answer) = crate::support::request(g.addr, "GET", "/callbacks", &[], b"");
    assert_eq!((status, answer.contains("POST")), (405, true));
    assert_eq!(g.post("/nowhere", b"{}").0, 404);
    // The one good callback is the only event, and it is #1.
    assert_eq!(g.post("/callbacks", &good).1, r#"{"status":"accepted"}"#);
    g.kill();
    let events = journal_events(&g.data_dir());
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].seq, &events[0].body[..]), (1, &good[..]));
}

#[test]
fn a_slow_client_is_cut_off_and_others_are_served() {
    let g = Gateway::start_with(
        &projects(),
        "body_read_timeout = \"300ms\"\nheader_read_timeout = \"300ms\"\n",
    );
    use std::io::{Read, Write};
    // Headers promise a body that never comes.
    let mut slow = std::net::TcpStream::connect(g.addr).unwrap();
    slow.write_all(b"POST /callbacks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
        .unwrap();
    // A client that never finishes its headers.
    let mut silent = std::net::TcpStream::connect(g.addr).unwrap();
    silent
        .write_all(b"POST /callbacks HTTP/1.1\r\nHost:")
        .unwrap();
    let good = signed_for(1234, &seed_callbacks()[0].payload_json, SECRET);
    assert_eq!(g.post("/callbacks", &good).0, 200);
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let n = silent.read_to_end(&mut rest).unwrap_or(0);
    // hyper closes the connection (optionally after a 408).
    assert!(
        n == 0 || rest.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn connections_over_the_cap_are_closed_at_once_across_every_http_thread() {
    let g = Gateway::start_with(&projects(), "max_connections = 2\nworker_threads = 2\n");
    let good = signed_for(1234, &seed_callbacks()[0].payload_json, SECRET);
    let mut held: Vec<Conn> = (0..2).map(|_| Conn::open(g.addr).unwrap()).collect();
    for c in &mut held {
        assert_eq!(c.post("/callbacks", &good).unwrap().0, 200);
    }
    // The cap is the gateway's, not each thread's: a third connection is closed
    // without an answer, whichever thread accepted it.
    let mut third = Conn::open(g.addr).unwrap();
    assert!(third.post("/callbacks", &good).is_err());
    assert_eq!(g.metric("cbgate_connections_rejected_total", &[]), 1.0);
    // A freed slot is taken again.
    drop(held.pop());
    let started = std::time::Instant::now();
    let status = loop {
        match Conn::open(g.addr).and_then(|mut c| c.post("/callbacks", &good)) {
            Ok((status, _)) => break status,
            Err(_) if started.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("no slot freed: {e}"),
        }
    };
    assert_eq!(status, 200);
}

/// Distinct signed callbacks: operation ids `base..base+n`.
fn distinct(base: u64, n: u64) -> Vec<Vec<u8>> {
    let seed: serde_json::Value = serde_json::from_str(&seed_callbacks()[0].payload_json).unwrap();
    (base..base + n)
        .map(|op| {
            let mut v = seed.clone();
            v["project_id"] = 1234.into();
            v["operation"]["id"] = op.into();
            v["operation"]["request_id"] = format!("req-{op}").into();
            v["payment"]["id"] = format!("pay-{op}").into();
            cbgate::signature::attach(v.to_string().as_bytes(), SECRET).unwrap()
        })
        .collect()
}

/// Sends `bodies` over `conns` connections until `stop_after` 200s have been seen in
/// total (then the caller kills the server); returns which indexes got 200.
fn blast(g: &Gateway, bodies: &Arc<Vec<Vec<u8>>>, conns: usize) -> Vec<usize> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let bodies = bodies.clone();
            let acked = acked.clone();
            let addr = g.addr;
            std::thread::spawn(move || {
                let Ok(mut conn) = Conn::open(addr) else {
                    return;
                };
                for i in (c..bodies.len()).step_by(conns) {
                    match conn.post("/callbacks", &bodies[i]) {
                        Ok((200, _)) => acked.lock().unwrap().push(i),
                        Ok((status, answer)) => panic!("#{i}: {status} {answer}"),
                        Err(_) => return, // the server died under us
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

#[test]
fn nothing_acknowledged_is_lost_across_sigkill() {
    let mut g = Gateway::start(&projects());
    let mut all_acked: HashMap<usize, ()> = HashMap::new();
    let bodies = Arc::new(distinct(1, 6000));
    for round in 0..3 {
        // Kill at a random moment while several connections are sending.
        let delay = Duration::from_millis(150 + fastrand::u64(0..400));
        let pid = g.child.as_ref().unwrap().id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        });
        let acked = blast(&g, &bodies, 8);
        killer.join().unwrap();
        g.kill();
        for i in &acked {
            all_acked.insert(*i, ());
        }
        // Every acknowledged callback is in the journal exactly once.
        let events = journal_events(&g.data_dir());
        let mut count: HashMap<&[u8], usize> = HashMap::new();
        for e in &events {
            *count.entry(&e.body[..]).or_default() += 1;
        }
        assert!(
            count.values().all(|&n| n == 1),
            "round {round}: a callback stored twice"
        );
        for i in all_acked.keys() {
            assert_eq!(
                count.get(&bodies[*i][..]),
                Some(&1),
                "round {round}: acknowledged #{i} lost"
            );
        }
        eprintln!(
            "round {round}: {} acknowledged before the kill, {} in the journal",
            acked.len(),
            events.len()
        );
        g.spawn();
        // Re-sending everything acknowledged so far yields only duplicates.
        let mut conn = Conn::open(g.addr).unwrap();
        for i in all_acked.keys() {
            assert_eq!(
                conn.post("/callbacks", &bodies[*i]).unwrap(),
                (200, r#"{"status":"duplicate"}"#.into())
            );
        }
    }
}

#[test]
fn a_damaged_journal_recovers_everything_or_refuses_to_start() {
    let bodies = distinct(50_000, 300);
    for trial in 0..6 {
        let mut g = Gateway::start(&projects());
        let mut conn = Conn::open(g.addr).unwrap();
        for b in &bodies {
            assert_eq!(conn.post("/callbacks", b).unwrap().0, 200);
        }
        g.kill();
        let file = g.data_dir().join("cbgate.redb");
        let len = std::fs::metadata(&file).unwrap().len();
        let damage = 1 + fastrand::u64(0..len.min(64 * 1024));
        if trial % 2 == 0 {
            // Cut the tail.
            let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            f.set_len(len - damage).unwrap();
        } else {
            // Scribble random bytes over the tail.
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            f.seek(SeekFrom::Start(len - damage)).unwrap();
            let junk: Vec<u8> = (0..damage).map(|_| fastrand::u8(..)).collect();
            f.write_all(&junk).unwrap();
        }
        let before = g.log().len();
        let log = g.stderr_path.clone();
        let mut child = std::process::Command::new(crate::support::BIN)
            .args(["serve", "--config", g.config_path.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        // Either it refuses (exits non-zero with a clear message)...
        let mut refused = None;
        for _ in 0..300 {
            if let Some(status) = child.try_wait().unwrap() {
                refused = Some(status);
                break;
            }
            if crate::support::Conn::open(g.admin)
                .and_then(|mut c| c.request("GET", "/readyz", &[], b""))
                .is_ok_and(|(s, _)| s == 200)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(status) = refused {
            assert!(!status.success());
            let said = &g.log()[before..];
            assert!(
                said.contains("damaged") || said.contains("orrupt") || said.contains("cannot open"),
                "trial {trial}: refused without a clear reason: {said}"
            );
            eprintln!(
                "trial {trial}: damage {damage} B → refused: {}",
                said.lines().last().unwrap_or("")
            );
            continue;
        }
        // ...or it serves with every callback it acknowledged.
        g.child = Some(child);
        let mut conn = Conn::open(g.addr).unwrap();
        for (i, b) in bodies.iter().enumerate() {
            assert_eq!(
                conn.post("/callbacks", b).unwrap(),
                (200, r#"{"status":"duplicate"}"#.into()),
                "trial {trial}: damage {damage} B lost #{i}"
            );
        }
        g.kill();
        assert_eq!(
            journal_events(&g.data_dir()).len(),
            bodies.len(),
            "trial {trial}"
        );
        eprintln!(
            "trial {trial}: damage {damage} B → recovered all {}",
            bodies.len()
        );
    }
}

#[test]
fn a_full_journal_queue_answers_503_and_every_200_is_durable() {
    let mut g = Gateway::start_config(&projects(), "", "max_pending = 1\nmax_batch = 1");
    let dir = g.data_dir();
    let bodies = Arc::new(distinct(90_000, 2000));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..16)
        .map(|c| {
            let (bodies, answers, addr) = (bodies.clone(), answers.clone(), g.addr);
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr).unwrap();
                for i in (c..bodies.len()).step_by(16) {
                    let (status, body) = conn.post("/callbacks", &bodies[i]).unwrap();
                    answers.lock().unwrap().push((i, status, body));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    let busy: Vec<_> = answers.iter().filter(|a| a.1 == 503).collect();
    assert!(!busy.is_empty(), "no backpressure with a queue of 1");
    assert!(busy.iter().all(|a| a.2.contains("journal queue is full")));
    assert!(answers.iter().all(|a| a.1 == 200 || a.1 == 503));
    assert!(g.metric("cbgate_backpressure_rejections_total", &[]) >= busy.len() as f64);
    let accepted: Vec<usize> = answers.iter().filter(|a| a.1 == 200).map(|a| a.0).collect();
    g.kill();
    let stored: std::collections::HashSet<Vec<u8>> = journal_events(&dir)
        .into_iter()
        .map(|e| e.body.to_vec())
        .collect();
    for i in accepted {
        assert!(
            stored.contains(&bodies[i]),
            "#{i} got 200 but is not in the journal"
        );
    }
    eprintln!("{} of {} answered 503", busy.len(), answers.len());
}
