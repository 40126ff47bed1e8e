//! `cbgate simulate --merchant URL`: the merchant's side of the seed flows, run locally
//! against a gateway with its merchant listener. The simulator plays the platform's
//! Gate API and Payment Page (`platform`), the merchant backend behind cbgate
//! (`backend`: its endpoint and its terminal_url) and the customer:
//! - Mobile Commerce through Gate API: sale through cbgate → the clarification
//!   callback, delivered by cbgate to the backend → the OTP through
//!   `/gate/v2/payment/clarification` (sometimes wrong: the platform asks again;
//!   sometimes the backend first asks for a new OTP, `/v2/customer/action/resend`) →
//!   the final callback (decline for the test amounts 40000 and 40400) → sometimes a
//!   refund through `/gate/v2/payment/mobile/refund` and its callback.
//! - Kassa24 through Payment Page: the parameters signed through cbgate → the URL
//!   opened on the platform, which checks its signature → the kiosk's verify and
//!   check_deposit through cbgate to the backend → the callback.
//!
//! Every answer is checked; a flow passes when the backend got its last callback.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::{DECLINE_AMOUNTS, Ids, backend, platform};
use crate::signature::Secrets;

/// What to play, and against which gateway.
#[derive(Debug, Clone)]
pub struct MerchantPlan {
    /// The gateway's platform listener (callbacks, terminal requests).
    pub target: String,
    /// The gateway's merchant listener.
    pub merchant: String,
    pub token: String,
    pub secret: String,
    pub project: u64,
    /// Where the simulated Gate API and Payment Page listen: the gateway's
    /// `gate_url` is `http://ADDR`, its `payment_page_url` `http://ADDR/payment`.
    pub platform_listen: SocketAddr,
    /// Where the simulated merchant backend listens: the project's endpoint is
    /// `http://ADDR/hooks`, its `terminal_url` `http://ADDR/terminal`.
    pub backend_listen: SocketAddr,
    /// The endpoint's `whsec_` secret: deliveries' signatures are checked with it.
    pub endpoint_secret: Option<String>,
    pub flows: u64,
    pub seconds: u64,
    /// Flows under way at once.
    pub connections: usize,
    /// Share of OTP flows whose customer first types a wrong OTP (asked again).
    pub wrong_otp_share: f64,
    /// Share of those whose backend asks for a new OTP before the right one.
    pub new_otp_share: f64,
    /// Share of successful OTP purchases refunded.
    pub refund_share: f64,
    /// Share of flows with a test amount that ends in decline.
    pub decline_share: f64,
    pub seed: u64,
}

/// A flow's last callback must reach the backend within this.
const FLOW_TIMEOUT: Duration = Duration::from_secs(30);
/// One request's answer must come within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_503_RETRIES: u32 = 50;
/// Stories listed in the summary at most.
const STORIES: usize = 100;

/// One payment as it went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Story {
    pub payment_id: String,
    /// `mobile_gate` or `kassa24_page`.
    pub kind: &'static str,
    pub amount: i64,
    /// Wrong OTPs the customer typed (each asked again by the platform).
    pub wrong_otps: u32,
    /// The backend asked for a new OTP (`/v2/customer/action/resend`).
    pub new_otp: bool,
    pub refunded: bool,
    /// The purchase's final status, once its callback reached the backend.
    pub result: Option<String>,
}

/// Counts of one run; `mismatches` lists the first few things that went wrong.
#[derive(Debug, Default, serde::Serialize)]
pub struct MerchantSummary {
    pub flows: u64,
    pub otp_flows: u64,
    pub page_flows: u64,
    pub successes: u64,
    pub declines: u64,
    pub refunds: u64,
    /// Wrong OTPs the platform refused and asked again for.
    pub wrong_otps: u64,
    pub new_otps: u64,
    /// Gate API requests the platform got through cbgate, and those whose signature
    /// it refused.
    pub gate_requests: u64,
    pub gate_refused: u64,
    pub pages_opened: u64,
    pub pages_refused: u64,
    pub terminal_ok: u64,
    pub callbacks_sent: u64,
    pub callbacks_delivered: u64,
    pub webhook_signature_failures: u64,
    pub unfinished: u64,
    pub transport_errors: u64,
    pub mismatch_count: u64,
    pub mismatches: Vec<String>,
    pub seconds: f64,
    pub payments: Vec<Story>,
}

