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

/// Cached query answers kept per thread (the lock-free first level).
const LOCAL_MAX: usize = 50_000;

type Fast = foldhash::fast::RandomState;
type Shard<K, V> = RwLock<HashMap<K, V, Fast>>;
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
    /// Bumped by every change of a domain or IP-token subject, and when
    /// everything changes (settings reloaded, a peer suspended).
    broad: AtomicU64,
    cache: Box<[RwLock<Table>]>,
    hasher: foldhash::fast::FixedState,
    id: u64,
}

/// A cached answer and the versions it was computed under.
#[derive(Debug, Clone)]
struct Cached {
    /// The [`Published`] it belongs to.
    owner: u64,
    key: Box<str>,
    hash: u64,
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

    /// A cached answer that is still exact at `now`.
    pub fn cached(&self, cache_key: &str, now: u64) -> Option<Arc<VerdictOut>> {
        self.cached_with(cache_key, now, Arc::clone).ok()
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
            match local.find(hash, |c| c.owner == self.id && *c.key == *cache_key) {
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
                .find(hash, |c| *c.key == *cache_key)
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

    /// Caches an answer computed under `stamp`.
    pub fn cache(&self, cache_key: &str, stamp: Stamp, valid_until: u64, verdict: Arc<VerdictOut>) {
        let hash = self.hasher.hash_one(cache_key);
        let entry = Cached {
            owner: self.id,
            key: cache_key.into(),
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
        |c| c.owner == entry.owner && c.key == entry.key,
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
