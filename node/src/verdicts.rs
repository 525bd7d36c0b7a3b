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

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
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

type Fast = foldhash::fast::RandomState;
type Shard<K, V> = RwLock<HashMap<K, V, Fast>>;

/// One subject's verdict on its own (no local lists, no covering subjects).
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectVerdict {
    /// Noisy-OR score at `computed_at`.
    pub score: f64,
    /// Its action.
    pub action: Action,
    /// Why.
    pub reasons: Vec<Reason>,
    /// When it was computed.
    pub computed_at: u64,
    /// The action holds until this time (an expiry, or the decay crossing a
    /// threshold); the score is at most [`SCORE_REFRESH_SECS`] old before it.
    pub valid_until: u64,
}

impl SubjectVerdict {
    /// Scores `subject` from its contributions at `now`.
    pub fn compute(
        subject: &SubjectKey,
        contributions: &[Contribution],
        policy: &Policy,
        canary: bool,
        now: u64,
    ) -> Self {
        let lookup = Lookup {
            canaries: if canary {
                std::iter::once(subject.clone()).collect()
            } else {
                Default::default()
            },
            ..Lookup::default()
        };
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
        let valid_until = if horizon <= now + 1 || at(horizon).1 == action {
            horizon
        } else {
            let (mut lo, mut hi) = (now, horizon);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if at(mid).1 == action {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            hi
        };
        Self {
            score: s.score,
            action,
            reasons,
            computed_at: now,
            valid_until: valid_until.max(now + 1),
        }
    }
}

/// What lookups read: published by the core, never locked by it for longer
/// than one map insert.
#[derive(Debug)]
pub struct Published {
    subjects: Box<[Shard<SubjectKey, Arc<SubjectVerdict>>]>,
    /// Whether every stored subject has an entry (false while the core
    /// warms up after a start or a reload; lookups then read the store).
    complete: AtomicBool,
    versions: Box<[AtomicU64]>,
    /// Bumped by every change of a domain or IP-token subject.
    broad: AtomicU64,
    /// Bumped when everything changes (settings reloaded, a peer suspended).
    epoch: AtomicU64,
    cache: Box<[Shard<Box<str>, Cached>]>,
    hasher: foldhash::fast::FixedState,
}

/// A cached answer and the versions it was computed under.
#[derive(Debug, Clone)]
struct Cached {
    stamp: Stamp,
    valid_until: u64,
    verdict: Arc<VerdictOut>,
}

/// The versions a lookup read before it computed its answer: the answer
/// is reused only while none of them moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    slot: usize,
    slot_version: u64,
    broad: u64,
    epoch: u64,
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
            complete: AtomicBool::new(false),
            versions: (0..VERSION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            broad: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            cache: (0..CACHE_SHARDS).map(|_| RwLock::default()).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x636f_7276_6964),
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

    /// A subject's published verdict.
    pub fn get(&self, key: &SubjectKey) -> Option<Arc<SubjectVerdict>> {
        let shard = &self.subjects[self.hash(key.as_str()) % SUBJECT_SHARDS];
        let map = shard
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(key).cloned()
    }

    /// The core's: publishes (or, with `None`, withdraws) one subject's
    /// verdict and invalidates the cached answers that may include it.
    pub fn put(&self, key: &SubjectKey, verdict: Option<SubjectVerdict>) {
        {
            let shard = &self.subjects[self.hash(key.as_str()) % SUBJECT_SHARDS];
            let mut map = shard
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match verdict {
                Some(v) => {
                    map.insert(key.clone(), Arc::new(v));
                }
                None => {
                    map.remove(key);
                }
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
        self.epoch.fetch_add(1, Ordering::AcqRel);
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
            epoch: self.epoch.load(Ordering::Acquire),
        }
    }

    /// A cached answer that is still exact at `now`.
    pub fn cached(&self, cache_key: &str, now: u64) -> Option<Arc<VerdictOut>> {
        let shard = &self.cache[self.hash(cache_key) % CACHE_SHARDS];
        let map = shard
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = map.get(cache_key)?;
        (now < c.valid_until && c.stamp == self.current(c.stamp.slot))
            .then(|| Arc::clone(&c.verdict))
    }

    /// Caches an answer computed under `stamp`.
    pub fn cache(&self, cache_key: &str, stamp: Stamp, valid_until: u64, verdict: Arc<VerdictOut>) {
        let shard = &self.cache[self.hash(cache_key) % CACHE_SHARDS];
        let mut map = shard
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= CACHE_MAX_PER_SHARD {
            map.clear();
        }
        map.insert(
            cache_key.into(),
            Cached {
                stamp,
                valid_until,
                verdict,
            },
        );
    }
}