impl MerchantSummary {
    pub fn passed(&self) -> bool {
        self.mismatch_count == 0 && self.transport_errors == 0 && self.unfinished == 0
    }
}

impl std::fmt::Display for MerchantSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flows {} in {:.1}s: Mobile Commerce through Gate API {}, Kassa24 through Payment Page {}",
            self.flows, self.seconds, self.otp_flows, self.page_flows
        )?;
        writeln!(
            f,
            "results: success {}, decline {}, refunded {}; wrong OTPs asked again {}, new OTPs {}",
            self.successes, self.declines, self.refunds, self.wrong_otps, self.new_otps
        )?;
        writeln!(
            f,
            "platform: Gate API requests {} (refused {}), pages opened {} (refused {}), \
             kiosk answers code 0 {}",
            self.gate_requests,
            self.gate_refused,
            self.pages_opened,
            self.pages_refused,
            self.terminal_ok
        )?;
        writeln!(
            f,
            "callbacks: sent {}, delivered to the backend {} (bad webhook signatures {})",
            self.callbacks_sent, self.callbacks_delivered, self.webhook_signature_failures
        )?;
        writeln!(
            f,
            "unfinished {}, transport errors {}, mismatches {}",
            self.unfinished, self.transport_errors, self.mismatch_count
        )?;
        for m in &self.mismatches {
            writeln!(f, "  {m}")?;
        }
        Ok(())
    }
}

/// A payment under way, as the platform, the backend and the customer know it.
pub(super) struct Flow {
    pub n: u64,
    pub story: Story,
    pub customer_id: String,
    pub phone: String,
    /// Wrong OTPs the customer will still type before the right one.
    pub wrong_left: u32,
    /// After a wrong OTP, the backend asks for a new one before the right one.
    pub wants_new_otp: bool,
    /// A successful purchase is refunded.
    pub wants_refund: bool,
    /// The platform's current OTP (the customer reads it from the SMS).
    pub otp: String,
    /// Clarification callbacks the platform sent.
    pub asked: u32,
    pub resent: bool,
    pub done: Option<oneshot::Sender<()>>,
}

impl Flow {
    pub fn ids(&self, run: u64) -> Ids {
        Ids { run, n: self.n }
    }

    /// Whether the purchase must end in decline (the test amounts).
    pub fn declines(&self) -> bool {
        DECLINE_AMOUNTS.contains(&self.story.amount)
    }
}

#[derive(Default)]
pub(super) struct Tally {
    pub wrong_otps: AtomicU64,
    pub new_otps: AtomicU64,
    pub refunds: AtomicU64,
    pub gate_requests: AtomicU64,
    pub gate_refused: AtomicU64,
    pub pages_opened: AtomicU64,
    pub pages_refused: AtomicU64,
    pub terminal_ok: AtomicU64,
    pub callbacks_sent: AtomicU64,
    pub callbacks_delivered: AtomicU64,
    pub webhook_signature_failures: AtomicU64,
    pub transport_errors: AtomicU64,
    pub mismatch_count: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Everything the three parties share.
pub(super) struct World {
    pub plan: MerchantPlan,
    pub run: u64,
    pub secrets: Secrets,
    pub webhook_key: Option<crate::webhook::Key>,
    client: Client<HttpConnector, Full<Bytes>>,
    pub flows: Mutex<HashMap<String, Flow>>,
    /// The backend's accounts: customer id → payment id.
    pub customers: Mutex<HashMap<String, String>>,
    /// Deliveries taken (by `webhook-id`): a redelivery is answered, not acted on.
    pub delivered: Mutex<HashSet<String>>,
    pub tally: Tally,
    mismatches: Mutex<Vec<String>>,
}

impl World {
    pub fn mismatch(&self, what: String) {
        bump(&self.tally.mismatch_count);
        let mut list = self.mismatches.lock().expect("not poisoned");
        if list.len() < 10 {
            list.push(what);
        }
    }

    /// Runs `f` on the flow of `payment_id`, if it is one of this run's.
    pub fn with_flow<R>(&self, payment_id: &str, f: impl FnOnce(&mut Flow) -> R) -> Option<R> {
        self.flows
            .lock()
            .expect("not poisoned")
            .get_mut(payment_id)
            .map(f)
    }

