//! A damaged stored record through the real binary (issue 16.4): before, one
//! undecodable event record stalled its endpoint for good (the worker retried the
//! read every second). Now it is quarantined, counted, logged once and listed by the
//! admin API, and every other delivery of the endpoint goes on. The damage is done
//! honestly: the test opens the stopped gateway's redb file with redb and rewrites
//! one `events` value (redb checksums its pages, so flipping file bytes would be
//! refused at open instead of reaching the decoder). On JetStream, the damage is a
//! message no cbgate wrote, published into the events stream with a NATS client.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;

use crate::contract::{Engine, FAST, callback, config};
use crate::endpoint::{Endpoint, Reply};
use crate::nats::Nats;
use crate::support::{Gateway, request};

const LONG: Duration = Duration::from_secs(30);
const QUARANTINED: &str = "cbgate_store_quarantined_total";
const LOGGED: &str = "unreadable stored record quarantined";

/// An endpoint answering 503 until `up` is set, then 200.
fn switchable() -> (Endpoint, Arc<AtomicBool>) {
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    let endpoint = Endpoint::start(move |_, _| {
        Reply::Status(if flag.load(Ordering::Acquire) {
            200
        } else {
            503
        })
    });
    (endpoint, up)
}

/// Rewrites the record of the event whose body is `body` to `raw`, through redb (a
/// valid transaction: only the record is wrong); returns its seq.
fn damage(dir: &Path, body: &[u8], raw: &[u8]) -> u64 {
    const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
    let db = redb::Database::open(dir.join("cbgate.redb")).expect("journal opens");
    let seq = {
        let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
        let table = tx.open_table(EVENTS).unwrap();
        redb::ReadableTable::iter(&table)
            .unwrap()
            .map(|row| row.unwrap())
            .find(|(k, v)| {
                cbgate::store::record::decode(k.value(), v.value())
                    .unwrap()
                    .body
                    == body
            })
            .map(|(k, _)| k.value())
            .expect("the event is in the journal")
    };
    let tx = db.begin_write().unwrap();
    tx.open_table(EVENTS).unwrap().insert(seq, raw).unwrap();
    tx.commit().unwrap();
    seq
}

fn stop(g: &mut Gateway) {
    g.signal("TERM");
    assert!(g.wait_exit(LONG).success(), "{}", g.log());
}

/// The quarantine as the admin API lists it.
fn listed(g: &Gateway) -> Vec<serde_json::Value> {
    let (status, text) = g.admin_get("/admin/quarantine");
    assert_eq!(status, 200, "{text}");
    let page: serde_json::Value = serde_json::from_str(&text).unwrap();
    page["items"].as_array().unwrap().clone()
}

/// Distinct bodies the endpoint answered 2xx.
fn delivered(endpoint: &Endpoint) -> HashSet<Vec<u8>> {
    endpoint.delivered().into_iter().collect()
}

