//! Following peers' feeds and RTBL nodes: subscribe, backfill at start and
//! after every reconnect, apply live events, re-check subscriptions.
//!
//! Every item goes through the protocol crate's verifier; a rejected item
//! is counted per peer and reason, logged, and dropped. Only a signed
//! retraction, a revocation or expiry removes a peer's contribution: a
//! purge, a deletion or an item missing at reconciliation only marks
//! entries unconfirmed (they count through the grace period).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::{Event, Outcome, verify_peer_item};
use anyhow::{Result, bail};
use corvid_protocol::feed::{self, FeedReader, LayoutChoice};
use corvid_protocol::item::{Body, FeedAddress, KeyRing, SignedItem};
use corvid_protocol::record::{Category, Record};
use corvid_protocol::subject::{IpPrefix, SubjectKey};
use tokio::sync::mpsc;
use xmpp_parsers::jid::BareJid;
use xmpp_parsers::minidom::Element;

use crate::component::ComponentHandle;
use crate::engine::{Engine, Ingested, Peer, Rtbl};
use crate::lists::attr;
use crate::pubsub::{self, FeedEvent};
use crate::ratelimit::TokenBucket;
use crate::xmpp::{Link, LinkEvent};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;

/// How often rejected items are summarised in the log (one line per peer).
const REJECT_SUMMARY: Duration = Duration::from_secs(60);

/// Delta items fetched per request (each well under the stanza limits).
const DELTA_BATCH: usize = 16;

/// What the sync manager knows of each source beyond the store: its last
/// error and since when reads fail, its latest checkpoint, and the read in
/// progress. `status` shows it, so that a peer that cannot be read is
/// named with the reason rather than looking synced.
#[derive(Debug, Default)]
pub struct Board(std::sync::Mutex<HashMap<String, SourceSync>>);

/// One source's entry on the [`Board`] (times in Unix seconds).
#[derive(Debug, Default, Clone)]
pub struct SourceSync {
    /// The last read's error, while reads fail.
    pub last_error: Option<String>,
    /// When the last read failed.
    pub error_at: Option<u64>,
    /// Reads failed in a row.
    pub failures: u32,
    /// When the read in progress started.
    pub reading_since: Option<u64>,
    /// The newest record id named by the peer's latest checkpoint.
    pub checkpoint_last: Option<String>,
    /// The number of records the peer's latest checkpoint counts.
    pub checkpoint_records: Option<u64>,
    /// How many of those go to federation members only.
    pub checkpoint_members_only: u64,
    /// When that checkpoint arrived.
    pub checkpoint_at: Option<u64>,
}

impl Board {
    fn with(&self, source: &str, f: impl FnOnce(&mut SourceSync)) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(map.entry(source.to_owned()).or_default());
    }

    /// A read of `source` started.
    pub fn started(&self, source: &str, now: u64) {
        self.with(source, |s| s.reading_since = Some(now));
    }

    /// A read of `source` completed.
    pub fn succeeded(&self, source: &str) {
        self.with(source, |s| {
            s.reading_since = None;
            s.last_error = None;
            s.failures = 0;
        });
    }

    /// A read of `source` failed with `error`.
    pub fn failed(&self, source: &str, error: String, now: u64) {
        self.with(source, |s| {
            s.reading_since = None;
            s.last_error = Some(error);
            s.error_at = Some(now);
            s.failures = s.failures.saturating_add(1);
        });
    }

    /// A verified checkpoint from `source` (other bodies are ignored).
    pub fn checkpoint(&self, source: &str, body: &Body, now: u64) {
        let Body::Checkpoint {
            last,
            records,
            members_only,
            ..
        } = body
        else {
            return;
        };
        self.with(source, |s| {
            s.checkpoint_last = last.map(|l| l.to_string());
            s.checkpoint_records = Some(*records);
            s.checkpoint_members_only = *members_only;
            s.checkpoint_at = Some(now);
        });
    }

    /// A copy of `source`'s entry.
    pub fn get(&self, source: &str) -> SourceSync {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(source).cloned().unwrap_or_default()
    }
}