    /// The flow of `payment_id` is over: its driver stops waiting.
    pub fn finish(&self, payment_id: &str) {
        if let Some(Some(done)) = self.with_flow(payment_id, |f| f.done.take()) {
            let _ = done.send(());
        }
    }

    /// One request; a transport error or a timeout is counted and returned.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut request = Request::builder().method(method).uri(url);
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| format!("bad request to {url}: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                bump(&self.tally.transport_errors);
                Err(format!("{url}: transport error: {e}"))
            }
            Err(_) => {
                bump(&self.tally.transport_errors);
                Err(format!("{url}: no answer within {REQUEST_TIMEOUT:?}"))
            }
        }
    }

    /// A request to cbgate's merchant listener with the project's token; the
    /// platform's (or cbgate's) answer must be 200 with a JSON object.
    pub async fn merchant(&self, path: &str, body: &Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.plan.merchant);
        let bytes = Bytes::from(body.to_string());
        let (status, answer) = self
            .call(Method::POST, &url, Some(&self.plan.token), bytes)
            .await?;
        let text = String::from_utf8_lossy(&answer);
        if status != StatusCode::OK {
            return Err(format!("{path}: HTTP {status} {text}"));
        }
        serde_json::from_slice(&answer).map_err(|e| format!("{path}: {e}: {text}"))
    }

    fn signed(&self, payload: &Value) -> Bytes {
        crate::signature::attach(payload.to_string().as_bytes(), &self.plan.secret)
            .expect("serde_json writes JSON objects")
            .into()
    }

    /// The platform's callback to cbgate: accepted once (503s are sent again, as the
    /// platform would).
    pub async fn callback(&self, payload: &Value) {
        let url = format!("{}/callbacks", self.plan.target);
        let body = self.signed(payload);
        for _ in 0..MAX_503_RETRIES {
            let answer = self.call(Method::POST, &url, None, body.clone()).await;
            match answer {
                Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Ok((StatusCode::OK, text)) if text.as_ref() == br#"{"status":"accepted"}"# => {
                    bump(&self.tally.callbacks_sent);
                }
                Ok((status, text)) => self.mismatch(format!(
                    "callback for {}: expected accepted, got HTTP {status} {}",
                    payload["payment"]["id"],
                    String::from_utf8_lossy(&text)
                )),
                Err(e) => self.mismatch(e),
            }
            return;
        }
        self.mismatch(format!("callback still 503 after {MAX_503_RETRIES} tries"));
    }

    /// A kiosk request to cbgate's `/terminal`; the answer's JSON.
    pub async fn terminal(&self, payload: &Value) -> Result<Value, String> {
        let url = format!("{}/terminal", self.plan.target);
        let (status, answer) = self
            .call(Method::POST, &url, None, self.signed(payload))
            .await?;
        let text = String::from_utf8_lossy(&answer);
        if status != StatusCode::OK {
            return Err(format!("/terminal: HTTP {status} {text}"));
        }
        serde_json::from_slice(&answer).map_err(|e| format!("/terminal: {e}: {text}"))
    }
}

