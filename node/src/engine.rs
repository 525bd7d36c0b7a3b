//! The verdict engine: the node's core, fed by `handle_*`-style calls with
//! an explicit `now`. It owns the store and the trust settings; the tokio
//! tasks around it only move bytes between XMPP, sled and HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use corvid_protocol::aggregate::{self, Action, Lookup, Mode, Policy, Reason, Scored, SourceKind};
use corvid_protocol::iptoken::{FederationSecret, SecretId};
use corvid_protocol::item::{FeedAddress, KeyRing, SignedItem};
use corvid_protocol::keys::{PublicKey, SecretKey, Signer};
use corvid_protocol::record::{
    Category, Evidence, Record, Report, ReportId, Retraction, RetractionReason,
};
use corvid_protocol::subject::{SubjectKey, domain_lookup_keys};
use serde::Serialize;

use crate::config::{Config, read_secret};
use crate::core::{Core, CoreError, Effect, Event, Outcome, Shared};
use crate::metrics::Metrics;
use crate::store::{PeerState, Store};
use crate::subjects::{IpPrefixMatch, ListEntry, Query, ReportSubject, parse_list_entry};
use crate::verdicts::SCORE_REFRESH_SECS;

/// How one trusted source counts.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Kind of source.
    pub kind: SourceKind,
    /// Weight.
    pub weight: f64,
    /// Mode from config (a canary suspension overrides it).
    pub mode: Mode,
    /// Adopted by the operator (`block_alone`): counts as this server's
    /// own reports.
    pub alone: bool,
}

/// A configured peer, as the engine and the sync tasks use it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Issuer domain (the source id).
    pub domain: String,
    /// Its feed.
    pub feed: FeedAddress,
    /// Pinned key.
    pub key: PublicKey,
    /// Trust.
    pub trust: Trust,
    /// Accept rotations without the operator.
    pub accept_rotations: bool,
    /// Stored-report cap.
    pub max_reports: u64,
    /// Most new blocks its reports may cause in an hour (0: no cap).
    pub max_new_blocks_per_hour: u32,
}

/// A configured RTBL source.
#[derive(Debug, Clone)]
pub struct Rtbl {
    /// Source id: `rtbl:` + feed.
    pub source: String,
    /// Its node.
    pub feed: FeedAddress,
    /// Trust (weight capped by the policy).
    pub trust: Trust,
}

/// Everything a config file decides, rebuilt on reload.
#[derive(Debug)]
pub struct Settings {
    /// This server's domain (source id of its own reports).
    pub domain: String,
    /// Own hosts (canaries).
    pub hosts: Vec<String>,
    /// Aggregation policy.
    pub policy: Policy,
    /// Peers by domain.
    pub peers: BTreeMap<String, Peer>,
    /// RTBL sources by source id.
    pub rtbls: BTreeMap<String, Rtbl>,
    allow: BTreeSet<SubjectKey>,
    deny: BTreeSet<SubjectKey>,
    allow_ip: Vec<IpPrefixMatch>,
    deny_ip: Vec<IpPrefixMatch>,
    canaries: BTreeSet<SubjectKey>,
    /// Federation secrets; the first with `issue` tokenizes new reports.
    pub secrets: Vec<(FederationSecret, bool)>,
    /// Clock-skew bound.
    pub skew: u64,
    /// Grace period for unconfirmed entries.
    pub grace: u64,
    /// Default report TTL in seconds.
    pub default_ttl: u64,
    /// Ingest rate limit per source, items per second.
    pub ingest_rate: u32,
    /// Imported lists block alone (`policy.imports_block_alone`).
    pub imports_block_alone: bool,
    /// Federation directory settings, if this node takes part in one.
    pub directory: Option<crate::config::DirectoryConfig>,
}