/// Runs the sync manager: consumes link events, backfills, re-checks.
pub async fn run(
    engine: Arc<Engine>,
    link: Link,
    component: Option<ComponentHandle>,
    mut events: mpsc::Receiver<LinkEvent>,
    overflow: Arc<tokio::sync::Notify>,
    resync: Duration,
) {
    let (resync_tx, mut resync_rx) = mpsc::unbounded_channel::<String>();
    // A new snapshot head found by the core asks for a reread here.
    engine.set_resync(resync_tx.clone());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut buckets: HashMap<String, TokenBucket> = HashMap::new();
    // One backfill per source at a time; requests meanwhile coalesce into
    // one more run (a burst of head events must not start a burst of reads).
    let mut running: HashSet<String> = HashSet::new();
    let mut again: HashSet<String> = HashSet::new();
    let start = |source: String, running: &mut HashSet<String>, again: &mut HashSet<String>| {
        if running.contains(&source) {
            again.insert(source);
        } else {
            running.insert(source.clone());
            spawn_backfill(
                &engine,
                &link,
                component.as_ref(),
                source,
                &resync_tx,
                &done_tx,
            );
        }
    };
    let mut check = tokio::time::interval(resync);
    check.tick().await;
    let mut summary = tokio::time::interval(REJECT_SUMMARY);
    summary.tick().await;
    // Layout 2: when each log peer was last heard from, and its checkpoint
    // mismatches.
    let mut heard: HashMap<String, Instant> = HashMap::new();
    let mut mismatches: HashMap<String, (u32, Option<Instant>)> = HashMap::new();
    let mut silence = tokio::time::interval(Duration::from_secs(5));
    silence.tick().await;
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { return };
                match event {
                    LinkEvent::Online { .. } => {
                        for source in all_sources(&engine) {
                            start(source, &mut running, &mut again);
                        }
                    }
                    LinkEvent::PubSub { from, event } => {
                        let from = from.map(|j| j.to_bare().to_string()).unwrap_or_default();
                        handle_event(&engine, &from, &event, &mut buckets, &resync_tx, &mut mismatches, &mut heard).await;
                    }
                }
            }
            _ = summary.tick() => {
                engine.rejects().flush();
            }
            () = overflow.notified() => {
                // The event queue overflowed: some items were dropped, so
                // reread every feed.
                tracing::warn!("PubSub event queue full: events dropped; rereading every feed");
                for source in all_sources(&engine) {
                    start(source, &mut running, &mut again);
                }
            }
            Some(source) = resync_rx.recv() => {
                start(source, &mut running, &mut again);
            }
            _ = silence.tick() => {
                // A log peer sends a checkpoint every 20 s: after 30 s of
                // silence the subscription or a notification was lost.
                // Subscribing again and reading on from the cursor (one
                // small request when nothing is missing) repairs both.
                let settings = engine.settings();
                for (domain, _) in settings.peers.iter() {
                    let is_log = engine.store().peer(domain).is_ok_and(|p| p.log_layout);
                    let quiet = heard
                        .get(domain)
                        .is_none_or(|t| t.elapsed() > crate::log::CHECKPOINT_EVERY * 3 / 2);
                    if is_log && quiet && component.as_ref().is_some_and(ComponentHandle::online) {
                        heard.insert(domain.clone(), Instant::now());
                        start(domain.clone(), &mut running, &mut again);
                    }
                }
            }
            Some(source) = done_rx.recv() => {
                heard.insert(source.clone(), Instant::now());
                running.remove(&source);
                if again.remove(&source) {
                    start(source, &mut running, &mut again);
                }
            }
            _ = check.tick() => {
                // A peer's server can restart while ours stays up and lose our
                // subscription: check each one and backfill where it is gone.
                for source in all_sources(&engine) {
                    if engine.store().peer(&source).is_ok_and(|p| p.log_layout) {
                        // Checked by its checkpoints instead.
                        continue;
                    }
                    let (engine, link, tx) = (Arc::clone(&engine), link.clone(), resync_tx.clone());
                    tokio::spawn(async move {
                        let Some(feed) = feed_of(&engine, &source) else { return };
                        match pubsub::is_subscribed(&link, &feed.service, &feed.node, link.bare()).await {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::info!(source, "subscription gone; resubscribing and backfilling");
                                let _ = tx.send(source);
                            }
                            Err(e) => tracing::debug!(source, "subscription check failed: {e}"),
                        }
                    });
                }
            }
        }
    }
}

/// The services whose PubSub events the link queues: every configured
/// peer's and RTBL's, and our own (to notice purges behind our back).
pub fn event_senders(engine: &Engine) -> Arc<HashSet<BareJid>> {
    let s = engine.settings();
    let feeds = s
        .peers
        .values()
        .map(|p| &p.feed)
        .chain(s.rtbls.values().map(|r| &r.feed))
        .chain(std::iter::once(engine.feed()));
    // A remote server may name an IDN service in A-labels on the wire:
    // both forms are let through, and compared in one form afterwards.
    Arc::new(
        feeds
            .flat_map(|feed| {
                [
                    BareJid::new(&feed.service).ok(),
                    BareJid::new(&feed.service_a_label()).ok(),
                ]
            })
            .flatten()
            .collect(),
    )
}

fn all_sources(engine: &Engine) -> Vec<String> {
    let s = engine.settings();
    s.peers.keys().chain(s.rtbls.keys()).cloned().collect()
}

fn feed_of(engine: &Engine, source: &str) -> Option<FeedAddress> {
    let s = engine.settings();
    s.peers
        .get(source)
        .map(|p| p.feed.clone())
        .or_else(|| s.rtbls.get(source).map(|r| r.feed.clone()))
}

