//! The platform's Gate API and Payment Page as `cbgate simulate --merchant` plays them:
//! every request's signature checked under the project secret (the platform's order,
//! no fallback), a Gate API request acknowledged, and the platform's next move made in
//! the background: the OTP clarification callback (again after a wrong OTP), the final
//! callback, the refund callback. A Payment Page URL is read as the platform reads it:
//! the query's text values, the signature over all but `signature`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::merchant_side::{World, answer, body, bump};
use crate::signature;
use crate::verifier::with_canonicalizer;

pub(super) async fn handle(world: Arc<World>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/payment") => {
            let query = req.uri().query().unwrap_or_default().to_string();
            page(&world, &query)
        }
        (Method::POST, p) if p.starts_with("/v2/") => {
            let bytes = body(req).await;
            gate(&world, &path, &bytes)
        }
        _ => answer(
            StatusCode::NOT_FOUND,
            &json!({"status": "error", "message": "no such page"}),
        ),
    }
}

fn refused(message: &str) -> Response<Full<Bytes>> {
    answer(
        StatusCode::BAD_REQUEST,
        &json!({"status": "error", "code": "1401", "message": message}),
    )
}

/// A Gate API request from cbgate.
fn gate(world: &Arc<World>, path: &str, bytes: &[u8]) -> Response<Full<Bytes>> {
    bump(&world.tally.gate_requests);
    let checked = with_canonicalizer(crate::signature::DEFAULT_MAX_DEPTH, |canon| {
        signature::verify(canon, bytes, &world.secrets, false)
    });
    if let Err(e) = checked {
        bump(&world.tally.gate_refused);
        world.mismatch(format!("the platform refused {path}: {e}"));
        return refused("Invalid signature");
    }
    let Ok(request) = serde_json::from_slice::<Value>(bytes) else {
        return refused("Invalid JSON");
    };
    let general = &request["general"];
    if general["project_id"] != world.plan.project {
        world.mismatch(format!("{path}: project {}", general["project_id"]));
        return refused("Unknown project");
    }
    if path == "/v2/info/mobile/sale/list" {
        let operators: Vec<Value> = ["ACTIV", "ALTEL", "BEELINE", "KCELL", "TELE2"]
            .iter()
            .map(|id| json!({"id": id, "name": id}))
            .collect();
        return answer(
            StatusCode::OK,
            &json!({"status": "success", "operators": operators}),
        );
    }
    let payment_id = general["payment_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let known = world.with_flow(&payment_id, |_| ()).is_some();
    if !known {
        world.mismatch(format!("{path}: unknown payment {payment_id:?}"));
        return refused("Payment not found");
    }
    let next: Option<Move> = match path {
        "/v2/payment/mobile/sale" => {
            let fits = world.with_flow(&payment_id, |f| {
                f.otp = new_otp();
                request["payment"]["amount"] == f.story.amount
                    && request["payment"]["currency"] == "KZT"
                    && request["account"]["number"] == f.phone.as_str()
            });
            if fits != Some(true) {
                world.mismatch(format!(
                    "sale of {payment_id}: not the flow's amount or account"
                ));
                return refused("Invalid parameters");
            }
            Some(Move::Clarify)
        }
        "/v2/payment/clarification" => {
            let code = &request["additional_data"]["additional_data"]["approval_code"];
            let right = world.with_flow(&payment_id, |f| *code == f.otp.as_str());
            if right == Some(true) {
                Some(Move::Final)
            } else {
                // A wrong OTP in time: the platform asks for it again.
                bump(&world.tally.wrong_otps);
                Some(Move::Clarify)
            }
        }
        "/v2/customer/action/resend" => {
            world.with_flow(&payment_id, |f| f.otp = new_otp());
            bump(&world.tally.new_otps);
            None
        }
        "/v2/payment/mobile/refund" => Some(Move::Refund),
        _ => {
            world.mismatch(format!("unexpected Gate API path {path}"));
            return answer(
                StatusCode::NOT_FOUND,
                &json!({"status": "error", "message": "Not found"}),
            );
        }
    };
    if let Some(next) = next {
        let world = world.clone();
        let payment_id = payment_id.clone();
        tokio::spawn(async move { next.make(&world, &payment_id).await });
    }
    answer(
        StatusCode::OK,
        &json!({"project_id": world.plan.project, "payment_id": payment_id,
            "status": "success", "request_id": format!("{payment_id}-{}", fastrand::u32(..))}),
    )
}

/// What the platform does after acknowledging a request.
enum Move {
    /// The callback asking for the OTP.
    Clarify,
    /// The purchase's result.
    Final,
    Refund,
}

impl Move {
    async fn make(self, world: &World, payment_id: &str) {
        let project = world.plan.project;
        let payload = world.with_flow(payment_id, |f| {
            let ids = f.ids(world.run);
            let amount = f.story.amount;
            let mut payload = match self {
                Move::Clarify => {
                    f.asked += 1;
                    let wait = "awaiting clarification";
                    let message =
                        format!("Enter the code sent to the customer (request {})", f.asked);
                    let mut p = ids.callback(
                        project, "mobile", "sale", wait, wait, amount, "0", &message, 0,
                    );
                    p["clarification_fields"] = json!({"additional_data": {"additional_data":
                        {"approval_code": {"type": "string", "pattern": "^[0-9]{6}$"}}}});
                    p
                }
                Move::Final => {
                    let (status, code, message) = super::outcome(!f.declines());
                    ids.callback(
                        project, "mobile", "sale", status, status, amount, code, message, 0,
                    )
                }
                Move::Refund => ids.callback(
                    project, "mobile", "refund", "refunded", "success", amount, "0", "Success", 1,
                ),
            };
            payload["account"] = json!({"number": f.phone, "type": "TELE2"});
            payload
        });
        if let Some(payload) = payload {
            world.callback(&payload).await;
        }
    }
}

fn new_otp() -> String {
    format!("{:06}", fastrand::u32(0..1_000_000))
}

/// A customer opens a Payment Page URL.
fn page(world: &World, query: &str) -> Response<Full<Bytes>> {
    let mut params = serde_json::Map::new();
    let mut text = String::from("{");
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let (k, v) = (k.into_owned(), v.into_owned());
        if text.len() > 1 {
            text.push(',');
        }
        // The query's values are text: signed and checked as JSON strings.
        text.push_str(&format!("{}:{}", json!(k), json!(v)));
        params.insert(k, Value::String(v));
    }
    text.push('}');
    let checked = with_canonicalizer(crate::signature::DEFAULT_MAX_DEPTH, |canon| {
        signature::verify(canon, text.as_bytes(), &world.secrets, false)
    });
    let payment_id = params
        .get("payment_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match checked {
        Ok(_) if world.with_flow(payment_id, |_| ()).is_some() => {
            bump(&world.tally.pages_opened);
            answer(
                StatusCode::OK,
                &json!({"status": "instruction", "method": params.get("force_payment_method"),
                    "pay_at": "a Kassa24 kiosk", "account": params.get("customer_id"),
                    "amount": params.get("payment_amount"), "currency": "KZT"}),
            )
        }
        Ok(_) => {
            bump(&world.tally.pages_refused);
            world.mismatch(format!("Payment Page: unknown payment {payment_id:?}"));
            refused("Payment not found")
        }
        Err(e) => {
            bump(&world.tally.pages_refused);
            world.mismatch(format!("Payment Page refused {payment_id:?}: {e}"));
            refused("Invalid signature")
        }
    }
}
