//! Rejected items, logged as one summary line per peer per interval
//! instead of a line each: a hostile peer cannot flood the log. Every
//! rejection is still counted at once in `corvid_rejected_items_total`, and
//! logged at debug level.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Rejections since the last summary.
#[derive(Debug, Default)]
pub struct RejectLog {
    peers: Mutex<BTreeMap<String, PeerRejects>>,
}

#[derive(Debug, Default)]
struct PeerRejects {
    by_reason: BTreeMap<String, u64>,
    /// The first rejection of the interval: `(item id, why)`.
    example: Option<(String, String)>,
}

/// Longest example text kept (a peer chooses what goes in it).
const EXAMPLE_MAX: usize = 200;

impl RejectLog {
    /// Notes one rejected item.
    pub fn note(&self, peer: &str, item_id: &str, reason: &str, why: &str) {
        tracing::debug!(peer, item = item_id, reason, "rejected item: {why}");
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = peers.entry(peer.to_owned()).or_default();
        *entry.by_reason.entry(reason.to_owned()).or_default() += 1;
        if entry.example.is_none() {
            let clip = |s: &str| s.chars().take(EXAMPLE_MAX).collect::<String>();
            entry.example = Some((clip(item_id), clip(why)));
        }
    }

    /// Logs one WARN line per peer with rejections since the last call, and
    /// starts a new interval. Returns the lines (for tests).
    pub fn flush(&self) -> Vec<String> {
        let peers = std::mem::take(
            &mut *self
                .peers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut lines = Vec::new();
        for (peer, r) in peers {
            let total: u64 = r.by_reason.values().sum();
            let reasons: Vec<String> = r
                .by_reason
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let example = r
                .example
                .map(|(item, why)| format!("; first: item {item:?}: {why}"))
                .unwrap_or_default();
            let line = format!(
                "rejected {total} item(s) from {peer} since the last summary ({}){example}",
                reasons.join(", ")
            );
            tracing::warn!(peer, total, "{line}");
            lines.push(line);
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_rejections_is_one_line_per_peer() {
        let log = RejectLog::default();
        for i in 0..10_000 {
            log.note(
                "m.test",
                &format!("d/{i}"),
                "bad-signature",
                "signature does not verify",
            );
        }
        log.note("m.test", "x", "expired", "expired");
        log.note("n.test", "y", "malformed", "not XML");
        let lines = log.flush();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("rejected 10001 item(s) from m.test")
                && lines[0].contains("bad-signature=10000, expired=1")
                && lines[0].contains("\"d/0\""),
            "{}",
            lines[0]
        );
        assert!(log.flush().is_empty(), "a new interval starts empty");
    }
}
