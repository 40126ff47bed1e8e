//! Several gateways on one NATS JetStream cluster, through the real binaries: a 3-node
//! nats-server cluster at R3 and up to three cbgate nodes sharing one config. The
//! same callback at the same moment on three nodes, a gateway node killed mid-load,
//! a NATS node killed mid-load, all of NATS stopped and back, a kiosk's retry on
//! another node, and the admin API answering the same from any node.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::contract::{FAST, callback, config, op_of};
use crate::endpoint::{Endpoint, Reply};
use crate::nats::Nats;
use crate::support::{Conn, Gateway, free_addr, request, signed_for};
use crate::terminal::Merchant;

/// Long enough for a crashed node's partitions to move (leases expire in 6 s, its
/// unacked messages come back after 10 s) on a busy machine.
const PATIENCE: Duration = Duration::from_secs(90);

fn eventually(limit: Duration, done: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    true
}

/// `n` gateways on `nats` with one config, once they have shared out the partitions
/// (every node owns some, together all 8): no handover runs under the test.
fn gateways(nats: &Nats, n: usize, config: &str) -> Vec<Gateway> {
    let nodes: Vec<Gateway> = (0..n)
        .map(|_| Gateway::start_config(config, "", &nats.storage()))
        .collect();
    settled(&nodes);
    nodes
}

fn settled(nodes: &[Gateway]) {
    let owned = |g: &Gateway| g.metric("cbgate_store_partitions_owned", &[]);
    let live = |g: &Gateway| g.metric("cbgate_store_nodes_live", &[]);
    assert!(
        eventually(PATIENCE, || {
            nodes.iter().all(|g| live(g) == nodes.len() as f64)
                && nodes.iter().map(owned).sum::<f64>()
                    == f64::from(crate::nats::CLUSTER_PARTITIONS)
        }),
        "partitions not shared out: {}",
        logs(nodes)
    );
}

/// For a failure message: which of `want` never reached `ep`, and what each node says
/// of its endpoints and partitions.
fn missing(ep: &Endpoint, want: &HashSet<u64>, nodes: &[Gateway]) -> String {
    let got: HashSet<u64> = ep.delivered().iter().map(|b| op_of(b)).collect();
    let mut lost: Vec<u64> = want.difference(&got).copied().collect();
    lost.sort_unstable();
    let mut out = format!("{} of {} not delivered: {lost:?}\n", lost.len(), want.len());
    for (i, g) in nodes.iter().enumerate() {
        let (_, endpoints) = g.admin_get("/admin/endpoints");
        let gauges: Vec<String> = [
            "cbgate_store_partitions_owned",
            "cbgate_store_held_deliveries",
            "cbgate_store_unsaved_cursors",
        ]
        .iter()
        .map(|m| format!("{m} {}", g.metric(m, &[])))
        .collect();
        out.push_str(&format!(
            "gateway {i}: {endpoints}\n  {}\n",
            gauges.join(", ")
        ));
    }
    out
}

fn logs(nodes: &[Gateway]) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let log = g.log();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            format!(
                "--- gateway {i}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect()
}