/// Plays the plan; `Err` when the simulator's own servers cannot listen.
pub async fn run(plan: MerchantPlan) -> Result<MerchantSummary, String> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))
    };
    let platform_listener = bind(plan.platform_listen).await?;
    let backend_listener = bind(plan.backend_listen).await?;
    let webhook_key = match &plan.endpoint_secret {
        Some(s) => Some(
            crate::webhook::Key::parse(s)
                .ok_or("--endpoint-secret is not a whsec_ secret".to_string())?,
        ),
        None => None,
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let world = Arc::new(World {
        secrets: Secrets::new(&[plan.secret.as_str()]),
        webhook_key,
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(plan.connections.max(1) * 2)
            .build(connector),
        run: fastrand::u64(..),
        flows: Mutex::default(),
        customers: Mutex::default(),
        delivered: Mutex::default(),
        tally: Tally::default(),
        mismatches: Mutex::default(),
        plan,
    });
    let servers = [
        tokio::spawn(serve(platform_listener, world.clone(), platform::handle)),
        tokio::spawn(serve(backend_listener, world.clone(), backend::handle)),
    ];
    let started = Instant::now();
    // The backend learns the mobile operators once, through cbgate.
    let list = json!({"general": {"project_id": world.plan.project}});
    match world
        .merchant("/gate/v2/info/mobile/sale/list", &list)
        .await
    {
        Ok(v) if v["operators"].as_array().is_some_and(|o| !o.is_empty()) => {}
        Ok(v) => world.mismatch(format!("operators list: {v}")),
        Err(e) => world.mismatch(format!("operators list: {e}")),
    }
    let next = Arc::new(AtomicU64::new(0));
    let deadline = started + Duration::from_secs(world.plan.seconds);
    let workers: Vec<_> = (0..world.plan.connections.max(1))
        .map(|_| {
            let (world, next) = (world.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= world.plan.flows || Instant::now() >= deadline {
                        return;
                    }
                    play(&world, n).await;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    for s in servers {
        s.abort();
    }
    Ok(summary(&world, started.elapsed()))
}

/// Plays flow `n` to its end.
async fn play(world: &Arc<World>, n: u64) {
    let plan = &world.plan;
    let mut rng = fastrand::Rng::with_seed(plan.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let amount = if rng.f64() < plan.decline_share {
        DECLINE_AMOUNTS[rng.usize(..2)]
    } else {
        rng.i64(1..=5_000) * 100
    };
    let otp = rng.f64() < 0.6;
    let wrong = otp && rng.f64() < plan.wrong_otp_share;
    let payment_id = format!("sim-{:x}-{n}", world.run);
    let (done, finished) = oneshot::channel();
    let flow = Flow {
        n,
        story: Story {
            payment_id: payment_id.clone(),
            kind: if otp { "mobile_gate" } else { "kassa24_page" },
            amount,
            wrong_otps: 0,
            new_otp: false,
            refunded: false,
            result: None,
        },
        wants_new_otp: wrong && rng.f64() < plan.new_otp_share,
        wants_refund: otp && rng.f64() < plan.refund_share,
        customer_id: format!("kz-{:x}-{n}", world.run),
        phone: format!("7701{:07}", n % 10_000_000),
        wrong_left: u32::from(wrong),
        otp: String::new(),
        asked: 0,
        resent: false,
        done: Some(done),
    };
    let (customer, phone) = (flow.customer_id.clone(), flow.phone.clone());
    world
        .flows
        .lock()
        .expect("not poisoned")
        .insert(payment_id.clone(), flow);
    let started = if otp {
        start_sale(world, &payment_id, &customer, &phone, amount).await
    } else {
        world
            .customers
            .lock()
            .expect("not poisoned")
            .insert(customer.clone(), payment_id.clone());
        kassa24_page(world, &payment_id, &customer, &phone, amount).await
    };
    if let Err(e) = started {
        world.mismatch(format!("flow {n} ({payment_id}): {e}"));
        return;
    }
    if tokio::time::timeout(FLOW_TIMEOUT, finished).await.is_err() {
        let story = world.with_flow(&payment_id, |f| format!("{:?}", f.story));
        world.mismatch(format!(
            "flow {n} ({payment_id}) did not finish within {FLOW_TIMEOUT:?}: {story:?}"
        ));
    }
}

/// Mobile Commerce: the backend asks for the sale through cbgate; the platform takes
/// it from there.
async fn start_sale(
    world: &World,
    payment_id: &str,
    customer: &str,
    phone: &str,
    amount: i64,
) -> Result<(), String> {
    let body = json!({
        "general": {"project_id": world.plan.project, "payment_id": payment_id},
        "customer": {"id": customer, "ip_address": "198.51.100.47", "first_name": "Айгерим",
            "last_name": "Нурланова", "email": format!("{customer}@example.kz")},
        "account": {"number": phone},
        "payment": {"currency": "KZT", "amount": amount},
    });
    let answer = world
        .merchant("/gate/v2/payment/mobile/sale", &body)
        .await?;
    if answer["status"] != "success" {
        return Err(format!("sale not acknowledged: {answer}"));
    }
    Ok(())
}

/// Kassa24 through Payment Page: signed through cbgate, opened on the platform, paid
/// at a kiosk (verify and check_deposit through cbgate to the backend), called back.
async fn kassa24_page(
    world: &World,
    payment_id: &str,
    customer: &str,
    phone: &str,
    amount: i64,
) -> Result<(), String> {
    let project = world.plan.project;
    let params = json!({
        "project_id": project, "payment_id": payment_id, "customer_id": customer,
        "customer_first_name": "Ерлан", "customer_last_name": "Сейткали",
        "customer_email": format!("{customer}@example.kz"), "customer_phone": phone,
        "payment_currency": "KZT", "payment_amount": amount,
        "force_payment_method": "kassa24", "language_code": "ru",
        "payment_description": format!("Заказ {payment_id}"),
    });
    let signed = world.merchant("/payment-page/sign", &params).await?;
    let url = signed["url"]
        .as_str()
        .ok_or("no url in the answer: set [merchant] payment_page_url")?;
    let (status, page) = world.call(Method::GET, url, None, Bytes::new()).await?;
    if status != StatusCode::OK {
        return Err(format!(
            "Payment Page refused the URL: HTTP {status} {}",
            String::from_utf8_lossy(&page)
        ));
    }
    // The kiosk: the platform asks the merchant (through cbgate) about the account,
    // then for its payment id once the cash is in.
    let verify = json!({"type": "verify", "customer_id": customer, "project_id": project});
    let answer = world.terminal(&verify).await?;
    if answer["code"] != 0 {
        return Err(format!("verify: {answer}"));
    }
    bump(&world.tally.terminal_ok);
    let deposit = json!({"type": "check_deposit", "customer_id": customer, "project_id": project,
        "amount": amount, "currency": "KZT", "payment_method": "kassa24"});
    let answer = world.terminal(&deposit).await?;
    if answer["code"] != 0 || answer["payment_id"] != payment_id {
        return Err(format!("check_deposit: {answer}"));
    }
    bump(&world.tally.terminal_ok);
    let payload = world
        .with_flow(payment_id, |f| {
            let (status, code, message) = super::outcome(!f.declines());
            f.ids(world.run).callback(
                project, "kassa24", "sale", status, status, amount, code, message, 0,
            )
        })
        .ok_or("the flow is gone")?;
    world.callback(&payload).await;
    Ok(())
}

fn summary(world: &World, elapsed: Duration) -> MerchantSummary {
    let t = &world.tally;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let flows = world.flows.lock().expect("not poisoned");
    let mut stories: Vec<(u64, Story)> = flows.values().map(|f| (f.n, f.story.clone())).collect();
    stories.sort_by_key(|(n, _)| *n);
    let count =
        |pred: &dyn Fn(&Story) -> bool| stories.iter().filter(|(_, s)| pred(s)).count() as u64;
    let unfinished = flows.values().filter(|f| f.done.is_some()).count() as u64;
    MerchantSummary {
        flows: stories.len() as u64,
        otp_flows: count(&|s| s.kind == "mobile_gate"),
        page_flows: count(&|s| s.kind == "kassa24_page"),
        successes: count(&|s| s.result.as_deref() == Some("success")),
        declines: count(&|s| s.result.as_deref() == Some("decline")),
        refunds: load(&t.refunds),
        wrong_otps: load(&t.wrong_otps),
        new_otps: load(&t.new_otps),
        gate_requests: load(&t.gate_requests),
        gate_refused: load(&t.gate_refused),
        pages_opened: load(&t.pages_opened),
        pages_refused: load(&t.pages_refused),
        terminal_ok: load(&t.terminal_ok),
        callbacks_sent: load(&t.callbacks_sent),
        callbacks_delivered: load(&t.callbacks_delivered),
        webhook_signature_failures: load(&t.webhook_signature_failures),
        unfinished,
        transport_errors: load(&t.transport_errors),
        mismatch_count: load(&t.mismatch_count),
        mismatches: world.mismatches.lock().expect("not poisoned").clone(),
        seconds: elapsed.as_secs_f64(),
        payments: stories.into_iter().take(STORIES).map(|(_, s)| s).collect(),
    }
}

/// Serves `handle` on `listener` (HTTP/1.1) until the task is aborted.
async fn serve<F, Fut>(listener: TcpListener, world: Arc<World>, handle: F)
where
    F: Fn(Arc<World>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let world = world.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let world = world.clone();
                async move { Ok::<_, Infallible>(handle(world, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A JSON answer of the simulated parties.
pub(super) fn answer(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static parts")
}

/// A request's body, whole (the simulator's own peers send small ones).
pub(super) async fn body(req: Request<Incoming>) -> Bytes {
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}
