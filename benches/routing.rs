//! Routing a callback: from the body's bytes to its project and the endpoints that
//! want it (100 projects, 20 filtered endpoints on the one hit), beside the naive way
//! (serde_json::Value, linear project search, lowercased String compares).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::Value;

use cbgate::config::Config;
use cbgate::projects::{Projects, RouteFields};
use cbgate::signature::Canonicalizer;

const METHODS: [&str; 4] = ["kassa24", "mobile", "kassa24_bvu", "paydala"];

fn config() -> String {
    let mut text = String::new();
    for id in 1..=100u64 {
        text += &format!("[[projects]]\nid = {}\nsecrets = [\"s{id}\"]\n", id * 37);
        if id == 50 {
            for e in 0..20 {
                text += &format!(
                    "[[projects.endpoints]]\nname = \"e{e}\"\nurl = \"http://127.0.0.1:9/{e}\"\n\
                     secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nmethods = [\"{}\"]\n\
                     statuses = [\"success\", \"decline\"]\n",
                    METHODS[e % 4]
                );
            }
        }
    }
    text
}

fn body() -> Vec<u8> {
    let v = include_str!("../tests/data/signature.json");
    let vectors: Value = serde_json::from_str(v).unwrap();
    let seed = vectors["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| {
            x["name"]
                .as_str()
                .unwrap()
                .starts_with("seed:kassa24_terminal(Monetix)#7")
        })
        .unwrap();
    let mut payload: Value = serde_json::from_str(seed["payload_json"].as_str().unwrap()).unwrap();
    payload["project_id"] = (50 * 37).into();
    cbgate::signature::attach(payload.to_string().as_bytes(), "s50").unwrap()
}

fn cbgate_route(canon: &mut Canonicalizer, projects: &Projects, body: &[u8]) -> usize {
    canon.load(body).unwrap();
    let project = projects.by_text(canon.get(b"project_id").unwrap()).unwrap();
    let text = |p: &[u8]| canon.get(p).map(|v| std::str::from_utf8(v).unwrap());
    let route = RouteFields {
        method: text(b"payment:method"),
        operation_type: text(b"operation:type"),
        statuses: [text(b"operation:status"), text(b"payment:status")],
    };
    project.endpoints.iter().filter(|e| e.wants(&route)).count()
}

/// What a quick implementation does: a Value tree, a Vec of projects searched by
/// id, filters compared as lowercased Strings.
struct NaiveProject {
    id: String,
    endpoints: Vec<(Vec<String>, Vec<String>)>,
}

fn naive_route(projects: &[NaiveProject], body: &[u8]) -> usize {
    let v: Value = serde_json::from_slice(body).unwrap();
    let id = v["project_id"].to_string();
    let project = projects.iter().find(|p| p.id == id).unwrap();
    let method = v["payment"]["method"].as_str().unwrap_or("").to_lowercase();
    let status = v["operation"]["status"]
        .as_str()
        .unwrap_or("")
        .to_lowercase();
    project
        .endpoints
        .iter()
        .filter(|(methods, statuses)| methods.contains(&method) && statuses.contains(&status))
        .count()
}

fn bench(c: &mut Criterion) {
    let config = Config::from_toml("bench", &config()).unwrap();
    let projects = Projects::build(&config).unwrap();
    let naive: Vec<NaiveProject> = projects
        .iter()
        .map(|p| NaiveProject {
            id: p.id.to_string(),
            endpoints: p
                .endpoints
                .iter()
                .map(|e| (e.methods.clone().unwrap(), e.statuses.clone().unwrap()))
                .collect(),
        })
        .collect();
    let body = body();
    let mut canon = Canonicalizer::default();
    // Both must pick the same endpoints, or the comparison means nothing.
    assert_eq!(cbgate_route(&mut canon, &projects, &body), 5);
    assert_eq!(naive_route(&naive, &body), 5);

    let mut g = c.benchmark_group("route");
    g.bench_function("cbgate (one parse, keyed lookup)", |b| {
        b.iter(|| cbgate_route(&mut canon, &projects, black_box(&body)))
    });
    g.bench_function("naive (serde_json Value, linear search)", |b| {
        b.iter(|| naive_route(&naive, black_box(&body)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