#[test]
fn the_same_callback_at_the_same_moment_on_three_nodes_is_accepted_once() {
    let nats = Nats::cluster();
    let nodes = gateways(&nats, 3, &config(FAST, &[]));
    let addrs: Vec<_> = nodes.iter().map(|g| g.addr).collect();
    let mut conns: Vec<Conn> = addrs.iter().map(|a| Conn::open(*a).unwrap()).collect();
    for round in 0..50u64 {
        let body = callback(&format!("race-{round}"), 7_000 + round, "mobile", "success");
        let start = Barrier::new(3);
        let answers: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = conns
                .iter_mut()
                .map(|conn| {
                    let (start, body) = (&start, &body);
                    s.spawn(move || {
                        start.wait();
                        let (status, text) = conn.post("/callbacks", body).unwrap();
                        assert_eq!(status, 200, "{text}");
                        text
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let accepted = answers
            .iter()
            .filter(|a| a.contains(r#""accepted""#))
            .count();
        let duplicate = answers
            .iter()
            .filter(|a| a.contains(r#""duplicate""#))
            .count();
        assert_eq!((accepted, duplicate), (1, 2), "round {round}: {answers:?}");
    }
    let accepted: f64 = nodes
        .iter()
        .map(|g| g.metric("cbgate_requests_total", &[("outcome", "accepted")]))
        .sum();
    assert_eq!(accepted, 50.0);
}

/// One callback the load sends: payment `pay`, its `k`th event.
#[derive(Clone)]
struct Sent {
    op: u64,
    pay: u64,
    body: Vec<u8>,
    success: bool,
}

/// When each event was accepted (first 200), by operation id.
type Accepted = Arc<Mutex<HashMap<u64, Instant>>>;

/// Sends `events` in order per payment from `threads` threads over `nodes`, each
/// callback to the next node in turn; a refused or failed one goes to another node,
/// as the platform retries. Runs until every event was accepted.
fn load(
    addrs: Vec<std::net::SocketAddr>,
    events: Vec<Sent>,
    threads: usize,
    accepted: Accepted,
    progress: Arc<AtomicUsize>,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut per_thread: Vec<Vec<Sent>> = vec![Vec::new(); threads];
    for e in events {
        per_thread[(e.pay as usize) % threads].push(e);
    }
    per_thread
        .into_iter()
        .enumerate()
        .map(|(t, events)| {
            let (addrs, accepted, progress) = (addrs.clone(), accepted.clone(), progress.clone());
            std::thread::spawn(move || {
                let mut turn = t;
                for e in events {
                    let started = Instant::now();
                    loop {
                        assert!(started.elapsed() < PATIENCE, "op {} never accepted", e.op);
                        turn += 1;
                        let addr = addrs[turn % addrs.len()];
                        let answer =
                            Conn::open(addr).and_then(|mut c| c.post("/callbacks", &e.body));
                        match answer {
                            Ok((200, _)) => {
                                accepted
                                    .lock()
                                    .unwrap()
                                    .entry(e.op)
                                    .or_insert_with(Instant::now);
                                progress.fetch_add(1, Ordering::AcqRel);
                                break;
                            }
                            Ok((503, _)) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
                            Ok((status, text)) => panic!("op {}: {status} {text}", e.op),
                        }
                    }
                }
            })
        })
        .collect()
}

/// `payments` payments of `per` events each, alternating success and decline.
fn events(payments: u64, per: u64, base: u64) -> Vec<Sent> {
    let mut out = Vec::new();
    for k in 0..per {
        for pay in 0..payments {
            let op = base + pay * 1000 + k;
            let success = k % 2 == 0;
            let status = if success { "success" } else { "decline" };
            out.push(Sent {
                op,
                pay,
                body: callback(&format!("cl-{base}-{pay}"), op, "kassa24", status),
                success,
            });
        }
    }
    out
}

/// Checks that every accepted event reached `ep` (those `wanted`), and returns the
/// events delivered more than once.
fn delivered_all(ep: &Endpoint, wanted: &HashSet<u64>) -> Vec<u64> {
    let ok: Vec<u64> = ep.delivered().iter().map(|b| op_of(b)).collect();
    let unique: HashSet<u64> = ok.iter().copied().collect();
    assert_eq!(&unique, wanted);
    let mut seen = HashSet::new();
    ok.into_iter().filter(|op| !seen.insert(*op)).collect()
}

/// First deliveries per payment in acceptance order, for events accepted outside
/// `window`; returns how many pairs were checked.
fn order_holds(
    ep: &Endpoint,
    sent: &[Sent],
    accepted: &HashMap<u64, Instant>,
    window: (Instant, Instant),
) -> usize {
    let pay_of: HashMap<u64, u64> = sent.iter().map(|s| (s.op, s.pay)).collect();
    let outside = |op: u64| {
        let at = accepted[&op];
        at < window.0 || at > window.1
    };
    let mut first: Vec<u64> = Vec::new();
    let mut seen = HashSet::new();
    for r in ep.requests().into_iter().filter(|r| r.ok()) {
        let op = op_of(&r.body);
        if seen.insert(op) {
            first.push(op);
        }
    }
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut checked = 0;
    for op in first.into_iter().filter(|op| outside(*op)) {
        let pay = pay_of[&op];
        if let Some(prev) = last.insert(pay, op) {
            checked += 1;
            assert!(
                accepted[&prev] < accepted[&op],
                "payment {pay}: {op} delivered after {prev} but accepted before it"
            );
        }
    }
    checked
}

#[test]
fn a_gateway_node_killed_mid_load_loses_nothing_and_keeps_order_outside_the_kill() {
    let nats = Nats::cluster();
    let (all, success) = (Endpoint::ok(), Endpoint::ok());
    let cfg = config(
        &format!("{FAST}\nmax_in_flight = 16"),
        &[
            ("all", &all.url(), ""),
            ("success", &success.url(), r#"statuses = ["success"]"#),
        ],
    );
    let mut nodes = gateways(&nats, 3, &cfg);
    let sent = events(60, 20, 100_000);
    let phase = |from: u64, to: u64| -> Vec<Sent> {
        sent.iter()
            .filter(|e| (from..to).contains(&(e.op % 1000)))
            .cloned()
            .collect()
    };
    let accepted: Accepted = Arc::default();
    let progress = Arc::new(AtomicUsize::new(0));
    let addrs: Vec<_> = nodes.iter().map(|g| g.addr).collect();
    let run = |events: Vec<Sent>| {
        for s in load(addrs.clone(), events, 6, accepted.clone(), progress.clone()) {
            s.join().unwrap();
        }
    };
    // Before: events 0..8 of every payment.
    run(phase(0, 8));
    // During: node 1 is killed once a few of events 8..14 are in.
    let during = phase(8, 14);
    let before = progress.load(Ordering::Acquire);
    let senders = load(
        addrs.clone(),
        during.clone(),
        6,
        accepted.clone(),
        progress.clone(),
    );
    assert!(eventually(PATIENCE, || progress.load(Ordering::Acquire)
        >= before + during.len() / 4));
    nodes[1].kill();
    let killed = Instant::now();
    for s in senders {
        s.join().unwrap();
    }
    nodes[1].spawn();
    settled(&nodes);
    // After: once the takeover is over (leases expire in 6 s, unacked messages come
    // back 10 s after they were sent), events 14..20.
    while killed.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    run(phase(14, 20));
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), sent.len());
    let want_all: HashSet<u64> = sent.iter().map(|s| s.op).collect();
    let want_success: HashSet<u64> = sent.iter().filter(|s| s.success).map(|s| s.op).collect();
    assert!(
        all.wait_delivered(want_all.len(), PATIENCE),
        "{}",
        logs(&nodes)
    );
    assert!(
        success.wait_delivered(want_success.len(), PATIENCE),
        "{}",
        logs(&nodes)
    );
    // Let anything still due arrive before counting.
    assert!(eventually(PATIENCE, || nodes
        .iter()
        .all(|g| g.metric("cbgate_store_held_deliveries", &[]) == 0.0)));
    let dup_all = delivered_all(&all, &want_all);
    let dup_success = delivered_all(&success, &want_success);
    // Duplicates only for deliveries in flight on the killed node: events accepted
    // before the kill, and first delivered shortly before it.
    let first_delivery: HashMap<u64, Instant> = {
        let mut m = HashMap::new();
        for r in all
            .requests()
            .into_iter()
            .chain(success.requests())
            .filter(|r| r.ok())
        {
            let at = r.answered_at.unwrap();
            m.entry(op_of(&r.body))
                .and_modify(|t: &mut Instant| *t = (*t).min(at))
                .or_insert(at);
        }
        m
    };
    // A duplicate is a delivery in flight when its partition changed hands: at the kill,
    // or when the restarted node takes its partitions back (rendezvous), both inside
    // the takeover window used for order below.
    for op in dup_all.iter().chain(&dup_success) {
        let first = first_delivery[op];
        assert!(
            first < killed + Duration::from_secs(20),
            "op {op} first delivered after the takeover window came twice"
        );
        assert!(
            first + Duration::from_secs(5) > killed,
            "op {op} first delivered {:?} before the kill came again",
            killed - first
        );
    }
    eprintln!(
        "gateway node killed: {} events, duplicates at endpoints: {} (all) + {} (success)",
        sent.len(),
        dup_all.len(),
        dup_success.len()
    );
    // Per-payment order outside the kill window: from 3 s before the kill (deliveries
    // then in flight) to the takeover (lease expiry, 6 s, plus the ack wait, 10 s).
    let window = (
        killed - Duration::from_secs(3),
        killed + Duration::from_secs(20),
    );
    let checked = order_holds(&all, &sent, &accepted, window)
        + order_holds(&success, &sent, &accepted, window);
    assert!(
        checked > 100,
        "only {checked} pairs outside the kill window"
    );
}

#[test]
fn a_nats_node_killed_mid_load_loses_no_accepted_callback() {
    let mut nats = Nats::cluster();
    let all = Endpoint::ok();
    let nodes = gateways(&nats, 2, &config(FAST, &[("all", &all.url(), "")]));
    let sent = events(40, 15, 300_000);
    let accepted: Accepted = Arc::default();
    let progress = Arc::new(AtomicUsize::new(0));
    let addrs: Vec<_> = nodes.iter().map(|g| g.addr).collect();
    let senders = load(addrs, sent.clone(), 4, accepted.clone(), progress.clone());
    assert!(eventually(PATIENCE, || progress.load(Ordering::Acquire)
        >= sent.len() / 3));
    nats.nodes[0].kill();
    for s in senders {
        s.join().unwrap();
    }
    let want: HashSet<u64> = sent.iter().map(|s| s.op).collect();
    assert_eq!(accepted.lock().unwrap().len(), want.len());
    assert!(
        all.wait_delivered(want.len(), PATIENCE),
        "{}\n{}\n{}",
        missing(&all, &want, &nodes),
        logs(&nodes),
        nats.logs()
    );
    let dups = delivered_all(&all, &want);
    eprintln!(
        "nats node killed: {} events, {} duplicates",
        want.len(),
        dups.len()
    );
    // Back, it catches up with the cluster; intake never stopped.
    nats.restart_all();
    let late = callback("after-restart", 399_999, "kassa24", "success");
    assert_eq!(nodes[0].post("/callbacks", &late).0, 200);
    assert!(all.wait_delivered(want.len() + 1, PATIENCE));
}

#[test]
fn with_all_of_nats_down_callbacks_get_503_the_terminal_answers_and_it_recovers_by_itself() {
    let mut nats = Nats::cluster();
    let merchant = Merchant::start();
    let all = Endpoint::ok();
    let cfg = format!(
        "{}\nmethod = \"terminal/paydala\"\nterminal_url = \"http://{}/terminal\"\n",
        config(FAST, &[]).trim_end(),
        merchant.addr
    );
    // The endpoint table must follow the project's own keys.
    let cfg = format!(
        "{cfg}\n[[projects.endpoints]]\nname = \"all\"\nurl = \"{}\"\nsecret = \"{}\"\n",
        all.url(),
        crate::contract::WHSEC
    );
    let g = Gateway::start_config(&cfg, "", &nats.storage());
    let before = callback("before", 500_000, "kassa24", "success");
    assert_eq!(g.post("/callbacks", &before).0, 200);
    assert!(all.wait_delivered(1, PATIENCE));

    nats.kill_all();
    // Red readiness names the reason.
    assert!(eventually(PATIENCE, || {
        let (status, text) = request(g.admin, "GET", "/readyz", &[], b"");
        status == 503 && (text.contains("nats") || text.contains("jetstream"))
    }));
    let during = callback("during", 500_001, "kassa24", "success");
    let (status, text) = g.post("/callbacks", &during);
    assert_eq!(status, 503, "{text}");
    let head = raw_post(g.addr, "/callbacks", &during);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // The kiosk is still served; check_deposit idempotency falls back to this node.
    let deposit = json!({"type": "check_deposit", "customer_id": "7000000001", "amount": 100000,
                         "currency": "KZT", "payment_method": "terminal/paydala"});
    let body = signed_for(77, &deposit.to_string(), "test-secret");
    let (status, answer) = g.post("/terminal", &body);
    assert_eq!(status, 200);
    let first: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(first["code"], 0, "{answer}");
    let (_, again) = g.post("/terminal", &body);
    assert_eq!(again, answer, "the node's own memory answers the retry");
    assert_eq!(merchant.count(&body), 1);
    assert!(g.metric("cbgate_terminal_idempotency_fallback_total", &[]) >= 1.0);

    // NATS comes back: intake resumes with no restart of the gateway.
    nats.restart_all();
    assert!(
        eventually(PATIENCE, || request(g.admin, "GET", "/readyz", &[], b"").0
            == 200),
        "{}",
        g.log()
    );
    assert!(eventually(PATIENCE, || g.post("/callbacks", &during).0 == 200));
    assert!(all.wait_delivered(2, PATIENCE), "{}", g.log());
    assert!(g.child.is_some());
}

/// The whole answer to one request, head included.
fn raw_post(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_kiosk_retry_on_another_node_gets_the_same_payment_id() {
    let nats = Nats::cluster();
    let merchant = Merchant::start();
    let cfg = format!(
        "[[projects]]\nid = 2222\nsecrets = [\"kiosk-secret\"]\nmethod = \"terminal/paydala\"\n\
         terminal_url = \"http://{}/terminal\"\n",
        merchant.addr
    );
    let nodes = gateways(&nats, 2, &cfg);
    for i in 0..5 {
        let deposit = json!({"type": "check_deposit", "customer_id": format!("70000000{i}"),
                             "amount": 100000 + i, "currency": "KZT", "payment_method": "terminal/paydala"});
        let body = signed_for(2222, &deposit.to_string(), "kiosk-secret");
        let (_, first) = nodes[0].post("/terminal", &body);
        let (_, retry) = nodes[1].post("/terminal", &body);
        let first: Value = serde_json::from_str(&first).unwrap();
        let retry: Value = serde_json::from_str(&retry).unwrap();
        assert_eq!(first["code"], 0, "{first}");
        assert_eq!(first["payment_id"], retry["payment_id"]);
        assert_eq!(merchant.count(&body), 1, "the merchant was asked twice");
    }
}

#[test]
fn dead_letters_replay_pause_and_endpoint_state_answer_the_same_from_any_node() {
    let nats = Nats::cluster();
    let addr = free_addr();
    let url = format!("http://{addr}/hooks");
    let nodes = gateways(
        &nats,
        3,
        &config(
            r#"schedule = ["0s", "50ms"]
repeat_every = "100ms"
give_up_after = "5s"
connect_timeout = "200ms"
breaker_cooldown = "100ms""#,
            &[("gone", &url, "")],
        ),
    );
    let bodies: Vec<_> = (0..12)
        .map(|i| callback(&format!("any-{i}"), 800_000 + i, "kassa24", "success"))
        .collect();
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(nodes[i % 3].post("/callbacks", b).0, 200);
    }
    let list = |g: &Gateway| -> Vec<u64> {
        let (status, text) = g.admin_get("/admin/dead-letters?endpoint=77%2Fgone&limit=1000");
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let mut seqs: Vec<u64> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["seq"].as_u64().unwrap())
            .collect();
        seqs.sort();
        seqs
    };
    assert!(
        eventually(PATIENCE, || list(&nodes[0]).len() == 12),
        "{}",
        logs(&nodes)
    );
    assert_eq!(list(&nodes[1]), list(&nodes[0]));
    assert_eq!(list(&nodes[2]), list(&nodes[0]));
    let seq = list(&nodes[0])[0];
    let (status, text) = nodes[2].admin_get(&format!("/admin/events/{seq}"));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""status":"dead""#), "{text}");

    // Paused on one node, held on all; replayed from another.
    let back = Endpoint::start_on(addr, |_, _| Reply::Status(200));
    assert_eq!(nodes[0].admin_post("/admin/endpoints/77/gone/pause").0, 200);
    let (status, text) = nodes[1].admin_post("/admin/endpoints/77/gone/replay");
    assert_eq!(
        (status, text.as_str()),
        (200, r#"{"endpoint":"77/gone","replayed":12}"#)
    );
    assert!(eventually(PATIENCE, || list(&nodes[2]).is_empty()));
    // Every node reports the pause and the same merged state.
    let states: Vec<Value> = nodes
        .iter()
        .map(|g| serde_json::from_str(&g.admin_get("/admin/endpoints").1).unwrap())
        .collect();
    for s in &states {
        assert_eq!(s[0]["endpoint"], "77/gone", "{s}");
        assert_eq!(s[0]["paused"], true, "{s}");
        assert_eq!(s[0]["pending"], states[0][0]["pending"]);
    }
    let paused_since = Instant::now();
    while paused_since.elapsed() < Duration::from_millis(500) {
        assert_eq!(back.arrived(), 0, "a paused endpoint got requests");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        nodes[2].admin_post("/admin/endpoints/77/gone/resume").0,
        200
    );
    assert!(back.wait_delivered(12, PATIENCE), "{}", logs(&nodes));
    let got: HashSet<Vec<u8>> = back.delivered().into_iter().collect();
    assert_eq!(got, bodies.into_iter().collect());
}

/// The README's cluster example: `config/cluster/` as written (three nats-server nodes
/// and one cbgate config shared by the gateway nodes), on free ports instead of the
/// fixed ones, run from a scratch directory.
#[test]
fn the_cluster_example_in_config_cluster_runs_as_written() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cluster");
    // Fixed ports of the example, each moved to a free one.
    let moved: Vec<(String, String)> = (0..3)
        .flat_map(|i| [4222 + i, 6222 + i, 8222 + i])
        .map(|port| (format!("127.0.0.1:{port}"), free_addr().to_string()))
        .collect();
    let remap = |text: &str| {
        moved
            .iter()
            .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
    };
    let at = |port: u16| {
        moved
            .iter()
            .find(|(f, _)| f.ends_with(&format!(":{port}")))
            .unwrap()
            .1
            .parse()
            .unwrap()
    };
    let specs = (1..=3u16)
        .map(|n| crate::nats::Spec {
            name: format!("n{n}"),
            client: at(4221 + n),
            monitor: at(8221 + n),
            config: remap(&std::fs::read_to_string(format!("{dir}/nats-{n}.conf")).unwrap()),
        })
        .collect();
    let nats = Nats::launch(specs);
    let scratch = tempfile::tempdir().unwrap();
    let config = scratch.path().join("cbgate.toml");
    std::fs::write(
        &config,
        remap(&std::fs::read_to_string(format!("{dir}/cbgate.toml")).unwrap()),
    )
    .unwrap();
    let check = std::process::Command::new(crate::support::BIN)
        .args(["check-config", config.to_str().unwrap()])
        .env("CBGATE_ADMIN_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let nodes: Vec<Example> = (0..2).map(|_| Example::start(&config)).collect();
    let body = crate::support::signed_for(
        1234,
        r#"{"payment":{"id":"ex-1","status":"success","method":"kassa24"},"operation":{"id":1,"type":"sale","status":"success","request_id":"ex-r1"}}"#,
        "dev-secret-change-me",
    );
    let first = request(nodes[0].listen, "POST", "/callbacks", &[], &body);
    assert_eq!(
        first,
        (200, r#"{"status":"accepted"}"#.into()),
        "{}",
        nats.logs()
    );
    let retry = request(nodes[1].listen, "POST", "/callbacks", &[], &body);
    assert_eq!(retry, (200, r#"{"status":"duplicate"}"#.into()));
}

/// A cbgate node started as the README does: the shared file, ports on the command line.
struct Example {
    listen: std::net::SocketAddr,
    child: std::process::Child,
}

impl Example {
    fn start(config: &std::path::Path) -> Example {
        let (listen, admin) = (free_addr(), free_addr());
        let child = std::process::Command::new(crate::support::BIN)
            .args(["serve", "--config", config.to_str().unwrap()])
            .args([
                "--listen",
                &listen.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .env("CBGATE_ADMIN_TOKEN", "dev-admin-token")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut node = Example { listen, child };
        let started = Instant::now();
        while !Conn::open(admin)
            .and_then(|mut c| c.request("GET", "/readyz", &[], b""))
            .is_ok_and(|(s, _)| s == 200)
        {
            assert!(
                node.child.try_wait().unwrap().is_none(),
                "the example node exited"
            );
            assert!(
                started.elapsed() < PATIENCE,
                "the example node is not ready"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        node
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
