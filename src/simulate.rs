//! `cbgate simulate`: the platform's side of the protocol against a running gateway.
//! Plays the seeds' flows (kiosk verify → check_deposit → callback, Mobile Commerce OTP
//! clarification → result, refunds) with retries and bad input mixed in, and checks
//! every answer against what the gateway must say. With `--merchant`, `merchant_side`
//! plays the flows that start at the merchant instead (Gate API, Payment Page).

mod backend;
pub mod merchant_side;
mod platform;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// What to send and how much of it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Base URL of the gateway's platform listener, e.g. `http://127.0.0.1:8080`.
    pub target: String,
    pub secret: String,
    pub project: u64,
    /// Flows to play at most; the run also ends after `seconds`.
    pub flows: u64,
    pub seconds: u64,
    /// Flows started per second; 0 = as fast as the gateway answers.
    pub rate: f64,
    pub connections: usize,
    /// Share of callbacks re-sent byte for byte (the platform's retries).
    pub retry_share: f64,
    /// Share of OTP flows whose clarification request is sent again (wrong OTP).
    pub resend_share: f64,
    pub bad_signature_share: f64,
    pub malformed_share: f64,
    /// Also play the kiosk's terminal requests (the project needs a terminal_url).
    pub terminal: bool,
    pub seed: u64,
}

/// What the gateway must answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Accepted,
    Duplicate,
    Rejected,
    /// HTTP 200 with this protocol `code`.
    Terminal(u16),
}

struct Step {
    path: &'static str,
    body: Bytes,
    expect: Expect,
}

/// Counts of one run; `mismatches` lists the first few answers that were wrong.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub flows: u64,
    pub sent: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub terminal_ok: u64,
    pub terminal_refused: u64,
    /// 503 answers (backpressure); the step was sent again, as the platform would.
    pub retried_503: u64,
    pub transport_errors: u64,
    pub mismatch_count: u64,
    pub mismatches: Vec<String>,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.mismatch_count == 0 && self.transport_errors == 0
    }
}

const DECLINE_AMOUNTS: [i64; 2] = [40_000, 40_400];
const MAX_503_RETRIES: u32 = 50;

