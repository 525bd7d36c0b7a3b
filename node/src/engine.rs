//! The verdict engine: the node's core, fed by `handle_*`-style calls with
//! an explicit `now`. It owns the store and the trust settings; the tokio
//! tasks around it only move bytes between XMPP, sled and HTTP.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use corvid_protocol::aggregate::{
    self, Action, Contribution, Lookup, Mode, Policy, Scored, SourceKind,
};
use corvid_protocol::iptoken::{FederationSecret, SecretId};
use corvid_protocol::item::{FeedAddress, KeyRing};
use corvid_protocol::keys::{PublicKey, SecretKey, Signer};
use corvid_protocol::record::{
    Category, Evidence, Record, Report, ReportId, Retraction, RetractionReason,
};
use corvid_protocol::subject::{SubjectKey, SubjectKind, domain_lookup_keys};
use serde::Serialize;

use crate::config::{Config, read_secret};
use crate::metrics::Metrics;
use crate::store::{PeerState, Store, Stored, Upserted};
use crate::subjects::{IpPrefixMatch, ListEntry, Query, ReportSubject, parse_list_entry};

/// How one trusted source counts.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Kind of source.
    pub kind: SourceKind,
    /// Weight.
    pub weight: f64,
    /// Mode from config (a canary suspension overrides it).
    pub mode: Mode,
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
                    },
                    accept_rotations: p.accept_rotations,
                    max_reports: p.max_reports,
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
            directory: config.directory.clone(),
        })
    }

    fn trust(&self, source: &str) -> Option<Trust> {
        if source == self.domain {
            return Some(Trust {
                kind: SourceKind::Local,
                weight: 1.0,
                mode: Mode::Enforce,
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
            });
        }
        self.rtbls.get(source).map(|r| r.trust.clone())
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

#[derive(Debug, Clone)]
struct Cached {
    generation: u64,
    valid_until: u64,
    verdict: Arc<VerdictOut>,
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

/// The engine.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    settings: RwLock<Arc<Settings>>,
    signer: RwLock<Arc<SecretKey>>,
    feed: FeedAddress,
    generation: AtomicU64,
    cache: RwLock<HashMap<String, Cached, foldhash::fast::RandomState>>,
    counts: std::sync::Mutex<HashMap<String, u64>>,
    suspended: RwLock<HashSet<String>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Rejected items since the last log summary.
    pub rejects: crate::rejects::RejectLog,
    /// Signalled when our own feed was purged, deleted or had items
    /// retracted behind our back: the publisher reconciles.
    pub own_feed_changed: tokio::sync::Notify,
    /// Signalled after a key rotation: the publisher rewrites the feed.
    pub rekeyed: tokio::sync::Notify,
    publish_error: std::sync::Mutex<Option<String>>,
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

/// Cached verdicts kept before the cache is cleared.
const CACHE_MAX: usize = 200_000;
/// Longest a cached verdict is reused (decay moves scores slowly).
const CACHE_SECS: u64 = 60;

fn random_bytes<const N: usize>() -> [u8; N] {
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

/// A fresh report id for `now` (seconds) with 80 random bits.
pub fn new_report_id(now_ms: u64) -> ReportId {
    ReportId::new(now_ms, random_bytes())
}

impl Engine {
    /// An engine over a store.
    pub fn new(
        store: Store,
        settings: Settings,
        signer: SecretKey,
        feed: FeedAddress,
    ) -> Result<Self> {
        let engine = Self {
            store,
            settings: RwLock::new(Arc::new(settings)),
            signer: RwLock::new(Arc::new(signer)),
            feed,
            generation: AtomicU64::new(0),
            cache: RwLock::new(HashMap::default()),
            counts: std::sync::Mutex::new(HashMap::new()),
            suspended: RwLock::new(HashSet::new()),
            metrics: Arc::new(Metrics::default()),
            rejects: crate::rejects::RejectLog::default(),
            own_feed_changed: tokio::sync::Notify::new(),
            rekeyed: tokio::sync::Notify::new(),
            publish_error: std::sync::Mutex::new(None),
        };
        engine.load_suspensions()?;
        engine.restore_own_contributions()?;
        Ok(engine)
    }

    /// The own records are flushed before a report is acknowledged; their
    /// contributions are rebuilt from them here, so a crash between the two
    /// writes loses nothing.
    fn restore_own_contributions(&self) -> Result<()> {
        let domain = self.settings().domain.clone();
        let now = crate::now();
        for record in self.store.own_records()? {
            if record.expires_at() > now {
                self.ingest(now, &domain, &record, "")?;
            }
        }
        Ok(())
    }

    fn load_suspensions(&self) -> Result<()> {
        let settings = self.settings();
        let mut set = HashSet::new();
        for domain in settings.peers.keys() {
            if self.store.peer(domain)?.suspended_for_canary.is_some() {
                set.insert(domain.clone());
            }
        }
        if let Ok(mut s) = self.suspended.write() {
            *s = set;
        }
        Ok(())
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The signing key.
    pub fn signer(&self) -> Arc<SecretKey> {
        self.signer
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    /// Signs a key record with `key` for the own feed, and keeps it for
    /// republishing.
    fn key_record(
        &self,
        key: &SecretKey,
        body: corvid_protocol::item::Body,
        item_id: String,
    ) -> Result<(String, corvid_protocol::item::SignedItem)> {
        let envelope = corvid_protocol::item::Envelope {
            corvid: corvid_protocol::ns::PROTOCOL_MAJOR,
            issuer: corvid_protocol::record::Issuer {
                domain: self.settings().domain.clone(),
                key: key.public_key().key_id(),
            },
            body,
        };
        let item = corvid_protocol::item::SignedItem::sign(key, &envelope, &self.feed, &item_id)?;
        self.store.add_key_record(&item_id, &item.to_xml())?;
        Ok((item_id, item))
    }

    /// Rotates to a new signing key: returns the rotation record (item id
    /// and payload, signed by the old key), keeps it for republishing, and
    /// signs everything from now on with the new key. The publisher
    /// rewrites the feed under the new key (`rekeyed`).
    pub fn rotate_key(
        &self,
        new: SecretKey,
    ) -> Result<(String, corvid_protocol::item::SignedItem)> {
        let old = self.signer();
        let rotation = corvid_protocol::record::KeyRotation {
            old: old.public_key(),
            new: new.public_key(),
            issued_at: crate::now(),
        };
        let item_id = corvid_protocol::feed::rotation_item_id(&new.public_key());
        let record = self.key_record(
            &old,
            corvid_protocol::item::Body::KeyRotation(rotation),
            item_id,
        )?;
        if let Ok(mut s) = self.signer.write() {
            *s = Arc::new(new);
        }
        self.rekeyed.notify_one();
        Ok(record)
    }

    /// A revocation of the current key, signed by it; kept for republishing.
    pub fn revoke_key(
        &self,
        reason: Option<String>,
    ) -> Result<(String, corvid_protocol::item::SignedItem)> {
        let key = self.signer();
        let revocation = corvid_protocol::record::KeyRevocation {
            key: key.public_key(),
            issued_at: crate::now(),
            reason,
        };
        let item_id = corvid_protocol::feed::revocation_item_id(&key.public_key());
        self.key_record(
            &key,
            corvid_protocol::item::Body::KeyRevocation(revocation),
            item_id,
        )
    }

    /// The own feed.
    pub fn feed(&self) -> &FeedAddress {
        &self.feed
    }

    /// Current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    /// Swaps settings (SIGHUP). Lookups in flight finish on the old ones.
    pub fn replace_settings(&self, settings: Settings) -> Result<()> {
        if let Ok(mut s) = self.settings.write() {
            *s = Arc::new(settings);
        }
        self.load_suspensions()?;
        self.invalidate();
        Ok(())
    }

    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The key ring for a peer: pinned key, accepted rotations, revocations.
    pub fn key_ring(&self, peer: &Peer) -> Result<KeyRing> {
        let state = self.store.peer(&peer.domain)?;
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
        Ok(ring)
    }

    fn mode_of(&self, source: &str, trust: &Trust) -> Mode {
        let suspended = self
            .suspended
            .read()
            .map(|s| s.contains(source))
            .unwrap_or(false);
        if suspended { Mode::Observe } else { trust.mode }
    }

    /// Answers a lookup (action, score, reasons; no per-report detail),
    /// from the cache when nothing changed since.
    pub fn verdict(&self, now: u64, query: &Query) -> Result<Arc<VerdictOut>> {
        let key = query.cache_key();
        let generation = self.generation.load(Ordering::Acquire);
        if let Ok(cache) = self.cache.read()
            && let Some(c) = cache.get(key.as_ref())
            && c.generation == generation
            && now < c.valid_until
        {
            return Ok(Arc::clone(&c.verdict));
        }
        let (mut verdict, valid_until) = self.compute(now, query)?;
        // A lookup answers action, score and reasons; the per-report detail
        // is `explain`'s (uncached), so the cache keeps entries small.
        verdict.contributions = Vec::new();
        verdict.subjects = Vec::new();
        let verdict = Arc::new(verdict);
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(
                key.into_owned(),
                Cached {
                    generation,
                    valid_until,
                    verdict: Arc::clone(&verdict),
                },
            );
        }
        Ok(verdict)
    }

    /// Computes a verdict without the cache (for `explain`).
    pub fn explain(&self, now: u64, query: &Query) -> Result<VerdictOut> {
        Ok(self.compute(now, query)?.0)
    }

    fn lookup_keys(
        &self,
        settings: &Settings,
        now: u64,
        query: &Query,
    ) -> (Vec<SubjectKey>, Vec<SubjectKey>) {
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
            Query::Digest(k) | Query::Key(k) => (vec![k.clone()], Vec::new()),
        }
    }

    /// Gathers what a lookup needs from the store and the settings.
    fn gather(&self, settings: &Settings, now: u64, query: &Query) -> Result<(Lookup, u64)> {
        let (exact, covering) = self.lookup_keys(settings, now, query);
        let mut lookup = Lookup {
            exact,
            covering,
            ..Lookup::default()
        };
        let mut valid_until = now + CACHE_SECS;
        for subject in lookup.exact.iter().chain(&lookup.covering) {
            for (source, stored) in self.store.about(subject.as_str())? {
                let Some(trust) = settings.trust(&source) else {
                    continue;
                };
                valid_until = valid_until.min(stored.record.expires_at());
                lookup.contributions.push(Contribution {
                    mode: self.mode_of(&source, &trust),
                    source,
                    kind: trust.kind,
                    weight: trust.weight,
                    confirmed: stored.missing_since.is_none(),
                    record: stored.record,
                });
            }
        }
        for (list, set) in [
            (&settings.allow, &mut lookup.allowed),
            (&settings.deny, &mut lookup.denied),
            (&settings.canaries, &mut lookup.canaries),
        ] {
            for k in lookup.exact.iter().chain(&lookup.covering) {
                if list.contains(k) {
                    set.insert(k.clone());
                }
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
        let mut verdict = aggregate::decide(&lookup, &settings.policy, now);
        let mut reasons: Vec<serde_json::Value> = Vec::new();
        // Local IP lists match the raw address, which only this server sees.
        if let Query::Ip(ip) = query {
            if let Some(m) = settings.allow_ip.iter().find(|m| m.contains(*ip)) {
                verdict.action = Action::Allow;
                reasons.push(serde_json::json!({"rule": "local-allow", "entry": m.to_string()}));
                verdict.reasons.clear();
            } else if let Some(m) = settings.deny_ip.iter().find(|m| m.contains(*ip)) {
                verdict.action = Action::Block;
                reasons.push(serde_json::json!({"rule": "local-deny", "entry": m.to_string()}));
                verdict.reasons.clear();
            }
        }
        reasons.extend(
            verdict
                .reasons
                .iter()
                .map(|r| serde_json::to_value(r).unwrap_or_default()),
        );
        if !verdict.canary_reporters.is_empty() {
            for source in &verdict.canary_reporters {
                self.suspend_for_canary(source, "reported a canary subject")?;
            }
        }
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
            action: verdict.action,
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

    fn suspend_for_canary(&self, source: &str, why: &str) -> Result<()> {
        let already = self
            .suspended
            .read()
            .map(|s| s.contains(source))
            .unwrap_or(false);
        if already || !self.settings().peers.contains_key(source) {
            return Ok(());
        }
        tracing::warn!(
            peer = source,
            "{why}: moved to observe mode until the operator acts (corvid peer enforce {source})"
        );
        self.store
            .update_peer(source, |p| p.suspended_for_canary = Some(why.to_owned()))?;
        if let Ok(mut s) = self.suspended.write() {
            s.insert(source.to_owned());
        }
        self.metrics
            .inc("corvid_canary_suspensions_total", &[("peer", source)]);
        self.invalidate();
        Ok(())
    }

    /// Lifts a canary suspension (operator action).
    pub fn lift_suspension(&self, source: &str) -> Result<()> {
        self.store
            .update_peer(source, |p| p.suspended_for_canary = None)?;
        if let Ok(mut s) = self.suspended.write() {
            s.remove(source);
        }
        self.invalidate();
        Ok(())
    }

    /// Whether a source is suspended.
    pub fn is_suspended(&self, source: &str) -> bool {
        self.suspended
            .read()
            .map(|s| s.contains(source))
            .unwrap_or(false)
    }

    /// Submits this server's own report; returns once it is on disk.
    pub fn submit(&self, now: u64, s: Submission) -> Result<Report, SubmitError> {
        let settings = self.settings();
        let subject = match s.subject {
            ReportSubject::Key(k) => k,
            ReportSubject::Ip(prefix) => {
                let Some((secret, _)) = settings.secrets.iter().find(|(_, issue)| *issue) else {
                    return Err(SubmitError::Invalid(
                        "no federation secret is configured to tokenize IP reports (keys.federation with issue = true)".into(),
                    ));
                };
                secret.token(&prefix, secret.epoch_of(now))
            }
        };
        if settings.is_canary(&subject) {
            return Err(SubmitError::Invalid(format!(
                "{subject} is one of this server's own hosts or a canary; refusing to report it"
            )));
        }
        let ttl = s.ttl.unwrap_or(settings.default_ttl);
        if ttl == 0 || ttl > corvid_protocol::ns::MAX_TTL_SECS {
            return Err(SubmitError::Invalid(
                "ttl must be between 1 second and 90 days".into(),
            ));
        }
        if s.abuse_contacted_at.is_some() && subject.kind() != SubjectKind::Domain {
            return Err(SubmitError::Invalid(
                "abuse_contacted_at only applies to domain reports".into(),
            ));
        }
        let report = Report {
            id: new_report_id(now * 1000 + u64::from(u16::from_be_bytes(random_bytes()) % 1000)),
            subject,
            category: s.category,
            confidence: s.confidence,
            issued_at: now,
            expires_at: now + ttl,
            evidence: Evidence {
                count: s.count.max(1),
                first_seen: s.first_seen.unwrap_or(now).min(now),
                last_seen: now,
                note: s.note,
                abuse_contacted_at: s.abuse_contacted_at,
                message_text: s.message_text,
            },
        };
        let record = Record::Report(report.clone());
        record
            .validate(now, 0)
            .map_err(|e| SubmitError::Invalid(e.to_string()))?;
        self.store
            .put_own_durable(&record)
            .map_err(|e| SubmitError::Failed(e.into()))?;
        self.ingest(now, &settings.domain, &record, "")?;
        Ok(report)
    }

    /// Retracts this server's report about a subject; returns the tombstone.
    pub fn retract(
        &self,
        now: u64,
        subject: &SubjectKey,
        reason: RetractionReason,
    ) -> Result<Option<Retraction>> {
        let settings = self.settings();
        let Some(Record::Report(old)) = self.store.own(subject)? else {
            return Ok(None);
        };
        let mut id = new_report_id(now * 1000);
        if id <= old.id {
            id = new_report_id(old.id.timestamp_ms() + 1);
        }
        let tomb = Retraction {
            id,
            subject: subject.clone(),
            retracts: old.id,
            reason,
            issued_at: now.max(old.issued_at),
            expires_at: old.expires_at,
        };
        let record = Record::Retraction(tomb.clone());
        self.store.put_own_durable(&record)?;
        self.ingest(now, &settings.domain, &record, "")?;
        Ok(Some(tomb))
    }

    /// Stores a verified record from a source (newest per subject wins).
    ///
    /// The comparison with what is stored and the write are one store
    /// transaction, so two copies of one item (or an item and its
    /// successor) arriving together cannot both win or undo each other.
    pub fn ingest(
        &self,
        now: u64,
        source: &str,
        record: &Record,
        key_id: &str,
    ) -> Result<Ingested> {
        let subject = record.subject().as_str();
        let settings = self.settings();
        let over_cap = settings
            .peers
            .get(source)
            .is_some_and(|peer| self.record_count(source) >= peer.max_reports);
        let seen_ms = crate::now_ms();
        let what = std::cell::Cell::new(Ingested::Unchanged);
        let upserted = self.store.upsert(subject, source, |old| match old {
            Some(old) if !record.supersedes(&old.record) => {
                what.set(Ingested::Unchanged);
                // The same record again confirms an unconfirmed entry.
                (old.missing_since.is_some() && old.record == *record).then(|| Stored {
                    missing_since: None,
                    seen_ms,
                    ..old.clone()
                })
            }
            None if over_cap => {
                what.set(Ingested::OverCap);
                None
            }
            _ => {
                what.set(Ingested::Stored);
                Some(Stored {
                    record: record.clone(),
                    key_id: key_id.to_owned(),
                    missing_since: None,
                    seen_ms,
                })
            }
        })?;
        match what.get() {
            Ingested::Stored => {}
            other => {
                if upserted != Upserted::Kept {
                    self.invalidate();
                }
                return Ok(other);
            }
        }
        if matches!(record, Record::Report(_))
            && settings.is_canary(record.subject())
            && settings.peers.contains_key(source)
        {
            self.suspend_for_canary(source, &format!("reported canary {}", record.subject()))?;
        }
        if upserted == Upserted::Added {
            self.add_count(source, 1);
        }
        self.invalidate();
        self.note_decision(now, record.subject())?;
        Ok(Ingested::Stored)
    }

    /// Records stored from a source (kept in memory, persisted by `sweep`).
    pub fn record_count(&self, source: &str) -> u64 {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts
            .entry(source.to_owned())
            .or_insert_with(|| self.store.peer(source).map(|p| p.records).unwrap_or(0))
    }

    fn add_count(&self, source: &str, delta: i64) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts
            .entry(source.to_owned())
            .or_insert_with(|| self.store.peer(source).map(|p| p.records).unwrap_or(0));
        *count = count.saturating_add_signed(delta);
    }

    fn persist_counts(&self) -> Result<()> {
        let counts: Vec<(String, u64)> = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (source, n) in counts {
            self.store.update_peer(&source, |p| p.records = n)?;
        }
        Ok(())
    }

    fn note_decision(&self, now: u64, subject: &SubjectKey) -> Result<()> {
        // Action and score only: no explanation is built on the ingest path.
        let settings = self.settings();
        let (lookup, _) = self.gather(&settings, now, &Query::Key(subject.clone()))?;
        let v = aggregate::decide(&lookup, &settings.policy, now);
        self.store
            .record_decision(subject.as_str(), v.action, v.score, now)?;
        Ok(())
    }

    /// Removes one contribution (a delisting, an operator's action).
    pub fn remove(&self, now: u64, source: &str, subject: &str) -> Result<bool> {
        self.remove_if(now, source, subject, |_| true)
    }

    /// Removes one contribution if `still` holds for it when it is removed
    /// (expiry, revocation, grace over): checked in the store transaction
    /// that deletes it, so an entry renewed meanwhile stays. Returns whether
    /// it was removed.
    pub fn remove_if(
        &self,
        now: u64,
        source: &str,
        subject: &str,
        still: impl Fn(&Stored) -> bool,
    ) -> Result<bool> {
        let removed = self.store.remove_if(subject, source, still)?;
        if removed {
            self.add_count(source, -1);
            self.invalidate();
            if let Ok(key) = subject.parse() {
                self.note_decision(now, &key)?;
            }
        }
        Ok(removed)
    }

    /// After a complete read of a source's feed: everything present is
    /// confirmed, everything else becomes unconfirmed (not removed).
    ///
    /// `started_ms` is when the read began: entries that arrived by a live
    /// event after that are newer than the read and stay confirmed.
    pub fn reconcile(
        &self,
        now: u64,
        source: &str,
        present: &BTreeSet<String>,
        started_ms: u64,
    ) -> Result<usize> {
        let mut missing = 0;
        for subject in self.store.subjects_of(source)? {
            if present.contains(&subject) {
                continue;
            }
            // Checked inside the write: an entry confirmed by a live event
            // while this read ran stays confirmed.
            let marked = self.store.upsert(&subject, source, |stored| {
                stored
                    .filter(|s| s.missing_since.is_none() && s.seen_ms < started_ms)
                    .map(|s| Stored {
                        missing_since: Some(now),
                        ..s.clone()
                    })
            })?;
            if marked != Upserted::Kept {
                missing += 1;
            }
        }
        if missing > 0 {
            self.invalidate();
        }
        self.store.update_peer(source, |p| {
            p.last_sync = Some(now);
        })?;
        Ok(missing)
    }

    /// A purge or node deletion: every entry of the source is unconfirmed.
    pub fn mark_all_unconfirmed(&self, now: u64, source: &str) -> Result<usize> {
        self.reconcile(now, source, &BTreeSet::new(), u64::MAX)
    }

    /// Drops every contribution signed by a revoked key.
    pub fn apply_revocation(&self, now: u64, source: &str, key: &PublicKey) -> Result<usize> {
        let fp = key.fingerprint().to_string();
        let key_id = key.key_id().to_string();
        self.store.update_peer(source, |p| {
            if !p.revoked.contains(&fp) {
                p.revoked.push(fp.clone());
            }
        })?;
        let mut dropped = 0;
        for subject in self.store.subjects_of(source)? {
            if self.remove_if(now, source, &subject, |s| s.key_id == key_id)? {
                dropped += 1;
            }
        }
        tracing::warn!(peer = source, key = %key, dropped, "key revoked: its reports no longer count");
        Ok(dropped)
    }

    /// A peer's rotation record.
    pub fn handle_rotation(&self, peer: &Peer, new: &PublicKey) -> Result<()> {
        let text = new.to_string();
        let state = self.store.peer(&peer.domain)?;
        if state.rotated_keys.contains(&text) || *new == peer.key {
            return Ok(());
        }
        if peer.accept_rotations {
            tracing::info!(peer = %peer.domain, key = %text, "accepted key rotation (peer allows automatic rotations)");
            self.store.update_peer(&peer.domain, |p| {
                p.rotated_keys.push(text.clone());
                p.pending_rotation = None;
            })?;
        } else if state.pending_rotation.as_deref() != Some(&text) {
            tracing::warn!(peer = %peer.domain, key = %text, fingerprint = %new.fingerprint(), "key rotation waits for the operator: corvid peer confirm-rotation {}", peer.domain);
            self.store
                .update_peer(&peer.domain, |p| p.pending_rotation = Some(text.clone()))?;
        }
        Ok(())
    }

    /// Accepts a pending rotation (operator action).
    pub fn confirm_rotation(&self, domain: &str) -> Result<Option<String>> {
        let state = self.store.peer(domain)?;
        let Some(key) = state.pending_rotation else {
            return Ok(None);
        };
        self.store.update_peer(domain, |p| {
            p.rotated_keys.push(key.clone());
            p.pending_rotation = None;
        })?;
        Ok(Some(key))
    }

    /// Expiry and end of grace periods, in bounded batches so a mass expiry
    /// is spread out instead of stalling lookups. Returns entries removed.
    pub fn sweep(&self, now: u64, batch: usize) -> Result<usize> {
        self.persist_counts()?;
        let mut removed = 0;
        let own_domain = self.settings().domain.clone();
        for (source, subject) in self.store.expired(now, batch)? {
            // Rechecked as it is removed: a renewal since the listing stays.
            if self.remove_if(now, &source, &subject, |s| s.record.expires_at() <= now)? {
                removed += 1;
            }
            if source == own_domain {
                // Our own record expired too: it leaves the feed at the next compaction.
                self.store.drop_own_if_expired(&subject, now)?;
            }
        }
        let settings = self.settings();
        // Entries missing from their source's feed, past the grace period.
        let cutoff = now.saturating_sub(settings.grace);
        for (source, subject) in self.store.missing_before(cutoff, batch)? {
            if self.remove_if(now, &source, &subject, |s| {
                s.missing_since.is_some_and(|m| m < cutoff)
            })? {
                removed += 1;
                self.metrics
                    .inc("corvid_unconfirmed_dropped_total", &[("peer", &source)]);
            }
        }
        Ok(removed)
    }

    /// A source's state.
    pub fn peer_state(&self, source: &str) -> Result<PeerState> {
        let mut state = self.store.peer(source)?;
        state.records = self.record_count(source);
        Ok(state)
    }

    /// Marks an item received from a source.
    pub fn touch(&self, now: u64, source: &str) -> Result<()> {
        self.store
            .update_peer(source, |p| p.last_item = Some(now))?;
        Ok(())
    }

    /// Every subject whose own verdict is `flag` or `block`, with details
    /// for the public list.
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

    /// Stores an imported list entry as a local, unpublished source.
    pub fn import(
        &self,
        now: u64,
        source: &str,
        subject: SubjectKey,
        category: Category,
        ttl: u64,
    ) -> Result<Ingested> {
        let record = listed_report(
            new_report_id(now * 1000),
            subject,
            category,
            now,
            ttl.min(corvid_protocol::ns::MAX_TTL_SECS),
        );
        self.ingest(now, source, &record, "")
    }

    /// Counts of subjects by their last recorded action.
    pub fn action_counts(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self.store.action_counts()?)
    }

    /// Records (or clears) the publisher's last failure, for health checks.
    pub fn set_publish_error(&self, error: Option<String>) {
        *self
            .publish_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    /// The publisher's last failure, if it has not recovered since.
    pub fn publish_error(&self) -> Option<String> {
        self.publish_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The ingest rate limit.
    pub fn ingest_rate(&self) -> u32 {
        self.settings().ingest_rate
    }

    /// Public key of this node.
    pub fn public_key(&self) -> PublicKey {
        self.signer().public_key()
    }
}