impl Settings {
    /// Builds settings from a checked config.
    ///
    /// # Errors
    /// Secret files that cannot be read, invalid entries.
    pub fn from_config(config: &Config) -> Result<Self> {
        let policy = config.policy.aggregation();
        let mut peers = BTreeMap::new();
        for p in &config.peers {
            let feed: FeedAddress = p.feed.parse()?;
            let key: PublicKey = p
                .key
                .parse()
                .with_context(|| format!("peer {}", p.domain))?;
            let domain = corvid_protocol::subject::normalize_domain(&p.domain)?;
            peers.insert(
                domain.clone(),
                Peer {
                    domain,
                    feed,
                    key,
                    trust: Trust {
                        kind: SourceKind::Peer,
                        weight: p.weight,
                        mode: p.mode,
                        alone: p.block_alone,
                    },
                    accept_rotations: p.accept_rotations,
                    max_reports: p.max_reports,
                    max_new_blocks_per_hour: p.max_new_blocks_per_hour,
                },
            );
        }
        let mut rtbls = BTreeMap::new();
        for r in &config.rtbls {
            let feed = FeedAddress::new(&r.service, &r.node)?;
            let source = format!("rtbl:{feed}");
            rtbls.insert(
                source.clone(),
                Rtbl {
                    source,
                    feed,
                    trust: Trust {
                        kind: SourceKind::Rtbl,
                        weight: r.weight.min(policy.rtbl_max_weight),
                        mode: Mode::Enforce,
                        alone: r.block_alone,
                    },
                },
            );
        }
        let split = |entries: &[String]| -> Result<(BTreeSet<SubjectKey>, Vec<IpPrefixMatch>)> {
            let mut keys = BTreeSet::new();
            let mut ips = Vec::new();
            for e in entries {
                match parse_list_entry(e)? {
                    ListEntry::Key(k) => {
                        keys.insert(k);
                    }
                    ListEntry::Ip(ip) => ips.push(ip),
                }
            }
            Ok((keys, ips))
        };
        let (allow, allow_ip) = split(&config.policy.allow)?;
        let (deny, deny_ip) = split(&config.policy.deny)?;
        let (mut canaries, _) = split(&config.policy.canaries)?;
        let domain = corvid_protocol::subject::normalize_domain(&config.server.domain)?;
        let mut hosts: Vec<String> = vec![domain.clone()];
        for h in &config.server.hosts {
            let h = corvid_protocol::subject::normalize_domain(h)?;
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        for h in &hosts {
            canaries.insert(SubjectKey::for_domain(h, false)?);
        }
        let mut secrets = Vec::new();
        for f in &config.keys.federations {
            let hex_text = read_secret(&f.secret_file)?;
            let bytes = hex::decode(hex_text.trim())
                .with_context(|| format!("{} must hold hex", f.secret_file.display()))?;
            let secret =
                FederationSecret::new(SecretId::new(&f.id)?, bytes, f.epoch_days * 86_400)?;
            secrets.push((secret, f.issue));
        }
        Ok(Self {
            domain,
            hosts,
            policy,
            peers,
            rtbls,
            allow,
            deny,
            allow_ip,
            deny_ip,
            canaries,
            secrets,
            skew: config.policy.clock_skew_secs,
            grace: config.policy.unconfirmed_grace_secs,
            default_ttl: config.policy.default_ttl_days * 86_400,
            ingest_rate: config.policy.ingest_rate_per_sec,
            imports_block_alone: config.policy.imports_block_alone,
            directory: config.directory.clone(),
        })
    }

    /// How far the settings trust a source (peer, RTBL, import), if they do.
    pub fn trust(&self, source: &str) -> Option<Trust> {
        if source == self.domain {
            return Some(Trust {
                kind: SourceKind::Local,
                weight: 1.0,
                mode: Mode::Enforce,
                alone: false,
            });
        }
        if let Some(p) = self.peers.get(source) {
            return Some(p.trust.clone());
        }
        if source.starts_with(IMPORT_PREFIX) {
            // A list the operator imported: counted, but unsigned and
            // third-party, so like an RTBL it never makes a quorum.
            return Some(Trust {
                kind: SourceKind::Import,
                weight: IMPORT_WEIGHT,
                mode: Mode::Enforce,
                alone: self.imports_block_alone,
            });
        }
        self.rtbls.get(source).map(|r| r.trust.clone())
    }

    /// Whether the local allow list names this key.
    pub fn allows(&self, subject: &SubjectKey) -> bool {
        self.allow.contains(subject)
    }

    /// Whether the local deny list names this key.
    pub fn denies(&self, subject: &SubjectKey) -> bool {
        self.deny.contains(subject)
    }

    /// Every key on the local allow and deny lists.
    pub fn listed(&self) -> impl Iterator<Item = &SubjectKey> {
        self.allow.iter().chain(&self.deny)
    }

    /// The listed canaries and own hosts' keys.
    pub fn canary_keys(&self) -> impl Iterator<Item = &SubjectKey> {
        self.canaries.iter()
    }

    /// Whether a subject is a canary: listed, an own host, or a subdomain
    /// key covering an own host.
    pub fn is_canary(&self, subject: &SubjectKey) -> bool {
        if self.canaries.contains(subject) {
            return true;
        }
        match subject.domain() {
            Some((d, true)) => self
                .hosts
                .iter()
                .any(|h| h == d || h.ends_with(&format!(".{d}"))),
            _ => false,
        }
    }
}

/// A verdict as the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct VerdictOut {
    /// allow | flag | block.
    pub action: Action,
    /// Highest score looked at.
    pub score: f64,
    /// The subject keys checked (exact first). IP lookups show tokens only.
    pub subjects: Vec<String>,
    /// Why.
    pub reasons: Vec<serde_json::Value>,
    /// Live contributions.
    pub contributions: Vec<ContributionOut>,
}

/// One contribution, for `explain`.
#[derive(Debug, Clone, Serialize)]
pub struct ContributionOut {
    /// Scored values.
    #[serde(flatten)]
    pub scored: Scored,
    /// `confirmed` or `unconfirmed`.
    pub status: &'static str,
}

/// A report the operator submits.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Subject.
    pub subject: ReportSubject,
    /// Category.
    pub category: Category,
    /// 1–100.
    pub confidence: u8,
    /// Lifetime in seconds (default from policy).
    pub ttl: Option<u64>,
    /// Evidence.
    pub note: Option<String>,
    /// Incidents seen.
    pub count: u64,
    /// First seen.
    pub first_seen: Option<u64>,
    /// Domain reports: abuse contact notified at.
    pub abuse_contacted_at: Option<u64>,
    /// Explicitly included sample message.
    pub message_text: Option<String>,
}

/// Why a report was not stored.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The report itself is not acceptable (the caller's to fix): 400.
    #[error("{0}")]
    Invalid(String),
    /// Storing it failed (nothing was acknowledged): 5xx.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// What became of an ingested record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Stored (new or newer).
    Stored,
    /// Already known (same or newer stored); only confirmation refreshed.
    Unchanged,
    /// Over the peer's cap.
    OverCap,
}