/// The steps of flow `n`, in the order the platform sends them.
fn flow(plan: &Plan, run: u64, n: u64) -> Vec<Step> {
    let mut rng = fastrand::Rng::with_seed(plan.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let amount = if rng.f64() < 0.1 {
        DECLINE_AMOUNTS[rng.usize(..2)]
    } else {
        rng.i64(1..=5_000) * 100
    };
    let ok = !DECLINE_AMOUNTS.contains(&amount);
    let ids = Ids { run, n };
    let customer = format!("77{:08}", n % 100_000_000);
    let mut steps = Vec::new();
    let kiosk = |method: &str, payment_method: &str, steps: &mut Vec<Step>| {
        if plan.terminal {
            let verify =
                json!({"type": "verify", "customer_id": customer, "project_id": plan.project});
            let deposit = json!({"type": "check_deposit", "project_id": plan.project, "customer_id": customer,
                "amount": amount, "currency": "KZT", "payment_method": payment_method});
            steps.push(plan.terminal_step(verify, 0));
            steps.push(plan.terminal_step(deposit, 0));
        }
        let (status, code, message) = outcome(ok);
        let cb = ids.callback(
            plan.project,
            method,
            "sale",
            status,
            status,
            amount,
            code,
            message,
            0,
        );
        steps.push(plan.callback_step(cb, Expect::Accepted));
    };
    match rng.u8(..5) {
        0 => kiosk("kassa24", "kassa24", &mut steps),
        1 => kiosk("kassa24_bvu", "kassa24_bvu", &mut steps),
        2 => kiosk("paydala", "terminal/paydala", &mut steps),
        3 => {
            // Mobile Commerce: the OTP request, perhaps again after a wrong OTP, then the result.
            let wait = "awaiting clarification";
            let first = ids.callback(
                plan.project,
                "mobile",
                "sale",
                wait,
                wait,
                amount,
                "0",
                "Waiting for the OTP",
                0,
            );
            steps.push(plan.callback_step(first, Expect::Accepted));
            if rng.f64() < plan.resend_share {
                let again = ids.callback(
                    plan.project,
                    "mobile",
                    "sale",
                    wait,
                    wait,
                    amount,
                    "0",
                    "Wrong OTP, enter it again",
                    0,
                );
                steps.push(plan.callback_step(again, Expect::Accepted));
            }
            let (status, code, message) = outcome(ok);
            let last = ids.callback(
                plan.project,
                "mobile",
                "sale",
                status,
                status,
                amount,
                code,
                message,
                0,
            );
            steps.push(plan.callback_step(last, Expect::Accepted));
        }
        _ => {
            // A paid Mobile Commerce purchase, then its refund (a second operation).
            let sale = ids.callback(
                plan.project,
                "mobile",
                "sale",
                "success",
                "success",
                amount,
                "0",
                "Success",
                0,
            );
            steps.push(plan.callback_step(sale, Expect::Accepted));
            let refund = ids.callback(
                plan.project,
                "mobile",
                "refund",
                "refunded",
                "success",
                amount,
                "0",
                "Success",
                1,
            );
            steps.push(plan.callback_step(refund, Expect::Accepted));
        }
    }
    // Retries follow the step they repeat; bad input goes anywhere in the flow.
    let mut out = Vec::with_capacity(steps.len() * 2);
    for step in steps {
        let retry = step.path == "/callbacks" && rng.f64() < plan.retry_share;
        let again = retry.then(|| Step {
            path: step.path,
            body: step.body.clone(),
            expect: Expect::Duplicate,
        });
        if rng.f64() < plan.bad_signature_share {
            out.push(bad_signature(&step));
        }
        if rng.f64() < plan.malformed_share {
            let body = step.body.slice(..step.body.len() / 2);
            let expect = if step.path == "/callbacks" {
                Expect::Rejected
            } else {
                Expect::Terminal(500)
            };
            out.push(Step {
                path: step.path,
                body,
                expect,
            });
        }
        out.push(step);
        out.extend(again);
    }
    out
}

fn outcome(ok: bool) -> (&'static str, &'static str, &'static str) {
    if ok {
        ("success", "0", "Success")
    } else {
        ("decline", "20000", "General decline")
    }
}

/// The same request with its signature's first character changed.
fn bad_signature(step: &Step) -> Step {
    let mut body = step.body.to_vec();
    if let Some(at) = memchr::memmem::rfind(&body, b"\"signature\":\"") {
        let c = &mut body[at + 13];
        *c = if *c == b'A' { b'B' } else { b'A' };
    }
    let expect = if step.path == "/callbacks" {
        Expect::Rejected
    } else {
        Expect::Terminal(400)
    };
    Step {
        path: step.path,
        body: body.into(),
        expect,
    }
}

/// Identifiers unique to this run and flow, so a second run is not all duplicates.
struct Ids {
    run: u64,
    n: u64,
}

impl Ids {
    #[allow(clippy::too_many_arguments)]
    fn callback(
        &self,
        project: u64,
        method: &str,
        op_type: &str,
        pay_status: &str,
        op_status: &str,
        amount: i64,
        code: &str,
        message: &str,
        op: u64,
    ) -> Value {
        let payment_id = format!("sim-{:x}-{}", self.run, self.n);
        json!({
            "project_id": project,
            "payment": {"id": payment_id, "type": "purchase", "status": pay_status,
                "date": "2024-12-07T19:08:45+0000", "method": method,
                "sum": {"amount": amount, "currency": "KZT"}, "description": ""},
            "account": {"number": "71234567890"},
            "customer": {"id": format!("customer_{}", self.n)},
            "operation": {"id": self.n * 2 + op, "type": op_type, "status": op_status,
                "date": "2024-12-07T19:08:45+0000", "created_date": "2024-12-07T19:08:05+0000",
                "request_id": format!("{payment_id}-{op}"),
                "sum_initial": {"amount": amount, "currency": "KZT"},
                "sum_converted": {"amount": amount, "currency": "KZT"},
                "code": code, "message": message,
                "provider": {"id": 12345, "payment_id": format!("prov-{}", self.n), "auth_code": ""}}
        })
    }
}

impl Plan {
    fn signed(&self, payload: &Value) -> Bytes {
        crate::signature::attach(payload.to_string().as_bytes(), &self.secret)
            .expect("serde_json writes valid JSON objects")
            .into()
    }

    fn callback_step(&self, payload: Value, expect: Expect) -> Step {
        Step {
            path: "/callbacks",
            body: self.signed(&payload),
            expect,
        }
    }

    fn terminal_step(&self, payload: Value, code: u16) -> Step {
        Step {
            path: "/terminal",
            body: self.signed(&payload),
            expect: Expect::Terminal(code),
        }
    }
}

/// What the gateway answered, sorted into the summary's buckets.
#[derive(Debug)]
enum Got {
    Accepted,
    Duplicate,
    Rejected(u16),
    Terminal(u16),
    Busy,
    Other(u16, String),
}

fn classify(path: &str, status: StatusCode, body: &[u8]) -> Got {
    let value: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| value.as_ref().and_then(|v| v.get(name).cloned());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return Got::Busy;
    }
    if path == "/terminal"
        && status == StatusCode::OK
        && let Some(code) = field("code").and_then(|c| c.as_u64())
    {
        return Got::Terminal(code as u16);
    }
    if path == "/callbacks" {
        match (
            status.as_u16(),
            field("status").as_ref().and_then(Value::as_str),
        ) {
            (200, Some("accepted")) => return Got::Accepted,
            (200, Some("duplicate")) => return Got::Duplicate,
            (400..=499, Some("rejected")) => return Got::Rejected(status.as_u16()),
            _ => {}
        }
    }
    Got::Other(
        status.as_u16(),
        String::from_utf8_lossy(body).chars().take(200).collect(),
    )
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    terminal_ok: AtomicU64,
    terminal_refused: AtomicU64,
    retried_503: AtomicU64,
    transport_errors: AtomicU64,
    mismatch_count: AtomicU64,
    flows: AtomicU64,
}

