//! The core: the one owner of the node's state.
//!
//! [`Core`] owns the store, the settings, the signing key, the per-source
//! counts and suspensions, and publishes verdicts for lookups
//! ([`crate::verdicts::Published`]). It is driven by [`Core::step`]: a batch
//! of [`Event`]s, each stamped with the time, and a seed for everything
//! random; it answers with [`Effect`]s (replies to requests, the feed to
//! republish, a source to reread). It never reads the clock, touches the
//! network or draws randomness of its own, so the same events and seed give
//! the same effects, byte for byte (see [`crate::sim`]).
//!
//! A step commits its writes as few transactions as the events allow: a
//! run of events that only read and write single entries is one
//! transaction (one fsync when any of them must be durable); an event that
//! scans a source's entries (a reconciliation, a revocation, the sweep, a
//! reload) ends the run and commits on its own, so it sees everything
//! before it. Nothing is acknowledged before its transaction commits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use corvid_protocol::aggregate::{Action, Contribution};
use corvid_protocol::item::{Body, FeedAddress, KeyRing, SignedItem, VerifiedItem, verify_signed};
use corvid_protocol::keys::{PublicKey, SecretKey, Signer};
use corvid_protocol::record::{
    Category, Evidence, Record, Report, ReportId, Retraction, RetractionReason,
};
use corvid_protocol::subject::{SubjectKey, SubjectKind};
use sha2::Digest as _;

use crate::engine::{Ingested, Settings, Submission, listed_report};
use crate::metrics::Metrics;
use crate::rejects::RejectLog;
use crate::store::{Origin, PeerState, Store, StoreError, Stored, Tx, Upserted};
use crate::subjects::ReportSubject;
use crate::verdicts::{Published, SubjectVerdict};

/// Identifies a request in a step's replies.
pub type Ticket = u64;

/// The store's record of the subjects on the local lists at the last full
/// pass.
const LISTED: &str = "listed_subjects";

/// Subjects published per warm-up step after a start or a reload.
const WARM_CHUNK: usize = 5_000;

/// Something that happened, for the core to act on.
#[derive(Debug)]
pub enum Event {
    /// The operator's report.
    Submit(Submission),
    /// A local user released a message from a subject out of the spam
    /// folder (`release`), or deleted one there.
    Signal {
        /// The sender.
        subject: SubjectKey,
        /// A release (true) or a deletion.
        release: bool,
        /// An opaque tag of the user (distinct users count).
        user: String,
    },
    /// The operator retracts the own report about a subject.
    Retract {
        /// Subject.
        subject: SubjectKey,
        /// Why.
        reason: RetractionReason,
    },
    /// An imported list entry (local, unsigned, never published).
    Import {
        /// `import:` source id.
        source: String,
        /// Subject.
        subject: SubjectKey,
        /// Category.
        category: Category,
        /// Lifetime.
        ttl: u64,
    },
    /// Records from a source that are already verified (a backfill's
    /// snapshot, an RTBL's entries): `(record, signing key id)`.
    Records {
        /// Source id.
        source: String,
        /// Records.
        records: Vec<(Record, String)>,
    },
    /// Entries of an unsigned list (an RTBL), as records made when they were
    /// read: an entry already stored and live keeps its first-seen record
    /// (read and decided inside the core's transaction), so a re-listing
    /// only confirms it.
    Listed {
        /// Source id.
        source: String,
        /// Records.
        records: Vec<Record>,
    },
    /// Items a peer published, as they arrived: the core verifies them.
    Items {
        /// Peer domain.
        source: String,
        /// The node they came from (the feed or one of its chunk nodes).
        node: String,
        /// `(item id, payload)`.
        items: Vec<(String, Option<xmpp_parsers::minidom::Element>)>,
    },
    /// Removes one contribution (an RTBL delisting).
    Remove {
        /// Source id.
        source: String,
        /// Subject key text.
        subject: String,
    },
    /// After a complete read of a source's feed: the rest is unconfirmed.
    Reconcile {
        /// Source id.
        source: String,
        /// Subjects present in the feed.
        present: BTreeSet<String>,
        /// When the read began (entries seen later stay confirmed).
        started_ms: u64,
    },
    /// A verified key revocation from a peer.
    Revocation {
        /// Peer.
        source: String,
        /// The revoked key.
        key: PublicKey,
    },
    /// A verified key rotation from a peer.
    Rotation {
        /// Peer.
        source: String,
        /// The new key.
        key: PublicKey,
    },
    /// The operator accepts a peer's pending rotation.
    ConfirmRotation {
        /// Peer.
        source: String,
    },
    /// The operator lifts a canary suspension.
    LiftSuspension {
        /// Peer.
        source: String,
    },
    /// The operator rotates the own signing key.
    RotateKey(Arc<SecretKey>),
    /// The operator revokes the own signing key.
    RevokeKey {
        /// Why.
        reason: Option<String>,
    },
    /// The configuration was reloaded.
    Reload(Box<Settings>),
    /// Expiry and the end of grace periods, at most `batch` of each.
    Sweep {
        /// Bound.
        batch: usize,
    },
    /// An item arrived from a source (liveness).
    Touch {
        /// Source id.
        source: String,
    },
    /// A lookup found a published verdict past its validity.
    Refresh(SubjectKey),
    /// Idle: continue publishing after a start or a reload.
    Warm,
}

impl Event {
    /// Whether the event scans a source's entries and so commits alone.
    fn is_barrier(&self) -> bool {
        matches!(
            self,
            Self::Reconcile { .. }
                | Self::Revocation { .. }
                | Self::Sweep { .. }
                | Self::Reload(_)
                | Self::Warm
        )
    }

    /// Whether its writes must be on stable storage before it is answered.
    fn is_durable(&self) -> bool {
        matches!(
            self,
            Self::Submit(_) | Self::Retract { .. } | Self::RotateKey(_) | Self::RevokeKey { .. }
        )
    }
}

/// Why the core refused or failed a request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    /// The request itself is not acceptable (the caller's to fix).
    #[error("{0}")]
    Invalid(String),
    /// Storage failed; nothing of the request was written.
    #[error("storage failed: {0}")]
    Storage(String),
    /// A stored value does not decode.
    #[error("a stored value does not decode (database damaged?): {0}")]
    Corrupt(String),
    /// The core has stopped.
    #[error("corvidd is shutting down")]
    Stopped,
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(m) => Self::Corrupt(m),
            other => Self::Storage(other.to_string()),
        }
    }
}

/// The answer to one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done, nothing to report.
    Done,
    /// The stored own report.
    Report(Report),
    /// The tombstone, if there was a report to retract.
    Retracted(Option<Retraction>),
    /// What became of each record or item.
    Ingested(Vec<Ingested>),
    /// Entries affected.
    Count(usize),
    /// A signed key record for the own feed: `(item id, item)`.
    KeyRecord(String, Box<SignedItem>),
    /// An accepted rotation's key, if one was pending.
    Confirmed(Option<String>),
    /// Refused or failed.
    Failed(CoreError),
}

/// What the core asks its drivers to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Answer a request.
    Reply(Ticket, Outcome),
    /// Own records changed: publish the outbox.
    PublishOwn,
    /// The signing key changed: rewrite the own feed under it.
    Rekeyed,
    /// Reread a source's feed (a new snapshot head arrived).
    Resync(String),
}

/// What readers see of the core's state: published after every step.
#[derive(Debug)]
pub struct Shared {
    /// Per-subject verdicts and the query cache.
    pub published: Published,
    settings: RwLock<Arc<Settings>>,
    signer: RwLock<Arc<SecretKey>>,
    suspended: RwLock<BTreeSet<String>>,
    counts: RwLock<BTreeMap<String, u64>>,
    publish_error: Mutex<Option<String>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Rejected items since the last summary.
    pub rejects: RejectLog,
    /// Per peer, what its hourly cap on new blocks did.
    caps: RwLock<BTreeMap<String, CapState>>,
}

/// What a peer's cap on new blocks per hour did (`max_new_blocks_per_hour`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CapState {
    /// New blocks its reports caused in the last hour.
    pub caused_last_hour: usize,
    /// Subjects held at `flag` now because it had reached its cap.
    pub held: usize,
    /// When the last one was held.
    pub last_held_at: Option<u64>,
}

/// How long a peer's new blocks count against its cap.
const CAP_WINDOW_SECS: u64 = 3600;

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn write<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(std::sync::PoisonError::into_inner) = v;
}

