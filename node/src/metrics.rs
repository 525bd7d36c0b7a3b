//! The node's metrics, through the prometheus-client crate, rendered in
//! the Prometheus text format (0.0.4).
//!
//! Every series is a field with its labels typed: counting takes no global
//! lock and, for the per-request counters (lookups by kind, verdicts by
//! action, API rejections by reason), no allocation. Counters only grow;
//! the publish latency is a histogram, whose `_count` cannot go down.
//! Per-peer figures that `status` shows come from the core, never from
//! parsing this text back.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use corvid_protocol::aggregate::Action;

/// One label with a fixed value (no allocation to count).
type Fixed = [(&'static str, &'static str); 1];
/// A peer's name.
type ByPeer = [(&'static str, String); 1];
/// A peer's name and a rejection label.
type ByPeerReason = [(&'static str, String); 2];

/// Every series the node exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rejected_items: Family<ByPeerReason, Counter>,
    ingested_items: Family<ByPeer, Counter>,
    unconfirmed_dropped: Family<ByPeer, Counter>,
    canary_suspensions: Family<ByPeer, Counter>,
    peer_cap_held: Family<ByPeer, Counter>,
    local_signals: Family<Fixed, Counter>,
    lookups: Family<Fixed, Counter>,
    verdicts: Family<Fixed, Counter>,
    api_rejected: Family<Fixed, Counter>,
    api_connections_evicted: Counter,
    api_connections_refused: Counter,
    event_queue_dropped: Counter,
    published_items: Counter,
    retracted_items: Counter,
    peer_items: Family<ByPeer, Gauge>,
    peer_last_sync: Family<ByPeer, Gauge>,
    stored_contributions: Gauge,
    publish_latency: Histogram,
    component_requests: Family<Fixed, Counter>,
    component_refused: Family<Fixed, Counter>,
    component_sent: Family<Fixed, Counter>,
    component_connects: Counter,
    component_bytes: Family<Fixed, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            registry: Registry::default(),
            rejected_items: Family::default(),
            ingested_items: Family::default(),
            unconfirmed_dropped: Family::default(),
            canary_suspensions: Family::default(),
            peer_cap_held: Family::default(),
            local_signals: Family::default(),
            lookups: Family::default(),
            verdicts: Family::default(),
            api_rejected: Family::default(),
            api_connections_evicted: Counter::default(),
            api_connections_refused: Counter::default(),
            event_queue_dropped: Counter::default(),
            published_items: Counter::default(),
            retracted_items: Counter::default(),
            peer_items: Family::default(),
            peer_last_sync: Family::default(),
            stored_contributions: Gauge::default(),
            component_requests: Family::default(),
            component_refused: Family::default(),
            component_sent: Family::default(),
            component_connects: Counter::default(),
            component_bytes: Family::default(),
            // 1 ms to about 16 s.
            publish_latency: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
            ),
        };
        let mut r = Registry::default();
        // Counters are registered without `_total`: the encoder adds it.
        r.register(
            "corvid_rejected_items",
            "Items from peers that were dropped, by peer and reason",
            m.rejected_items.clone(),
        );
        r.register(
            "corvid_ingested_items",
            "Records from peers that were verified and stored",
            m.ingested_items.clone(),
        );
        r.register(
            "corvid_unconfirmed_dropped",
            "Entries dropped after staying missing from their feed for the grace period",
            m.unconfirmed_dropped.clone(),
        );
        r.register(
            "corvid_canary_suspensions",
            "Peers moved to observe mode for reporting a canary or an own host",
            m.canary_suspensions.clone(),
        );
        r.register(
            "corvid_peer_cap_held",
            "Subjects held at flag because a peer they needed had caused its max_new_blocks_per_hour",
            m.peer_cap_held.clone(),
        );
        r.register(
            "corvid_local_signals",
            "What local users did in their spam folders, as the XMPP server reported it (release, delete)",
            m.local_signals.clone(),
        );
        r.register(
            "corvid_lookups",
            "Verdict lookups, by kind of subject",
            m.lookups.clone(),
        );
        r.register(
            "corvid_verdicts",
            "Verdicts answered, by action",
            m.verdicts.clone(),
        );
        r.register(
            "corvid_api_rejected",
            "API requests refused before their handler, by reason",
            m.api_rejected.clone(),
        );
        r.register(
            "corvid_api_connections_evicted",
            "Unauthenticated API connections closed to make room",
            m.api_connections_evicted.clone(),
        );
        r.register(
            "corvid_api_connections_refused",
            "API connections refused at the connection cap",
            m.api_connections_refused.clone(),
        );
        r.register(
            "corvid_event_queue_dropped",
            "XMPP events dropped because the queue was full (a resync follows)",
            m.event_queue_dropped.clone(),
        );
        r.register(
            "corvid_published_items",
            "Items published to the own feed",
            m.published_items.clone(),
        );
        r.register(
            "corvid_retracted_items",
            "Items retracted from the own feed",
            m.retracted_items.clone(),
        );
        r.register(
            "corvid_peer_items",
            "Records read in a peer's last complete sync",
            m.peer_items.clone(),
        );
        r.register(
            "corvid_peer_last_sync_timestamp_seconds",
            "When a peer's feed was last read completely (Unix time)",
            m.peer_last_sync.clone(),
        );
        r.register(
            "corvid_stored_contributions",
            "Contributions stored, from every source",
            m.stored_contributions.clone(),
        );
        r.register_with_unit(
            "corvid_publish_latency",
            "Time to publish one item to the own feed",
            Unit::Seconds,
            m.publish_latency.clone(),
        );
        r.register(
            "corvid_component_requests",
            "Stanzas the component answered, by kind",
            m.component_requests.clone(),
        );
        r.register(
            "corvid_component_refused",
            "Stanzas the component refused or dropped, by reason",
            m.component_refused.clone(),
        );
        r.register(
            "corvid_component_sent",
            "Block-list stanzas the component sent, by kind",
            m.component_sent.clone(),
        );
        r.register(
            "corvid_component_connects",
            "Times the component connection came up",
            m.component_connects.clone(),
        );
        r.register(
            "corvid_component_bytes",
            "Bytes on the component stream, by direction (in, out)",
            m.component_bytes.clone(),
        );
        Self { registry: r, ..m }
    }
}

