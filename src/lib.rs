//! cbgate: a callback gateway for ECOMMPAY-family payment platforms.
//!
//! Layout
//! - `signature`: canonical string (one simd-json parse) and HMAC-SHA512 (ring).
//! - `config`, `projects`: the TOML file, and its resolved running view.
//! - `http`: listeners with limits (https when configured), platform requests on one
//!   current-thread runtime per HTTP thread; `ingress`: `/callbacks`, `/terminal`; `admin`.
//! - `verifier`: where signature checks run; `callback`: the verified callback.
//! - `store`: the storage interface (intake: append → accepted | duplicate;
//!   deliveries: due, settle, dead letters, replay) and its engines: `store::embedded`
//!   (one node, a group-committed redb journal) and `store::jetstream` (several nodes
//!   on a NATS JetStream cluster); `dedup`: the set of durable keys; `clock`.
//! - `terminal`: verify/check_deposit under a budget (`terminal::answer` checks the
//!   merchant's answer); `webhook`: outbound signatures;
//!   `outbound`: the HTTP(S) client terminal and delivery use to reach merchants.
//! - `delivery`: fan-out to merchant endpoints, retries, breaker, dead letters.
//! - `merchant`: the merchant listener, where merchant backends get Payment Page
//!   invocations signed (`merchant::payment_page`) and Gate API requests signed and
//!   forwarded (`merchant::gate`) with a per-project token, so the secret stays here.
//! - `app`: start and shutdown order; `watchdog`: the critical threads, whose death
//!   turns readiness red and exits 70; `cli`: the subcommands; `simulate`: the
//!   platform's side, for load and acceptance runs (`simulate::merchant_side`: the flows
//!   that start at the merchant, with the platform's Gate API and Payment Page and the
//!   merchant backend played); `fuzzing`: the entry points of
//!   the cargo-fuzz targets in `fuzz/` (hidden from the docs).
//!
//! Life of a callback: `http` reads the body into one `Bytes` → `verifier` runs
//! `callback::verify` (parse once, project, signature, dedup key, routes) →
//! a known duplicate answers 200 at once → else `store` makes it durable (a redb group
//! commit with fdatasync, or a JetStream publish ack) → 200 → delivery to every
//! matching endpoint.
pub mod admin;
pub mod app;
pub mod callback;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dedup;
pub mod delivery;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ingress;
pub mod merchant;
pub mod metrics;
pub mod outbound;
pub mod projects;
pub mod signature;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod terminal;
pub mod verifier;
pub mod watchdog;
pub mod webhook;
