//! The merchant backend behind cbgate, as `cbgate simulate --merchant` plays it: the
//! endpoint cbgate delivers callbacks to (`/hooks`, Standard Webhooks signatures
//! checked when it has the secret) and the terminal_url cbgate forwards kiosk requests
//! to (`/terminal`). A clarification callback makes it ask the customer for the OTP
//! and send it through cbgate; a successful purchase may be refunded through cbgate.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::merchant_side::{World, answer, body, bump};

pub(super) async fn handle(world: Arc<World>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let headers = req.headers().clone();
    let bytes = body(req).await;
    match (method, path.as_str()) {
        (Method::POST, "/hooks") => hook(&world, &headers, bytes),
        (Method::POST, "/terminal") => terminal(&world, &bytes),
        _ => answer(StatusCode::NOT_FOUND, &json!({"error": "no such route"})),
    }
}

/// A delivery from cbgate: taken at once, acted on in the background.
fn hook(world: &Arc<World>, headers: &HeaderMap, bytes: Bytes) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let id = header("webhook-id");
    if let Some(key) = &world.webhook_key {
        let timestamp = header("webhook-timestamp").parse().unwrap_or(0);
        let expected = key.sign(&id, timestamp, &bytes);
        if !header("webhook-signature")
            .split(' ')
            .any(|s| s == expected)
        {
            bump(&world.tally.webhook_signature_failures);
            world.mismatch(format!("delivery {id}: bad webhook signature"));
            return answer(StatusCode::BAD_REQUEST, &json!({"error": "bad signature"}));
        }
    }
    // At least once: a delivery seen before is answered again, not acted on again.
    if !world.delivered.lock().expect("not poisoned").insert(id) {
        return answer(StatusCode::OK, &json!({"status": "seen"}));
    }
    let Ok(callback) = serde_json::from_slice::<Value>(&bytes) else {
        world.mismatch("a delivery that is not JSON".into());
        return answer(StatusCode::BAD_REQUEST, &json!({"error": "not JSON"}));
    };
    let payment_id = callback["payment"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if world.with_flow(&payment_id, |_| ()).is_none() {
        // Another run's payment: taken, nothing to do.
        return answer(StatusCode::OK, &json!({"status": "ok"}));
    }
    bump(&world.tally.callbacks_delivered);
    let world = world.clone();
    tokio::spawn(async move {
        if let Err(e) = react(&world, &payment_id, &callback).await {
            world.mismatch(format!("{payment_id}: {e}"));
        }
    });
    answer(StatusCode::OK, &json!({"status": "ok"}))
}

/// What the backend does about one callback.
async fn react(world: &World, payment_id: &str, callback: &Value) -> Result<(), String> {
    let operation = callback["operation"]["type"].as_str().unwrap_or_default();
    let status = callback["payment"]["status"].as_str().unwrap_or_default();
    let general = json!({"project_id": world.plan.project, "payment_id": payment_id});
    match (operation, status) {
        ("sale", "awaiting clarification") => {
            // The customer types the OTP from the SMS (the wrong one first, in some
            // flows); the backend may first ask for a new one.
            let typed = world
                .with_flow(payment_id, |f| {
                    if f.wrong_left > 0 {
                        f.wrong_left -= 1;
                        f.story.wrong_otps += 1;
                        Typed::Wrong(wrong(&f.otp))
                    } else if f.wants_new_otp && f.story.wrong_otps > 0 && !f.resent {
                        f.resent = true;
                        f.story.new_otp = true;
                        Typed::AfterNewOtp
                    } else {
                        Typed::Right(f.otp.clone())
                    }
                })
                .ok_or("the flow is gone")?;
            let code = match typed {
                Typed::Wrong(code) | Typed::Right(code) => code,
                Typed::AfterNewOtp => {
                    let resend =
                        json!({"general": general, "customer": {"ip_address": "198.51.100.47"}});
                    acknowledged(
                        world
                            .merchant("/gate/v2/customer/action/resend", &resend)
                            .await,
                    )?;
                    world
                        .with_flow(payment_id, |f| f.otp.clone())
                        .ok_or("the flow is gone")?
                }
            };
            let otp = json!({"general": general,
                "additional_data": {"additional_data": {"approval_code": code}}});
            acknowledged(world.merchant("/gate/v2/payment/clarification", &otp).await)
        }
        ("sale", "success" | "decline") => {
            let (expected, refund) = world
                .with_flow(payment_id, |f| {
                    f.story.result = Some(status.to_string());
                    let expected = if f.declines() { "decline" } else { "success" };
                    (expected, f.wants_refund && status == "success")
                })
                .ok_or("the flow is gone")?;
            if status != expected {
                return Err(format!("ended in {status}, expected {expected}"));
            }
            if refund {
                let refund = json!({"general": general,
                    "payment": {"amount": callback["payment"]["sum"]["amount"], "currency": "KZT",
                        "description": "Возврат покупки"}});
                return acknowledged(
                    world
                        .merchant("/gate/v2/payment/mobile/refund", &refund)
                        .await,
                );
            }
            world.finish(payment_id);
            Ok(())
        }
        ("refund", "refunded") => {
            bump(&world.tally.refunds);
            world.with_flow(payment_id, |f| f.story.refunded = true);
            world.finish(payment_id);
            Ok(())
        }
        other => Err(format!("unexpected callback {other:?}")),
    }
}

enum Typed {
    Wrong(String),
    Right(String),
    /// Ask for a new OTP, then type it.
    AfterNewOtp,
}

/// A code that is not `otp`.
fn wrong(otp: &str) -> String {
    let n: u32 = otp.parse().unwrap_or(0);
    format!("{:06}", (n + 1) % 1_000_000)
}

/// The platform acknowledged a Gate API request (through cbgate).
fn acknowledged(answer: Result<Value, String>) -> Result<(), String> {
    match answer? {
        v if v["status"] == "success" => Ok(()),
        v => Err(format!("not acknowledged: {v}")),
    }
}

/// A kiosk request cbgate forwarded: the account exists when a Payment Page was signed
/// for it; the deposit's payment id is that payment's.
fn terminal(world: &World, bytes: &[u8]) -> Response<Full<Bytes>> {
    let request: Value = serde_json::from_slice(bytes).unwrap_or_default();
    let customer = request["customer_id"].as_str().unwrap_or_default();
    let payment_id = world
        .customers
        .lock()
        .expect("not poisoned")
        .get(customer)
        .cloned();
    let reply = match (request["type"].as_str(), payment_id) {
        (_, None) => json!({"code": 404, "error_description": "Account does not exist"}),
        (Some("verify"), Some(_)) => json!({"code": 0, "currency": "KZT"}),
        (Some("check_deposit"), Some(id)) => {
            json!({"code": 0, "payment_id": id, "description": "Kassa24 deposit"})
        }
        _ => json!({"code": 500, "error_description": "Unknown request type"}),
    };
    answer(StatusCode::OK, &reply)
}