/// xmppbl.org's `muc_bans_sha256` lists domains as the SHA-256 of the bare
/// domain, which reads as a `jid:` key: check those too (U- and A-label).
fn rtbl_domain_keys(domain: &str) -> Vec<SubjectKey> {
    let mut names = vec![domain.to_owned()];
    if let Some(a) = corvid_protocol::subject::domain_a_label(domain)
        && a != domain
    {
        names.push(a);
    }
    names
        .iter()
        .filter_map(|d| {
            format!("jid:{}", corvid_protocol::subject::jid_hash(d))
                .parse()
                .ok()
        })
        .collect()
}

/// Source ids of local imports start with this.
pub const IMPORT_PREFIX: &str = "import:";
/// Weight of an imported list's entries.
pub const IMPORT_WEIGHT: f64 = 0.8;

/// One subject in an export.
#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    /// Subject key.
    pub subject: String,
    /// For domain subjects, the domain (U-label).
    pub domain: Option<String>,
    /// Current action.
    pub action: Action,
    /// Score.
    pub score: f64,
    /// Category of the strongest contribution.
    pub category: Option<Category>,
    /// Earliest issue time among live contributions.
    pub since: Option<u64>,
    /// Sum of evidence counts.
    pub evidence: u64,
    /// Whether a contribution says the abuse contact was tried.
    pub abuse_contacted: bool,
    /// Sources contributing.
    pub sources: Vec<String>,
}

/// An unsigned "listed" entry (a local import, an RTBL item) as a report:
/// full confidence, since the source's weight says how much it counts, and
/// one incident seen `now`.
pub fn listed_report(
    id: ReportId,
    subject: SubjectKey,
    category: Category,
    now: u64,
    ttl: u64,
) -> Record {
    Record::Report(Report {
        id,
        subject,
        category,
        confidence: 100,
        issued_at: now,
        expires_at: now + ttl,
        evidence: Evidence {
            count: 1,
            first_seen: now,
            last_seen: now,
            note: None,
            abuse_contacted_at: None,
            message_text: None,
        },
    })
}

/// Random bytes from the operating system (the driver's seeds).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // getrandom only fails when the OS has no entropy source at all.
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8;
        }
    }
    b
}

/// How a request waits for its answer.
#[derive(Debug)]
enum Replier {
    Blocking(std::sync::mpsc::SyncSender<Outcome>),
    Async(tokio::sync::oneshot::Sender<Outcome>),
}

impl Replier {
    fn send(self, outcome: Outcome) {
        // A requester that gave up does not want the answer.
        let _ = match self {
            Self::Blocking(tx) => tx.send(outcome).map_err(drop),
            Self::Async(tx) => tx.send(outcome).map_err(drop),
        };
    }
}

/// A queued event and who waits for it.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Stop is rare; boxing every event is not worth it.
enum Job {
    Event {
        now_ms: u64,
        event: Event,
        reply: Option<Replier>,
    },
    Stop,
}

/// Local requests waiting for the core at most (they are the operator's
/// and the hooks': few, and answered first).
const CONTROL_QUEUE: usize = 1024;
/// Peer batches waiting for the core at most: senders wait when it is full.
const FEED_QUEUE: usize = 256;
/// Peer batches taken per step, after every pending local request.
const FEED_PER_STEP: usize = 64;

/// Signals the driver raises for the tasks around the core.
#[derive(Debug, Default)]
struct Signals {
    own_changed: tokio::sync::Notify,
    rekeyed: tokio::sync::Notify,
    resync: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
}

/// The engine: the handle the tasks around the core hold. Writes go to
/// the core's thread as events and wait for its answer; lookups read what
/// the core published and never wait for it.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    shared: Arc<Shared>,
    feed: FeedAddress,
    control: tokio::sync::mpsc::Sender<Job>,
    peers: tokio::sync::mpsc::Sender<Job>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    signals: Arc<Signals>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Signalled when our own feed was purged, deleted or had items
    /// retracted behind our back: the publisher reconciles.
    pub own_feed_changed: tokio::sync::Notify,
    /// The feed is served by corvidd's own component (layout 2), not
    /// published to a PubSub service.
    pub feed_served: std::sync::atomic::AtomicBool,
    /// Each source's read errors and latest checkpoint, for `status`.
    pub sync: crate::sync::Board,
}

fn stopped() -> anyhow::Error {
    anyhow::Error::new(CoreError::Stopped)
}

