//! `cbgate sign` and `cbgate verify` on the seed examples, as a shell user runs them.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use crate::support::{BIN, vectors};

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cbgate runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn sign_prints_the_vector_signature_for_every_seed_example() {
    let dir = tempfile::tempdir().unwrap();
    for v in vectors().iter().filter(|v| v.name.starts_with("seed:")) {
        let file = dir.path().join("payload.json");
        std::fs::write(&file, &v.payload_json).unwrap();
        let out = run(
            &["sign", "--secret", &v.secret, file.to_str().unwrap()],
            b"",
        );
        assert!(out.status.success(), "{}: {:?}", v.name, out);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            v.signature,
            "{}",
            v.name
        );
        // --attach prints a body that verifies.
        let out = run(
            &[
                "sign",
                "--secret",
                &v.secret,
                "--attach",
                file.to_str().unwrap(),
            ],
            b"",
        );
        let ok = run(&["verify", "--secret", &v.secret], &out.stdout);
        assert_eq!(ok.status.code(), Some(0), "{}", v.name);
        // The same from standard input.
        let out = run(
            &["sign", "--secret", &v.secret, "-"],
            v.payload_json.as_bytes(),
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            v.signature,
            "{}",
            v.name
        );
    }
}

#[test]
fn verify_exit_codes() {
    for v in vectors().iter().filter(|v| v.name.starts_with("seed:")) {
        let signed = cbgate::signature::attach(v.payload_json.as_bytes(), &v.secret).unwrap();
        let ok = run(&["verify", "--secret", &v.secret], &signed);
        assert_eq!(ok.status.code(), Some(0), "{}: {:?}", v.name, ok);
        // Rotation: an old key first, the right one second.
        let rotated = run(
            &["verify", "--secret", "old", "--secret", &v.secret],
            &signed,
        );
        assert_eq!(rotated.status.code(), Some(0), "{}", v.name);
        let wrong = run(&["verify", "--secret", "not-the-secret"], &signed);
        assert_eq!(wrong.status.code(), Some(1), "{}", v.name);
    }
    let cases: [(&[u8], &str); 4] = [
        (b"{\"a\":", "not valid JSON"),
        (b"{\"a\":1}", "no signature"),
        (b"[1,2]", "not a JSON object"),
        (b"", "not valid JSON"),
    ];
    for (body, says) in cases {
        let out = run(&["verify", "--secret", "s"], body);
        assert_eq!(out.status.code(), Some(2), "{says}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{says}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn verify_rejects_a_changed_byte() {
    let v = &crate::support::seed_callbacks()[0];
    let signed = cbgate::signature::attach(v.payload_json.as_bytes(), &v.secret).unwrap();
    let text = String::from_utf8(signed)
        .unwrap()
        .replace("\"success\"", "\"sucess\"");
    let out = run(&["verify", "--secret", &v.secret], text.as_bytes());
    assert_eq!(out.status.code(), Some(1));
}

/// Every bad-config case names the file, the key and the problem, and exits 64;
/// `serve` refuses the same file before binding a port.
#[test]
fn bad_configs_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let project = "[[projects]]\nid = 1\nsecrets = [\"s\"]\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 2\n{project}"),
            "unknown field `lisen`",
        ),
        (format!("{project}{project}"), "duplicate project id 1"),
        (
            format!("{project}terminal_url = \"ftp://x/y\"\n"),
            "must start with http:// or https://",
        ),
        (
            "[[projects]]\nid = 2\nsecrets = [\"env:CBGATE_SURELY_UNSET_VAR\"]\n".into(),
            "CBGATE_SURELY_UNSET_VAR is not set",
        ),
        (
            format!("{project}terminal_budget = \"45s\"\n"),
            "terminal_budget",
        ),
        (
            format!("{project}terminal_budget = \"soon\"\n"),
            "is not a duration",
        ),
        (
            "[[projects]]\nid = 3\nsecrets = [\"file:/nonexistent/secret\"]\n".into(),
            "cannot read secret file",
        ),
        (
            format!(
                "{project}[[projects.endpoints]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"plain\"\n"
            ),
            "not a Standard Webhooks secret",
        ),
        (
            "[storage]\nengine = \"cassandra\"\n".into(),
            "unknown variant `cassandra`",
        ),
        (
            format!("[storage]\nengine = \"jetstream\"\n{project}"),
            "storage.nats_urls: the jetstream engine needs at least one NATS server",
        ),
        (
            format!("[storage]\nengine = \"jetstream\"\nnats_urls = [\"http://x y\"]\n{project}"),
            "is not a NATS URL",
        ),
        (
            format!(
                "[storage]\nengine = \"jetstream\"\nnats_urls = [\"nats://127.0.0.1:4222\"]\n\
                 partitions = 0\nreplicas = 7\nstream = \"cb.gate\"\n{project}"
            ),
            "storage.partitions: 0 is out of range 1..=1024",
        ),
        (
            format!(
                "[storage]\nengine = \"jetstream\"\nnats_urls = [\"nats://127.0.0.1:4222\"]\n\
                 replicas = 7\n{project}"
            ),
            "storage.replicas: 7 is out of range 1..=5",
        ),
        (
            format!(
                "[storage]\nengine = \"jetstream\"\nnats_urls = [\"nats://127.0.0.1:4222\"]\n\
                 stream = \"cb.gate\"\n{project}"
            ),
            "storage.stream: `cb.gate` must be 1 to 32 letters",
        ),
        (
            format!("[storage]\nmax_bytes = \"lots\"\n{project}"),
            "`lots` is not a size",
        ),
        (
            format!(
                "[storage]\nengine = \"jetstream\"\nnats_urls = [\"nats://127.0.0.1:4222\"]\n\
                 nats_user = \"env:CBGATE_SURELY_UNSET_USER\"\n{project}"
            ),
            "storage.nats_user and storage.nats_password: set both or neither",
        ),
        (
            format!(
                "[storage]\nengine = \"jetstream\"\nnats_urls = [\"nats://127.0.0.1:4222\"]\n\
                 dedup_window = \"1d\"\n{project}"
            ),
            "delivery.give_up_after: 259200s must be shorter than storage.dedup_window",
        ),
        (
            format!("[server]\nworker_threads = 100000\n{project}"),
            "server.worker_threads: 100000 is more than 1024",
        ),
    ];
    for (i, (text, says)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let path = file.to_str().unwrap();
        for args in [vec!["check-config", path], vec!["serve", "--config", path]] {
            let out = run(&args, b"");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
            assert!(err.contains(says), "{args:?}: want {says:?} in {err}");
            assert!(err.contains(&format!("bad{i}.toml")), "{err}");
        }
    }
    let good = dir.path().join("good.toml");
    std::fs::write(&good, project).unwrap();
    let out = run(&["check-config", good.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("literal secret"));
}

/// The example config the README runs validates once its env secret is set.
#[test]
fn the_example_config_validates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cbgate.toml");
    let out = Command::new(BIN)
        .args(["check-config", path])
        .env("CBGATE_ADMIN_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
