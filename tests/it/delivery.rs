//! Delivery through the real binary beyond the storage contract (`contract.rs`): https
//! endpoints behind a private CA, and the public Standard Webhooks library verifying
//! what cbgate sends (issue 4).

use std::time::Duration;

use crate::contract::{FAST, WHSEC, callback, config};
use crate::endpoint::Endpoint;
use crate::support::{Gateway, TestTls};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn an_https_endpoint_with_a_private_ca_is_delivered_to_once_the_ca_is_configured() {
    let tls = TestTls::new();
    let endpoint = Endpoint::ok_tls(tls.server.clone());
    assert!(endpoint.url().starts_with("https://"));
    let body = callback("pay-tls", 90, "kassa24", "success");
    // Without the CA the handshake fails: the event waits, counted as a connect failure.
    let untrusted = Gateway::start(&config(FAST, &[("tls", &endpoint.url(), "")]));
    untrusted.accept_callback(&body);
    let failed = || {
        untrusted.metric(
            "cbgate_delivery_failures_total",
            &[("endpoint", "77/tls"), ("class", "connect")],
        )
    };
    let started = std::time::Instant::now();
    while failed() == 0.0 && started.elapsed() < LONG {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(failed() > 0.0, "{}", untrusted.log());
    assert!(endpoint.requests().is_empty());
    drop(untrusted);
    let trusted = Gateway::start(&config(
        &format!("{FAST}\nca_file = \"{}\"", tls.ca_file().display()),
        &[("tls", &endpoint.url(), "")],
    ));
    trusted.accept_callback(&body);
    assert!(endpoint.wait_delivered(1, LONG), "{}", trusted.log());
    assert_eq!(endpoint.delivered(), [body]);
}

const PY_RECEIVER: &str = r#"
import http.server, sys
import standardwebhooks
hook = standardwebhooks.Webhook(sys.argv[1])
log = open(sys.argv[2], "a", buffering=1)
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            hook.verify(body, dict(self.headers.items()))
            code = 204
            log.write("ok %s\n" % self.headers["webhook-id"])
        except Exception as e:
            code = 400
            log.write("bad %s\n" % e)
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

#[test]
fn the_standard_webhooks_library_verifies_what_cbgate_sends() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: python3 is missing; the Standard Webhooks check did not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("receiver.py");
    let log = dir.path().join("verified.log");
    std::fs::write(&script, PY_RECEIVER).unwrap();
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .arg(WHSEC)
        .arg(&log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _child = Kill(child);
    let port: u16 = line.trim().parse().unwrap_or_else(|_| {
        panic!("the Python receiver did not start (pip install standardwebhooks): {line:?}")
    });
    let url = format!("http://127.0.0.1:{port}/hooks");
    // A second endpoint signs with another secret: the library must refuse it.
    let other = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk=";
    let mut cfg = config(
        &format!("{FAST}\ngive_up_after = \"2s\""),
        &[("merchant", &url, "")],
    );
    cfg.push_str(&format!(
        "\n[[projects.endpoints]]\nname = \"impostor\"\nurl = \"{url}\"\nsecret = \"{other}\"\n"
    ));
    let g = Gateway::start(&cfg);
    for i in 0..3 {
        g.accept_callback(&callback(&format!("pay-{i}"), 400 + i, "mobile", "success"));
    }
    let started = std::time::Instant::now();
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    let ok = |ep: &str| {
        g.metric(
            "cbgate_delivery_attempts_total",
            &[("endpoint", ep), ("result", "success")],
        )
    };
    // The receiver logs before it answers, and cbgate counts once it has the answer.
    while !(lines().matches("ok ").count() >= 3
        && lines().contains("bad ")
        && ok("77/merchant") >= 3.0)
    {
        assert!(started.elapsed() < LONG, "{}\n{}", lines(), g.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ok("77/merchant"), 3.0, "{}", lines());
    assert_eq!(ok("77/impostor"), 0.0);
    assert!(
        lines().contains("No matching signature found"),
        "{}",
        lines()
    );
}
