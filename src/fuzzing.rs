//! Entry points for the cargo-fuzz targets in `fuzz/`: each takes arbitrary bytes,
//! runs one parser or check the way the gateway does, and panics only when a
//! property the gateway relies on fails. Not an API; hidden from the docs.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::config::Config;
use crate::projects::Projects;
use crate::signature::{self, Canonicalizer, Order, Secrets};

/// The secret of project 7, the only project the targets know.
const SECRET: &str = "fuzz-secret";

fn projects() -> &'static Projects {
    static PROJECTS: OnceLock<Projects> = OnceLock::new();
    PROJECTS.get_or_init(|| {
        let toml = format!(
            "[[projects]]\nid = 7\nsecrets = [\"{SECRET}\"]\nmethod = \"kassa24\"\n\
             terminal_url = \"http://127.0.0.1:9/terminal\"\n\n[[projects.endpoints]]\n\
             name = \"e\"\nurl = \"http://127.0.0.1:9/hooks\"\n\
             secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nstatuses = [\"success\"]\n"
        );
        let config = Config::from_toml("fuzz.toml", &toml).expect("the fuzz config is valid");
        Projects::build(&config).expect("the fuzz projects build")
    })
}

/// The canonicaliser and the verifier on `data`; and the signer's promise: a body
/// signed by `attach` verifies, whenever its PHP and signer strings agree.
pub fn canonical(data: &[u8]) {
    let mut canon = Canonicalizer::default();
    let secrets = Secrets::new(&[SECRET, "other"]);
    let _ = signature::verify(&mut canon, data, &secrets, true);
    if canon.load(data).is_err() {
        return;
    }
    let _ = canon.signature();
    let _ = canon.duplicate_key();
    for path in [&b"project_id"[..], b"payment:id", b"operation:status", b"0"] {
        let _ = canon.get_typed(path);
        let _ = canon.has_children(path);
    }
    for order in [Order::Php, Order::Signer]
        .into_iter()
        .chain(Order::FALLBACKS)
    {
        let _ = canon.canonical(order).len();
    }
    let same = canon.canonical(Order::Php).to_vec() == canon.canonical(Order::Signer);
    if let Ok(signed) = signature::attach(data, SECRET)
        && same
    {
        let checked = signature::verify(&mut canon, &signed, &secrets, false);
        // The body grew by the signature: it may now pass the canonical size bound.
        if !matches!(checked, Err(signature::VerifyError::Parse(_))) {
            assert!(
                checked.is_ok(),
                "attach made a body that fails: {checked:?}"
            );
        }
    }
}

/// A platform callback as ingress checks it: `data` as sent, and `data` signed with
/// the project's secret (to reach the checks behind the signature).
pub fn callback(data: &[u8]) {
    let mut canon = Canonicalizer::default();
    let _ = crate::callback::verify(&mut canon, Bytes::copy_from_slice(data), projects(), true);
    if let Ok(signed) = signature::attach(data, SECRET) {
        let _ = crate::callback::verify(&mut canon, Bytes::from(signed), projects(), true);
    }
}

/// A terminal request's checks, `data` as sent and signed.
pub fn terminal_request(data: &[u8]) {
    let mut canon = Canonicalizer::default();
    crate::terminal::fuzz_check(&mut canon, data, projects());
    if let Ok(signed) = signature::attach(data, SECRET) {
        crate::terminal::fuzz_check(&mut canon, &signed, projects());
    }
}

/// A merchant's answer to a terminal request: validated for both request types and
/// relayed in both dialects; what is relayed is a JSON object with the validated code.
pub fn merchant_answer(data: &[u8]) {
    crate::terminal::fuzz_answer(data);
}

/// Every decoder of stored records on `data`, as recovery, delivery and admin use
/// them: the event record (whole, shared, head), the attempt log a delivery keeps, a
/// quarantine entry, and JetStream's parked-delivery, kept-event and quarantine
/// records. Whatever decodes encodes back to the very same bytes, and the head
/// decodes exactly when the whole record does (recovery checks heads, delivery reads
/// wholes).
pub fn journal_record(data: &[u8]) {
    use crate::store::jetstream::record as js;
    use crate::store::record;
    let shared = Bytes::copy_from_slice(data);
    let whole = record::decode(7, data);
    let head = record::decode_head(7, data);
    match (&whole, &head) {
        (Ok(event), Ok(head)) => {
            assert_eq!(record::encode(event), data, "decoded, then encoded");
            assert_eq!(
                (&head.order_key, &head.endpoints, head.dedup),
                (&event.order_key, &event.endpoints, event.dedup)
            );
            let same = record::decode_shared(7, &shared).expect("decoded once");
            assert_eq!(same.body, event.body);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("the head and the whole disagree: {whole:?} / {head:?}"),
    }
    let state = crate::delivery::State::decode(data, 5);
    assert_eq!(crate::delivery::State::decode(&state.encode(), 6), state);
    let _ = crate::store::embedded::redb::quarantine_entry(data);
    if let Some(parked) = js::Parked::decode(data) {
        assert_eq!(parked.encode(), data);
    }
    if let Ok((state, event)) = js::decode_kept(7, &shared) {
        assert_eq!(js::encode_kept(&state, &event), data);
    }
    if let Some(quarantined) = js::decode_quarantined(7, data) {
        assert_eq!(js::encode_quarantined(&quarantined), data);
    }
}

/// The config parser and its validation (secrets and files it names are read).
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml("fuzz.toml", text);
    }
}