fn spawn_backfill(
    engine: &Arc<Engine>,
    link: &Link,
    component: Option<&ComponentHandle>,
    source: String,
    resync: &mpsc::UnboundedSender<String>,
    done: &mpsc::UnboundedSender<String>,
) {
    let (engine, link, component, resync, done) = (
        Arc::clone(engine),
        link.clone(),
        component.cloned(),
        resync.clone(),
        done.clone(),
    );
    tokio::spawn(async move {
        let settings = engine.settings();
        let started = Instant::now();
        engine.sync.started(&source, crate::now());
        let result = if let Some(peer) = settings.peers.get(&source) {
            // A peer whose service serves its feed as a log is read through
            // our component; others through the c2s link (layout 1).
            // Which one is asked of the peer's service through the
            // component, so nothing is read while it is away: a log read
            // through the c2s link would find nothing and mark every entry
            // missing.
            match &component {
                Some(c) if !c.online() => Err(anyhow::anyhow!(
                    "our component is not connected; the peer's feed is read once it is"
                )),
                Some(c) => match feed_layout(c, &peer.feed).await {
                    Ok(LayoutChoice::Log(_)) => backfill_log(&engine, c, peer).await,
                    Ok(_) => backfill_peer(&engine, &link, peer).await,
                    Err(e) => Err(e),
                },
                None => backfill_peer(&engine, &link, peer).await,
            }
        } else if let Some(rtbl) = settings.rtbls.get(&source) {
            backfill_rtbl(&engine, &link, rtbl).await
        } else {
            let _ = done.send(source);
            return;
        };
        let _ = done.send(source.clone());
        match result {
            Ok(n) => {
                engine.sync.succeeded(&source);
                engine.metrics.peer_synced(&source, n as u64, crate::now());
                tracing::info!(
                    source,
                    records = n,
                    secs = started.elapsed().as_secs_f64(),
                    "backfill complete"
                );
            }
            Err(e) => {
                engine.sync.failed(&source, format!("{e:#}"), crate::now());
                // 10 s, 20 s, then every 40 s while reads keep failing.
                let failures = engine.sync.get(&source).failures.clamp(1, 3);
                let delay = Duration::from_secs((10u64 << (failures - 1)).min(60));
                tracing::warn!(source, "backfill failed: {e:#}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                let _ = resync.send(source);
            }
        }
    });
}

fn verify(
    engine: &Engine,
    peer: &Peer,
    ring: &KeyRing,
    node: &str,
    item_id: &str,
    payload: Option<&Element>,
) -> Option<(SignedItem, corvid_protocol::item::VerifiedItem)> {
    let skew = engine.settings().skew;
    verify_peer_item(peer, ring, node, item_id, payload, crate::now(), skew)
        .map_err(|(label, why)| engine.shared().reject(&peer.domain, item_id, label, &why))
        .ok()
}

/// Applies one verified key record (a rotation or a revocation).
async fn apply_key_record(engine: &Engine, peer: &Peer, body: &Body) -> Result<()> {
    let event = match body {
        Body::KeyRotation(r) => Event::Rotation {
            source: peer.domain.clone(),
            key: r.new,
        },
        Body::KeyRevocation(r) => Event::Revocation {
            source: peer.domain.clone(),
            key: r.key,
        },
        _ => return Ok(()),
    };
    match engine.call_async(event).await? {
        Outcome::Failed(e) => Err(e.into()),
        _ => Ok(()),
    }
}

/// Records a backfill read, stored by the core in batches (one transaction
/// each); over-cap refusals are counted as rejections.
const INGEST_BATCH: usize = 2_000;

/// Records of a log read stored per transaction: pages are gathered up to
/// this many before they are stored and the cursor moves. Records land at
/// random keys, so a transaction rewrites about one storage page per record
/// until it holds as many records as the tables have pages: ten times the
/// page-sized batches cut the bytes written for a 1M-record read severalfold.
const LOG_INGEST_BATCH: usize = 20_000;
/// ... or what a read gathered in this long, whichever comes first.
const LOG_INGEST_EVERY: Duration = Duration::from_secs(2);

/// Stores records from a source in batches; `listed` for an unsigned
/// list's entries (each keeps its first-seen record while it stays listed).
async fn ingest_records(
    engine: &Engine,
    source: &str,
    records: Vec<(Record, String)>,
    listed: bool,
) -> Result<()> {
    ingest_in_batches(engine, source, records, listed, INGEST_BATCH).await
}

async fn ingest_in_batches(
    engine: &Engine,
    source: &str,
    records: Vec<(Record, String)>,
    listed: bool,
    batch_size: usize,
) -> Result<()> {
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let batch: Vec<(Record, String)> = records.by_ref().take(batch_size).collect();
        let subjects: Vec<String> = batch.iter().map(|(r, _)| r.subject().to_string()).collect();
        let outcomes = if listed {
            let records = batch.into_iter().map(|(r, _)| r).collect();
            engine.ingest_listed(source, records).await?
        } else {
            engine.ingest_all(source, batch).await?
        };
        let mut ingested = 0;
        for (what, subject) in outcomes.iter().zip(&subjects) {
            match what {
                Ingested::Stored | Ingested::Unchanged => ingested += 1,
                Ingested::OverCap => engine.shared().reject(
                    source,
                    subject,
                    "peer-cap",
                    "peer is at its max_reports cap",
                ),
            }
        }
        engine.metrics.ingested(source, ingested);
    }
    Ok(())
}

