//! `cbgate simulate` against the real gateway and a real merchant: every answer is as
//! the protocol says, and the gateway's own counters agree with the simulator's.

use std::process::Command;

use serde_json::Value;

use crate::support::{BIN, Gateway};
use crate::terminal::Merchant;

const SECRET: &str = "simulate-secret";

fn simulate(g: &Gateway, secret: &str, extra: &[&str]) -> (i32, Value) {
    let target = format!("http://{}", g.addr);
    let out = Command::new(BIN)
        .args([
            "simulate", "--target", &target, "--secret", secret, "--json",
        ])
        .args(["--connections", "8", "--seconds", "60"])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), summary)
}

fn count(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap()
}

#[test]
fn simulated_platform_traffic_gets_the_answers_the_protocol_defines() {
    let merchant = Merchant::start();
    let g = Gateway::start(&format!(
        "[[projects]]\nid = 1234\nsecrets = [\"{SECRET}\"]\nmethod = \"kassa24\"\n\
         terminal_url = \"http://{}/terminal\"\n",
        merchant.addr
    ));
    let args = [
        "--flows",
        "300",
        "--terminal",
        "--retry-share",
        "0.3",
        "--bad-signature-share",
        "0.05",
        "--malformed-share",
        "0.05",
    ];
    let (code, first) = simulate(&g, SECRET, &args);
    assert_eq!(code, 0, "{first}");
    assert_eq!(count(&first, "mismatch_count"), 0.0, "{first}");
    assert_eq!(count(&first, "flows"), 300.0);
    for key in [
        "accepted",
        "duplicates",
        "rejected",
        "terminal_ok",
        "terminal_refused",
    ] {
        assert!(count(&first, key) > 0.0, "no {key}: {first}");
    }
    // A second run is new traffic, not 300 flows of duplicates.
    let (code, second) = simulate(&g, SECRET, &args);
    assert_eq!(code, 0, "{second}");
    let accepted = count(&first, "accepted") + count(&second, "accepted");
    let duplicates = count(&first, "duplicates") + count(&second, "duplicates");
    assert_eq!(
        g.metric("cbgate_requests_total", &[("outcome", "accepted")]),
        accepted
    );
    assert_eq!(
        g.metric("cbgate_requests_total", &[("outcome", "duplicate")]),
        duplicates
    );
}

#[test]
fn a_wrong_secret_is_reported_as_mismatches_and_exit_1() {
    let g = Gateway::start(&format!(
        "[[projects]]\nid = 1234\nsecrets = [\"{SECRET}\"]\n"
    ));
    let (code, summary) = simulate(&g, "not-the-secret", &["--flows", "20"]);
    assert_eq!(code, 1, "{summary}");
    assert!(count(&summary, "mismatch_count") >= 20.0, "{summary}");
    assert_eq!(count(&summary, "accepted"), 0.0);
}
