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
    /// Every rejection since start, per peer and reason: what `peer show`
    /// and `status` report (never parsed back from the metrics text).
    totals: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
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
        drop(peers);
        let mut totals = self
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *totals
            .entry(peer.to_owned())
            .or_default()
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    /// A peer's rejections since start, by reason.
    pub fn totals(&self, peer: &str) -> BTreeMap<String, u64> {
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(peer)
            .cloned()
            .unwrap_or_default()
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
    fn totals_outlive_the_summaries() {
        let log = RejectLog::default();
        log.note("b.example", "i1", "bad-signature", "x");
        log.note("b.example", "i2", "bad-signature", "x");
        log.note("b.example", "i3", "expired", "x");
        log.note("c.example", "i4", "expired", "x");
        assert_eq!(log.flush().len(), 2);
        log.note("b.example", "i5", "expired", "x");
        let b = log.totals("b.example");
        assert_eq!(b.get("bad-signature"), Some(&2));
        assert_eq!(b.get("expired"), Some(&2));
        assert_eq!(log.totals("c.example").get("expired"), Some(&1));
        assert!(log.totals("d.example").is_empty());
    }

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