async fn backfill_peer(engine: &Engine, link: &Link, peer: &Peer) -> Result<usize> {
    let started_ms = crate::now_ms();
    let feed = &peer.feed;
    // Subscribe every time, even if the service says we are subscribed:
    // Prosody keeps a stale subscription index entry after a node is
    // deleted and recreated, so "subscribed" can be a lie. Subscribing
    // again is idempotent.
    pubsub::subscribe(link, &feed.service, &feed.node, link.bare()).await?;
    for attempt in 0..3 {
        let ring = engine.key_ring(peer)?;
        let ids = pubsub::item_ids(link, &feed.service, &feed.node).await?;
        // Key records first: a revocation or rotation changes what verifies.
        for id in ids.iter().filter(|i| i.starts_with("key/")) {
            for (item_id, payload) in
                pubsub::items(link, &feed.service, &feed.node, &[id.as_str()], None).await?
            {
                if let Some((_, v)) =
                    verify(engine, peer, &ring, &feed.node, &item_id, payload.as_ref())
                {
                    apply_key_record(engine, peer, &v.body).await?;
                }
            }
        }
        let ring = engine.key_ring(peer)?;
        let mut reader = FeedReader::new();
        let mut key_of: BTreeMap<String, String> = BTreeMap::new();
        let mut stale = false;
        if ids.iter().any(|i| i == feed::HEAD_ITEM) {
            let head =
                pubsub::items(link, &feed.service, &feed.node, &[feed::HEAD_ITEM], None).await?;
            let Some((_, payload)) = head.into_iter().next() else {
                bail!("head vanished while reading")
            };
            let verified = verify(
                engine,
                peer,
                &ring,
                &feed.node,
                feed::HEAD_ITEM,
                payload.as_ref(),
            );
            // A head that does not verify must not read as "no snapshot":
            // that would mark every entry held only in chunks unconfirmed.
            let Some((_, v)) = verified else {
                bail!(
                    "the peer's head item was rejected (see corvid_rejected_items_total); keeping what we have"
                )
            };
            if let Body::Head {
                generation, chunks, ..
            } = v.body
            {
                for chunk in reader.accept_head(generation, chunks) {
                    let got = pubsub::items(
                        link,
                        &feed.service,
                        &chunk.node,
                        &[chunk.item.as_str()],
                        None,
                    )
                    .await?;
                    let Some((item_id, payload)) = got.into_iter().next() else {
                        stale = true;
                        break;
                    };
                    let Some((signed, v)) =
                        verify(engine, peer, &ring, &chunk.node, &item_id, payload.as_ref())
                    else {
                        continue;
                    };
                    if let Body::Snapshot { records, .. } = v.body {
                        for r in &records {
                            key_of.insert(r.subject().to_string(), v.issuer.key.to_string());
                        }
                        if reader
                            .accept_chunk(&chunk.node, &item_id, &signed, records)
                            .is_err()
                        {
                            stale = true;
                            break;
                        }
                    }
                }
            }
        }
        if stale {
            tracing::debug!(peer = %peer.domain, attempt, "snapshot changed while reading; starting over");
            continue;
        }
        let deltas: Vec<&String> = ids
            .iter()
            .filter(|i| i.starts_with(feed::DELTA_PREFIX))
            .collect();
        for batch in deltas.chunks(DELTA_BATCH) {
            let batch: Vec<&str> = batch.iter().map(|s| s.as_str()).collect();
            for (item_id, payload) in
                pubsub::items(link, &feed.service, &feed.node, &batch, None).await?
            {
                if let Some((_, v)) =
                    verify(engine, peer, &ring, &feed.node, &item_id, payload.as_ref())
                    && let Body::Delta { record } = v.body
                {
                    key_of.insert(record.subject().to_string(), v.issuer.key.to_string());
                    reader.accept_delta(record);
                }
            }
        }
        let state = match reader.finish() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = %peer.domain, "incomplete snapshot ({e}); starting over");
                continue;
            }
        };
        let mut present = BTreeSet::new();
        let mut records = Vec::with_capacity(state.len());
        for (subject, record) in &state {
            let key_id = key_of.get(subject.as_str()).cloned().unwrap_or_default();
            records.push((record.clone(), key_id));
            present.insert(subject.to_string());
        }
        ingest_records(engine, &peer.domain, records, false).await?;
        let missing = engine
            .reconcile_async(&peer.domain, present, started_ms)
            .await?;
        if missing > 0 {
            tracing::warn!(peer = %peer.domain, missing, "entries missing from the peer's feed are unconfirmed until it republishes them (or the grace period ends)");
        }
        return Ok(state.len());
    }
    bail!("the peer's snapshot kept changing while it was read")
}

