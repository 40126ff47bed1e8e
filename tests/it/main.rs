//! cbgate's integration tests: the real binary and servers on 127.0.0.1, real HTTP.
mod breaker;
mod cli;
mod cluster;
mod contract;
mod delivery;
mod endpoint;
mod faults;
mod hostile;
mod ingest;
mod k6;
mod lifecycle;
mod merchant;
mod nats;
mod signature;
mod simulate;
mod support;
mod terminal;
