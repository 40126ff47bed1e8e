//! Operating the gateway: health and readiness, the admin token, metrics that a real
//! Prometheus parser reads, SIGHUP reloads (secrets, endpoints), SIGTERM drains without
//! losing a 200, and logs that never carry secrets, signatures or customer data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::endpoint::Endpoint;
use crate::support::{Conn, Gateway, request, seed_callbacks, signed_for};
use crate::terminal::Merchant;

const SECRET: &str = "life-secret";

fn project(secret: &str) -> String {
    format!("[[projects]]\nid = 1234\nsecrets = [\"{secret}\"]\n")
}

fn callback(op: u64, secret: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_str(&seed_callbacks()[0].payload_json).unwrap();
    v["project_id"] = 1234.into();
    v["operation"]["id"] = op.into();
    v["operation"]["request_id"] = format!("life-{op}").into();
    cbgate::signature::attach(v.to_string().as_bytes(), secret).unwrap()
}

#[test]
fn health_readiness_and_the_admin_token() {
    let g = Gateway::start(&project(SECRET));
    assert_eq!(request(g.admin, "GET", "/healthz", &[], b"").0, 200);
    assert_eq!(request(g.admin, "GET", "/readyz", &[], b"").0, 200);
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic test-admin-token"),
        Some("Bearer "),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        let (status, _) = request(g.admin, "GET", "/admin/dead-letters", &headers, b"");
        assert_eq!(status, 401, "{auth:?}");
    }
    assert_ne!(g.admin_get("/admin/dead-letters").0, 401);
    // The platform listener does not serve admin routes.
    assert_eq!(request(g.addr, "GET", "/metrics", &[], b"").0, 404);
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let g = Gateway::start(&project(SECRET));
    let good = signed_for(1234, &seed_callbacks()[0].payload_json, SECRET);
    g.post("/callbacks", &good);
    g.post("/callbacks", &good);
    g.post("/callbacks", b"{");
    let (_, text) = request(g.admin, "GET", "/metrics", &[], b"");
    // The reference parser (prometheus_client) must read every family.
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
                  fams = list(p(sys.stdin.read()))\nprint(len(fams))\n\
                  print(sorted(s.name for f in fams for s in f.samples)[:3])";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (CI installs prometheus_client)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "parser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: usize = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(families >= 4, "{text}");
    assert_eq!(
        g.metric("cbgate_requests_total", &[("outcome", "accepted")]),
        1.0
    );
    assert_eq!(
        g.metric("cbgate_requests_total", &[("outcome", "duplicate")]),
        1.0
    );
    assert_eq!(
        g.metric("cbgate_requests_total", &[("outcome", "malformed")]),
        1.0
    );
    assert!(g.metric("cbgate_journal_commit_seconds_count", &[]) >= 1.0);
}