impl Metrics {
    /// An item from `peer` was dropped for `reason` (its label).
    pub fn rejected(&self, peer: &str, reason: &str) {
        self.rejected_items
            .get_or_create(&[("peer", peer.to_owned()), ("reason", reason.to_owned())])
            .inc();
    }

    /// `n` records from `peer` were stored.
    pub fn ingested(&self, peer: &str, n: u64) {
        self.ingested_items
            .get_or_create(&[("peer", peer.to_owned())])
            .inc_by(n);
    }

    /// `n` unconfirmed entries of `peer` were dropped.
    pub fn unconfirmed_dropped(&self, peer: &str, n: u64) {
        self.unconfirmed_dropped
            .get_or_create(&[("peer", peer.to_owned())])
            .inc_by(n);
    }

    /// `peer` was suspended for reporting a canary.
    pub fn canary_suspended(&self, peer: &str) {
        self.canary_suspensions
            .get_or_create(&[("peer", peer.to_owned())])
            .inc();
    }

    /// A subject was held at `flag` by `peer`'s cap on new blocks.
    pub fn peer_cap_held(&self, peer: &str) {
        self.peer_cap_held
            .get_or_create(&[("peer", peer.to_owned())])
            .inc();
    }

    /// A local signal (`release` or `delete`) was recorded.
    pub fn local_signal(&self, kind: &'static str) {
        self.local_signals.get_or_create(&[("kind", kind)]).inc();
    }

    /// A lookup of a `kind` of subject (jid, domain, ip, digest).
    pub fn lookup(&self, kind: &'static str) {
        self.lookups.get_or_create(&[("kind", kind)]).inc();
    }

    /// A verdict answered.
    pub fn verdict(&self, action: Action) {
        let action = match action {
            Action::Allow => "allow",
            Action::Flag => "flag",
            Action::Block => "block",
        };
        self.verdicts.get_or_create(&[("action", action)]).inc();
    }

    /// An API request refused before its handler.
    pub fn api_rejected(&self, reason: &'static str) {
        self.api_rejected.get_or_create(&[("reason", reason)]).inc();
    }

    /// An unauthenticated connection was closed to make room.
    pub fn connection_evicted(&self) {
        self.api_connections_evicted.inc();
    }

    /// A connection was refused at the cap.
    pub fn connection_refused(&self) {
        self.api_connections_refused.inc();
    }

    /// The component answered a stanza of this kind.
    pub fn component_request(&self, kind: &'static str) {
        self.component_requests
            .get_or_create(&[("kind", kind)])
            .inc();
    }

    /// The component refused or dropped a stanza for this reason.
    pub fn component_refused(&self, reason: &'static str) {
        self.component_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// The component sent a block-list stanza of this kind.
    pub fn component_sent(&self, kind: &'static str, n: u64) {
        self.component_sent
            .get_or_create(&[("kind", kind)])
            .inc_by(n);
    }

    /// Bytes read from (`in`) or written to (`out`) the component stream.
    pub fn component_bytes(&self, direction: &'static str, n: u64) {
        self.component_bytes
            .get_or_create(&[("direction", direction)])
            .inc_by(n);
    }

    /// The component connection came up.
    pub fn component_connected(&self) {
        self.component_connects.inc();
    }

    /// An XMPP event was dropped (queue full).
    pub fn event_dropped(&self) {
        self.event_queue_dropped.inc();
    }

    /// An item was published to the own feed, taking `seconds`.
    pub fn published(&self, seconds: f64) {
        self.publish_latency.observe(seconds);
        self.published_items.inc();
    }

    /// An item was retracted from the own feed.
    pub fn retracted(&self) {
        self.retracted_items.inc();
    }

    /// A complete read of `peer`'s feed found `records`, at `now`.
    pub fn peer_synced(&self, peer: &str, records: u64, now: u64) {
        let label = [("peer", peer.to_owned())];
        self.peer_items
            .get_or_create(&label)
            .set(i64::try_from(records).unwrap_or(i64::MAX));
        self.peer_last_sync
            .get_or_create(&label)
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// The number of stored contributions.
    pub fn set_stored(&self, n: u64) {
        self.stored_contributions
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The `Content-Type` of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_total_and_labels() {
        let m = Metrics::default();
        m.rejected("m.test", "bad-signature");
        m.rejected("m.test", "bad-signature");
        m.lookup("jid");
        m.verdict(Action::Block);
        m.published(0.004);
        m.peer_synced("b.test", 12, 1_700_000_000);
        let text = m.render();
        for line in [
            "corvid_rejected_items_total{peer=\"m.test\",reason=\"bad-signature\"} 2",
            "corvid_lookups_total{kind=\"jid\"} 1",
            "corvid_verdicts_total{action=\"block\"} 1",
            "corvid_published_items_total 1",
            "corvid_publish_latency_seconds_count 1",
            "corvid_peer_items{peer=\"b.test\"} 12",
            "corvid_peer_last_sync_timestamp_seconds{peer=\"b.test\"} 1700000000",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