impl Engine {
    /// Starts the core on its own thread over a store.
    ///
    /// # Errors
    /// Storage errors while loading.
    pub fn new(
        store: Store,
        settings: Settings,
        signer: SecretKey,
        feed: FeedAddress,
    ) -> Result<Self> {
        let core = Core::new(
            store.clone(),
            settings,
            signer,
            feed.clone(),
            crate::now_ms(),
        )?;
        let shared = Arc::clone(core.shared());
        let (control, control_rx) = tokio::sync::mpsc::channel(CONTROL_QUEUE);
        let (peers, peers_rx) = tokio::sync::mpsc::channel(FEED_QUEUE);
        let signals = Arc::new(Signals::default());
        let thread = {
            let signals = Arc::clone(&signals);
            std::thread::Builder::new()
                .name("corvid-core".into())
                .spawn(move || drive(core, control_rx, peers_rx, &signals))
                .context("cannot start the core thread")?
        };
        Ok(Self {
            store,
            metrics: Arc::clone(&shared.metrics),
            shared,
            feed,
            control,
            peers,
            thread: Mutex::new(Some(thread)),
            signals,
            own_feed_changed: tokio::sync::Notify::new(),
            sync: crate::sync::Board::default(),
            feed_served: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sends an event and waits for its outcome (from any thread; in async
    /// code prefer [`Engine::call_async`]).
    ///
    /// # Errors
    /// The core has stopped.
    pub fn call(&self, event: Event) -> Result<Outcome> {
        self.call_at(crate::now(), event)
    }

    /// As [`Engine::call`], with the event stamped `now` (seconds; the
    /// current millisecond when `now` is the current second).
    ///
    /// # Errors
    /// The core has stopped.
    pub fn call_at(&self, now: u64, event: Event) -> Result<Outcome> {
        let real = crate::now_ms();
        let now_ms = if real / 1000 == now { real } else { now * 1000 };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut job = Job::Event {
            now_ms,
            event,
            reply: Some(Replier::Blocking(tx)),
        };
        let queue = self.queue_of(&job);
        loop {
            match queue.try_send(job) {
                Ok(()) => break,
                Err(tokio::sync::mpsc::error::TrySendError::Full(j)) => {
                    job = j;
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
            }
        }
        rx.recv().map_err(|_| stopped())
    }

    /// Sends an event and waits for its outcome.
    ///
    /// # Errors
    /// The core has stopped.
    pub async fn call_async(&self, event: Event) -> Result<Outcome> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::Event {
            now_ms: crate::now_ms(),
            event,
            reply: Some(Replier::Async(tx)),
        };
        self.queue_of(&job).send(job).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Queues an event without waiting for it (dropped when the queue is
    /// full: only for hints such as a refresh).
    pub fn hint(&self, event: Event) {
        let _ = self.control.try_send(Job::Event {
            now_ms: crate::now_ms(),
            event,
            reply: None,
        });
    }

    fn queue_of(&self, job: &Job) -> &tokio::sync::mpsc::Sender<Job> {
        match job {
            Job::Event {
                event:
                    Event::Items { .. }
                    | Event::Records { .. }
                    | Event::Listed { .. }
                    | Event::Reconcile { .. },
                ..
            } => &self.peers,
            _ => &self.control,
        }
    }

    /// Stops the core (after the events queued before) and waits for it.
    pub fn stop(&self) {
        let _ = self.control.try_send(Job::Stop);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("the core thread panicked");
        }
    }

    /// Stops the core, then makes the store durable and compacts it.
    ///
    /// # Errors
    /// Storage errors.
    pub fn shut_down(&self) -> Result<(u64, u64)> {
        self.stop();
        Ok(self.store.shut_down()?)
    }

    /// Notified when own records changed (publish the outbox).
    pub fn own_changed(&self) -> &tokio::sync::Notify {
        &self.signals.own_changed
    }

    /// Notified after a key rotation: rewrite the own feed.
    pub fn rekeyed(&self) -> &tokio::sync::Notify {
        &self.signals.rekeyed
    }

    /// Where the core's requests to reread a source go.
    pub fn set_resync(&self, tx: tokio::sync::mpsc::UnboundedSender<String>) {
        *self
            .signals
            .resync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
    }

    /// Rejected items since the last summary.
    pub fn rejects(&self) -> &crate::rejects::RejectLog {
        &self.shared.rejects
    }

    /// The store (committed state; writes go through the core).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What the core publishes.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The signing key.
    pub fn signer(&self) -> Arc<SecretKey> {
        self.shared.signer()
    }

    /// The own feed.
    pub fn feed(&self) -> &FeedAddress {
        &self.feed
    }

    /// Current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.shared.settings()
    }

    /// Public key of this node.
    pub fn public_key(&self) -> PublicKey {
        self.signer().public_key()
    }

    /// The ingest rate limit.
    pub fn ingest_rate(&self) -> u32 {
        self.settings().ingest_rate
    }

    /// Records (or clears) the publisher's last failure, for health checks.
    pub fn set_publish_error(&self, error: Option<String>) {
        self.shared.set_publish_error(error);
    }

    /// The publisher's last failure, if it has not recovered since.
    pub fn publish_error(&self) -> Option<String> {
        self.shared.publish_error()
    }

    /// Whether a source is suspended.
    pub fn is_suspended(&self, source: &str) -> bool {
        self.shared.is_suspended(source)
    }

    /// The key ring for a peer: pinned key, accepted rotations, revocations.
    ///
    /// # Errors
    /// Storage errors.
    pub fn key_ring(&self, peer: &Peer) -> Result<KeyRing> {
        Ok(crate::core::ring_of(peer, &self.store.peer(&peer.domain)?))
    }

    /// Records stored from a source.
    pub fn record_count(&self, source: &str) -> u64 {
        self.shared
            .count(source)
            .unwrap_or_else(|| self.store.peer(source).map(|p| p.records).unwrap_or(0))
    }

    /// A source's state.
    ///
    /// # Errors
    /// Storage errors.
    pub fn peer_state(&self, source: &str) -> Result<PeerState> {
        let mut state = self.store.peer(source)?;
        state.records = self.record_count(source);
        Ok(state)
    }

    /// Counts of subjects by their last recorded action.
    ///
    /// # Errors
    /// Storage errors.
    pub fn action_counts(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self.store.action_counts()?)
    }

    fn expect<T>(&self, out: Outcome, pick: impl FnOnce(Outcome) -> Option<T>) -> Result<T> {
        match out {
            Outcome::Failed(e) => Err(anyhow::Error::new(e)),
            other => {
                let shown = format!("{other:?}");
                pick(other)
                    .ok_or_else(|| anyhow::anyhow!("unexpected answer from the core: {shown}"))
            }
        }
    }

    /// Submits this server's own report; returns once it is on disk.
    ///
    /// # Errors
    /// [`SubmitError::Invalid`] for a report the caller must fix.
    pub fn submit(&self, now: u64, s: Submission) -> Result<Report, SubmitError> {
        match self.call_at(now, Event::Submit(s))? {
            Outcome::Report(r) => Ok(r),
            Outcome::Failed(CoreError::Invalid(m)) => Err(SubmitError::Invalid(m)),
            Outcome::Failed(e) => Err(SubmitError::Failed(anyhow::Error::new(e))),
            other => Err(SubmitError::Failed(anyhow::anyhow!(
                "unexpected answer from the core: {other:?}"
            ))),
        }
    }

    /// Retracts this server's report about a subject; returns the tombstone.
    ///
    /// # Errors
    /// Storage errors.
    pub fn retract(
        &self,
        now: u64,
        subject: &SubjectKey,
        reason: RetractionReason,
    ) -> Result<Option<Retraction>> {
        let out = self.call_at(
            now,
            Event::Retract {
                subject: subject.clone(),
                reason,
            },
        )?;
        self.expect(out, |o| match o {
            Outcome::Retracted(t) => Some(t),
            _ => None,
        })
    }

    /// Records that a local user released a message from `subject` out of
    /// the spam folder (`release`) or deleted one there; distinct users'
    /// releases count against its verdict.
    ///
    /// # Errors
    /// Storage errors.
    pub fn signal(&self, now: u64, subject: &SubjectKey, release: bool, user: &str) -> Result<()> {
        let out = self.call_at(
            now,
            Event::Signal {
                subject: subject.clone(),
                release,
                user: user.to_owned(),
            },
        )?;
        self.expect(out, |o| matches!(o, Outcome::Done).then_some(()))
    }

    /// Stores a verified record from a source (newest per subject wins).
    ///
    /// # Errors
    /// Storage errors.
    pub fn ingest(
        &self,
        now: u64,
        source: &str,
        record: &Record,
        key_id: &str,
    ) -> Result<Ingested> {
        let out = self.call_at(
            now,
            Event::Records {
                source: source.to_owned(),
                records: vec![(record.clone(), key_id.to_owned())],
            },
        )?;
        self.expect(out, |o| match o {
            Outcome::Ingested(v) => v.into_iter().next(),
            _ => None,
        })
    }

    /// Stores verified records from a source in one step.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn ingest_all(
        &self,
        source: &str,
        records: Vec<(Record, String)>,
    ) -> Result<Vec<Ingested>> {
        self.ingested_by(Event::Records {
            source: source.to_owned(),
            records,
        })
        .await
    }

    /// Stores an unsigned list's entries in one step; an entry already
    /// stored and live keeps its first-seen record.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn ingest_listed(&self, source: &str, records: Vec<Record>) -> Result<Vec<Ingested>> {
        self.ingested_by(Event::Listed {
            source: source.to_owned(),
            records,
        })
        .await
    }

    async fn ingested_by(&self, event: Event) -> Result<Vec<Ingested>> {
        let out = self.call_async(event).await?;
        self.expect(out, |o| match o {
            Outcome::Ingested(v) => Some(v),
            _ => None,
        })
    }

    /// Live items from a peer: verified and stored by the core.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn items(
        &self,
        source: &str,
        node: &str,
        items: Vec<(String, Option<xmpp_parsers::minidom::Element>)>,
    ) -> Result<Vec<Ingested>> {
        let out = self
            .call_async(Event::Items {
                source: source.to_owned(),
                node: node.to_owned(),
                items,
            })
            .await?;
        self.expect(out, |o| match o {
            Outcome::Ingested(v) => Some(v),
            _ => None,
        })
    }

