//! Wall-clock time as the store and delivery record it: milliseconds for events and
//! attempts, whole seconds for dedup expiry (a u32 lasts to 2106).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_s() -> u32 {
    (now_ms() / 1000) as u32
}