/// Plays the plan and returns what happened; never panics on the gateway's answers.
pub async fn run(plan: Plan) -> Summary {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(plan.connections)
        .build(connector);
    let plan = Arc::new(plan);
    let run_id = fastrand::u64(..);
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Tally::default());
    let mismatches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(plan.seconds);
    let workers: Vec<_> = (0..plan.connections.max(1))
        .map(|_| {
            let (plan, client, next, tally, mismatches) = (
                plan.clone(),
                client.clone(),
                next.clone(),
                tally.clone(),
                mismatches.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= plan.flows || Instant::now() >= deadline {
                        return latencies;
                    }
                    if plan.rate > 0.0 {
                        let at = started + Duration::from_secs_f64(n as f64 / plan.rate);
                        if at >= deadline {
                            return latencies;
                        }
                        tokio::time::sleep_until(at.into()).await;
                    }
                    for step in flow(&plan, run_id, n) {
                        let problem =
                            play(&client, &plan.target, &step, &tally, &mut latencies).await;
                        if let Some(problem) = problem {
                            tally.mismatch_count.fetch_add(1, Ordering::Relaxed);
                            let mut list = mismatches.lock().expect("not poisoned");
                            if list.len() < 10 {
                                list.push(format!("flow {n} {}: {problem}", step.path));
                            }
                        }
                    }
                    tally.flows.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap_or_default());
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d: &Duration| d.as_secs_f64() * 1000.0)
    };
    let seconds = started.elapsed().as_secs_f64();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mismatches = std::mem::take(&mut *mismatches.lock().expect("not poisoned"));
    Summary {
        flows: load(&tally.flows),
        sent: load(&tally.sent),
        accepted: load(&tally.accepted),
        duplicates: load(&tally.duplicates),
        rejected: load(&tally.rejected),
        terminal_ok: load(&tally.terminal_ok),
        terminal_refused: load(&tally.terminal_refused),
        retried_503: load(&tally.retried_503),
        transport_errors: load(&tally.transport_errors),
        mismatch_count: load(&tally.mismatch_count),
        mismatches,
        seconds,
        requests_per_second: load(&tally.sent) as f64 / seconds.max(1e-9),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
    }
}

/// Sends one step (again after a 503, as the platform would) and checks the answer.
async fn play(
    client: &Client<HttpConnector, Full<Bytes>>,
    target: &str,
    step: &Step,
    tally: &Tally,
    latencies: &mut Vec<Duration>,
) -> Option<String> {
    for _ in 0..MAX_503_RETRIES {
        let request = Request::post(format!("{target}{}", step.path))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(step.body.clone()))
            .expect("valid request");
        let sent = Instant::now();
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let answer = async {
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        };
        let (status, body) = match tokio::time::timeout(Duration::from_secs(30), answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tally.transport_errors.fetch_add(1, Ordering::Relaxed);
                return Some(format!("transport error: {e}"));
            }
            Err(_) => {
                tally.transport_errors.fetch_add(1, Ordering::Relaxed);
                return Some("no answer within 30s".into());
            }
        };
        latencies.push(sent.elapsed());
        let got = classify(step.path, status, &body);
        let counter = match &got {
            Got::Accepted => Some(&tally.accepted),
            Got::Duplicate => Some(&tally.duplicates),
            Got::Rejected(_) => Some(&tally.rejected),
            Got::Terminal(0) => Some(&tally.terminal_ok),
            Got::Terminal(_) => Some(&tally.terminal_refused),
            Got::Other(..) => None,
            Got::Busy => {
                tally.retried_503.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let fine = match (step.expect, &got) {
            (Expect::Accepted, Got::Accepted) | (Expect::Duplicate, Got::Duplicate) => true,
            (Expect::Rejected, Got::Rejected(400)) => true,
            (Expect::Terminal(want), Got::Terminal(code)) => want == *code,
            _ => false,
        };
        let got = match got {
            Got::Other(status, body) => format!("HTTP {status} {body}"),
            other => format!("{other:?}"),
        };
        return (!fine).then(|| format!("expected {:?}, got {got}", step.expect));
    }
    Some(format!("still 503 after {MAX_503_RETRIES} tries"))
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flows {} in {:.1}s; sent {} ({:.0} req/s, p50 {:.2} ms, p99 {:.2} ms)",
            self.flows, self.seconds, self.sent, self.requests_per_second, self.p50_ms, self.p99_ms
        )?;
        writeln!(
            f,
            "callbacks: accepted {}, duplicates {}, rejected {}",
            self.accepted, self.duplicates, self.rejected
        )?;
        writeln!(
            f,
            "terminal: code 0 {}, other codes {}",
            self.terminal_ok, self.terminal_refused
        )?;
        writeln!(
            f,
            "503 retried {}, transport errors {}, mismatches {}",
            self.retried_503, self.transport_errors, self.mismatch_count
        )?;
        for m in &self.mismatches {
            writeln!(f, "  {m}")?;
        }
        Ok(())
    }
}