impl Shared {
    /// Current settings.
    pub fn settings(&self) -> Arc<Settings> {
        read(&self.settings)
    }

    /// The signing key.
    pub fn signer(&self) -> Arc<SecretKey> {
        read(&self.signer)
    }

    /// What a peer's cap on new blocks per hour did.
    pub fn cap(&self, source: &str) -> CapState {
        self.caps
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(source)
            .copied()
            .unwrap_or_default()
    }

    /// Whether a source is suspended (canary).
    pub fn is_suspended(&self, source: &str) -> bool {
        self.suspended
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(source)
    }

    /// Records stored from a source.
    pub fn count(&self, source: &str) -> Option<u64> {
        self.counts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(source)
            .copied()
    }

    /// Records (or clears) the publisher's last failure.
    pub fn set_publish_error(&self, error: Option<String>) {
        *self
            .publish_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    /// The publisher's last failure.
    pub fn publish_error(&self) -> Option<String> {
        self.publish_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Counts a rejected item from `peer` and notes it for the next log
    /// summary.
    pub fn reject(&self, peer: &str, item: &str, label: &str, why: &str) {
        self.metrics.rejected(peer, label);
        self.rejects.note(peer, item, label, why);
    }
}

/// Random bytes from a step's seed: SHA-256 in counter mode.
#[derive(Debug, Clone)]
struct Rng {
    seed: [u8; 32],
    counter: u64,
}

impl Rng {
    fn new(seed: [u8; 32]) -> Self {
        Self { seed, counter: 0 }
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(32) {
            let mut h = sha2::Sha256::new();
            h.update(self.seed);
            h.update(self.counter.to_be_bytes());
            self.counter += 1;
            let block = h.finalize();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        out
    }

    fn report_id(&mut self, ms: u64) -> ReportId {
        ReportId::new(ms, self.bytes())
    }
}

/// What one transaction's events changed outside the store; applied only
/// once it has committed.
#[derive(Debug, Default)]
struct Scratch {
    counts: BTreeMap<String, i64>,
    touched: BTreeSet<SubjectKey>,
    suspend: Vec<(String, String)>,
    lift: Vec<String>,
    signer: Option<Arc<SecretKey>>,
    replies: Vec<(Ticket, Outcome)>,
    effects: Vec<Effect>,
    /// Revocations found among live items: applied after the commit.
    revocations: Vec<(String, PublicKey)>,
    rejects: Vec<(String, String, &'static str, String)>,
    ingested: BTreeMap<String, u64>,
    /// Peers whose items arrived, with the latest time: written once per
    /// transaction.
    seen: BTreeMap<String, u64>,
    /// Per peer, the newest record id among its live items: a peer whose
    /// feed is a log resumes after it (spec §4.6).
    newest: BTreeMap<String, ReportId>,
    /// The verdicts of the touched subjects, computed inside the
    /// transaction: published once it has committed.
    verdicts: Vec<(SubjectKey, Option<SubjectVerdict>)>,
    /// Touched subjects that were due for a recheck: the time their action
    /// next changes by decay is searched for precisely.
    rechecked: BTreeSet<SubjectKey>,
    /// Peers whose reports caused a new block, and peers at their cap that
    /// held one back, with the time.
    caused: Vec<(String, SubjectKey, u64)>,
    held: Vec<(String, SubjectKey, u64)>,
    /// Subjects whose count of releasing users this transaction changed.
    released: BTreeMap<SubjectKey, usize>,
}

impl Scratch {
    /// A contribution of `source` to `subject` (a key's text) changed.
    fn touch(&mut self, subject: &str) {
        if let Ok(k) = subject.parse() {
            self.touched.insert(k);
        }
    }

    /// A contribution of `source` to `subject` was deleted.
    fn removed(&mut self, source: &str, subject: &str) {
        *self.counts.entry(source.to_owned()).or_default() -= 1;
        self.touch(subject);
    }

    /// An item from `peer` was rejected; counted and logged after the commit.
    fn reject(&mut self, peer: &str, item: &str, label: &'static str, why: String) {
        self.rejects
            .push((peer.to_owned(), item.to_owned(), label, why));
    }
}

/// The read-only view a transaction's events are applied against.
struct Ctx<'a> {
    settings: &'a Settings,
    signer: &'a Arc<SecretKey>,
    feed: &'a FeedAddress,
    counts: &'a BTreeMap<String, u64>,
    suspended: &'a BTreeSet<String>,
    block_windows: &'a BTreeMap<String, std::collections::VecDeque<u64>>,
    released: &'a BTreeMap<SubjectKey, usize>,
}

/// Meta key: the newest own record known to be among the contributions.
const OWN_INGESTED_KEY: &str = "own_ingested_through";
/// Own records ingested per transaction when a start restores them (large:
/// they land at random keys, and fewer, larger transactions write less).
const OWN_RESTORE_PAGE: usize = 250_000;

/// The core.
#[derive(Debug)]
pub struct Core {
    store: Store,
    settings: Arc<Settings>,
    signer: Arc<SecretKey>,
    feed: FeedAddress,
    counts: BTreeMap<String, u64>,
    suspended: BTreeSet<String>,
    shared: Arc<Shared>,
    /// Where the warm-up continues: `None` once everything is published.
    warm: Option<Option<String>>,
    /// Per peer, when its reports caused each new block in the last hour
    /// (in memory: a restart forgets them).
    block_windows: BTreeMap<String, std::collections::VecDeque<u64>>,
    /// Per peer, the subjects held at `flag` by its cap.
    held: BTreeMap<String, BTreeSet<SubjectKey>>,
    /// Subjects with releases from spam folders in the last
    /// [`RELEASES_COUNT_SECS`]: how many distinct users.
    released: BTreeMap<SubjectKey, usize>,
    /// Per peer, when its cap last held a block back.
    last_held: BTreeMap<String, u64>,
}

impl Core {
    /// A core over a store: loads suspensions and counts, rebuilds the own
    /// contributions from the own records (a crash between the two writes
    /// loses nothing), and starts publishing verdicts.
    ///
    /// # Errors
    /// Storage errors.
    pub fn new(
        store: Store,
        settings: Settings,
        signer: SecretKey,
        feed: FeedAddress,
        now_ms: u64,
    ) -> Result<Self, CoreError> {
        let settings = Arc::new(settings);
        let signer = Arc::new(signer);
        let shared = Arc::new(Shared {
            published: Published::new(),
            settings: RwLock::new(Arc::clone(&settings)),
            signer: RwLock::new(Arc::clone(&signer)),
            suspended: RwLock::default(),
            counts: RwLock::default(),
            publish_error: Mutex::new(None),
            metrics: Arc::new(Metrics::default()),
            rejects: RejectLog::default(),
            caps: RwLock::default(),
        });
        let mut core = Self {
            store,
            settings,
            signer,
            feed,
            counts: BTreeMap::new(),
            suspended: BTreeSet::new(),
            shared,
            warm: Some(None),
            block_windows: BTreeMap::new(),
            held: BTreeMap::new(),
            last_held: BTreeMap::new(),
            released: BTreeMap::new(),
        };
        let since = (now_ms / 1000).saturating_sub(RELEASES_COUNT_SECS);
        for (subject, signals) in core.store.all_signals()? {
            let n = signals.releases_since(since);
            if let (Ok(key), true) = (subject.parse::<SubjectKey>(), n > 0) {
                core.released.insert(key, n);
            }
        }
        core.load_sources()?;
        core.restore_own(now_ms)?;
        Ok(core)
    }

    /// Own records become this server's contributions in the transaction
    /// that writes them; those written otherwise (an imported or migrated
    /// store, or a crash between releases) are ingested here at start.
    /// Only records after the mark of the last pass are read, a page at a
    /// time, so a start costs what was written since, not the whole log.
    fn restore_own(&mut self, now_ms: u64) -> Result<(), CoreError> {
        let now = now_ms / 1000;
        let domain = self.settings.domain.clone();
        let mut after: Option<ReportId> = self.store.meta_json(OWN_INGESTED_KEY)?;
        loop {
            let page = self.store.own_after(after, OWN_RESTORE_PAGE)?;
            let Some(last) = page.last().map(Record::id) else {
                break;
            };
            let mut records: Vec<(Record, String)> = page
                .into_iter()
                .filter(|r| r.expires_at() > now)
                .map(|r| (r, String::new()))
                .collect();
            // In key order: stored in order, the records fill storage pages
            // one after another instead of rewriting one page each.
            records.sort_by(|a, b| a.0.subject().as_str().cmp(b.0.subject().as_str()));
            if !records.is_empty() {
                let mut effects = Vec::new();
                self.segment(
                    &[(
                        0,
                        now_ms,
                        Event::Records {
                            source: domain.clone(),
                            records,
                        },
                    )],
                    &mut effects,
                );
                if let Some(Effect::Reply(_, Outcome::Failed(e))) = effects.first() {
                    return Err(e.clone());
                }
            }
            after = Some(last);
        }
        if let Some(mark) = after {
            self.store
                .batch(true, &mut |tx| tx.put_meta_json(OWN_INGESTED_KEY, &mark))?;
        }
        Ok(())
    }

    fn load_sources(&mut self) -> Result<(), CoreError> {
        let mut suspended = BTreeSet::new();
        let mut counts = BTreeMap::new();
        for domain in self.settings.peers.keys() {
            let state = self.store.peer(domain)?;
            if state.suspended_for_canary.is_some() {
                suspended.insert(domain.clone());
            }
            counts.insert(domain.clone(), state.records);
        }
        self.suspended = suspended;
        self.counts = counts;
        self.publish_sources();
        Ok(())
    }

    fn publish_sources(&self) {
        write(&self.shared.suspended, self.suspended.clone());
        write(&self.shared.counts, self.counts.clone());
    }

    /// What readers see.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The store (readers use its committed state).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether verdicts are still being published after a start or reload.
    pub fn warming(&self) -> bool {
        self.warm.is_some()
    }

    /// Applies a batch of events: `(ticket, now in ms, event)`. `seed`
    /// supplies every random byte the step uses.
    pub fn step(&mut self, seed: [u8; 32], events: Vec<(Ticket, u64, Event)>) -> Vec<Effect> {
        let mut rng = Rng::new(seed);
        let mut effects = Vec::new();
        let mut run: Vec<(Ticket, u64, Event)> = Vec::new();
        for (ticket, now_ms, event) in events {
            if event.is_barrier() {
                self.segment_with(&mut rng, &run, &mut effects);
                run.clear();
                self.barrier(ticket, now_ms, event, &mut effects);
            } else {
                run.push((ticket, now_ms, event));
            }
        }
        self.segment_with(&mut rng, &run, &mut effects);
        effects
    }

    fn segment(&mut self, events: &[(Ticket, u64, Event)], effects: &mut Vec<Effect>) {
        let mut rng = Rng::new([0; 32]);
        self.segment_with(&mut rng, events, effects);
    }

    /// One transaction for a run of events.
    fn segment_with(
        &mut self,
        rng: &mut Rng,
        events: &[(Ticket, u64, Event)],
        effects: &mut Vec<Effect>,
    ) {
        if events.is_empty() {
            return;
        }
        let durable = events.iter().any(|(_, _, e)| e.is_durable());
        let mut scratch = Scratch::default();
        let mut rng_out = rng.clone();
        let ctx = self.ctx();
        let now = events.iter().map(|(_, ms, _)| ms / 1000).max().unwrap_or(0);
        let result = self.store.batch(durable, &mut |tx| {
            scratch = Scratch::default();
            rng_out = rng.clone();
            for (ticket, now_ms, event) in events {
                let out = apply(&ctx, tx, &mut scratch, &mut rng_out, *now_ms, event)?;
                scratch.replies.push((*ticket, out));
            }
            for (source, now) in &scratch.seen {
                let newest = scratch.newest.get(source).copied();
                tx.update_peer(source, |p| {
                    p.last_item = Some(*now);
                    // Only once a read reached the log's end: before that,
                    // the cursor marks how far the read got.
                    if let Some(n) = newest
                        && p.log_layout
                        && p.log_complete
                    {
                        let cursor = p.log_cursor.as_deref().and_then(|c| c.parse().ok());
                        if cursor.is_none_or(|c: ReportId| n > c) {
                            p.log_cursor = Some(n.to_string());
                        }
                    }
                })?;
            }
            settle(&ctx, tx, &mut scratch, now)
        });
        *rng = rng_out;
        match result {
            Ok(()) => {
                self.after_commit(&mut scratch);
                for (peer, n) in &scratch.ingested {
                    self.shared.metrics.ingested(peer, *n);
                }
                for (peer, item, label, why) in &scratch.rejects {
                    self.shared.reject(peer, item, label, why);
                }
                effects.extend(scratch.replies.drain(..).map(|(t, o)| Effect::Reply(t, o)));
                effects.append(&mut scratch.effects);
                for (source, key) in std::mem::take(&mut scratch.revocations) {
                    let out = self.revocation(now, &source, &key);
                    if let Err(e) = out {
                        tracing::warn!(peer = source, "applying a key revocation failed: {e}");
                    }
                }
            }
            Err(e) => {
                let e = CoreError::from(e);
                tracing::warn!("a write failed; {} request(s) refused: {e}", events.len());
                effects.extend(
                    events
                        .iter()
                        .map(|(t, _, _)| Effect::Reply(*t, Outcome::Failed(e.clone()))),
                );
            }
        }
    }

    /// Applies what a committed transaction changed outside the store and
    /// publishes the verdicts it touched.
    fn after_commit(&mut self, scratch: &mut Scratch) {
        let mut sources_changed = false;
        for (source, delta) in &scratch.counts {
            let c = self.counts.entry(source.clone()).or_insert(0);
            *c = c.saturating_add_signed(*delta);
            sources_changed = true;
        }
        let mut everything = false;
        for (source, why) in &scratch.suspend {
            if self.suspended.insert(source.clone()) {
                tracing::warn!(
                    peer = source,
                    "{why}: moved to observe mode until the operator acts (corvid peer enforce {source})"
                );
                self.shared.metrics.canary_suspended(source);
                everything = true;
            }
        }
        for source in &scratch.lift {
            everything |= self.suspended.remove(source);
        }
        if let Some(signer) = scratch.signer.take() {
            self.signer = Arc::clone(&signer);
            write(&self.shared.signer, signer);
        }
        if sources_changed || everything {
            self.publish_sources();
        }
        if everything {
            // A source's mode changed: every subject it touches may change.
            self.restart_warm();
        }
        for (subject, verdict) in scratch.verdicts.drain(..) {
            self.shared.published.put(&subject, verdict);
        }
        for (subject, n) in std::mem::take(&mut scratch.released) {
            if n == 0 {
                self.released.remove(&subject);
            } else {
                self.released.insert(subject, n);
            }
        }
        if !scratch.caused.is_empty() || !scratch.held.is_empty() {
            self.count_caps(
                &std::mem::take(&mut scratch.caused),
                &std::mem::take(&mut scratch.held),
            );
        }
    }

    /// Counts the new blocks peers caused and held back, and publishes
    /// what the caps did.
    fn count_caps(
        &mut self,
        caused: &[(String, SubjectKey, u64)],
        held: &[(String, SubjectKey, u64)],
    ) {
        let mut newest = 0;
        for (source, subject, at) in caused {
            self.block_windows
                .entry(source.clone())
                .or_default()
                .push_back(*at);
            if let Some(h) = self.held.get_mut(source) {
                h.remove(subject);
            }
            newest = newest.max(*at);
        }
        for (source, subject, at) in held {
            let last = self.last_held.insert(source.clone(), *at);
            if last.is_none_or(|t| *at >= t + CAP_WINDOW_SECS) {
                tracing::warn!(
                    peer = source,
                    "new blocks this peer's reports would cause are held at flag: it reached its max_new_blocks_per_hour"
                );
            }
            if self
                .held
                .entry(source.clone())
                .or_default()
                .insert(subject.clone())
            {
                self.shared.metrics.peer_cap_held(source);
            }
            newest = newest.max(*at);
        }
        self.held.retain(|_, h| !h.is_empty());
        self.block_windows.retain(|_, w| {
            while w.front().is_some_and(|t| t + CAP_WINDOW_SECS <= newest) {
                w.pop_front();
            }
            !w.is_empty()
        });
        // What is published is derived from the windows and the holds.
        let caps = self
            .block_windows
            .keys()
            .chain(self.last_held.keys())
            .map(|source| {
                let state = CapState {
                    caused_last_hour: self.block_windows.get(source).map_or(0, |w| w.len()),
                    held: self.held.get(source).map_or(0, BTreeSet::len),
                    last_held_at: self.last_held.get(source).copied(),
                };
                (source.clone(), state)
            })
            .collect();
        write(&self.shared.caps, caps);
    }

    fn restart_warm(&mut self) {
        self.shared.published.clear();
        self.warm = Some(None);
    }

    /// The read-only view a transaction's events are applied against.
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            settings: &self.settings,
            signer: &self.signer,
            feed: &self.feed,
            counts: &self.counts,
            suspended: &self.suspended,
            block_windows: &self.block_windows,
            released: &self.released,
        }
    }

    /// Events that scan and commit alone.
    fn barrier(&mut self, ticket: Ticket, now_ms: u64, event: Event, effects: &mut Vec<Effect>) {
        let now = now_ms / 1000;
        let out = match event {
            Event::Reconcile {
                source,
                present,
                started_ms,
            } => self
                .reconcile(now, &source, &present, started_ms)
                .map(Outcome::Count),
            Event::Revocation { source, key } => {
                self.revocation(now, &source, &key).map(Outcome::Count)
            }
            Event::Sweep { batch } => self.sweep(now, batch).map(Outcome::Count),
            Event::Reload(settings) => self.reload(*settings).map(|()| Outcome::Done),
            Event::Warm => self.warm_step(now).map(|()| Outcome::Done),
            _ => Ok(Outcome::Done),
        };
        effects.push(Effect::Reply(ticket, out.unwrap_or_else(Outcome::Failed)));
    }

    fn reload(&mut self, settings: Settings) -> Result<(), CoreError> {
        self.settings = Arc::new(settings);
        write(&self.shared.settings, Arc::clone(&self.settings));
        self.load_sources()?;
        // Reports that became canaries with this configuration.
        let mut scratch = Scratch::default();
        for canary in self.settings.canary_keys() {
            for (source, stored) in self.store.about(canary.as_str())? {
                if matches!(stored.record, Record::Report(_))
                    && self.settings.peers.contains_key(&source)
                {
                    scratch
                        .suspend
                        .push((source, format!("reported canary {canary}")));
                }
            }
        }
        if !scratch.suspend.is_empty() {
            let suspend = scratch.suspend.clone();
            self.store.batch(false, &mut |tx| {
                for (source, why) in &suspend {
                    tx.update_peer(source, |p| p.suspended_for_canary = Some(why.clone()))?;
                }
                Ok(())
            })?;
        }
        self.after_commit(&mut scratch);
        self.restart_warm();
        Ok(())
    }

    /// Publishes the next chunk of subjects after a start or a reload.
    fn warm_step(&mut self, now: u64) -> Result<(), CoreError> {
        let Some(cursor) = self.warm.take() else {
            return Ok(());
        };
        let chunk = self
            .store
            .contributions_after(cursor.as_deref(), WARM_CHUNK)?;
        let last = chunk.last().map(|(subject, _)| subject.clone());
        let full = chunk.len() >= WARM_CHUNK;
        let mut found = Vec::with_capacity(chunk.len());
        for (subject, about) in chunk {
            let Ok(key) = subject.parse::<SubjectKey>() else {
                continue;
            };
            let contributions = trusted(&self.settings, |s| self.suspended.contains(s), about);
            found.push((key, contributions, None));
        }
        // What changed while the node was down, or with the new settings
        // or a source's new mode, enters the decision stream: one
        // transaction per chunk, written only where the action changed. A
        // new block counts against the peers it needs, as in `settle`.
        let (mut caused, mut held) = (Vec::new(), Vec::new());
        if !found.is_empty() {
            let ctx = self.ctx();
            self.store.batch(false, &mut |tx| {
                caused.clear();
                held.clear();
                for (key, contributions, verdict) in &mut found {
                    let released = ctx.released.get(key).copied();
                    *verdict = decide(
                        &ctx,
                        tx,
                        key,
                        contributions,
                        released,
                        now,
                        false,
                        (&mut caused, &mut held),
                    )?;
                }
                Ok(())
            })?;
        }
        for (key, _, verdict) in found {
            self.shared.published.put(&key, verdict);
        }
        if !caused.is_empty() || !held.is_empty() {
            let stamp =
                |v: PeerSubjects| v.into_iter().map(|(s, k)| (s, k, now)).collect::<Vec<_>>();
            self.count_caps(&stamp(caused), &stamp(held));
        }
        if !full {
            self.settle_listed(now)?;
            self.shared.published.set_complete(true);
            self.shared.published.invalidate_all();
            self.warm = None;
        } else {
            self.warm = Some(last);
        }
        Ok(())
    }

    /// After a full pass: the subjects on the local lists now, and those
    /// that were on them at the last pass, get their decisions (a listed
    /// subject may have no contributions, so the pass did not see it).
    fn settle_listed(&mut self, now: u64) -> Result<(), CoreError> {
        let previous: BTreeSet<String> = self.store.meta_json(LISTED)?.unwrap_or_default();
        let current: BTreeSet<String> = self
            .settings
            .listed()
            .map(|k| k.as_str().to_owned())
            .collect();
        let mut scratch = Scratch::default();
        for subject in previous.union(&current) {
            scratch.touch(subject);
        }
        let ctx = self.ctx();
        self.store.batch(false, &mut |tx| {
            scratch.verdicts.clear();
            settle(&ctx, tx, &mut scratch, now)?;
            tx.put_meta_json(LISTED, &current)
        })?;
        self.after_commit(&mut scratch);
        Ok(())
    }

    fn reconcile(
        &mut self,
        now: u64,
        source: &str,
        present: &BTreeSet<String>,
        started_ms: u64,
    ) -> Result<usize, CoreError> {
        let absent: Vec<String> = self
            .store
            .subjects_of(source)?
            .into_iter()
            .filter(|s| !present.contains(s))
            .collect();
        let mut scratch = Scratch::default();
        let mut missing = 0;
        let ctx = self.ctx();
        self.store.batch(false, &mut |tx| {
            scratch = Scratch::default();
            missing = 0;
            for subject in &absent {
                // Checked inside the write: an entry confirmed by a live
                // event while the read ran stays confirmed.
                let marked = tx.upsert(subject, source, |stored| {
                    stored
                        .filter(|s| s.missing_since.is_none() && s.seen_ms < started_ms)
                        .map(|s| Stored {
                            missing_since: Some(now),
                            ..s.clone()
                        })
                })?;
                if marked != Upserted::Kept {
                    missing += 1;
                    scratch.touch(subject);
                }
            }
            tx.update_peer(source, |p| p.last_sync = Some(now))?;
            settle(&ctx, tx, &mut scratch, now)
        })?;
        self.after_commit(&mut scratch);
        Ok(missing)
    }

    fn revocation(&mut self, now: u64, source: &str, key: &PublicKey) -> Result<usize, CoreError> {
        let fp = key.fingerprint().to_string();
        let key_id = key.key_id().to_string();
        let subjects = self.store.subjects_of(source)?;
        let mut scratch = Scratch::default();
        let mut dropped = 0;
        let ctx = self.ctx();
        self.store.batch(false, &mut |tx| {
            scratch = Scratch::default();
            dropped = 0;
            tx.update_peer(source, |p| {
                if !p.revoked.contains(&fp) {
                    p.revoked.push(fp.clone());
                }
            })?;
            for subject in &subjects {
                if tx.remove_if(subject, source, |s| s.key_id == key_id)? {
                    dropped += 1;
                    scratch.removed(source, subject);
                }
            }
            settle(&ctx, tx, &mut scratch, now)
        })?;
        tracing::warn!(peer = source, key = %key, dropped, "key revoked: its reports no longer count");
        self.after_commit(&mut scratch);
        Ok(dropped)
    }

    fn sweep(&mut self, now: u64, batch: usize) -> Result<usize, CoreError> {
        let counts = self.counts.clone();
        let expired = self.store.expired(now, batch)?;
        let due: Vec<SubjectKey> = self
            .store
            .due(now, batch)?
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let cutoff = now.saturating_sub(self.settings.grace);
        let missing = self.store.missing_before(cutoff, batch)?;
        let own_domain = self.settings.domain.clone();
        let mut scratch = Scratch::default();
        let mut removed = 0;
        let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
        let ctx = self.ctx();
        self.store.batch(false, &mut |tx| {
            scratch = Scratch::default();
            removed = 0;
            dropped.clear();
            for (source, n) in &counts {
                tx.update_peer(source, |p| p.records = *n)?;
            }
            for (source, subject) in &expired {
                // Rechecked as it is removed: a renewal since the listing stays.
                if tx.remove_if(subject, source, |s| s.record.expires_at() <= now)? {
                    removed += 1;
                    scratch.removed(source, subject);
                }
                if *source == own_domain {
                    // The own record leaves the feed at the next compaction.
                    tx.drop_own_if_expired(subject, now)?;
                }
            }
            for (source, subject) in &missing {
                if tx.remove_if(subject, source, |s| {
                    s.missing_since.is_some_and(|m| m < cutoff)
                })? {
                    removed += 1;
                    *dropped.entry(source.clone()).or_default() += 1;
                    scratch.removed(source, subject);
                }
            }
            // Subjects whose action may have changed by decay alone.
            for subject in &due {
                scratch.touched.insert(subject.clone());
                scratch.rechecked.insert(subject.clone());
            }
            settle(&ctx, tx, &mut scratch, now)
        })?;
        for (source, n) in &dropped {
            self.shared.metrics.unconfirmed_dropped(source, *n);
        }
        self.after_commit(&mut scratch);
        Ok(removed)
    }
}

/// The live contributions to one subject from sources the settings trust.
pub(crate) fn contributions(
    store: &Store,
    settings: &Settings,
    shared: &Shared,
    subject: &SubjectKey,
) -> Result<Vec<Contribution>, StoreError> {
    Ok(trusted(
        settings,
        |source| shared.is_suspended(source),
        store.about(subject.as_str())?,
    ))
}

/// The stored entries of one subject that come from sources the settings
/// trust, as contributions; a suspended source only observes.
fn trusted(
    settings: &Settings,
    suspended: impl Fn(&str) -> bool,
    about: Vec<(String, Stored)>,
) -> Vec<Contribution> {
    let mut out = Vec::with_capacity(about.len());
    for (source, stored) in about {
        let Some(trust) = settings.trust(&source) else {
            continue;
        };
        out.push(Contribution {
            mode: if suspended(&source) {
                corvid_protocol::aggregate::Mode::Observe
            } else {
                trust.mode
            },
            source,
            kind: trust.kind,
            weight: trust.weight,
            alone: trust.alone,
            confirmed: stored.missing_since.is_none(),
            record: stored.record,
        });
    }
    out
}

/// A subject's own verdict from its contributions (none without any).
fn verdict_of(
    settings: &Settings,
    now: u64,
    subject: &SubjectKey,
    contributions: &[Contribution],
) -> Option<SubjectVerdict> {
    (!contributions.is_empty()).then(|| {
        SubjectVerdict::compute(
            subject,
            contributions,
            &settings.policy,
            settings.is_canary(subject),
            now,
        )
    })
}

/// How long a subject flagged or blocked by the federation may go without a
/// recheck: a change of action by decay alone reaches the decision stream
/// at the latest this long after the subject's last change, and exactly
/// on time once a recheck has searched the next such interval.
pub const RECHECK_SECS: u64 = 3600;

/// A subject's recorded action and what decided it (local lists first,
/// spec §15.4, then the federation's verdict), its score, and when it is
/// due for a recheck (a federation `flag` or `block` only: those are what
/// decay can lower). With `precise`, the time the action next changes is
/// searched for within [`RECHECK_SECS`]; otherwise it is known only when
/// it falls within the verdict's own validity.
fn decision_of(
    settings: &Settings,
    subject: &SubjectKey,
    verdict: Option<&SubjectVerdict>,
    contributions: &[Contribution],
    now: u64,
    precise: bool,
) -> Decided {
    let score = verdict.map_or(0.0, |v| v.score);
    let decided = |now, due| Decided {
        now,
        category: None,
        score,
        due,
    };
    if settings.allows(subject) {
        return decided((Action::Allow, Origin::LocalAllow), None);
    }
    if settings.denies(subject) {
        return decided((Action::Block, Origin::LocalDeny), None);
    }
    let Some(v) = verdict.filter(|v| v.action != Action::Allow) else {
        return decided((Action::Allow, Origin::Federation), None);
    };
    let due = if v.valid_until < now + crate::verdicts::SCORE_REFRESH_SECS {
        v.valid_until
    } else if precise {
        SubjectVerdict::next_change(
            subject,
            contributions,
            &settings.policy,
            settings.is_canary(subject),
            now,
            now + RECHECK_SECS,
        )
        .unwrap_or(now + RECHECK_SECS)
    } else {
        now + RECHECK_SECS
    };
    Decided {
        category: leading_category(contributions),
        ..decided((v.action, Origin::Federation), Some(due))
    }
}

/// A subject's action and what decided it, for the decision stream.
#[derive(Debug, Clone, Copy)]
struct Decided {
    now: (Action, Origin),
    /// What a federation `flag` or `block` is for: see [`leading_category`].
    category: Option<Category>,
    score: f64,
    /// When it is due for a recheck.
    due: Option<u64>,
}

impl Decided {
    fn record(&self, tx: &mut Tx<'_>, subject: &SubjectKey, now: u64) -> Result<(), StoreError> {
        tx.record_decision_in(
            subject.as_str(),
            self.now,
            self.category,
            self.score,
            now,
            self.due,
        )?;
        Ok(())
    }
}

/// The category with the most weight (trust weight times confidence)
/// among the enforcing, confirmed reports about a subject: what a user's
/// per-category choice applies to. Ties go to the first in
/// [`Category::ALL`].
fn leading_category(contributions: &[Contribution]) -> Option<Category> {
    let mut weights = [0.0f64; Category::ALL.len()];
    for c in contributions {
        if c.mode != corvid_protocol::aggregate::Mode::Enforce || !c.confirmed {
            continue;
        }
        if let Record::Report(r) = &c.record
            && let Some(i) = Category::ALL.iter().position(|&x| x == r.category)
        {
            weights[i] += c.weight * f64::from(r.confidence);
        }
    }
    let (best, weight) =
        weights.iter().enumerate().fold(
            (0, 0.0),
            |best, (i, &w)| if w > best.1 { (i, w) } else { best },
        );
    (weight > 0.0).then(|| Category::ALL[best])
}

/// Computes the verdict of every subject the transaction touched, from the
/// transaction's own view, and records the changes of action in the
/// decision stream: the decisions commit with what caused them, and the
/// verdicts are published once they have.
fn settle(
    ctx: &Ctx<'_>,
    tx: &mut Tx<'_>,
    scratch: &mut Scratch,
    now: u64,
) -> Result<(), StoreError> {
    // The sources' record counts change in the same transaction as their
    // records: a count read back after a crash matches what is stored.
    for (source, delta) in &scratch.counts {
        if *delta != 0 {
            tx.update_peer(source, |p| {
                p.records = p.records.saturating_add_signed(*delta)
            })?;
        }
    }
    let suspended = |source: &str| {
        !scratch.lift.iter().any(|s| s == source)
            && (ctx.suspended.contains(source) || scratch.suspend.iter().any(|(s, _)| s == source))
    };
    let mut verdicts = Vec::with_capacity(scratch.touched.len());
    let (mut caused, mut held) = (Vec::new(), Vec::new());
    for subject in &scratch.touched {
        let contributions = trusted(ctx.settings, suspended, tx.about(subject.as_str())?);
        let released = scratch
            .released
            .get(subject)
            .or_else(|| ctx.released.get(subject))
            .copied();
        let precise = scratch.rechecked.contains(subject);
        let verdict = decide(
            ctx,
            tx,
            subject,
            &contributions,
            released,
            now,
            precise,
            (&mut caused, &mut held),
        )?;
        verdicts.push((subject.clone(), verdict));
    }
    scratch.verdicts = verdicts;
    scratch
        .caused
        .extend(caused.into_iter().map(|(s, k)| (s, k, now)));
    scratch
        .held
        .extend(held.into_iter().map(|(s, k)| (s, k, now)));
    Ok(())
}

/// Peers, each with a subject whose new block it caused or held back.
type PeerSubjects = Vec<(String, SubjectKey)>;

/// Decides a subject from its contributions and records the decision: its
/// own verdict, lowered by releases from spam folders (`released` distinct
/// users), a new block held back by a peer's cap (then rechecked when the
/// peer's hour has room), and the decision stream's entry. The verdict is
/// returned, to publish once the transaction commits; the peers that
/// caused or held back a new block go to `caps`.
#[allow(clippy::too_many_arguments)]
fn decide(
    ctx: &Ctx<'_>,
    tx: &mut Tx<'_>,
    subject: &SubjectKey,
    contributions: &[Contribution],
    released: Option<usize>,
    now: u64,
    precise: bool,
    caps: (&mut PeerSubjects, &mut PeerSubjects),
) -> Result<Option<SubjectVerdict>, StoreError> {
    let (caused, held) = caps;
    let mut verdict = verdict_of(ctx.settings, now, subject, contributions);
    if let (Some(v), Some(n)) = (verdict.as_mut(), released) {
        lower_for_releases(v, n, &ctx.settings.policy, subject);
    }
    let free_at = match verdict.as_mut() {
        Some(v) if v.action == Action::Block => {
            cap_new_block(ctx, tx, subject, v, contributions, now, caused, held)?
        }
        _ => None,
    };
    let mut decided = decision_of(
        ctx.settings,
        subject,
        verdict.as_ref(),
        contributions,
        now,
        precise,
    );
    if let Some(at) = free_at {
        // Rechecked when the peer's hour has room.
        decided.due = Some(decided.due.map_or(at, |d| d.min(at)));
    }
    decided.record(tx, subject, now)?;
    Ok(verdict)
}

/// How long a release from a spam folder counts against a subject.
pub const RELEASES_COUNT_SECS: u64 = 30 * 86_400;

/// What each distinct releasing user multiplies a subject's score by.
pub const RELEASE_FACTOR: f64 = 0.75;

/// Releases from spam folders count against a subject's verdict (local
/// policy): its score is multiplied by [`RELEASE_FACTOR`] for each distinct
/// local user who released one of its messages in the last
/// [`RELEASES_COUNT_SECS`], and the action follows the lowered score. It is
/// never raised: a hold stays.
fn lower_for_releases(
    v: &mut SubjectVerdict,
    releases: usize,
    policy: &corvid_protocol::aggregate::Policy,
    subject: &SubjectKey,
) {
    if releases == 0 || v.action == Action::Allow {
        return;
    }
    let t = policy.thresholds(subject.kind());
    let score = v.score * RELEASE_FACTOR.powi(i32::try_from(releases.min(16)).unwrap_or(16));
    let action = if score >= t.block && v.action == Action::Block {
        Action::Block
    } else if score >= t.flag {
        Action::Flag
    } else {
        Action::Allow
    };
    v.score = score;
    if action != v.action {
        v.action = action;
        v.hold = crate::verdicts::Hold::Released;
    }
}

/// A federation block about to be new (the subject was not blocked) that
/// needs the reports of a peer which has caused its most new blocks in the
/// last hour (`max_new_blocks_per_hour`) is held at `flag`: the time the
/// peer's hour has room again is returned, for a recheck. Otherwise the
/// peers it needs (those without whose reports it would not block) count
/// it in `caused`.
#[allow(clippy::too_many_arguments)]
fn cap_new_block(
    ctx: &Ctx<'_>,
    tx: &mut Tx<'_>,
    subject: &SubjectKey,
    verdict: &mut SubjectVerdict,
    contributions: &[Contribution],
    now: u64,
    caused: &mut PeerSubjects,
    held: &mut PeerSubjects,
) -> Result<Option<u64>, StoreError> {
    if ctx.settings.allows(subject) || ctx.settings.denies(subject) {
        return Ok(None);
    }
    if tx
        .last_action(subject.as_str())?
        .is_some_and(|l| l.action == Action::Block)
    {
        return Ok(None);
    }
    let peers: BTreeSet<&str> = contributions
        .iter()
        .filter(|c| {
            c.kind == corvid_protocol::aggregate::SourceKind::Peer
                && c.mode == corvid_protocol::aggregate::Mode::Enforce
                && c.confirmed
        })
        .map(|c| c.source.as_str())
        .collect();
    let mut needed = Vec::new();
    for source in peers {
        let Some(cap) = ctx
            .settings
            .peers
            .get(source)
            .map(|p| p.max_new_blocks_per_hour)
            .filter(|&c| c > 0)
        else {
            continue;
        };
        let without: Vec<Contribution> = contributions
            .iter()
            .filter(|c| c.source != source)
            .cloned()
            .collect();
        if verdict_of(ctx.settings, now, subject, &without)
            .is_some_and(|v| v.action == Action::Block)
        {
            continue;
        }
        needed.push((source, cap));
    }
    let mut free_at = None;
    for &(source, cap) in &needed {
        let recent: Vec<u64> = ctx
            .block_windows
            .get(source)
            .into_iter()
            .flatten()
            .copied()
            .filter(|&t| t + CAP_WINDOW_SECS > now)
            .collect();
        let in_tx = caused.iter().filter(|(s, _)| s == source).count();
        if recent.len() + in_tx >= cap as usize {
            // Room again once enough of its blocks are an hour old.
            let excess = recent.len() + in_tx + 1 - cap as usize;
            let at = recent
                .get(excess - 1)
                .map_or(now + CAP_WINDOW_SECS, |t| t + CAP_WINDOW_SECS);
            free_at = Some(free_at.map_or(at, |f: u64| f.max(at)));
            held.push((source.to_owned(), subject.clone()));
        }
    }
    if let Some(at) = free_at {
        verdict.action = Action::Flag;
        verdict.hold = crate::verdicts::Hold::PeerCap;
        verdict.valid_until = verdict.valid_until.min(at);
        return Ok(Some(at));
    }
    caused.extend(
        needed
            .into_iter()
            .map(|(s, _)| (s.to_owned(), subject.clone())),
    );
    Ok(None)
}

/// `id`, or an id newer than every own record written so far (the
/// milliseconds after the newest one's) when it is not.
fn newer_own_id(tx: &mut Tx<'_>, rng: &mut Rng, id: ReportId) -> Result<ReportId, StoreError> {
    Ok(match tx.last_own_id()? {
        Some(last) if id <= last => rng.report_id(last.timestamp_ms() + 1),
        _ => id,
    })
}

/// Applies one event inside a transaction. Store errors abort the whole
/// transaction; everything else is the event's own outcome.
fn apply(
    ctx: &Ctx<'_>,
    tx: &mut Tx<'_>,
    scratch: &mut Scratch,
    rng: &mut Rng,
    now_ms: u64,
    event: &Event,
) -> Result<Outcome, StoreError> {
    let now = now_ms / 1000;
    Ok(match event {
        Event::Submit(s) => match submission(ctx, rng, now, s) {
            Ok(mut report) => {
                // A new report about a subject supersedes this server's
                // last record about it, even within the same second (a
                // report id's milliseconds are spread at random).
                if let Some(old) = tx.own(&report.subject)? {
                    report.issued_at = report.issued_at.max(old.issued_at());
                }
                // Every own record is newer than the last one written, so
                // that the feed served as a log (spec §4.6) is in id order.
                report.id = newer_own_id(tx, rng, report.id)?;
                let record = Record::Report(report.clone());
                tx.put_own(&record)?;
                ingest(ctx, tx, scratch, now_ms, &ctx.settings.domain, &record, "")?;
                scratch.effects.push(Effect::PublishOwn);
                Outcome::Report(report)
            }
            Err(e) => Outcome::Failed(e),
        },
        Event::Signal {
            subject,
            release,
            user,
        } => {
            let mut signals = tx.signals(subject.as_str())?.unwrap_or_default();
            signals.add(*release, user, now);
            tx.put_signals(subject.as_str(), &signals)?;
            if *release {
                scratch.released.insert(
                    subject.clone(),
                    signals.releases_since(now.saturating_sub(RELEASES_COUNT_SECS)),
                );
                scratch.touched.insert(subject.clone());
            }
            Outcome::Done
        }
        Event::Retract { subject, reason } => {
            let Some(Record::Report(old)) = tx.own(subject)? else {
                return Ok(Outcome::Retracted(None));
            };
            let candidate = rng.report_id(now * 1000);
            let id = newer_own_id(tx, rng, candidate)?;
            let tomb = Retraction {
                id,
                subject: subject.clone(),
                retracts: old.id,
                reason: *reason,
                issued_at: now.max(old.issued_at),
                expires_at: old.expires_at,
            };
            let record = Record::Retraction(tomb.clone());
            tx.put_own(&record)?;
            ingest(ctx, tx, scratch, now_ms, &ctx.settings.domain, &record, "")?;
            scratch.effects.push(Effect::PublishOwn);
            Outcome::Retracted(Some(tomb))
        }
        Event::Import {
            source,
            subject,
            category,
            ttl,
        } => {
            let record = listed_report(
                rng.report_id(now * 1000),
                subject.clone(),
                *category,
                now,
                (*ttl).min(corvid_protocol::ns::MAX_TTL_SECS),
            );
            Outcome::Ingested(vec![ingest(ctx, tx, scratch, now_ms, source, &record, "")?])
        }
        Event::Records { source, records } => {
            let mut out = Vec::with_capacity(records.len());
            for (record, key_id) in records {
                out.push(ingest(ctx, tx, scratch, now_ms, source, record, key_id)?);
            }
            Outcome::Ingested(out)
        }
        Event::Listed { source, records } => {
            let mut out = Vec::with_capacity(records.len());
            for record in records {
                let first = tx
                    .get(record.subject().as_str(), source)?
                    .map(|stored| stored.record)
                    .filter(|r| r.expires_at() > now);
                out.push(ingest(
                    ctx,
                    tx,
                    scratch,
                    now_ms,
                    source,
                    first.as_ref().unwrap_or(record),
                    "",
                )?);
            }
            Outcome::Ingested(out)
        }
        Event::Items {
            source,
            node,
            items,
        } => Outcome::Ingested(live_items(ctx, tx, scratch, now_ms, source, node, items)?),
        Event::Remove { source, subject } => {
            if tx.remove_if(subject, source, |_| true)? {
                scratch.removed(source, subject);
                Outcome::Count(1)
            } else {
                Outcome::Count(0)
            }
        }
        Event::Rotation { source, key } => {
            rotation(ctx, tx, source, key)?;
            Outcome::Done
        }
        Event::ConfirmRotation { source } => {
            let state = tx.peer(source)?;
            match state.pending_rotation {
                Some(key) => {
                    tx.update_peer(source, |p| {
                        p.rotated_keys.push(key.clone());
                        p.pending_rotation = None;
                    })?;
                    Outcome::Confirmed(Some(key))
                }
                None => Outcome::Confirmed(None),
            }
        }
        Event::LiftSuspension { source } => {
            tx.update_peer(source, |p| p.suspended_for_canary = None)?;
            scratch.lift.push(source.clone());
            Outcome::Done
        }
        Event::RotateKey(new) => {
            let old = scratch
                .signer
                .clone()
                .unwrap_or_else(|| Arc::clone(ctx.signer));
            let rotation = corvid_protocol::record::KeyRotation {
                old: old.public_key(),
                new: new.public_key(),
                issued_at: now,
            };
            let item_id = corvid_protocol::feed::rotation_item_id(&new.public_key());
            let out = key_record(ctx, tx, &old, Body::KeyRotation(rotation), item_id)?;
            scratch.signer = Some(Arc::clone(new));
            scratch.effects.push(Effect::Rekeyed);
            out
        }
        Event::RevokeKey { reason } => {
            let key = scratch
                .signer
                .clone()
                .unwrap_or_else(|| Arc::clone(ctx.signer));
            let revocation = corvid_protocol::record::KeyRevocation {
                key: key.public_key(),
                issued_at: now,
                reason: reason.clone(),
            };
            let item_id = corvid_protocol::feed::revocation_item_id(&key.public_key());
            key_record(ctx, tx, &key, Body::KeyRevocation(revocation), item_id)?
        }
        Event::Touch { source } => {
            tx.update_peer(source, |p| p.last_item = Some(now))?;
            Outcome::Done
        }
        Event::Refresh(subject) => {
            scratch.touched.insert(subject.clone());
            Outcome::Done
        }
        Event::Reconcile { .. }
        | Event::Revocation { .. }
        | Event::Sweep { .. }
        | Event::Reload(_)
        | Event::Warm => Outcome::Done,
    })
}

/// Signs a key record for the own feed and keeps it for republishing.
fn key_record(
    ctx: &Ctx<'_>,
    tx: &mut Tx<'_>,
    key: &SecretKey,
    body: Body,
    item_id: String,
) -> Result<Outcome, StoreError> {
    let envelope = corvid_protocol::item::Envelope {
        corvid: corvid_protocol::ns::PROTOCOL_MAJOR,
        issuer: corvid_protocol::record::Issuer {
            domain: ctx.settings.domain.clone(),
            key: key.public_key().key_id(),
        },
        body,
    };
    match SignedItem::sign(key, &envelope, ctx.feed, &item_id) {
        Ok(item) => {
            tx.add_key_record(&item_id, &item.to_xml())?;
            Ok(Outcome::KeyRecord(item_id, Box::new(item)))
        }
        Err(e) => Ok(Outcome::Failed(CoreError::Invalid(format!(
            "cannot sign the key record: {e}"
        )))),
    }
}

/// Builds the own report for a submission.
fn submission(ctx: &Ctx<'_>, rng: &mut Rng, now: u64, s: &Submission) -> Result<Report, CoreError> {
    let settings = ctx.settings;
    let subject = match &s.subject {
        ReportSubject::Key(k) => k.clone(),
        ReportSubject::Ip(prefix) => {
            let Some((secret, _)) = settings.secrets.iter().find(|(_, issue)| *issue) else {
                return Err(CoreError::Invalid(
                    "no federation secret is configured to tokenize IP reports (keys.federation with issue = true)".into(),
                ));
            };
            secret.token(prefix, secret.epoch_of(now))
        }
    };
    if settings.is_canary(&subject) {
        return Err(CoreError::Invalid(format!(
            "{subject} is one of this server's own hosts or a canary; refusing to report it"
        )));
    }
    let ttl = s.ttl.unwrap_or(settings.default_ttl);
    if ttl == 0 || ttl > corvid_protocol::ns::MAX_TTL_SECS {
        return Err(CoreError::Invalid(
            "ttl must be between 1 second and 90 days".into(),
        ));
    }
    if s.abuse_contacted_at.is_some() && subject.kind() != SubjectKind::Domain {
        return Err(CoreError::Invalid(
            "abuse_contacted_at only applies to domain reports".into(),
        ));
    }
    // Refused, never altered (spec §5.4): the operator learns what was wrong.
    if s.count == 0 {
        return Err(CoreError::Invalid("count must be at least 1".into()));
    }
    for (name, at) in [
        ("first_seen", s.first_seen),
        ("abuse_contacted_at", s.abuse_contacted_at),
    ] {
        if let Some(t) = at.filter(|&t| t > now) {
            return Err(CoreError::Invalid(format!(
                "{name} is in the future ({} s ahead of this server's clock)",
                t - now
            )));
        }
    }
    let spread = u64::from(u16::from_be_bytes(rng.bytes()) % 1000);
    let report = Report {
        id: rng.report_id(now * 1000 + spread),
        subject,
        category: s.category,
        confidence: s.confidence,
        issued_at: now,
        expires_at: now + ttl,
        evidence: Evidence {
            count: s.count,
            first_seen: s.first_seen.unwrap_or(now),
            last_seen: now,
            note: s.note.clone(),
            abuse_contacted_at: s.abuse_contacted_at,
            message_text: s.message_text.clone(),
        },
    };
    Record::Report(report.clone())
        .validate(now, 0)
        .map_err(|e| CoreError::Invalid(e.to_string()))?;
    Ok(report)
}

/// Stores a verified record from a source (newest per subject wins); the
/// comparison and the write are in the transaction, so two copies of one
/// item cannot both win or undo each other.
fn ingest(
    ctx: &Ctx<'_>,
    tx: &mut Tx<'_>,
    scratch: &mut Scratch,
    now_ms: u64,
    source: &str,
    record: &Record,
    key_id: &str,
) -> Result<Ingested, StoreError> {
    let subject = record.subject();
    let over_cap = ctx.settings.peers.get(source).is_some_and(|peer| {
        let stored = ctx.counts.get(source).copied().unwrap_or(0);
        let delta = scratch.counts.get(source).copied().unwrap_or(0);
        stored.saturating_add_signed(delta) >= peer.max_reports
    });
    let mut what = Ingested::Unchanged;
    let upserted = tx.upsert(subject.as_str(), source, |old| match old {
        Some(old) if !record.supersedes(&old.record) => {
            what = Ingested::Unchanged;
            // The same record again confirms an unconfirmed entry.
            (old.missing_since.is_some() && old.record == *record).then(|| Stored {
                missing_since: None,
                seen_ms: now_ms,
                ..old.clone()
            })
        }
        None if over_cap => {
            what = Ingested::OverCap;
            None
        }
        _ => {
            what = Ingested::Stored;
            Some(Stored {
                record: record.clone(),
                key_id: key_id.to_owned(),
                missing_since: None,
                seen_ms: now_ms,
            })
        }
    })?;
    if upserted != Upserted::Kept {
        scratch.touched.insert(subject.clone());
    }
    if upserted == Upserted::Added {
        *scratch.counts.entry(source.to_owned()).or_default() += 1;
    }
    if what == Ingested::Stored
        && matches!(record, Record::Report(_))
        && ctx.settings.is_canary(subject)
        && ctx.settings.peers.contains_key(source)
        && !ctx.suspended.contains(source)
    {
        let why = format!("reported canary {subject}");
        tx.update_peer(source, |p| p.suspended_for_canary = Some(why.clone()))?;
        scratch.suspend.push((source.to_owned(), why));
    }
    Ok(what)
}

/// The key ring for a peer as of this transaction.
fn key_ring(tx: &mut Tx<'_>, peer: &crate::engine::Peer) -> Result<KeyRing, StoreError> {
    Ok(ring_of(peer, &tx.peer(&peer.domain)?))
}

/// A peer's key ring: the pinned key, accepted rotations, revocations.
pub fn ring_of(peer: &crate::engine::Peer, state: &PeerState) -> KeyRing {
    let mut ring = KeyRing::pinned(&peer.domain, peer.key);
    for k in &state.rotated_keys {
        if let Ok(k) = k.parse() {
            ring.keys.push(k);
        }
    }
    ring.revoked = state
        .revoked
        .iter()
        .filter_map(|f| f.parse().ok())
        .collect();
    ring
}

fn rotation(
    ctx: &Ctx<'_>,
    tx: &mut Tx<'_>,
    source: &str,
    new: &PublicKey,
) -> Result<(), StoreError> {
    let Some(peer) = ctx.settings.peers.get(source) else {
        return Ok(());
    };
    let text = new.to_string();
    let state = tx.peer(source)?;
    if state.rotated_keys.contains(&text) || *new == peer.key {
        return Ok(());
    }
    if peer.accept_rotations {
        tracing::info!(peer = %peer.domain, key = %text, "accepted key rotation (peer allows automatic rotations)");
        tx.update_peer(source, |p| {
            p.rotated_keys.push(text.clone());
            p.pending_rotation = None;
        })?;
    } else if state.pending_rotation.as_deref() != Some(&text) {
        tracing::warn!(peer = %peer.domain, key = %text, fingerprint = %new.fingerprint(), "key rotation waits for the operator: corvid peer confirm-rotation {}", peer.domain);
        tx.update_peer(source, |p| p.pending_rotation = Some(text.clone()))?;
    }
    Ok(())
}

/// Verifies one item a peer published at `node` of its feed's service:
/// the item and what it says, or the rejection's label and reason. The live
/// path (in the core) and a backfill's reads both check items this way.
///
/// # Errors
/// The rejection: `(label, reason)`.
pub fn verify_peer_item(
    peer: &crate::engine::Peer,
    ring: &KeyRing,
    node: &str,
    item_id: &str,
    payload: Option<&xmpp_parsers::minidom::Element>,
    now: u64,
    skew: u64,
) -> Result<(SignedItem, VerifiedItem), (&'static str, String)> {
    let Some(payload) = payload else {
        return Err(("malformed", "item without payload".into()));
    };
    let feed = FeedAddress {
        service: peer.feed.service.clone(),
        node: node.to_owned(),
    };
    let signed =
        SignedItem::from_element(payload).map_err(|e| (e.reason_label(), e.to_string()))?;
    let v = verify_signed(&signed, &feed, item_id, ring, now, skew)
        .map_err(|e| (e.reason_label(), e.to_string()))?;
    Ok((signed, v))
}

/// Verifies and applies items a peer published live. A rejected item is
/// counted and dropped; a head asks for a reread.
fn live_items(
    ctx: &Ctx<'_>,
    tx: &mut Tx<'_>,
    scratch: &mut Scratch,
    now_ms: u64,
    source: &str,
    node: &str,
    items: &[(String, Option<xmpp_parsers::minidom::Element>)],
) -> Result<Vec<Ingested>, StoreError> {
    let now = now_ms / 1000;
    let mut out = Vec::with_capacity(items.len());
    let Some(peer) = ctx.settings.peers.get(source) else {
        return Ok(out);
    };
    let seen = scratch.seen.entry(source.to_owned()).or_default();
    *seen = (*seen).max(now);
    let mut ring = key_ring(tx, peer)?;
    for (item_id, payload) in items {
        let v = match verify_peer_item(
            peer,
            &ring,
            node,
            item_id,
            payload.as_ref(),
            now,
            ctx.settings.skew,
        ) {
            Ok((_, v)) => v,
            Err((label, why)) => {
                scratch.reject(source, item_id, label, why);
                continue;
            }
        };
        match v.body {
            Body::Delta { record } => {
                let newest = scratch
                    .newest
                    .entry(source.to_owned())
                    .or_insert(record.id());
                *newest = (*newest).max(record.id());
                let what = ingest(
                    ctx,
                    tx,
                    scratch,
                    now_ms,
                    source,
                    &record,
                    v.issuer.key.as_str(),
                )?;
                match what {
                    Ingested::OverCap => scratch.reject(
                        source,
                        record.subject().as_str(),
                        "peer-cap",
                        "peer is at its max_reports cap".into(),
                    ),
                    _ => *scratch.ingested.entry(source.to_owned()).or_default() += 1,
                }
                out.push(what);
            }
            Body::Head { .. } => scratch.effects.push(Effect::Resync(source.to_owned())),
            Body::KeyRotation(r) => {
                rotation(ctx, tx, source, &r.new)?;
                ring = key_ring(tx, peer)?;
            }
            Body::KeyRevocation(r) => {
                // Its entries are dropped once this transaction commits; the
                // ring refuses the key from here on.
                ring.revoked.push(r.key.fingerprint());
                scratch.revocations.push((source.to_owned(), r.key));
            }
            Body::Snapshot { .. } | Body::Card(_) | Body::Checkpoint { .. } => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use corvid_protocol::aggregate::{Mode, SourceKind};

    use super::*;

    fn contribution(category: Category, confidence: u8, weight: f64, mode: Mode) -> Contribution {
        let subject = SubjectKey::for_jid("bot@spam.example").expect("jid");
        Contribution {
            source: format!("{category}-{confidence}"),
            kind: SourceKind::Peer,
            weight,
            alone: false,
            mode,
            confirmed: true,
            record: Record::Report(Report {
                id: ReportId::new(1_700_000_000_000, [1; 10]),
                subject,
                category,
                confidence,
                issued_at: 1_700_000_000,
                expires_at: 1_700_086_400,
                evidence: Evidence {
                    count: 1,
                    first_seen: 1_700_000_000,
                    last_seen: 1_700_000_000,
                    note: None,
                    abuse_contacted_at: None,
                    message_text: None,
                },
            }),
        }
    }

    #[test]
    fn the_leading_category_weighs_trust_and_confidence_of_counted_reports() {
        assert_eq!(leading_category(&[]), None);
        let spam = contribution(Category::Spam, 60, 1.0, Mode::Enforce);
        let phishing = contribution(Category::Phishing, 90, 1.0, Mode::Enforce);
        assert_eq!(
            leading_category(&[spam.clone(), phishing.clone()]),
            Some(Category::Phishing)
        );
        // A less trusted source weighs less.
        let weak_phishing = contribution(Category::Phishing, 90, 0.5, Mode::Enforce);
        assert_eq!(
            leading_category(&[spam.clone(), weak_phishing]),
            Some(Category::Spam)
        );
        // Observed or unconfirmed reports do not count.
        let observed = contribution(Category::Malware, 100, 1.0, Mode::Observe);
        let mut unconfirmed = contribution(Category::Abuse, 100, 1.0, Mode::Enforce);
        unconfirmed.confirmed = false;
        assert_eq!(
            leading_category(&[spam, observed, unconfirmed]),
            Some(Category::Spam)
        );
    }
}