#[test]
fn a_damaged_record_is_quarantined_at_start_and_the_rest_of_its_endpoint_is_delivered() {
    let (endpoint, up) = switchable();
    let mut g = Gateway::start(&config(FAST, &[("a", &endpoint.url(), "")]));
    // The damaged event and the next are one payment: its lane is not held up either.
    let bodies = [
        callback("pay-1", 1, "kassa24", "success"),
        callback("pay-2", 2, "kassa24", "success"),
        callback("pay-3", 3, "mobile", "processing"),
        callback("pay-3", 4, "mobile", "success"),
        callback("pay-5", 5, "kassa24", "success"),
    ];
    for body in &bodies {
        g.accept_callback(body);
    }
    stop(&mut g);
    assert!(delivered(&endpoint).is_empty(), "the endpoint was down");
    let torn = b"\x01torn".to_vec();
    let seq = damage(&g.data_dir(), &bodies[2], &torn);

    up.store(true, Ordering::Release);
    g.spawn();
    assert!(endpoint.wait_delivered(4, LONG), "{}", g.log());
    // Nothing left pending: the dropped delivery left the endpoint's count too.
    g.wait_idle(LONG);
    let expected: HashSet<Vec<u8>> = [0, 1, 3, 4].iter().map(|&i| bodies[i].clone()).collect();
    assert_eq!(delivered(&endpoint), expected);
    assert_eq!(g.metric(QUARANTINED, &[]), 1.0);
    assert_eq!(g.log().matches(LOGGED).count(), 1, "{}", g.log());

    let items = listed(&g);
    assert_eq!(items.len(), 1, "{items:?}");
    let item = &items[0];
    assert_eq!(item["seq"], seq);
    assert_eq!(item["endpoints"], serde_json::json!(["77/a"]));
    assert_eq!(item["bytes"], torn.len());
    let raw = base64::engine::general_purpose::STANDARD
        .decode(item["raw_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, torn, "kept as found");
    assert!(
        item["reason"].as_str().unwrap().contains("malformed"),
        "{item}"
    );
    // Behind the admin token like every /admin route.
    assert_eq!(
        request(g.admin, "GET", "/admin/quarantine", &[], b"").0,
        401
    );
    // Its dedup key was durable: the platform's resend is still a duplicate.
    assert_eq!(
        g.post("/callbacks", &bodies[2]),
        (200, r#"{"status":"duplicate"}"#.into())
    );

    // A restart finds nothing new, and the entry stays listed.
    stop(&mut g);
    g.spawn();
    assert_eq!(g.metric(QUARANTINED, &[]), 0.0, "{}", g.log());
    assert_eq!(listed(&g).len(), 1);
    assert_eq!(g.log().matches(LOGGED).count(), 1);
    g.wait_idle(LONG);
}

#[test]
fn a_replayed_dead_letter_whose_record_is_damaged_is_quarantined_and_the_others_replay() {
    // Recovery reads only the events of pending deliveries: a dead letter's record is
    // first read when it is replayed, by the endpoint's worker.
    let (endpoint, up) = switchable();
    let mut g = Gateway::start(&config(
        &format!("{FAST}\ngive_up_after = \"500ms\""),
        &[("a", &endpoint.url(), "")],
    ));
    let bodies: Vec<Vec<u8>> = (1..=3)
        .map(|i| callback(&format!("dead-{i}"), 10 + i, "kassa24", "success"))
        .collect();
    for body in &bodies {
        g.accept_callback(body);
    }
    g.wait_metric(
        "cbgate_delivery_dead_letters_total",
        &[("endpoint", "77/a")],
        LONG,
        |n| n == 3.0,
    );
    stop(&mut g);
    let seq = damage(&g.data_dir(), &bodies[1], b"");

    up.store(true, Ordering::Release);
    g.spawn();
    assert_eq!(g.metric(QUARANTINED, &[]), 0.0, "not read at start");
    let (status, text) = g.admin_post("/admin/endpoints/77/a/replay");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""replayed":3"#), "{text}");
    assert!(endpoint.wait_delivered(2, LONG), "{}", g.log());
    g.wait_metric(QUARANTINED, &[], LONG, |n| n == 1.0);
    g.wait_idle(LONG);
    let expected: HashSet<Vec<u8>> = [bodies[0].clone(), bodies[2].clone()].into();
    assert_eq!(delivered(&endpoint), expected);
    let items = listed(&g);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["seq"], seq);
    assert_eq!(items[0]["bytes"], 0);
    assert_eq!(g.log().matches(LOGGED).count(), 1, "{}", g.log());
}

/// Publishes `payload` on `subject` into JetStream at `url`; its stream sequence.
fn publish(url: &str, subject: String, payload: &'static [u8]) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url).await.expect("nats connects");
        let js = async_nats::jetstream::new(client);
        let ack = js.publish(subject, payload.into()).await.unwrap();
        ack.await.expect("stored").sequence
    })
}

