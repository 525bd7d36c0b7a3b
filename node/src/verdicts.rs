//! Verdicts the core publishes, read by lookups without ever waiting for
//! the core.
//!
//! The core computes one [`SubjectVerdict`] per stored subject after every
//! step that touches it and puts it in a sharded concurrent map; a lookup
//! combines the entries of the subjects it checks (a JID, its domain and
//! the parents' subdomain keys) with the local lists. Over that sits a
//! query cache whose entries are checked against version counters the core
//! bumps with every change: a lookup whose answer is unchanged costs one
//! hash-map read and a few atomic loads, and a change is visible to the
//! next lookup as soon as the core's step commits.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use corvid_protocol::aggregate::{self, Action, Contribution, Lookup, Policy, Reason};
use corvid_protocol::subject::{SubjectKey, SubjectKind};

use crate::engine::VerdictOut;

/// Longest a published score is reused; the action is exact until
/// `valid_until` (computed from the decay), the score shown may be this old.
pub const SCORE_REFRESH_SECS: u64 = 60;

const SUBJECT_SHARDS: usize = 64;
const CACHE_SHARDS: usize = 16;
const VERSION_SLOTS: usize = 4096;
/// Cached query answers kept per shard before that shard is cleared.
const CACHE_MAX_PER_SHARD: usize = 200_000 / CACHE_SHARDS;

/// Cached query answers kept per thread (the lock-free first level).
const LOCAL_MAX: usize = 50_000;

/// Query-cache entries, found by a hash computed once per lookup.
type Table = hashbrown::HashTable<Cached>;

/// Identities of [`Published`] instances, so that one thread's cache can
/// serve several (tests and the simulator run many nodes in one process).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The calling thread's own copy of the answers it looked up: a hit
    /// takes no lock and touches no shared cache line except the version
    /// counters it checks.
    static LOCAL: RefCell<Table> = const { RefCell::new(Table::new()) };
}

/// Why a block was held back at flag (the second reason of a flag whose
/// score reached the block threshold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Not held back.
    None,
    /// A canary is never blocked.
    Canary,
    /// A digest alone never blocks.
    Digest,
    /// Not enough distinct issuers for the quorum.
    Quorum,
    /// No report says the domain's abuse contact was tried.
    AbuseContact,
    /// A peer whose reports it needs has caused its most new blocks for
    /// the hour (`max_new_blocks_per_hour`).
    PeerCap,
    /// Local users released its messages from their spam folders, and that
    /// lowered the action.
    Released,
}

/// One subject's verdict on its own (no local lists, no covering subjects),
/// in the few numbers its reasons are rebuilt from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubjectVerdict {
    /// Noisy-OR score at `computed_at`.
    pub score: f64,
    /// Its action.
    pub action: Action,
    /// Distinct issuers (the local server counting as one).
    pub issuers: u16,
    /// Why a block was held back, if it was.
    pub hold: Hold,
    /// When it was computed.
    pub computed_at: u64,
    /// The action holds until this time (an expiry, or the decay crossing a
    /// threshold); the score is at most [`SCORE_REFRESH_SECS`] old before it.
    pub valid_until: u64,
}

impl SubjectVerdict {
    /// Its reasons, as [`aggregate::subject_action`] gives them.
    pub fn reasons(&self, subject: &SubjectKey, policy: &Policy) -> Vec<Reason> {
        if self.action == Action::Allow {
            // Lowered to allow by releases: still said.
            return if self.hold == Hold::Released {
                vec![Reason::Released {
                    subject: subject.clone(),
                }]
            } else {
                Vec::new()
            };
        }
        let mut out = vec![Reason::Score {
            subject: subject.clone(),
            score: format!("{:.3}", self.score),
            issuers: usize::from(self.issuers),
            action: self.action,
        }];
        match self.hold {
            Hold::None => {}
            Hold::Canary => out.push(Reason::Canary {
                subject: subject.clone(),
            }),
            Hold::Digest => out.push(Reason::DigestNeverBlocks),
            Hold::Quorum => out.push(Reason::QuorumNotMet {
                subject: subject.clone(),
                issuers: usize::from(self.issuers),
                quorum: policy.quorum,
            }),
            Hold::AbuseContact => out.push(Reason::AbuseContactMissing {
                subject: subject.clone(),
            }),
            Hold::PeerCap => out.push(Reason::PeerCap {
                subject: subject.clone(),
            }),
            Hold::Released => out.push(Reason::Released {
                subject: subject.clone(),
            }),
        }
        out
    }

