//! Shared test harness: the shared signature vectors and helpers to run the binary.

use std::path::PathBuf;

pub const BIN: &str = env!("CARGO_BIN_EXE_cbgate");

/// One vector of `tests/data/signature.json` (a copy of `shared/vectors/`).
#[derive(serde::Deserialize, Clone, Debug)]
pub struct Vector {
    pub name: String,
    pub secret: String,
    pub payload_json: String,
    pub canonical: String,
    pub signature: String,
}

pub fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

pub fn vectors() -> Vec<Vector> {
    #[derive(serde::Deserialize)]
    struct File {
        vectors: Vec<Vector>,
    }
    let text = std::fs::read_to_string(data_path("signature.json")).expect("vectors file");
    let file: File = serde_json::from_str(&text).expect("vectors parse");
    assert!(file.vectors.len() >= 80, "the shared file holds 87 vectors");
    file.vectors
}

/// The callbacks of the seeds (the platform's own examples), without signatures.
pub fn seed_callbacks() -> Vec<Vector> {
    let v: Vec<_> = vectors()
        .into_iter()
        .filter(|v| v.name.starts_with("seed:") && v.name.contains("callback"))
        .collect();
    assert_eq!(v.len(), 11, "the seeds hold 11 callback examples");
    v
}
