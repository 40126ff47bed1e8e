//! cbgate: a callback gateway for ECOMMPAY-family payment platforms.
//!
//! Layout
//! - `signature`: canonical string (one simd-json parse) and HMAC-SHA512 (ring).
//! - `config`: the TOML file, secrets, validation that lists every problem.
//! - `webhook`: Standard Webhooks signatures on forwarded events.
//! - `cli`: the `cbgate` subcommands.
pub mod cli;
pub mod config;
pub mod signature;
pub mod webhook;