    /// Scores `subject` from its contributions at `now`.
    pub fn compute(
        subject: &SubjectKey,
        contributions: &[Contribution],
        policy: &Policy,
        canary: bool,
        now: u64,
    ) -> Self {
        let lookup = canary_lookup(subject, canary);
        let at = |t: u64| {
            let s = aggregate::score_subject(subject, contributions, policy, t);
            let (action, reasons) = aggregate::subject_action(&s, &lookup, policy);
            (s, action, reasons)
        };
        let (s, action, reasons) = at(now);
        // Until the first expiry the set of counted reports is fixed and the
        // score only decays, so the action can only fall: find when.
        let first_expiry = s
            .scored
            .iter()
            .map(|c| c.expires_at)
            .filter(|&e| e > now)
            .min()
            .unwrap_or(u64::MAX);
        let horizon = first_expiry.min(now + SCORE_REFRESH_SECS);
        let valid_until = first_change(|t| at(t).1, action, now, horizon).unwrap_or(horizon);
        let hold = match reasons.get(1) {
            Some(Reason::Canary { .. }) => Hold::Canary,
            Some(Reason::DigestNeverBlocks) => Hold::Digest,
            Some(Reason::QuorumNotMet { .. }) => Hold::Quorum,
            Some(Reason::AbuseContactMissing { .. }) => Hold::AbuseContact,
            _ => Hold::None,
        };
        let issuers = match reasons.first() {
            Some(Reason::Score { issuers, .. }) => *issuers,
            _ => s.issuers + usize::from(s.local),
        };
        Self {
            score: s.score,
            action,
            issuers: u16::try_from(issuers).unwrap_or(u16::MAX),
            hold,
            computed_at: now,
            valid_until: valid_until.max(now + 1),
        }
    }
}

impl SubjectVerdict {
    /// The first time after `now`, up to `until`, at which the subject's
    /// action differs from its action at `now` (the score only decays
    /// between expiries), or `None`.
    pub fn next_change(
        subject: &SubjectKey,
        contributions: &[Contribution],
        policy: &Policy,
        canary: bool,
        now: u64,
        until: u64,
    ) -> Option<u64> {
        let lookup = canary_lookup(subject, canary);
        let action_at = |t: u64| {
            let s = aggregate::score_subject(subject, contributions, policy, t);
            aggregate::subject_action(&s, &lookup, policy).0
        };
        first_change(action_at, action_at(now), now, until)
    }
}

/// A lookup of one subject alone, with it as a canary or not.
fn canary_lookup(subject: &SubjectKey, canary: bool) -> Lookup {
    Lookup {
        canaries: if canary {
            std::iter::once(subject.clone()).collect()
        } else {
            Default::default()
        },
        ..Lookup::default()
    }
}