#[test]
fn sighup_reloads_a_good_config_and_refuses_a_broken_one() {
    let g = Gateway::start(&project(SECRET));
    let old = callback(1, SECRET);
    assert_eq!(g.post("/callbacks", &old).0, 200);
    // Rotate: the new secret only.
    let text = std::fs::read_to_string(&g.config_path).unwrap();
    std::fs::write(&g.config_path, text.replace(SECRET, "rotated-secret")).unwrap();
    g.signal("HUP");
    let rotated = callback(2, "rotated-secret");
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.post("/callbacks", &rotated).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "reload not applied:\n{}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        g.post("/callbacks", &callback(3, SECRET)).0,
        400,
        "old secret still accepted"
    );
    // A broken file is refused; the gateway keeps serving with the running config.
    std::fs::write(&g.config_path, "[server\nthis is not toml").unwrap();
    g.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.log().contains("config reload refused") {
        assert!(Instant::now() < deadline, "no refusal logged:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(g.post("/callbacks", &callback(4, "rotated-secret")).0, 200);
    assert_eq!(
        g.metric("cbgate_config_reloads_total", &[("result", "refused")]),
        1.0
    );
}

#[test]
fn sigterm_under_load_drains_and_loses_no_acknowledged_callback() {
    let mut g = Gateway::start(&project(SECRET));
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((10..3010).map(|op| callback(op, SECRET)).collect());
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (bodies, acked, sent, stop, addr) = (
                bodies.clone(),
                acked.clone(),
                sent.clone(),
                stop.clone(),
                g.addr,
            );
            std::thread::spawn(move || {
                let Ok(mut conn) = Conn::open(addr) else {
                    return;
                };
                for i in (w..bodies.len()).step_by(6) {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    match conn.post("/callbacks", &bodies[i]) {
                        Ok((200, _)) => acked.lock().unwrap().push(i),
                        Ok((503, _)) => {}
                        Ok((s, b)) => panic!("#{i}: {s} {b}"),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    while sent.load(Ordering::Relaxed) < 300 {
        std::thread::sleep(Duration::from_millis(5));
    }
    g.signal("TERM");
    let started = Instant::now();
    let status = g.wait_exit(Duration::from_secs(15));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(status.success(), "exit {status}:\n{}", g.log());
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "took {:?}",
        started.elapsed()
    );
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    g.spawn();
    let mut conn = Conn::open(g.addr).unwrap();
    for i in &acked {
        assert_eq!(
            conn.post("/callbacks", &bodies[*i]).unwrap().1,
            r#"{"status":"duplicate"}"#,
            "#{i} lost"
        );
    }
}

#[test]
fn sighup_with_a_new_endpoint_routes_new_events_to_it() {
    let g = Gateway::start(&project(SECRET));
    let before = callback(20, SECRET);
    assert_eq!(g.post("/callbacks", &before).0, 200);
    let endpoint = Endpoint::ok();
    let mut text = std::fs::read_to_string(&g.config_path).unwrap();
    text.push_str(&format!(
        "\n[[projects.endpoints]]\nname = \"added\"\nurl = \"{}\"\n\
         secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
        endpoint.url()
    ));
    std::fs::write(&g.config_path, text).unwrap();
    g.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.metric("cbgate_config_reloads_total", &[("result", "ok")]) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "reload not applied:\n{}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = callback(21, SECRET);
    assert_eq!(g.post("/callbacks", &after).0, 200);
    assert!(
        endpoint.wait_delivered(1, Duration::from_secs(30)),
        "{}",
        g.log()
    );
    // Routing is decided when an event is accepted: the earlier one had no endpoint.
    g.wait_idle(Duration::from_secs(30));
    assert_eq!(endpoint.delivered(), vec![after]);
}

#[test]
fn logs_carry_no_secret_signature_or_customer_data() {
    let merchant = Merchant::start();
    let g = Gateway::start(&format!(
        "{}method = \"kassa24\"\nterminal_url = \"http://{}/terminal\"\n",
        project(SECRET),
        merchant.addr
    ));
    let good = callback(30, SECRET);
    let forged = callback(31, "forged-secret");
    assert_eq!(g.post("/callbacks", &good).0, 200);
    assert_eq!(g.post("/callbacks", &good).0, 200);
    assert_eq!(g.post("/callbacks", &forged).0, 400);
    assert_eq!(g.post("/callbacks", b"{\"project_id\":1234,").0, 400);
    // A merchant answering garbage makes the gateway log a warning about it.
    let verify = |customer: &str| {
        cbgate::signature::attach(
            format!(r#"{{"type":"verify","customer_id":"{customer}","project_id":1234}}"#)
                .as_bytes(),
            SECRET,
        )
        .unwrap()
    };
    assert_eq!(g.post("/terminal", &verify("acct-broken")).0, 200);
    assert_eq!(g.post("/terminal", &verify("77012345678")).0, 200);

    let deadline = Instant::now() + Duration::from_secs(10);
    while g.log().matches("cbgate::access").count() < 6 {
        assert!(
            Instant::now() < deadline,
            "access lines missing:\n{}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = g.log();
    assert!(log.contains("terminal merchant error"), "{log}");
    let field = |body: &[u8], path: &[&str]| {
        let mut v: serde_json::Value = serde_json::from_slice(body).unwrap();
        for key in path {
            v = v[*key].take();
        }
        v.as_str().unwrap().to_string()
    };
    let secrets = [
        SECRET.to_string(),
        "forged-secret".into(),
        field(&good, &["signature"]),
        field(&forged, &["signature"]),
        field(&good, &["customer", "id"]),
        field(&good, &["account", "number"]),
        "acct-broken".into(),
        "77012345678".into(),
    ];
    for secret in secrets {
        assert!(!log.contains(&secret), "{secret:?} logged:\n{log}");
    }
}

#[test]
fn worker_threads_sets_the_number_of_http_threads() {
    for workers in [1usize, 3] {
        let g = Gateway::start_with(&project(SECRET), &format!("worker_threads = {workers}"));
        // Several connections open at once, whichever thread took each: all answer.
        let conns: Vec<_> = (0..8).map(|_| Conn::open(g.addr).unwrap()).collect();
        for (i, mut c) in conns.into_iter().enumerate() {
            assert_eq!(
                c.post("/callbacks", &callback(40 + i as u64, SECRET))
                    .unwrap()
                    .0,
                200
            );
        }
        assert_eq!(
            g.metric("cbgate_worker_threads", &[]),
            workers as f64,
            "{}",
            g.log()
        );
        let http = threads(&g)
            .iter()
            .filter(|t| t.starts_with("http-"))
            .count();
        assert_eq!(http, workers);
    }
}

/// The names of the gateway's threads.
fn threads(g: &Gateway) -> Vec<String> {
    let pid = g.child.as_ref().expect("running").id();
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn histogram_samples_are_folded_even_when_nobody_scrapes() {
    // The exporter holds every histogram sample until upkeep runs: without the upkeep
    // thread an unscraped gateway grows by ~18 bytes per request (BENCHMARKS.md).
    let g = Gateway::start(&project(SECRET));
    assert_eq!(g.post("/callbacks", &callback(41, SECRET)).0, 200);
    let threads = threads(&g);
    assert!(
        threads.iter().any(|t| t == "metrics-upkeep"),
        "threads: {threads:?}"
    );
}

#[test]
fn the_platform_listener_speaks_https_with_a_certificate() {
    let tls = crate::support::TestTls::new();
    let (cert, key) = tls.server_files();
    let g = Gateway::start_with(
        &project(SECRET),
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    let answer = tls
        .request(g.addr, "/callbacks", &callback(50, SECRET))
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}\n{}", g.log());
    assert!(answer.ends_with(r#"{"status":"accepted"}"#), "{answer}");
    // Plain http on the https port gets no answer, and is counted.
    let plain = Conn::open(g.addr).and_then(|mut c| c.post("/callbacks", &callback(51, SECRET)));
    assert!(plain.is_err(), "{plain:?}");
    assert_eq!(g.metric("cbgate_tls_handshake_failures_total", &[]), 1.0);
}