/// One callback in each of the gateway's `partitions`, payments named after `tag`,
/// operations numbered from `first_op`.
fn one_per_partition(tag: &str, first_op: u64, partitions: u16) -> Vec<Vec<u8>> {
    use cbgate::store::jetstream::names::partition;
    let mut found: Vec<Option<String>> = vec![None; partitions as usize];
    for i in 0.. {
        let payment = format!("{tag}-{i}");
        let slot = &mut found[partition(&cbgate::store::lane(77, &payment), partitions) as usize];
        slot.get_or_insert(payment);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found
        .into_iter()
        .zip(first_op..)
        .map(|(payment, op)| callback(&payment.unwrap(), op, "kassa24", "success"))
        .collect()
}

#[test]
fn jetstream_quarantines_a_message_it_cannot_read_and_every_partition_goes_on() {
    const PARTITIONS: u16 = 8;
    const GARBAGE: &[u8] = b"\x01not an event";
    let nats = Nats::single();
    let url = nats.nodes[0].url();
    let engine = Engine::JetStream(nats);
    let endpoint = Endpoint::start(|_, _| Reply::Status(200));
    let mut g = engine.start(&config(FAST, &[("a", &endpoint.url(), "")]));
    assert!(
        engine
            .storage()
            .contains(&format!("partitions = {PARTITIONS}")),
        "the test covers every partition"
    );
    // A message no cbgate wrote ahead of the callbacks of every partition, and a
    // replay whose dead letter is not one.
    let mut seqs: Vec<u64> = (0..PARTITIONS)
        .map(|p| publish(&url, format!("cb.{p}.garbage.{p}"), GARBAGE))
        .collect();
    let endpoint_token =
        cbgate::store::jetstream::names::endpoint_token(&cbgate::store::EndpointKey::new(77, "a"));
    let replay = publish(&url, format!("rp.3.999999.{endpoint_token}"), b"");
    seqs.push(replay);
    let first = one_per_partition("before", 100, PARTITIONS);
    for body in &first {
        g.accept_callback(body);
    }
    assert!(endpoint.wait_delivered(first.len(), LONG), "{}", g.log());
    g.wait_metric(QUARANTINED, &[], LONG, |n| n == seqs.len() as f64);
    g.wait_idle(LONG);
    assert_eq!(g.log().matches(LOGGED).count(), seqs.len(), "{}", g.log());

    let items = listed(&g);
    let listed_seqs: Vec<u64> = items.iter().map(|i| i["seq"].as_u64().unwrap()).collect();
    assert_eq!(listed_seqs, seqs, "oldest first: {items:?}");
    let raw = |item: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(item["raw_base64"].as_str().unwrap())
            .unwrap()
    };
    for item in &items[..PARTITIONS as usize] {
        assert_eq!(raw(item), GARBAGE, "kept as found: {item}");
        assert_eq!(item["endpoints"], serde_json::json!([]));
        assert!(
            item["reason"].as_str().unwrap().contains("malformed"),
            "{item}"
        );
    }
    let last = items.last().unwrap();
    assert_eq!(
        (last["seq"].as_u64(), last["bytes"].as_u64()),
        (Some(replay), Some(0))
    );
    assert_eq!(last["endpoints"], serde_json::json!(["77/a"]));
    // Pages follow `next`.
    let (status, text) = g.admin_get("/admin/quarantine?limit=4");
    assert_eq!(status, 200, "{text}");
    let page: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 4);
    assert_eq!(page["next"], seqs[3].to_string());
    let (_, text) = g.admin_get(&format!("/admin/quarantine?after={}", seqs[3]));
    let page: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["items"][0]["seq"], seqs[4], "{text}");
    assert_eq!(page["items"].as_array().unwrap().len(), seqs.len() - 4);

    // A restart reads every partition on from its cursor: nothing is quarantined again,
    // and the records stay listed.
    stop(&mut g);
    g.spawn();
    let second = one_per_partition("after", 200, PARTITIONS);
    for body in &second {
        g.accept_callback(body);
    }
    assert!(
        endpoint.wait_delivered(first.len() + second.len(), LONG),
        "{}",
        g.log()
    );
    g.wait_idle(LONG);
    assert_eq!(g.metric(QUARANTINED, &[]), 0.0, "{}", g.log());
    assert_eq!(listed(&g).len(), seqs.len());
}