/// The first time in `(now, until]` at which `action_at` differs from
/// `first` (its value at `now`), by bisection: between expiries the score
/// only decays, so the action changes at most once.
fn first_change(
    action_at: impl Fn(u64) -> Action,
    first: Action,
    now: u64,
    until: u64,
) -> Option<u64> {
    if until <= now || action_at(until) == first {
        return None;
    }
    let (mut lo, mut hi) = (now, until);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if action_at(mid) == first {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

/// What lookups read: published by the core, never locked by it for longer
/// than one map insert.
#[derive(Debug)]
pub struct Published {
    /// Every published subject, 32 bytes each (10M subjects in about
    /// 0.5 GB), keyed by a secret-keyed 128-bit fingerprint of its key.
    subjects: Box<[RwLock<hashbrown::HashTable<Packed>>]>,
    /// The fingerprint's secret key (SipHash, drawn at start): nobody can
    /// craft a subject whose fingerprint matches another's.
    fingerprint: std::hash::RandomState,
    /// Whether every stored subject has an entry (false while the core
    /// warms up after a start or a reload; lookups then read the store).
    complete: AtomicBool,
    versions: Box<[AtomicU64]>,
    /// Bumped by every change of a domain or IP-token subject, and when
    /// everything changes (settings reloaded, a peer suspended).
    broad: AtomicU64,
    cache: Box<[RwLock<Table>]>,
    hasher: foldhash::fast::FixedState,
    id: u64,
}

/// A subject's fingerprint: two SipHash outputs under a secret key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint([u64; 2]);

/// A published [`SubjectVerdict`], packed beside its fingerprint.
#[derive(Debug, Clone, Copy)]
struct Packed {
    fingerprint: Fingerprint,
    score: f64,
    /// Seconds since the Unix epoch (u32 lasts until 2106).
    computed_at: u32,
    issuers: u16,
    /// `valid_until - computed_at`: at most [`SCORE_REFRESH_SECS`].
    valid_for: u8,
    /// The action (bits 0-1) and the hold (bits 2-4).
    code: u8,
}

impl Packed {
    fn new(fingerprint: Fingerprint, v: &SubjectVerdict) -> Self {
        let action = match v.action {
            Action::Allow => 0,
            Action::Flag => 1,
            Action::Block => 2,
        };
        let hold = match v.hold {
            Hold::None => 0,
            Hold::Canary => 1,
            Hold::Digest => 2,
            Hold::Quorum => 3,
            Hold::AbuseContact => 4,
            Hold::PeerCap => 5,
            Hold::Released => 6,
        };
        let computed_at = u32::try_from(v.computed_at).unwrap_or(u32::MAX);
        Self {
            fingerprint,
            score: v.score,
            computed_at,
            issuers: v.issuers,
            valid_for: u8::try_from(v.valid_until.saturating_sub(u64::from(computed_at)))
                .unwrap_or(u8::MAX),
            code: action | hold << 2,
        }
    }

    fn unpack(&self) -> SubjectVerdict {
        SubjectVerdict {
            score: self.score,
            action: match self.code & 3 {
                0 => Action::Allow,
                1 => Action::Flag,
                _ => Action::Block,
            },
            issuers: self.issuers,
            hold: match self.code >> 2 {
                1 => Hold::Canary,
                2 => Hold::Digest,
                3 => Hold::Quorum,
                4 => Hold::AbuseContact,
                5 => Hold::PeerCap,
                6 => Hold::Released,
                _ => Hold::None,
            },
            computed_at: u64::from(self.computed_at),
            valid_until: u64::from(self.computed_at) + u64::from(self.valid_for),
        }
    }
}

/// A cached answer and the versions it was computed under.
#[derive(Debug, Clone)]
struct Cached {
    /// The [`Published`] it belongs to.
    owner: u64,
    key: Key,
    hash: u64,
    stamp: Stamp,
    valid_until: u64,
    verdict: Arc<VerdictOut>,
}

/// Bytes of a query key kept beside its entry: a JID's or a digest's key
/// (68 bytes) and most raw query strings fit, so comparing the key reads
/// no other allocation.
const INLINE_KEY: usize = 80;

/// A cached entry's query key: inline up to [`INLINE_KEY`] bytes.
#[derive(Debug, Clone)]
enum Key {
    Inline(u8, [u8; INLINE_KEY]),
    Heap(Box<str>),
}

impl Key {
    fn new(key: &str) -> Self {
        match u8::try_from(key.len()) {
            Ok(n) if key.len() <= INLINE_KEY => {
                let mut bytes = [0; INLINE_KEY];
                bytes[..key.len()].copy_from_slice(key.as_bytes());
                Self::Inline(n, bytes)
            }
            _ => Self::Heap(key.into()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Self::Inline(n, bytes) => &bytes[..usize::from(*n)],
            Self::Heap(k) => k.as_bytes(),
        }
    }

    fn is(&self, key: &str) -> bool {
        self.bytes() == key.as_bytes()
    }
}

/// The versions a lookup read before it computed its answer: the answer
/// is reused only while none of them moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    slot: usize,
    slot_version: u64,
    broad: u64,
}

impl Default for Published {
    fn default() -> Self {
        Self::new()
    }
}

impl Published {
    /// Empty, and not complete.
    pub fn new() -> Self {
        Self {
            subjects: (0..SUBJECT_SHARDS).map(|_| RwLock::default()).collect(),
            fingerprint: std::hash::RandomState::new(),
            complete: AtomicBool::new(false),
            versions: (0..VERSION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            broad: AtomicU64::new(0),
            cache: (0..CACHE_SHARDS).map(|_| RwLock::default()).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x636f_7276_6964),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn hash(&self, v: impl Hash) -> usize {
        // Truncation is fine: only the low bits pick a shard.
        self.hasher.hash_one(v) as usize
    }

    fn slot_of(&self, key: &SubjectKey) -> usize {
        self.hash(key.as_str()) % VERSION_SLOTS
    }

    /// Whether every stored subject has been published.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// The core's: marks the map complete (or not, before a rebuild).
    pub fn set_complete(&self, complete: bool) {
        self.complete.store(complete, Ordering::Release);
    }

    fn fingerprint_of(&self, key: &SubjectKey) -> Fingerprint {
        // Two outputs of one keyed PRF, on inputs that differ in a prefix.
        let half = |tag: u8| {
            let mut h = self.fingerprint.build_hasher();
            h.write_u8(tag);
            h.write(key.as_str().as_bytes());
            h.finish()
        };
        Fingerprint([half(0), half(1)])
    }

    fn subject_shard(&self, f: Fingerprint) -> &RwLock<hashbrown::HashTable<Packed>> {
        // The table hashes with f[0]; the shard comes from f[1].
        &self.subjects[(f.0[1] % SUBJECT_SHARDS as u64) as usize]
    }

    /// A subject's published verdict.
    pub fn get(&self, key: &SubjectKey) -> Option<SubjectVerdict> {
        let f = self.fingerprint_of(key);
        let table = self
            .subject_shard(f)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table
            .find(f.0[0], |p| p.fingerprint == f)
            .map(Packed::unpack)
    }

    /// The core's: publishes (or, with `None`, withdraws) one subject's
    /// verdict and invalidates the cached answers that may include it.
    pub fn put(&self, key: &SubjectKey, verdict: Option<SubjectVerdict>) {
        let f = self.fingerprint_of(key);
        {
            let mut table = self
                .subject_shard(f)
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let entry = table.entry(f.0[0], |p| p.fingerprint == f, |p| p.fingerprint.0[0]);
            match (verdict, entry) {
                (Some(v), hashbrown::hash_table::Entry::Occupied(mut o)) => {
                    *o.get_mut() = Packed::new(f, &v);
                }
                (Some(v), hashbrown::hash_table::Entry::Vacant(e)) => {
                    e.insert(Packed::new(f, &v));
                }
                (None, hashbrown::hash_table::Entry::Occupied(o)) => {
                    o.remove();
                }
                (None, hashbrown::hash_table::Entry::Vacant(_)) => {}
            }
        }
        match key.kind() {
            SubjectKind::Jid | SubjectKind::Digest => {
                self.versions[self.slot_of(key)].fetch_add(1, Ordering::AcqRel);
            }
            _ => {
                self.broad.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// The core's: forgets every entry (settings changed); lookups read the
    /// store until the core has published everything again.
    pub fn clear(&self) {
        self.set_complete(false);
        for shard in &self.subjects {
            shard
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
        self.invalidate_all();
    }

    /// Invalidates every cached answer.
    pub fn invalidate_all(&self) {
        self.broad.fetch_add(1, Ordering::AcqRel);
    }

    /// The versions an answer for a query keyed by `exact` depends on, read
    /// before computing it.
    pub fn stamp(&self, exact: Option<&SubjectKey>) -> Stamp {
        self.current(exact.map_or(0, |k| self.slot_of(k)))
    }

    fn current(&self, slot: usize) -> Stamp {
        Stamp {
            slot,
            slot_version: self.versions[slot].load(Ordering::Acquire),
            broad: self.broad.load(Ordering::Acquire),
        }
    }

    /// Whether a cached answer still holds at `now`.
    fn holds(&self, c: &Cached, now: u64) -> bool {
        now < c.valid_until && c.stamp == self.current(c.stamp.slot)
    }

    /// `f` applied to a cached answer that is still exact at `now`; `f`
    /// itself back when there is none. The thread's own copy is read first
    /// (no lock), then the shared cache (one shard's read lock), whose hit
    /// the thread keeps.
    ///
    /// # Errors
    /// `f`, unused, when no cached answer holds.
    pub fn cached_with<R, F: FnOnce(&Arc<VerdictOut>) -> R>(
        &self,
        cache_key: &str,
        now: u64,
        f: F,
    ) -> Result<R, F> {
        let hash = self.hasher.hash_one(cache_key);
        let f = LOCAL.with(|local| {
            let local = local.borrow();
            match local.find(hash, |c| c.owner == self.id && c.key.is(cache_key)) {
                Some(c) if self.holds(c, now) => Ok(f(&c.verdict)),
                _ => Err(f),
            }
        });
        let f = match f {
            Ok(out) => return Ok(out),
            Err(f) => f,
        };
        let found = {
            let table = self.cache[shard_of(hash)]
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            table
                .find(hash, |c| c.key.is(cache_key))
                .filter(|c| self.holds(c, now))
                .cloned()
        };
        match found {
            Some(c) => {
                let out = f(&c.verdict);
                keep_local(c);
                Ok(out)
            }
            None => Err(f),
        }
    }

    /// Caches under `alias` (another spelling of the same query, such as its
    /// raw query string) the answer cached for `key`, if one holds at `now`;
    /// it is invalidated with it.
    pub fn alias(&self, alias: &str, key: &str, now: u64) {
        let hash = self.hasher.hash_one(key);
        let found = {
            let table = self.cache[shard_of(hash)]
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            table
                .find(hash, |c| c.key.is(key))
                .filter(|c| self.holds(c, now))
                .map(|c| (c.stamp, c.valid_until, Arc::clone(&c.verdict)))
        };
        if let Some((stamp, valid_until, verdict)) = found {
            self.cache(alias, stamp, valid_until, verdict);
        }
    }

    /// Caches an answer computed under `stamp`.
    pub fn cache(&self, cache_key: &str, stamp: Stamp, valid_until: u64, verdict: Arc<VerdictOut>) {
        let hash = self.hasher.hash_one(cache_key);
        let entry = Cached {
            owner: self.id,
            key: Key::new(cache_key),
            hash,
            stamp,
            valid_until,
            verdict,
        };
        let mut table = self.cache[shard_of(hash)]
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if table.len() >= CACHE_MAX_PER_SHARD {
            table.clear();
        }
        insert(&mut table, entry.clone());
        drop(table);
        keep_local(entry);
    }
}

/// Puts an entry into the thread's own cache (emptied when full).
fn keep_local(entry: Cached) {
    LOCAL.with(|local| {
        // A lookup inside a lookup's closure cannot keep its answer; it is
        // only a cache.
        if let Ok(mut local) = local.try_borrow_mut() {
            if local.len() >= LOCAL_MAX {
                *local = Table::new();
            }
            insert(&mut local, entry);
        }
    });
}

/// Inserts or replaces the entry for the same owner and key.
fn insert(table: &mut Table, entry: Cached) {
    match table.entry(
        entry.hash,
        |c| c.owner == entry.owner && c.key.bytes() == entry.key.bytes(),
        |c| c.hash,
    ) {
        hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = entry,
        hashbrown::hash_table::Entry::Vacant(v) => {
            v.insert(entry);
        }
    }
}

/// The cache shard of a hash: its top bits (the table uses the low ones).
fn shard_of(hash: u64) -> usize {
    (hash >> (64 - CACHE_SHARDS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use corvid_protocol::aggregate::{Mode, SourceKind};
    use corvid_protocol::record::{Category, Record, ReportId};

    fn report(subject: &SubjectKey, source: &str, confidence: u8, now: u64) -> Contribution {
        let mut record = crate::engine::listed_report(
            ReportId::new(now * 1000, [7; 10]),
            subject.clone(),
            Category::Spam,
            now,
            86_400,
        );
        if let Record::Report(r) = &mut record {
            r.confidence = confidence;
        }
        Contribution {
            source: source.into(),
            kind: SourceKind::Peer,
            weight: 1.0,
            alone: false,
            mode: Mode::Enforce,
            confirmed: true,
            record,
        }
    }

    /// The packed form gives back the action and the very reasons that
    /// `subject_action` gives, for every kind of hold.
    #[test]
    fn packed_verdicts_rebuild_their_reasons() {
        let now = 1_800_000_000;
        let policy = Policy::default();
        let jid = SubjectKey::for_jid("bot@spam.example").expect("jid");
        let digest = SubjectKey::for_digest_hex(&"ab".repeat(32)).expect("digest");
        let cases: Vec<(SubjectKey, Vec<Contribution>, bool)> = vec![
            (jid.clone(), vec![report(&jid, "b.test", 100, now)], false),
            (
                jid.clone(),
                vec![
                    report(&jid, "b.test", 100, now),
                    report(&jid, "c.test", 100, now),
                ],
                false,
            ),
            (
                jid.clone(),
                vec![
                    report(&jid, "b.test", 100, now),
                    report(&jid, "c.test", 100, now),
                ],
                true,
            ),
            (jid.clone(), vec![report(&jid, "b.test", 40, now)], false),
            (jid.clone(), vec![report(&jid, "b.test", 5, now)], false),
            (
                digest.clone(),
                vec![
                    report(&digest, "b.test", 100, now),
                    report(&digest, "c.test", 100, now),
                ],
                false,
            ),
        ];
        let published = Published::new();
        let mut holds = Vec::new();
        for (subject, contributions, canary) in &cases {
            let v = SubjectVerdict::compute(subject, contributions, &policy, *canary, now);
            let lookup = Lookup {
                canaries: if *canary {
                    std::iter::once(subject.clone()).collect()
                } else {
                    Default::default()
                },
                ..Lookup::default()
            };
            let s = aggregate::score_subject(subject, contributions, &policy, now);
            let (action, reasons) = aggregate::subject_action(&s, &lookup, &policy);
            assert_eq!(v.action, action);
            assert_eq!(v.reasons(subject, &policy), reasons, "{subject} {canary}");
            published.put(subject, Some(v));
            let back = published.get(subject).expect("published");
            assert_eq!(back, v);
            assert_eq!(back.reasons(subject, &policy), reasons);
            holds.push(v.hold);
        }
        // The cases reach every hold they were built for.
        for hold in [Hold::None, Hold::Quorum, Hold::Canary, Hold::Digest] {
            assert!(holds.contains(&hold), "{hold:?} not reached: {holds:?}");
        }
        published.put(&jid, None);
        assert_eq!(published.get(&jid), None);
    }

    /// An answer cached under a raw spelling of the query is dropped with
    /// the prepared query's: a change of the subject reaches both.
    #[test]
    fn an_alias_is_invalidated_with_its_query() {
        let now = 1_800_000_000;
        let published = Published::new();
        let jid = SubjectKey::for_jid("bot@spam.example").expect("jid");
        let answer = Arc::new(VerdictOut {
            action: Action::Flag,
            score: 0.5,
            subjects: Vec::new(),
            reasons: Vec::new(),
            contributions: Vec::new(),
        });
        let stamp = published.stamp(Some(&jid));
        published.cache(jid.as_str(), stamp, now + 60, Arc::clone(&answer));
        published.alias("jid=bot%40spam.example", jid.as_str(), now);
        let action = |key: &str| published.cached_with(key, now, |v| v.action).ok();
        assert_eq!(action("jid=bot%40spam.example"), Some(Action::Flag));
        // Another thread, with nothing of its own cached, sees it too.
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(action("jid=bot%40spam.example"), Some(Action::Flag)));
        });
        published.put(&jid, None);
        assert_eq!(action("jid=bot%40spam.example"), None);
        assert_eq!(action(jid.as_str()), None);
        // Past its validity it is not served either.
        published.cache(jid.as_str(), published.stamp(Some(&jid)), now + 60, answer);
        assert_eq!(
            published
                .cached_with(jid.as_str(), now + 60, |v| v.action)
                .ok(),
            None
        );
    }
}
