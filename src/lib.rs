//! cbgate: a callback gateway for ECOMMPAY-family payment platforms.
//!
//! Layout
//! - `signature`: canonical string (one simd-json parse) and HMAC-SHA512 (ring).
//! - `config`, `projects`: the TOML file, and its resolved running view.
//! - `http`: listeners with limits (https when configured), platform requests on one
//!   current-thread runtime per HTTP thread; `ingress`: `/callbacks`, `/terminal`; `admin`.
//! - `verifier`: where signature checks run; `callback`: the verified callback.
//! - `dedup`, `journal`: durable keys and the group-committed redb journal.
//! - `terminal`: verify/check_deposit under a budget (`terminal::answer` checks the
//!   merchant's answer); `webhook`: outbound signatures;
//!   `outbound`: the HTTP(S) client terminal and delivery use to reach merchants.
//! - `delivery`: fan-out to merchant endpoints, retries, breaker, dead letters.
//! - `app`: start and shutdown order; `cli`: the subcommands; `simulate`: the
//!   platform's side, for load and acceptance runs; `fuzzing`: the entry points of
//!   the cargo-fuzz targets in `fuzz/` (hidden from the docs).
//!
//! Life of a callback: `http` reads the body into one `Bytes` → `verifier` runs
//! `callback::verify` (parse once, project, signature, dedup key, routes) →
//! `dedup` hit answers 200 at once → else `journal` group-commits it with fdatasync
//! → 200 → delivery to every matching endpoint.
pub mod admin;
pub mod app;
pub mod callback;
pub mod cli;
pub mod config;
pub mod dedup;
pub mod delivery;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ingress;
pub mod journal;
pub mod metrics;
pub mod outbound;
pub mod projects;
pub mod signature;
pub mod simulate;
pub mod telemetry;
pub mod terminal;
pub mod verifier;
pub mod webhook;
