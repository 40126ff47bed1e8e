//! `cbgate simulate` against the real gateway and a real merchant: every answer is as
//! the protocol says, and the gateway's own counters agree with the simulator's.

use std::process::Command;

use serde_json::Value;

use crate::contract::{FAST, WHSEC};
use crate::support::{BIN, Gateway, free_addr};
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

/// Issue 17: the flows that start at the merchant, through cbgate's merchant listener,
/// with the simulator as the platform's Gate API and Payment Page and as the merchant
/// backend behind cbgate.
#[test]
fn the_merchant_side_flows_run_through_the_gateway() {
    let (merchant, platform, backend) = (free_addr(), free_addr(), free_addr());
    let token = "merchant-token-1234-0123456789";
    let g = Gateway::start(&format!(
        "[delivery]\n{FAST}\n\n[merchant]\nlisten = \"{merchant}\"\ngate_url = \"http://{platform}\"\n\
         payment_page_url = \"http://{platform}/payment\"\n\n\
         [[projects]]\nid = 1234\nsecrets = [\"{SECRET}\"]\nmethod = \"kassa24\"\n\
         terminal_url = \"http://{backend}/terminal\"\nmerchant_token = \"{token}\"\n\n\
         [[projects.endpoints]]\nname = \"backend\"\nurl = \"http://{backend}/hooks\"\nsecret = \"{WHSEC}\"\n"
    ));
    let out = Command::new(BIN)
        .args([
            "simulate",
            "--json",
            "--seed",
            "1",
            "--flows",
            "60",
            "--connections",
            "8",
        ])
        .args(["--target", &format!("http://{}", g.addr)])
        .args([
            "--merchant",
            &format!("http://{merchant}"),
            "--merchant-token",
            token,
        ])
        .args([
            "--secret",
            SECRET,
            "--endpoint-secret",
            WHSEC,
            "--resend-share",
            "0.5",
        ])
        .args(["--platform-listen", &platform.to_string()])
        .args(["--backend-listen", &backend.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let s: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{s:#}\n{}", g.log());
    assert_eq!(count(&s, "flows"), 60.0);
    for zero in [
        "mismatch_count",
        "unfinished",
        "transport_errors",
        "gate_refused",
        "pages_refused",
        "webhook_signature_failures",
    ] {
        assert_eq!(count(&s, zero), 0.0, "{zero}: {s:#}");
    }
    for some in [
        "otp_flows",
        "page_flows",
        "successes",
        "declines",
        "refunds",
        "wrong_otps",
        "new_otps",
        "pages_opened",
        "terminal_ok",
    ] {
        assert!(count(&s, some) > 0.0, "no {some}: {s:#}");
    }
    // Every request the simulated platform got came through the merchant listener.
    assert_eq!(
        g.metric(
            "cbgate_merchant_requests_total",
            &[("route", "gate"), ("status", "200")]
        ),
        count(&s, "gate_requests")
    );
    assert_eq!(
        g.metric(
            "cbgate_merchant_requests_total",
            &[("route", "payment_page"), ("status", "200")]
        ),
        count(&s, "page_flows")
    );
    // A wrong OTP asked again, then success; and one that ends in decline.
    let stories = s["payments"].as_array().unwrap();
    let otp = |result: &str| {
        stories
            .iter()
            .find(|p| p["kind"] == "mobile_gate" && p["wrong_otps"] == 1 && p["result"] == result)
            .unwrap_or_else(|| panic!("no OTP flow with a wrong OTP ending in {result}: {s:#}"))
    };
    for story in [otp("success"), otp("decline")] {
        let id = story["payment_id"].as_str().unwrap();
        let resend = story["new_otp"] == true;
        let refund = story["refunded"] == true;
        let mut paths = vec!["/v2/payment/mobile/sale", "/v2/payment/clarification"];
        if resend {
            paths.push("/v2/customer/action/resend");
        }
        paths.push("/v2/payment/clarification");
        if refund {
            paths.push("/v2/payment/mobile/refund");
        }
        let mut statuses = vec!["awaiting clarification", "awaiting clarification"];
        statuses.push(story["result"].as_str().unwrap());
        if refund {
            statuses.push("refunded");
        }
        // The operator's view: the requests signed for the payment and its callbacks.
        let started = std::time::Instant::now();
        loop {
            let (code, text) = g.admin_get(&format!("/admin/payments/1234/{id}"));
            assert_eq!(code, 200, "{text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            let signed: Vec<&str> = v["signed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["path"].as_str().unwrap())
                .collect();
            let callbacks: Vec<&str> = v["callbacks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["payment_status"].as_str().unwrap())
                .collect();
            let delivered = v["callbacks"].as_array().unwrap().iter().all(|c| {
                c["deliveries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|d| d["status"] == "delivered")
            });
            if signed == paths && callbacks == statuses && delivered {
                assert!(
                    v["signed"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|r| r["status"] == 200)
                );
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "{id}: {text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
