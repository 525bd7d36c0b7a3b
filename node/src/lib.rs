//! corvidd, the Corvid node: library half, so tests and benches can drive
//! the engine in-process. The binary is `src/main.rs`.

pub use corvid_api::{config, subjects};
pub mod core;
pub mod engine;
pub mod metrics;
pub mod publisher;
pub mod pubsub;
pub mod ratelimit;
pub mod rejects;
pub mod serve;
pub mod sim;
pub mod store;
pub mod verdicts;
pub mod xmpp;

/// The current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The current Unix time in seconds: the one place the node reads the clock.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
pub mod admin;
pub mod api;
pub mod component;
pub mod federation;
pub mod lists;
pub mod log;
pub mod sync;