    /// Queues items a peer published for the core, without waiting for
    /// their outcome: the XMPP driver reads on while the core verifies and
    /// stores what is queued, many events to a transaction. Waits only
    /// while the peers' queue is full. Rejections are counted and logged by
    /// the core; a failed write is logged and a later resync repairs it.
    ///
    /// # Errors
    /// The core has stopped.
    pub async fn feed_items(
        &self,
        source: &str,
        node: &str,
        items: Vec<(String, Option<xmpp_parsers::minidom::Element>)>,
    ) -> Result<()> {
        let job = Job::Event {
            now_ms: crate::now_ms(),
            event: Event::Items {
                source: source.to_owned(),
                node: node.to_owned(),
                items,
            },
            reply: None,
        };
        self.peers.send(job).await.map_err(|_| stopped())
    }

    fn count_of(&self, now: u64, event: Event) -> Result<usize> {
        let out = self.call_at(now, event)?;
        self.expect(out, |o| match o {
            Outcome::Count(n) => Some(n),
            _ => None,
        })
    }

    async fn count_of_async(&self, event: Event) -> Result<usize> {
        let out = self.call_async(event).await?;
        self.expect(out, |o| match o {
            Outcome::Count(n) => Some(n),
            _ => None,
        })
    }

    /// As [`Engine::reconcile`], from async code.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn reconcile_async(
        &self,
        source: &str,
        present: BTreeSet<String>,
        started_ms: u64,
    ) -> Result<usize> {
        self.count_of_async(Event::Reconcile {
            source: source.to_owned(),
            present,
            started_ms,
        })
        .await
    }

    /// Accepts a pending rotation (operator action).
    ///
    /// # Errors
    /// Storage errors.
    pub fn confirm_rotation(&self, domain: &str) -> Result<Option<String>> {
        let out = self.call(Event::ConfirmRotation {
            source: domain.to_owned(),
        })?;
        self.expect(out, |o| match o {
            Outcome::Confirmed(k) => Some(k),
            _ => None,
        })
    }

    /// Lifts a canary suspension (operator action).
    ///
    /// # Errors
    /// Storage errors.
    pub fn lift_suspension(&self, source: &str) -> Result<()> {
        let out = self.call(Event::LiftSuspension {
            source: source.to_owned(),
        })?;
        self.expect(out, |_| Some(()))
    }

    fn key_record(&self, event: Event) -> Result<(String, SignedItem)> {
        let out = self.call(event)?;
        self.expect(out, |o| match o {
            Outcome::KeyRecord(id, item) => Some((id, *item)),
            _ => None,
        })
    }

    /// Rotates to a new signing key: returns the rotation record (signed by
    /// the old key), kept for republishing.
    ///
    /// # Errors
    /// Storage errors.
    pub fn rotate_key(&self, new: SecretKey) -> Result<(String, SignedItem)> {
        self.key_record(Event::RotateKey(Arc::new(new)))
    }

    /// A revocation of the current key, signed by it; kept for republishing.
    ///
    /// # Errors
    /// Storage errors.
    pub fn revoke_key(&self, reason: Option<String>) -> Result<(String, SignedItem)> {
        self.key_record(Event::RevokeKey { reason })
    }

    /// Swaps settings (SIGHUP).
    ///
    /// # Errors
    /// Storage errors.
    pub fn replace_settings(&self, settings: Settings) -> Result<()> {
        let out = self.call(Event::Reload(Box::new(settings)))?;
        self.expect(out, |_| Some(()))
    }

    /// Expiry and end of grace periods, in bounded batches.
    ///
    /// # Errors
    /// Storage errors.
    pub fn sweep(&self, now: u64, batch: usize) -> Result<usize> {
        self.count_of(now, Event::Sweep { batch })
    }

    /// Marks an item received from a source (not waited for).
    pub fn touch(&self, _now: u64, source: &str) {
        self.hint(Event::Touch {
            source: source.to_owned(),
        });
    }

    /// Stores an imported list entry as a local, unpublished source.
    ///
    /// # Errors
    /// Storage errors.
    pub fn import(
        &self,
        now: u64,
        source: &str,
        subject: SubjectKey,
        category: Category,
        ttl: u64,
    ) -> Result<Ingested> {
        let out = self.call_at(
            now,
            Event::Import {
                source: source.to_owned(),
                subject,
                category,
                ttl,
            },
        )?;
        self.expect(out, |o| match o {
            Outcome::Ingested(v) => v.into_iter().next(),
            _ => None,
        })
    }

    /// Answers a lookup (action, score, reasons; no per-report detail) from
    /// what the core published; never waits for the core.
    ///
    /// # Errors
    /// Storage errors (only while the core is still publishing after a
    /// start or reload, when lookups read the store).
    pub fn verdict(&self, now: u64, query: &Query) -> Result<Arc<VerdictOut>> {
        self.verdict_with(now, query, Arc::clone)
    }

    /// `f` applied to the verdict for `query` at `now`, as [`Engine::verdict`]
    /// finds it; a cached answer is read in place.
    ///
    /// # Errors
    /// As [`Engine::verdict`].
    pub fn verdict_with<R>(
        &self,
        now: u64,
        query: &Query,
        f: impl FnOnce(&Arc<VerdictOut>) -> R,
    ) -> Result<R> {
        let published = &self.shared.published;
        let key = query.cache_key();
        let f = match published.cached_with(&key, now, f) {
            Ok(r) => return Ok(r),
            Err(f) => f,
        };
        let stamp = published.stamp(query.exact());
        let (mut verdict, valid_until) = match self.published_verdict(now, query) {
            Some(v) => v,
            None => self.compute(now, query)?,
        };
        verdict.contributions = Vec::new();
        verdict.subjects = Vec::new();
        let verdict = Arc::new(verdict);
        let out = f(&verdict);
        published.cache(&key, stamp, valid_until, verdict);
        Ok(out)
    }

    /// A verdict from the published per-subject entries, or `None` when one
    /// of them is missing or past its validity (then the store answers, and
    /// the core is asked to refresh it).
    fn published_verdict(&self, now: u64, query: &Query) -> Option<(VerdictOut, u64)> {
        let settings = self.settings();
        let published = &self.shared.published;
        let complete = published.is_complete();
        let lookup = local_lists(&settings, now, query);
        let mut score = 0.0f64;
        let mut action = Action::Allow;
        let mut reasons: Vec<Reason> = Vec::new();
        let mut valid_until = now + SCORE_REFRESH_SECS;
        for k in lookup.exact.iter().chain(&lookup.covering) {
            match published.get(k) {
                Some(v) if v.computed_at <= now && now < v.valid_until => {
                    score = score.max(v.score);
                    action = action.max(v.action);
                    reasons.extend(v.reasons(k, &settings.policy));
                    valid_until = valid_until.min(v.valid_until);
                }
                Some(_) => {
                    self.hint(Event::Refresh(k.clone()));
                    return None;
                }
                None if complete => {}
                None => return None,
            }
        }
        if let Some((a, r)) = aggregate::local_rule(&lookup) {
            action = a;
            reasons = vec![r];
        }
        let (action, reasons) = shown(&settings, query, action, &reasons);
        Some((
            VerdictOut {
                action,
                score: (score * 1000.0).round() / 1000.0,
                subjects: Vec::new(),
                reasons,
                contributions: Vec::new(),
            },
            valid_until,
        ))
    }

    /// Computes a verdict from the store, with every contribution (`explain`).
    ///
    /// # Errors
    /// Storage errors.
    pub fn explain(&self, now: u64, query: &Query) -> Result<VerdictOut> {
        let mut out = self.compute(now, query)?.0;
        // The action served is the published one, with what local policy
        // holds back (a peer's cap, releases from spam folders).
        if let Some((served, _)) = self.published_verdict(now, query) {
            out.action = served.action;
            out.score = served.score;
            out.reasons = served.reasons;
        }
        Ok(out)
    }

    /// Gathers what a lookup needs from the store and the settings.
    fn gather(&self, settings: &Settings, now: u64, query: &Query) -> Result<(Lookup, u64)> {
        let mut lookup = local_lists(settings, now, query);
        let mut valid_until = now + SCORE_REFRESH_SECS;
        for subject in lookup.exact.iter().chain(&lookup.covering) {
            for c in crate::core::contributions(&self.store, settings, &self.shared, subject)? {
                valid_until = valid_until.min(c.record.expires_at());
                lookup.contributions.push(c);
            }
        }
        for k in lookup.exact.iter().chain(&lookup.covering) {
            if settings.is_canary(k) {
                lookup.canaries.insert(k.clone());
            }
        }
        Ok((lookup, valid_until))
    }

    fn compute(&self, now: u64, query: &Query) -> Result<(VerdictOut, u64)> {
        let settings = self.settings();
        let (lookup, valid_until) = self.gather(&settings, now, query)?;
        let verdict = aggregate::decide(&lookup, &settings.policy, now);
        let (action, reasons) = shown(&settings, query, verdict.action, &verdict.reasons);
        let contributions = verdict
            .contributions
            .into_iter()
            .map(|scored| ContributionOut {
                status: if scored.confirmed {
                    "confirmed"
                } else {
                    "unconfirmed"
                },
                scored,
            })
            .collect();
        let out = VerdictOut {
            action,
            score: (verdict.score * 1000.0).round() / 1000.0,
            subjects: lookup
                .exact
                .iter()
                .chain(&lookup.covering)
                .map(ToString::to_string)
                .collect(),
            reasons,
            contributions,
        };
        Ok((out, valid_until))
    }

    /// Every subject whose own verdict is `flag` or `block`, with details
    /// for the public list.
    ///
    /// # Errors
    /// Storage errors.
    pub fn export(&self, now: u64) -> Result<Vec<Exported>> {
        let settings = self.settings();
        let mut out = Vec::new();
        for subject in self.store.subjects()? {
            let Ok(key) = subject.parse::<SubjectKey>() else {
                continue;
            };
            let (lookup, _) = self.gather(&settings, now, &Query::Key(key.clone()))?;
            let v = aggregate::decide(&lookup, &settings.policy, now);
            if v.action == Action::Allow {
                continue;
            }
            let counted: Vec<&Scored> = v.contributions.iter().filter(|c| c.counted).collect();
            let mut evidence = 0;
            let mut since = None::<u64>;
            for c in &lookup.contributions {
                if let Record::Report(r) = &c.record
                    && r.expires_at > now
                {
                    evidence += r.evidence.count;
                    since = Some(since.map_or(r.issued_at, |s| s.min(r.issued_at)));
                }
            }
            out.push(Exported {
                domain: key
                    .domain()
                    .map(|(d, wild)| if wild { format!("*.{d}") } else { d.to_owned() }),
                subject,
                action: v.action,
                score: (v.score * 1000.0).round() / 1000.0,
                category: counted.first().map(|c| c.category),
                since,
                evidence,
                abuse_contacted: counted.iter().any(|c| c.abuse_contacted_at.is_some()),
                sources: counted.iter().map(|c| c.source.clone()).collect(),
            });
        }
        Ok(out)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A lookup's subjects with the local allow and deny entries among them
/// (no contributions, no canaries yet).
fn local_lists(settings: &Settings, now: u64, query: &Query) -> Lookup {
    let (exact, covering) = lookup_keys(settings, now, query);
    let pick = |list: &BTreeSet<SubjectKey>| -> BTreeSet<SubjectKey> {
        exact
            .iter()
            .chain(&covering)
            .filter(|k| list.contains(*k))
            .cloned()
            .collect()
    };
    Lookup {
        allowed: pick(&settings.allow),
        denied: pick(&settings.deny),
        canaries: pick(&settings.canaries),
        exact,
        covering,
        ..Lookup::default()
    }
}

/// The answer as the API shows it: the local IP lists (they match the raw
/// address, which only this server sees) over the federation's action, and
/// the reasons as JSON.
fn shown(
    settings: &Settings,
    query: &Query,
    action: Action,
    reasons: &[Reason],
) -> (Action, Vec<serde_json::Value>) {
    // An address, or a whole prefix, that a local IP list covers.
    let covered = |m: &&IpPrefixMatch| match query {
        Query::Ip(ip) => m.contains(*ip),
        Query::IpPrefix(p) => m.len <= p.len() && m.contains(p.addr()),
        _ => false,
    };
    let ip_rule = settings
        .allow_ip
        .iter()
        .find(covered)
        .map(|m| (Action::Allow, "local-allow", m))
        .or_else(|| {
            settings
                .deny_ip
                .iter()
                .find(covered)
                .map(|m| (Action::Block, "local-deny", m))
        });
    match ip_rule {
        Some((action, rule, m)) => (
            action,
            vec![serde_json::json!({"rule": rule, "entry": m.to_string()})],
        ),
        None => (
            action,
            reasons
                .iter()
                .map(|r| serde_json::to_value(r).unwrap_or_default())
                .collect(),
        ),
    }
}

/// The subjects a query checks: the exact ones, and the covering domains.
fn lookup_keys(settings: &Settings, now: u64, query: &Query) -> (Vec<SubjectKey>, Vec<SubjectKey>) {
    match query {
        Query::Jid { key, domain } => {
            let mut covering = domain_lookup_keys(domain);
            covering.extend(rtbl_domain_keys(domain));
            (vec![key.clone()], covering)
        }
        Query::Domain { domain } => {
            let mut keys = domain_lookup_keys(domain);
            keys.extend(rtbl_domain_keys(domain));
            let exact = keys.remove(0);
            (vec![exact], keys)
        }
        Query::Ip(ip) => {
            let exact = settings
                .secrets
                .iter()
                .flat_map(|(s, _)| s.lookup_tokens(*ip, now, corvid_protocol::ns::MAX_TTL_SECS))
                .collect();
            (exact, Vec::new())
        }
        Query::IpPrefix(prefix) => {
            let exact = settings
                .secrets
                .iter()
                .flat_map(|(s, _)| s.prefix_tokens(prefix, now, corvid_protocol::ns::MAX_TTL_SECS))
                .collect();
            (exact, Vec::new())
        }
        Query::Digest(k) | Query::Key(k) => (vec![k.clone()], Vec::new()),
    }
}

/// The core's thread: takes every pending local request and a bounded
/// share of peer batches per step, stamps the step with fresh randomness,
/// and carries out the effects. Local requests go first, so a flood of peer
/// items never delays the operator's reports or the hooks' answers by more
/// than one step.
fn drive(
    mut core: Core,
    mut control: tokio::sync::mpsc::Receiver<Job>,
    mut peers: tokio::sync::mpsc::Receiver<Job>,
    signals: &Signals,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the core's runtime: {e}");
            return;
        }
    };
    let mut stopping = false;
    while !stopping {
        let mut jobs: Vec<Job> = Vec::new();
        if core.warming() {
            match control.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => {
                    if let Ok(j) = peers.try_recv() {
                        jobs.push(j);
                    }
                }
            }
            if jobs.is_empty() {
                jobs.push(Job::Event {
                    now_ms: crate::now_ms(),
                    event: Event::Warm,
                    reply: None,
                });
            }
        } else {
            let first = rt.block_on(async {
                tokio::select! {
                    biased;
                    j = control.recv() => j,
                    j = peers.recv() => j,
                }
            });
            match first {
                Some(j) => jobs.push(j),
                None => break,
            }
        }
        while jobs.len() < CONTROL_QUEUE {
            match control.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        for _ in 0..FEED_PER_STEP {
            match peers.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut events = Vec::with_capacity(jobs.len());
        let mut replies: Vec<Option<Replier>> = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                Job::Event {
                    now_ms,
                    event,
                    reply,
                } => {
                    events.push((replies.len() as u64, now_ms, event));
                    replies.push(reply);
                }
                Job::Stop => stopping = true,
            }
        }
        let started = std::time::Instant::now();
        let n = events.len();
        let effects = core.step(random_bytes(), events);
        let took = started.elapsed();
        if took > std::time::Duration::from_millis(5) {
            tracing::debug!(events = n, ms = took.as_secs_f64() * 1000.0, "core step");
        }
        for effect in effects {
            match effect {
                Effect::Reply(ticket, outcome) => {
                    if let Some(Some(r)) = usize::try_from(ticket)
                        .ok()
                        .and_then(|i| replies.get_mut(i))
                        .map(Option::take)
                    {
                        r.send(outcome);
                    }
                }
                Effect::PublishOwn => signals.own_changed.notify_one(),
                Effect::Rekeyed => signals.rekeyed.notify_one(),
                Effect::Resync(source) => {
                    if let Some(tx) = signals
                        .resync
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .as_ref()
                    {
                        let _ = tx.send(source);
                    }
                }
            }
        }
    }
    // Whatever is still queued is refused: its senders see the core stopped.
    control.close();
    peers.close();
}