/// The subject an RTBL item id stands for, by node convention.
fn rtbl_subject(engine: &Engine, node: &str, id: &str) -> Option<SubjectKey> {
    if node.contains("ip") {
        // A CIDR: tokenized at once with the issuing secret; never kept raw.
        let settings = engine.settings();
        let (secret, _) = settings.secrets.iter().find(|(_, issue)| *issue)?;
        let prefix = IpPrefix::parse(id).ok()?;
        return Some(secret.token(&prefix, secret.epoch_of(crate::now())));
    }
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return format!("jid:{}", id.to_ascii_lowercase()).parse().ok();
    }
    SubjectKey::for_domain(id, false).ok()
}

fn rtbl_record(subject: SubjectKey, now: u64, id: &str, category: Category) -> Record {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(id.as_bytes());
    let mut random = [0u8; 10];
    random.copy_from_slice(&h[..10]);
    crate::engine::listed_report(
        corvid_protocol::record::ReportId::new(now * 1000, random),
        subject,
        category,
        now,
        corvid_protocol::ns::MAX_TTL_SECS,
    )
}

/// The record an RTBL item stands for, or `None` (counted) for an id that
/// names nothing Corvid can store. The core keeps an entry's first-seen
/// record instead while it stays listed ([`Event::Listed`]).
fn rtbl_item(engine: &Engine, rtbl: &Rtbl, id: &str) -> Result<Option<Record>> {
    let Some(subject) = rtbl_subject(engine, &rtbl.feed.node, id) else {
        engine.shared().reject(
            &rtbl.source,
            id,
            "unsupported-datum",
            "item id is not a hash, domain or supported CIDR",
        );
        return Ok(None);
    };
    Ok(Some(rtbl_record(
        subject,
        crate::now(),
        id,
        if rtbl.feed.node.starts_with("muc_") {
            Category::MucSpam
        } else {
            Category::Spam
        },
    )))
}

async fn backfill_rtbl(engine: &Engine, link: &Link, rtbl: &Rtbl) -> Result<usize> {
    let started_ms = crate::now_ms();
    let feed = &rtbl.feed;
    // Subscribe every time, even if the service says we are subscribed:
    // Prosody keeps a stale subscription index entry after a node is
    // deleted and recreated, so "subscribed" can be a lie. Subscribing
    // again is idempotent.
    pubsub::subscribe(link, &feed.service, &feed.node, link.bare()).await?;
    let ids = pubsub::item_ids(link, &feed.service, &feed.node).await?;
    let mut present = BTreeSet::new();
    let mut records = Vec::new();
    for id in &ids {
        if let Some(record) = rtbl_item(engine, rtbl, id)? {
            present.insert(record.subject().to_string());
            records.push((record, String::new()));
        }
    }
    ingest_records(engine, &rtbl.source, records, true).await?;
    let listed = present.len();
    engine
        .reconcile_async(&rtbl.source, present, started_ms)
        .await?;
    Ok(listed)
}

