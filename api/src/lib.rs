//! What corvidd and the `corvid` CLI share, so that the CLI needs neither
//! the node nor its dependencies (XMPP, HTTP server, storage engines):
//! the config file and its checks, the parsing of subjects and lookups,
//! the blocking client of corvidd's local API, and the model of health
//! checks that `status` and `doctor` print.

pub mod client;
pub mod config;
pub mod health;
pub mod subjects;

/// The current Unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