async fn handle_event(
    engine: &Arc<Engine>,
    from: &str,
    event: &Element,
    buckets: &mut HashMap<String, TokenBucket>,
    resync: &mpsc::UnboundedSender<String>,
    mismatches: &mut HashMap<String, (u32, Option<Instant>)>,
    heard: &mut HashMap<String, Instant>,
) {
    let parsed = pubsub::parse_event(event);
    let node = match &parsed {
        FeedEvent::Items { node, .. } | FeedEvent::Purge { node } | FeedEvent::Delete { node } => {
            node.clone()
        }
        FeedEvent::Other => return,
    };
    // Services are compared in the one form feed addresses hold (§6.2).
    let normalized = corvid_protocol::item::normalize_service(from);
    let from: &str = normalized.as_deref().unwrap_or(from);
    let own = engine.feed();
    tracing::debug!(from, node, "pubsub event");
    if from == own.service && node == own.node {
        // Our own feed: items we published come back to us and mean nothing;
        // a purge, deletion or retraction may mean the service lost items.
        if !matches!(&parsed, FeedEvent::Items { retracted, .. } if retracted.is_empty()) {
            engine.own_feed_changed.notify_one();
        }
        return;
    }
    let settings = engine.settings();
    // Only events from the configured service count: anyone can send us a
    // message that looks like a PubSub event.
    let peer = settings.peers.values().find(|p| {
        p.feed.service == from
            && (p.feed.node == node || node.starts_with(&format!("{}.", p.feed.node)))
    });
    let rtbl = settings
        .rtbls
        .values()
        .find(|r| r.feed.service == from && r.feed.node == node);
    let source = match (peer, rtbl) {
        (Some(p), _) => p.domain.clone(),
        (None, Some(r)) => r.source.clone(),
        (None, None) => {
            engine.metrics.rejected("unknown", "unknown-sender");
            tracing::debug!(
                from,
                node,
                "dropped a PubSub event from a service that is not a configured peer"
            );
            return;
        }
    };
    if peer.is_none() {
        // A Corvid peer's items mark it live in the core's transaction.
        engine.touch(crate::now(), &source);
    }
    let rate = f64::from(engine.ingest_rate());
    let result: Result<()> = async {
        match parsed {
            FeedEvent::Items {
                published,
                retracted,
                ..
            } => {
                let mut admitted = Vec::with_capacity(published.len());
                if let Some(p) = peer {
                    heard.insert(p.domain.clone(), Instant::now());
                }
                for (item_id, payload) in published {
                    if let Some(p) = peer
                        && item_id == feed::CHECKPOINT_ITEM
                    {
                        on_checkpoint(engine, p, payload.as_ref(), mismatches, resync).await?;
                        continue;
                    }
                    let bucket = buckets
                        .entry(source.clone())
                        .or_insert_with(|| TokenBucket::new(rate, Instant::now()));
                    if !bucket.take(Instant::now()) {
                        engine.shared().reject(
                            &source,
                            &item_id,
                            "rate-limited",
                            "ingest rate limit; a resync will fetch it",
                        );
                        let _ = resync.send(source.clone());
                        continue;
                    }
                    admitted.push((item_id, payload));
                }
                if peer.is_some() {
                    // The core verifies and stores them while the next
                    // events are read; a new head comes back as a reread
                    // request.
                    if !admitted.is_empty() {
                        engine.feed_items(&source, &node, admitted).await?;
                    }
                } else if let Some(rtbl) = rtbl {
                    let mut records = Vec::new();
                    for (item_id, _) in &admitted {
                        if let Some(record) = rtbl_item(engine, rtbl, item_id)? {
                            records.push((record, String::new()));
                        }
                    }
                    ingest_records(engine, &rtbl.source, records, true).await?;
                }
                if !retracted.is_empty() {
                    if let Some(rtbl) = rtbl {
                        // An RTBL has no signed retraction: its retract is the delisting.
                        for id in retracted {
                            if let Some(subject) = rtbl_subject(engine, &rtbl.feed.node, &id) {
                                engine
                                    .call_async(Event::Remove {
                                        source: rtbl.source.clone(),
                                        subject: subject.to_string(),
                                    })
                                    .await?;
                            }
                        }
                    } else {
                        // Advisory for a Corvid peer (compaction folds deltas
                        // into chunks): reconcile to see what really changed.
                        let _ = resync.send(source.clone());
                    }
                }
            }
            FeedEvent::Purge { .. } | FeedEvent::Delete { .. } => {
                let n = engine
                    .reconcile_async(&source, BTreeSet::new(), u64::MAX)
                    .await?;
                tracing::warn!(
                    source,
                    entries = n,
                    "feed purged or deleted: entries unconfirmed for the grace period"
                );
                let _ = resync.send(source.clone());
            }
            FeedEvent::Other => {}
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(source, "event handling failed: {e:#}");
    }
}

/// How a peer's feed service serves its feed: the log versions its
/// disco#info for the feed node announces (`urn:xmpp:corvid:log:N`), and
/// the one this reader picks (spec §13.1). An error when the service did
/// not answer (unreachable, or no such node), or offers only log versions
/// this corvidd does not read: then nothing is read, through either path,
/// and nothing held is touched.
async fn feed_layout(component: &ComponentHandle, feed: &FeedAddress) -> Result<LayoutChoice> {
    let to: Jid = feed
        .service
        .parse()
        .map_err(|e| anyhow::anyhow!("feed service: {e}"))?;
    let query = Element::builder("query", crate::lists::NS_DISCO_INFO)
        .attr(attr("node"), feed.node.as_str())
        .build();
    let iq = Iq::Get {
        from: None,
        to: Some(to),
        id: String::new(),
        payload: query,
    };
    let info = component
        .iq(iq)
        .await
        .map_err(|e| anyhow::anyhow!("the peer's feed service did not answer disco#info: {e}"))?;
    let offered = feed::log_versions(info.iter().flat_map(|info| {
        info.children()
            .filter(|f| f.is("feature", crate::lists::NS_DISCO_INFO))
            .filter_map(|f| f.attr("var"))
    }));
    match feed::choose_layout(&offered, feed::LOG_VERSIONS) {
        LayoutChoice::Unsupported(v) => bail!(
            "unsupported-layout: the peer serves its feed only as log version(s) {v:?}, and this corvidd reads {:?}; nothing is read and what is held stays until corvidd is upgraded",
            feed::LOG_VERSIONS
        ),
        choice => Ok(choice),
    }
}

/// Records asked for per page of a log's compact form (the publisher
/// serves at most 2,400, fewer when the page would pass 400 KB).
const LOG_PAGE: usize = 2400;

/// Reads a peer's feed served as a log (layout 2, spec §4.6), from its
/// component to ours over s2s: subscribe, then pages of records after the
/// cursor until the end. Without a cursor it is a full read, after which
/// entries not seen are reconciled as missing. The cursor is saved after
/// every page, so a read cut by a disconnect on either side resumes where
/// it stopped.
async fn backfill_log(engine: &Engine, component: &ComponentHandle, peer: &Peer) -> Result<usize> {
    let started_ms = crate::now_ms();
    let feed = &peer.feed;
    let service: Jid = feed
        .service
        .parse()
        .map_err(|e| anyhow::anyhow!("feed service: {e}"))?;
    let subscribe = Element::builder("pubsub", crate::lists::NS_PUBSUB)
        .append(
            Element::builder("subscribe", crate::lists::NS_PUBSUB)
                .attr(attr("node"), feed.node.as_str())
                .attr(attr("jid"), component.jid.as_str())
                .build(),
        )
        .build();
    component
        .iq(Iq::Set {
            from: None,
            to: Some(service.clone()),
            id: String::new(),
            payload: subscribe,
        })
        .await?;
    // Key records first (a rotation or a revocation changes what verifies):
    // the checkpoint names them.
    let checkpoint = fetch_items(component, &service, &feed.node, &[feed::CHECKPOINT_ITEM]).await?;
    let ring = engine.key_ring(peer)?;
    let mut keys = Vec::new();
    for (item_id, payload) in checkpoint {
        if let Some((_, v)) = verify(engine, peer, &ring, &feed.node, &item_id, payload.as_ref())
            && let Body::Checkpoint { keys: k, .. } = &v.body
        {
            engine.sync.checkpoint(&peer.domain, &v.body, crate::now());
            keys.clone_from(k);
        }
    }
    let applied = engine.store().peer(&peer.domain)?.log_keys;
    let new: Vec<&str> = keys
        .iter()
        .filter(|k| !applied.contains(k))
        .map(String::as_str)
        .collect();
    if !new.is_empty() {
        for (item_id, payload) in fetch_items(component, &service, &feed.node, &new).await? {
            let ring = engine.key_ring(peer)?;
            if let Some((_, v)) =
                verify(engine, peer, &ring, &feed.node, &item_id, payload.as_ref())
            {
                apply_key_record(engine, peer, &v.body).await?;
            }
        }
        engine
            .store()
            .update_peer(&peer.domain, |p| p.log_keys.clone_from(&keys))?;
    }
    let state = engine.store().peer(&peer.domain)?;
    let mut cursor = state.log_cursor.filter(|_| state.log_layout);
    let full = cursor.is_none();
    engine.store().update_peer(&peer.domain, |p| {
        if !p.log_layout {
            p.log_layout = true;
            p.log_cursor = None;
            p.log_complete = false;
        }
    })?;
    let mut present = BTreeSet::new();
    let mut total = 0;
    let mut pending: Vec<(Record, String)> = Vec::new();
    let mut stored_at = Instant::now();
    loop {
        let mut set = Element::builder("set", crate::lists::NS_RSM)
            .append(
                Element::builder("max", crate::lists::NS_RSM)
                    .append(LOG_PAGE.to_string())
                    .build(),
            )
            .build();
        if let Some(c) = &cursor {
            set.append_child(
                Element::builder("after", crate::lists::NS_RSM)
                    .append(c.as_str())
                    .build(),
            );
        }
        // Reads go to the compact form: records signed by the hundred.
        let compact = format!("{}/compact", feed.node);
        let request = Element::builder("pubsub", crate::lists::NS_PUBSUB)
            .append(
                Element::builder("items", crate::lists::NS_PUBSUB)
                    .attr(attr("node"), compact.as_str())
                    .build(),
            )
            .append(set)
            .build();
        let reply = component
            .iq(Iq::Get {
                from: None,
                to: Some(service.clone()),
                id: String::new(),
                payload: request,
            })
            .await?
            .ok_or_else(|| anyhow::anyhow!("an empty items result"))?;
        let items = pubsub::parse_items(&reply);
        let last = reply
            .get_child("set", crate::lists::NS_RSM)
            .and_then(|s| s.get_child("last", crate::lists::NS_RSM))
            .map(Element::text);
        let ring = engine.key_ring(peer)?;
        let mut records = Vec::new();
        for (item_id, payload) in items {
            // Signed for the feed node, whichever node serves them.
            let Some((_, v)) = verify(engine, peer, &ring, &feed.node, &item_id, payload.as_ref())
            else {
                continue;
            };
            let key = v.issuer.key.to_string();
            let got = match v.body {
                Body::Snapshot { records, .. } => records,
                Body::Delta { record } => vec![record],
                _ => Vec::new(),
            };
            for record in got {
                if full {
                    present.insert(record.subject().to_string());
                }
                records.push((record, key.clone()));
            }
        }
        total += records.len();
        pending.extend(records);
        // A page can hold fewer records than asked (the publisher keeps
        // results below the stanza limit, and skips what is for members
        // only): the read ends with a page that names no last record.
        let end = last.is_none();
        if let Some(l) = last {
            cursor = Some(l);
        }
        // A slow (throttled) read still stores, and moves its cursor, at
        // least every 2 s.
        if !end && pending.len() < LOG_INGEST_BATCH && stored_at.elapsed() < LOG_INGEST_EVERY {
            continue;
        }
        stored_at = Instant::now();
        ingest_in_batches(
            engine,
            &peer.domain,
            std::mem::take(&mut pending),
            false,
            LOG_INGEST_BATCH,
        )
        .await?;
        // The pages' records are on disk before the cursor that skips them.
        engine.store().flush()?;
        let saved = cursor.clone();
        engine.store().update_peer(&peer.domain, |p| {
            p.log_cursor.clone_from(&saved);
            if end {
                p.log_complete = true;
            }
        })?;
        if end {
            break;
        }
    }
    if full {
        let missing = engine
            .reconcile_async(&peer.domain, present, started_ms)
            .await?;
        if missing > 0 {
            tracing::warn!(peer = %peer.domain, missing, "entries missing from the peer's log are unconfirmed until it serves them again (or the grace period ends)");
        }
    }
    Ok(total)
}

/// A peer's checkpoint (live, or asked for after a silence): behind it,
/// the log is read on from the cursor; at the same record but with another
/// number of records than held here, twice in a row, it is read again in
/// full (a notification was lost, or the publisher served something else).
async fn on_checkpoint(
    engine: &Engine,
    peer: &Peer,
    payload: Option<&Element>,
    mismatches: &mut HashMap<String, (u32, Option<Instant>)>,
    resync: &mpsc::UnboundedSender<String>,
) -> Result<()> {
    let ring = engine.key_ring(peer)?;
    let Some((_, v)) = verify(
        engine,
        peer,
        &ring,
        &peer.feed.node,
        feed::CHECKPOINT_ITEM,
        payload,
    ) else {
        return Ok(());
    };
    engine.sync.checkpoint(&peer.domain, &v.body, crate::now());
    let Body::Checkpoint {
        last,
        records,
        members_only,
        keys,
        ..
    } = v.body
    else {
        return Ok(());
    };
    let state = engine.store().peer(&peer.domain)?;
    if keys.iter().any(|k| !state.log_keys.contains(k)) {
        // A key record this reader has not applied: the read fetches it.
        let _ = resync.send(peer.domain.clone());
        return Ok(());
    }
    if !state.log_layout {
        let _ = resync.send(peer.domain.clone());
        return Ok(());
    }
    let cursor: Option<corvid_protocol::record::ReportId> =
        state.log_cursor.as_deref().and_then(|c| c.parse().ok());
    if last.is_some() && (cursor.is_none() || last > cursor || !state.log_complete) {
        mismatches.remove(&peer.domain);
        let _ = resync.send(peer.domain.clone());
        return Ok(());
    }
    let held = engine.record_count(&peer.domain);
    let capped = peer.max_reports > 0 && held >= peer.max_reports;
    let entry = mismatches.entry(peer.domain.clone()).or_default();
    // A non-member is served every record but those for members only.
    if held == records || held == records - members_only || capped {
        entry.0 = 0;
        return Ok(());
    }
    entry.0 += 1;
    // At most one full read an hour for this reason: a count that differs
    // for good (a subject refused here) must not make a loop of them.
    let recent = entry
        .1
        .is_some_and(|t| t.elapsed() < Duration::from_secs(3600));
    if entry.0 >= 2 && !recent {
        *entry = (0, Some(Instant::now()));
        tracing::warn!(
            peer = %peer.domain,
            held,
            records,
            "the peer's checkpoint counts another number of records than held here: reading its log again in full"
        );
        engine.store().update_peer(&peer.domain, |p| {
            p.log_cursor = None;
            p.log_complete = false;
        })?;
        let _ = resync.send(peer.domain.clone());
    }
    Ok(())
}

/// Items of a peer's feed node by id, through the component.
async fn fetch_items(
    component: &ComponentHandle,
    service: &Jid,
    node: &str,
    ids: &[&str],
) -> Result<Vec<(String, Option<Element>)>> {
    let mut items = Element::builder("items", crate::lists::NS_PUBSUB)
        .attr(attr("node"), node)
        .build();
    for id in ids {
        items.append_child(
            Element::builder("item", crate::lists::NS_PUBSUB)
                .attr(attr("id"), *id)
                .build(),
        );
    }
    let reply = component
        .iq(Iq::Get {
            from: None,
            to: Some(service.clone()),
            id: String::new(),
            payload: Element::builder("pubsub", crate::lists::NS_PUBSUB)
                .append(items)
                .build(),
        })
        .await?;
    Ok(reply.as_ref().map(pubsub::parse_items).unwrap_or_default())
}
