//! The node's durable state, on an ordered key-value engine behind the
//! [`kv::Kv`] trait: redb by default, sled selectable, memory for tests.
//!
//! Tables (see [`kv::Table`]): this server's records and the outbox of
//! those not yet published; every contribution keyed by subject and
//! source, with a by-source index, an expiry index and the list of entries
//! missing from their feed; per-source state; the decision stream and each
//! subject's last action. Keys and values use the compact forms of
//! [`codec`]; sources are interned as 4-byte ids.
//!
//! Every read-modify-write is one transaction of the engine. Raw IP
//! addresses are never written here: only tokens.

pub mod codec;
pub mod kv;
pub mod migrate;
pub mod redb_kv;
pub mod sled_kv;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use corvid_protocol::aggregate::Action;
use corvid_protocol::record::{Category, Record, ReportId};
use corvid_protocol::subject::SubjectKey;
use serde::{Deserialize, Serialize};

use kv::{Kv, Table, Txn};

/// A storage failure. The API answers [`StoreError::Io`] with 503 (the
/// disk or the database is failing: retry later, nothing was stored) and
/// [`StoreError::Corrupt`] with 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory cannot be created.
    #[error("cannot create data_dir {dir}: {source}")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the database.
    #[error(
        "the database in {dir} is in use by another process (is another corvidd running with this data_dir?)"
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// The database cannot be opened.
    #[error("cannot open the database in {dir}: {source}")]
    Open {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database was written by a newer corvidd.
    #[error(
        "data_dir {dir} holds schema version {found}, newer than this corvidd understands ({ours}); run a newer corvidd or point data_dir elsewhere"
    )]
    NewerSchema {
        /// The data directory.
        dir: PathBuf,
        /// Version found.
        found: u32,
        /// Version this build writes.
        ours: u32,
    },
    /// A read, write or flush failed.
    #[error("storage failed: {0}")]
    Io(Box<dyn std::error::Error + Send + Sync>),
    /// A stored value does not decode.
    #[error("a stored value does not decode (database damaged?): {0}")]
    Corrupt(String),
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        Self::Corrupt(e.to_string())
    }
}

impl From<codec::DecodeError> for StoreError {
    fn from(e: codec::DecodeError) -> Self {
        Self::Corrupt(e.0)
    }
}

/// Results of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The schema this build writes. 1 was corvid 0.1's sled layout (JSON
/// values, text keys); 2 is [`codec`]'s.
pub const SCHEMA_VERSION: u32 = 2;

/// The largest database [`Store::shut_down`] compacts: redb rewrites
/// about 150 MB/s here (BENCHMARKS.md), so this stays within a few
/// seconds of a SIGTERM. Larger ones: `corvidd compact`, stopped.
pub const COMPACT_AT_SHUTDOWN_MAX: u64 = 768 << 20;

/// How many decisions the change stream keeps.
const DECISIONS_KEPT: u64 = 200_000;

/// The engines `storage_engine` names.
pub use crate::config::StorageEngine as Engine;

/// A subject and its stored entries: `(subject, [(source, entry)])`.
pub type SubjectEntries = (String, Vec<(String, Stored)>);

/// One stored contribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The record (newest from this source for this subject).
    pub record: Record,
    /// The key id it was signed with (empty for unsigned sources).
    #[serde(default)]
    pub key_id: String,
    /// When it went missing from the source's feed, if it did.
    #[serde(default)]
    pub missing_since: Option<u64>,
    /// When it was last received or confirmed (Unix ms).
    #[serde(default)]
    pub seen_ms: u64,
}

/// Per-source state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerState {
    /// Last complete backfill.
    pub last_sync: Option<u64>,
    /// Last item received by any path.
    pub last_item: Option<u64>,
    /// Contributions stored.
    pub records: u64,
    /// Moved to observe mode because it reported a canary.
    pub suspended_for_canary: Option<String>,
    /// Keys accepted by rotation (text form).
    pub rotated_keys: Vec<String>,
    /// A rotation waiting for the operator: new key text.
    pub pending_rotation: Option<String>,
    /// Revoked key fingerprints.
    pub revoked: Vec<String>,
    /// The peer serves its feed as a log (layout 2, spec §4.6), as its
    /// service said at the last backfill.
    #[serde(default)]
    pub log_layout: bool,
    /// Layout 2: the id of the newest record read from the log, where the
    /// next read resumes (RSM `after`).
    #[serde(default)]
    pub log_cursor: Option<String>,
    /// Layout 2: a read reached the end of the log since the cursor was
    /// last reset, so live items may move the cursor on.
    #[serde(default)]
    pub log_complete: bool,
    /// Layout 2: the key record items read and applied from the log.
    #[serde(default)]
    pub log_keys: Vec<String>,
}

/// What [`Store::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// A new entry.
    Added,
    /// An existing entry was replaced.
    Replaced,
    /// `decide` kept what was stored.
    Kept,
}

/// A change in a subject's own verdict, for the decision stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Cursor.
    pub seq: u64,
    /// Subject.
    pub subject: String,
    /// New action.
    pub action: Action,
    /// The action before it (a subject never decided was allowed); `None`
    /// in decisions recorded before this was kept.
    pub previous: Option<Action>,
    /// What decided it.
    pub origin: Origin,
    /// The category that weighs most among the reports behind a federation
    /// `flag` or `block` (what a user's per-category choice applies to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    /// Score then.
    pub score: f64,
    /// When.
    pub at: u64,
}

/// What decided a subject's action: the federation's score, or a local
/// list (spec §15.4: an exact local entry wins over covering ones, an
/// allow over a deny).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The score of the subject's contributions (§15.5).
    Federation,
    /// The local allow list.
    LocalAllow,
    /// The local deny list.
    LocalDeny,
}

/// What local users did with messages from a subject in their spam
/// folders: opaque user tags, each with when it last released or deleted
/// one. At most [`LocalSignals::MAX_USERS`] of each are kept (the newest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSignals {
    /// Releases into the inbox, by user.
    #[serde(default)]
    pub releases: std::collections::BTreeMap<String, u64>,
    /// Deletions, by user.
    #[serde(default)]
    pub deletions: std::collections::BTreeMap<String, u64>,
}

impl LocalSignals {
    /// Users kept per kind.
    pub const MAX_USERS: usize = 64;

    /// Records one user's release (`release`) or deletion at `at`.
    pub fn add(&mut self, release: bool, user: &str, at: u64) {
        let map = if release {
            &mut self.releases
        } else {
            &mut self.deletions
        };
        map.insert(user.to_owned(), at);
        while map.len() > Self::MAX_USERS {
            let oldest = map.iter().min_by_key(|(_, t)| **t).map(|(u, _)| u.clone());
            if let Some(u) = oldest {
                map.remove(&u);
            }
        }
    }

    /// Distinct users who released a message since `since`.
    pub fn releases_since(&self, since: u64) -> usize {
        self.releases.values().filter(|t| **t >= since).count()
    }
}

/// A subject's last recorded action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastAction {
    /// The action.
    pub action: Action,
    /// What decided it.
    pub origin: Origin,
    /// When it may change by decay alone (a recheck is due then).
    pub due: Option<u64>,
    /// A domain's score in whole percent (0 for other kinds: kept only
    /// where a consumer applies its own, stricter threshold to it, as a
    /// server does before refusing a whole domain's s2s stream).
    pub percent: u8,
    /// As [`Decision::category`].
    pub category: Option<Category>,
}

/// A scan's visitor: `Ok(false)` stops it, an error ends it.
type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// Interned source names.
#[derive(Debug, Default)]
struct Sources {
    ids: HashMap<String, u32>,
    names: HashMap<u32, String>,
}

/// The node's database.
#[derive(Debug, Clone)]
pub struct Store {
    kv: Arc<dyn Kv>,
    sources: Arc<RwLock<Sources>>,
    /// Woken after every commit that recorded a decision.
    decided: Arc<tokio::sync::Notify>,
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

fn contrib_key(subject: &str, source: u32) -> Vec<u8> {
    let mut k = codec::subject(subject);
    k.extend_from_slice(&source.to_be_bytes());
    k
}

fn back_key(source: u32, subject: &str) -> Vec<u8> {
    let mut k = source.to_be_bytes().to_vec();
    codec::put_subject(&mut k, subject);
    k
}

fn expiry_key(at: u64, source: u32, subject: &str) -> Vec<u8> {
    let mut k = at.to_be_bytes().to_vec();
    k.extend_from_slice(&back_key(source, subject));
    k
}

fn due_key(at: u64, subject_key: &[u8]) -> Vec<u8> {
    let mut k = at.to_be_bytes().to_vec();
    k.extend_from_slice(subject_key);
    k
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

const NEXT_SOURCE: &[u8] = b"next_source";
const DECISION_SEQ: &[u8] = b"decision_seq";
const KEY_RECORDS: &[u8] = b"key_records";
const SCHEMA: &[u8] = b"schema";
/// The id of the newest own record ever written (16 bytes).
const LAST_OWN_ID: &[u8] = b"last_own_id";
/// Own records held (BE u64: reports and retractions), for checkpoints.
const OWN_RECORDS: &[u8] = b"own_records";
/// How many of the own records are for federation members only (`ip:`).
const OWN_MEMBERS_ONLY: &[u8] = b"own_members_only";

/// Whether an own record goes to federation members only (spec §4.6).
fn members_only(subject: &str) -> bool {
    subject.starts_with("ip:")
}
/// Set once the own log index covers every own record.
const OWN_LOG_BUILT: &[u8] = b"own_log_built";

/// Takes group and others' access away from the data directory (corvidd
/// owns it; an existing one may have been made with the umask's 0755), and
/// says so; where it cannot (not the owner), says that instead.
fn private_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700)) {
        Ok(()) => tracing::warn!(
            "data directory {} had mode {mode:o}: now {:o} (the store holds reports and IP tokens)",
            dir.display(),
            mode & 0o700
        ),
        Err(e) => tracing::warn!(
            "data directory {} has mode {mode:o}: group or others may read the store, and it cannot be changed ({e}); chmod 700 it",
            dir.display()
        ),
    }
}

impl Store {
    /// Opens (or creates) the default engine's database in `dir`.
    ///
    /// # Errors
    /// See [`Store::open_with`].
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        Self::open_with(dir, Engine::Redb, cache_bytes)
    }

    /// Opens (or creates) a database in `dir` with `engine`, checking its
    /// schema. `cache_bytes` bounds the engine's page cache.
    ///
    /// # Errors
    /// The directory cannot be created, the database is in use or cannot
    /// be opened, or its schema is newer than this build.
    pub fn open_with(dir: &Path, engine: Engine, cache_bytes: u64) -> Result<Self> {
        // Owner only, whatever the umask: the store holds reports, IP
        // tokens and who reported what.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|source| StoreError::CreateDir {
                dir: dir.to_owned(),
                source,
            })?;
        private_dir(dir);
        let kv: Arc<dyn Kv> = match engine {
            Engine::Redb => Arc::new(redb_kv::RedbKv::open(
                &dir.join("corvid.redb"),
                usize::try_from(cache_bytes).unwrap_or(usize::MAX),
            )?),
            Engine::Sled => Arc::new(sled_kv::SledKv::open(&dir.join("sled"), cache_bytes)?),
        };
        Self::on(kv, dir)
    }

    /// A store in memory, for tests and the simulator.
    pub fn in_memory() -> Self {
        match Self::on(Arc::new(kv::MemKv::new()), Path::new("(memory)")) {
            Ok(s) => s,
            // Nothing in memory can fail to open.
            Err(e) => unreachable!("memory store: {e}"),
        }
    }

    /// A store on an open engine.
    ///
    /// # Errors
    /// A schema newer than this build, or the engine's errors.
    pub fn on(kv: Arc<dyn Kv>, dir: &Path) -> Result<Self> {
        match kv.get(Table::Meta, SCHEMA)? {
            None => {
                kv.write(true, &mut |t| {
                    t.put(Table::Meta, SCHEMA, &SCHEMA_VERSION.to_be_bytes())
                })?;
            }
            Some(v) => {
                let found = be32(&v).unwrap_or(u32::MAX);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        dir: dir.to_owned(),
                        found,
                        ours: SCHEMA_VERSION,
                    });
                }
            }
        }
        let mut sources = Sources::default();
        let mut bad = None;
        kv.scan(Table::Sources, &[], &mut |k, v| {
            match (std::str::from_utf8(k), be32(v)) {
                (Ok(name), Some(id)) => {
                    sources.ids.insert(name.to_owned(), id);
                    sources.names.insert(id, name.to_owned());
                }
                _ => bad = Some(corrupt("a source name or id does not decode")),
            }
            true
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        let store = Self {
            kv,
            sources: Arc::new(RwLock::new(sources)),
            decided: Arc::default(),
        };
        store.build_own_log()?;
        Ok(store)
    }

    /// Indexes own records written before the own log existed (once).
    fn build_own_log(&self) -> Result<()> {
        if self.kv.get(Table::Meta, OWN_LOG_BUILT)?.is_some() {
            if self.kv.get(Table::Meta, OWN_MEMBERS_ONLY)?.is_none() {
                // A log built before the count existed.
                let mut n = 0u64;
                self.scan_prefix(Table::Own, &[], &mut |k, _| {
                    if members_only(&codec::only_subject(k)?) {
                        n += 1;
                    }
                    Ok(true)
                })?;
                self.kv.write(true, &mut |t| {
                    t.put(Table::Meta, OWN_MEMBERS_ONLY, &n.to_be_bytes())
                })?;
            }
            return Ok(());
        }
        let mut own = Vec::new();
        self.scan_prefix(Table::Own, &[], &mut |k, v| {
            let subject = codec::only_subject(k)?;
            own.push(codec::decode_record(&subject, v)?);
            Ok(true)
        })?;
        self.kv.write(true, &mut |t| {
            let mut last: Option<ReportId> = None;
            let mut records = 0u64;
            let mut members = 0u64;
            for r in &own {
                if members_only(r.subject().as_str()) {
                    members += 1;
                }
                t.put(
                    Table::OwnLog,
                    &r.id().to_bytes(),
                    &codec::subject(r.subject().as_str()),
                )?;
                last = last.max(Some(r.id()));
                records += 1;
            }
            if let Some(l) = last {
                t.put(Table::Meta, LAST_OWN_ID, &l.to_bytes())?;
            }
            t.put(Table::Meta, OWN_RECORDS, &records.to_be_bytes())?;
            t.put(Table::Meta, OWN_MEMBERS_ONLY, &members.to_be_bytes())?;
            t.put(Table::Meta, OWN_LOG_BUILT, &[1])
        })
    }

    /// Up to `limit` own records written after the record `after` (all
    /// from the start without it), oldest first: the feed as a log.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn own_after(&self, after: Option<ReportId>, limit: usize) -> Result<Vec<Record>> {
        let mut subjects = Vec::new();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = after.map(|a| a.to_bytes().to_vec()).unwrap_or_default();
        let mut failed = None;
        self.kv.scan(Table::OwnLog, &start, &mut |k, v| {
            if !start.is_empty() && k == start.as_slice() {
                return true;
            }
            match codec::only_subject(v) {
                Ok(subject) => subjects.push(subject),
                Err(e) => failed = Some(StoreError::from(e)),
            }
            failed.is_none() && subjects.len() < limit
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let mut out = Vec::with_capacity(subjects.len());
        for subject in subjects {
            if let Some(v) = self.kv.get(Table::Own, &codec::subject(&subject))? {
                out.push(codec::decode_record(&subject, &v)?);
            }
        }
        Ok(out)
    }

    /// The id of the newest own record ever written, the own records held
    /// (reports and retractions), and how many of those are for federation
    /// members only: what a checkpoint states.
    ///
    /// # Errors
    /// IO errors.
    pub fn own_log_state(&self) -> Result<(Option<ReportId>, u64, u64)> {
        let last = match self.kv.get(Table::Meta, LAST_OWN_ID)? {
            Some(v) => Some(ReportId::from_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| corrupt("last own id"))?,
            )),
            None => None,
        };
        let records = match self.kv.get(Table::Meta, OWN_RECORDS)? {
            Some(v) => be64(&v).ok_or_else(|| corrupt("own record count"))?,
            None => 0,
        };
        let members = match self.kv.get(Table::Meta, OWN_MEMBERS_ONLY)? {
            Some(v) => be64(&v).ok_or_else(|| corrupt("own members-only count"))?,
            None => 0,
        };
        Ok((last, records, members))
    }

    /// The engine's name: `redb`, `sled` or `memory`.
    pub fn engine(&self) -> &'static str {
        self.kv.engine()
    }

    fn source_id(&self, name: &str) -> Option<u32> {
        self.sources
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .ids
            .get(name)
            .copied()
    }

    fn source_name(&self, id: u32) -> Result<String> {
        self.sources
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .names
            .get(&id)
            .cloned()
            .ok_or_else(|| corrupt(&format!("source id {id} has no name")))
    }

    /// The id of `name` inside a write, allocating it if new; new ids are
    /// pushed on `fresh` and learnt once the write commits.
    fn intern(&self, t: &mut dyn Txn, name: &str, fresh: &mut Vec<(String, u32)>) -> Result<u32> {
        if let Some(id) = self.source_id(name) {
            return Ok(id);
        }
        if let Some((_, id)) = fresh.iter().find(|(n, _)| n == name) {
            return Ok(*id);
        }
        let id = match t.get(Table::Sources, name.as_bytes())? {
            Some(v) => be32(&v).ok_or_else(|| corrupt("source id"))?,
            None => {
                let id = match t.get(Table::Meta, NEXT_SOURCE)? {
                    Some(v) => be32(&v).ok_or_else(|| corrupt("next source id"))?,
                    None => 1,
                };
                t.put(Table::Meta, NEXT_SOURCE, &(id + 1).to_be_bytes())?;
                t.put(Table::Sources, name.as_bytes(), &id.to_be_bytes())?;
                t.put(Table::SourceNames, &id.to_be_bytes(), name.as_bytes())?;
                id
            }
        };
        fresh.push((name.to_owned(), id));
        Ok(id)
    }

    fn learn(&self, fresh: Vec<(String, u32)>) {
        if fresh.is_empty() {
            return;
        }
        let mut s = self
            .sources
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, id) in fresh {
            s.names.insert(id, name.clone());
            s.ids.insert(name, id);
        }
    }

    /// Scans the entries of `table` whose keys start with `prefix`.
    fn scan_prefix(&self, table: Table, prefix: &[u8], each: &mut Visit<'_>) -> Result<()> {
        let mut failed = None;
        self.kv.scan(table, prefix, &mut |k, v| {
            if !k.starts_with(prefix) {
                return false;
            }
            match each(k, v) {
                Ok(more) => more,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        failed.map_or(Ok(()), Err)
    }

    /// Makes everything written so far durable.
    ///
    /// # Errors
    /// IO errors.
    pub fn flush(&self) -> Result<()> {
        self.kv.sync()
    }

    /// Runs `body` as one atomic write transaction of the data model and
    /// commits it: all of its writes land or none. With `durable`, they are
    /// on stable storage (one fsync for the whole batch) when this returns.
    /// `body` may run more than once (an engine with optimistic
    /// transactions reruns it after a conflict): it must reset whatever it
    /// collects when it starts.
    ///
    /// # Errors
    /// Engine errors, or the first error `body` returned (nothing written).
    pub fn batch(
        &self,
        durable: bool,
        body: &mut dyn FnMut(&mut Tx<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut fresh = Vec::new();
        let mut decided = false;
        self.kv.write(durable, &mut |t| {
            fresh.clear();
            let mut tx = Tx {
                store: self,
                t,
                fresh: &mut fresh,
                decision_seq: None,
                own_written: false,
            };
            body(&mut tx)?;
            decided = tx.own_written;
            if let Some((seq, true)) = tx.decision_seq {
                tx.t.put(Table::Meta, DECISION_SEQ, &seq.to_be_bytes())?;
                decided = true;
            }
            Ok(())
        })?;
        self.learn(fresh);
        if decided {
            self.decided.notify_waiters();
        }
        Ok(())
    }

    /// Woken after each commit that recorded a decision or wrote an own
    /// record (for consumers of the decision stream and of the own log
    /// waiting for the next one).
    pub fn decided(&self) -> &tokio::sync::Notify {
        &self.decided
    }

    /// Records this server's own record and queues it for publication, in
    /// one durable transaction: on return it is on stable storage.
    ///
    /// # Errors
    /// IO errors.
    pub fn put_own_durable(&self, record: &Record) -> Result<()> {
        self.batch(true, &mut |tx| tx.put_own(record))
    }

    /// This server's record for a subject.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn own(&self, subject: &SubjectKey) -> Result<Option<Record>> {
        match self.kv.get(Table::Own, &codec::subject(subject.as_str()))? {
            Some(v) => Ok(Some(codec::decode_record(subject.as_str(), &v)?)),
            None => Ok(None),
        }
    }

    /// All own records.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn own_records(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        self.scan_prefix(Table::Own, &[], &mut |k, v| {
            let subject = codec::only_subject(k)?;
            out.push(codec::decode_record(&subject, v)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Subjects waiting for publication.
    ///
    /// # Errors
    /// IO errors.
    pub fn outbox(&self) -> Result<Vec<SubjectKey>> {
        let mut out = Vec::new();
        self.scan_prefix(Table::Outbox, &[], &mut |k, _| {
            let subject = codec::only_subject(k)?;
            out.push(
                subject
                    .parse()
                    .map_err(|e| corrupt(&format!("outbox subject {subject:?}: {e}")))?,
            );
            Ok(true)
        })?;
        Ok(out)
    }

    /// Marks a subject published.
    ///
    /// # Errors
    /// IO errors.
    pub fn published(&self, subject: &SubjectKey) -> Result<()> {
        self.batch(false, &mut |tx| tx.published(subject))
    }

    /// Unconfirmed entries whose grace ended before `cutoff`: `(source, subject)`.
    ///
    /// # Errors
    /// IO errors.
    pub fn missing_before(&self, cutoff: u64, limit: usize) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        self.scan_prefix(Table::Missing, &[], &mut |k, v| {
            let since = be64(v).ok_or_else(|| corrupt("missing since"))?;
            if since < cutoff {
                let id = be32(k).ok_or_else(|| corrupt("missing key"))?;
                out.push((self.source_name(id)?, codec::only_subject(&k[4..])?));
            }
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// Removes one own record if it has expired.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn drop_own_if_expired(&self, subject: &str, now: u64) -> Result<()> {
        self.batch(false, &mut |tx| tx.drop_own_if_expired(subject, now))
    }

    /// A contribution.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn get(&self, subject: &str, source: &str) -> Result<Option<Stored>> {
        let Some(id) = self.source_id(source) else {
            return Ok(None);
        };
        match self.kv.get(Table::Contrib, &contrib_key(subject, id))? {
            Some(v) => Ok(Some(codec::decode_stored(subject, &v)?)),
            None => Ok(None),
        }
    }

    /// Every contribution about a subject: `(source, stored)`.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn about(&self, subject: &str) -> Result<Vec<(String, Stored)>> {
        let prefix = codec::subject(subject);
        let mut out = Vec::new();
        self.scan_prefix(Table::Contrib, &prefix, &mut |k, v| {
            let id = be32(&k[prefix.len()..]).ok_or_else(|| corrupt("contribution key"))?;
            out.push((self.source_name(id)?, codec::decode_stored(subject, v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Stores a contribution, keeping the indexes in step. Returns whether
    /// the source's record count grew.
    ///
    /// # Errors
    /// IO errors.
    pub fn put(&self, subject: &str, source: &str, stored: &Stored) -> Result<bool> {
        self.upsert(subject, source, |_| Some(stored.clone()))
            .map(|o| o == Upserted::Added)
    }

    /// Reads, decides and writes one contribution in one transaction, with
    /// its indexes: `decide` sees the stored value (if any) and returns the
    /// new one, or `None` to leave it. Two writers of the same entry cannot
    /// interleave: the second sees the first's value.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn upsert(
        &self,
        subject: &str,
        source: &str,
        decide: impl Fn(Option<&Stored>) -> Option<Stored>,
    ) -> Result<Upserted> {
        let mut outcome = Upserted::Kept;
        self.batch(false, &mut |tx| {
            outcome = tx.upsert(subject, source, &decide)?;
            Ok(())
        })?;
        Ok(outcome)
    }

    /// Deletes a contribution. Returns whether it existed.
    ///
    /// # Errors
    /// IO errors.
    pub fn remove(&self, subject: &str, source: &str) -> Result<bool> {
        self.remove_if(subject, source, |_| true)
    }

    /// Deletes a contribution if `still` holds for its stored value, checked
    /// in the same transaction as the delete (an expiry sweep must not drop
    /// an entry that was renewed since it was listed). Returns whether it
    /// was deleted.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn remove_if(
        &self,
        subject: &str,
        source: &str,
        still: impl Fn(&Stored) -> bool,
    ) -> Result<bool> {
        let mut removed = false;
        self.batch(false, &mut |tx| {
            removed = tx.remove_if(subject, source, &still)?;
            Ok(())
        })?;
        Ok(removed)
    }

    /// Subjects one source contributes to.
    ///
    /// # Errors
    /// IO errors.
    pub fn subjects_of(&self, source: &str) -> Result<Vec<String>> {
        let Some(id) = self.source_id(source) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        self.scan_prefix(Table::BySource, &id.to_be_bytes(), &mut |k, _| {
            out.push(codec::only_subject(&k[4..])?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Up to `limit` contributions expired at `now`: `(source, subject)`.
    ///
    /// # Errors
    /// IO errors.
    pub fn expired(&self, now: u64, limit: usize) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.scan_prefix(Table::Expiry, &[], &mut |k, _| {
            let at = be64(k).ok_or_else(|| corrupt("expiry key"))?;
            if at > now {
                return Ok(false);
            }
            let id = be32(&k[8..]).ok_or_else(|| corrupt("expiry key"))?;
            out.push((self.source_name(id)?, codec::only_subject(&k[12..])?));
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// Number of stored contributions.
    pub fn contribution_count(&self) -> usize {
        self.kv
            .len(Table::Contrib)
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Every distinct subject with contributions (for exports), sorted.
    ///
    /// # Errors
    /// IO errors.
    pub fn subjects(&self) -> Result<Vec<String>> {
        let mut out = self.subjects_after(None, usize::MAX)?;
        out.sort_unstable();
        Ok(out)
    }

    /// Up to `limit` distinct subjects with contributions, in key order,
    /// after `cursor` (from the start without one): a scan in steps.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn subjects_after(&self, cursor: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        let from = cursor.map(codec::subject).unwrap_or_default();
        let mut last: Vec<u8> = from.clone();
        let mut failed = None;
        self.kv.scan(Table::Contrib, &from, &mut |k, _| {
            let body = &k[..k.len().saturating_sub(4)];
            if body != last.as_slice() {
                if out.len() >= limit {
                    return false;
                }
                match codec::only_subject(body) {
                    Ok(s) => out.push(s),
                    Err(e) => {
                        failed = Some(StoreError::from(e));
                        return false;
                    }
                }
                last = body.to_vec();
            }
            true
        })?;
        failed.map_or(Ok(out), Err)
    }

    /// The contributions of up to `limit` subjects after `cursor`, in key
    /// order, grouped by subject: one scan (the warm-up's read).
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn contributions_after(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SubjectEntries>> {
        let mut out: Vec<SubjectEntries> = Vec::new();
        let from = cursor.map(codec::subject).unwrap_or_default();
        let mut last: Vec<u8> = Vec::new();
        let mut failed = None;
        self.kv.scan(Table::Contrib, &from, &mut |k, v| {
            let Some(split) = k.len().checked_sub(4) else {
                failed = Some(corrupt("contribution key"));
                return false;
            };
            let (body, id) = k.split_at(split);
            if body == from.as_slice() {
                // The cursor's own subject was published before.
                return true;
            }
            let new_subject = body != last.as_slice();
            if new_subject && out.len() >= limit {
                return false;
            }
            let mut step = || -> Result<()> {
                if new_subject {
                    out.push((codec::only_subject(body)?, Vec::new()));
                    last = body.to_vec();
                }
                let id = be32(id).ok_or_else(|| corrupt("contribution key"))?;
                let source = self.source_name(id)?;
                if let Some((subject, entries)) = out.last_mut() {
                    entries.push((source, codec::decode_stored(subject, v)?));
                }
                Ok(())
            };
            match step() {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        failed.map_or(Ok(out), Err)
    }

    /// A source's state.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn peer(&self, source: &str) -> Result<PeerState> {
        Ok(match self.kv.get(Table::Peers, source.as_bytes())? {
            Some(v) => serde_json::from_slice(&v)?,
            None => PeerState::default(),
        })
    }

    /// Updates a source's state. The read, `f` and the write are one
    /// transaction: concurrent updates of one peer (a revocation and a
    /// sync time, say) both land.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn update_peer(&self, source: &str, f: impl Fn(&mut PeerState)) -> Result<PeerState> {
        let mut out = PeerState::default();
        self.batch(false, &mut |tx| {
            out = tx.update_peer(source, &f)?;
            Ok(())
        })?;
        Ok(out)
    }

    /// Records a subject's action (see [`Tx::record_decision`]).
    ///
    /// # Errors
    /// IO errors.
    pub fn record_decision(
        &self,
        subject: &str,
        now_action: (Action, Origin),
        score: f64,
        now: u64,
        due: Option<u64>,
    ) -> Result<Option<u64>> {
        let mut out = None;
        self.batch(false, &mut |tx| {
            out = tx.record_decision(subject, now_action, score, now, due)?;
            Ok(())
        })?;
        Ok(out)
    }

    /// Decisions after a cursor, and whether some were dropped between the
    /// cursor and the first of them (only the last [`DECISIONS_KEPT`] are
    /// kept): a consumer that missed some must read a snapshot again.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn decisions_since(&self, since: u64, limit: usize) -> Result<(Vec<Decision>, bool)> {
        let mut out = Vec::new();
        let mut failed = None;
        if limit > 0 {
            self.kv.scan(
                Table::Decisions,
                &since.saturating_add(1).to_be_bytes(),
                &mut |k, v| {
                    match be64(k)
                        .ok_or_else(|| corrupt("decision key"))
                        .and_then(|seq| Ok(codec::decode_decision(seq, v)?))
                    {
                        Ok(d) => out.push(d),
                        Err(e) => failed = Some(e),
                    }
                    failed.is_none() && out.len() < limit
                },
            )?;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let gap = match out.first() {
            Some(d) => d.seq > since.saturating_add(1),
            None => self.decision_seq()? > since && limit > 0,
        };
        Ok((out, gap))
    }

    /// A JSON value kept in the meta table.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn meta_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.kv.get(Table::Meta, key.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// The sequence of the last decision (0 before the first).
    ///
    /// # Errors
    /// IO errors.
    pub fn decision_seq(&self) -> Result<u64> {
        Ok(match self.kv.get(Table::Meta, DECISION_SEQ)? {
            Some(v) => be64(&v).ok_or_else(|| corrupt("decision sequence"))?,
            None => 0,
        })
    }

    /// Up to `limit` subjects due for a recheck at `now`.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn due(&self, now: u64, limit: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.scan_prefix(Table::Due, &[], &mut |k, _| {
            let at = be64(k).ok_or_else(|| corrupt("due key"))?;
            if at > now {
                return Ok(false);
            }
            out.push(codec::only_subject(&k[8..])?);
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// One page of the subjects whose recorded action is not a plain
    /// `allow` (flag, block, or a local list entry), after `after`, of the
    /// kinds in `kinds`: the snapshot a consumer starts its copy from.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn decided_after(
        &self,
        after: Option<&str>,
        kinds: &[&str],
        limit: usize,
    ) -> Result<Vec<(String, LastAction)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let start = after.map(codec::subject).unwrap_or_default();
        let mut failed = None;
        self.kv.scan(Table::LastAction, &start, &mut |k, v| {
            if !start.is_empty() && k == start.as_slice() {
                return true;
            }
            let entry = codec::only_subject(k)
                .map_err(StoreError::from)
                .and_then(|s| Ok((s, codec::decode_last_action(v)?)));
            match entry {
                Ok((subject, last)) => {
                    let kind_ok = subject
                        .split_once(':')
                        .is_some_and(|(kind, _)| kinds.contains(&kind));
                    if kind_ok
                        && (last.action != Action::Allow || last.origin != Origin::Federation)
                    {
                        out.push((subject, last));
                    }
                }
                Err(e) => failed = Some(e),
            }
            failed.is_none() && out.len() < limit
        })?;
        failed.map_or(Ok(out), Err)
    }

    /// A subject's last recorded action, if any was recorded.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn last_action(&self, subject: &str) -> Result<Option<LastAction>> {
        match self.kv.get(Table::LastAction, &codec::subject(subject))? {
            Some(v) => Ok(Some(codec::decode_last_action(&v)?)),
            None => Ok(None),
        }
    }

    /// What local users did with a subject's messages.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn signals(&self, subject: &str) -> Result<Option<LocalSignals>> {
        match self.kv.get(Table::Signals, &codec::subject(subject))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Every subject with local signals.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn all_signals(&self) -> Result<Vec<(String, LocalSignals)>> {
        let mut out = Vec::new();
        let mut failed = None;
        self.kv.scan(Table::Signals, &[], &mut |k, v| {
            match (codec::only_subject(k), serde_json::from_slice(v)) {
                (Ok(s), Ok(sig)) => out.push((s, sig)),
                (Err(e), _) => failed = Some(StoreError::from(e)),
                (_, Err(e)) => failed = Some(StoreError::from(e)),
            }
            failed.is_none()
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Subjects by their last recorded action.
    ///
    /// # Errors
    /// IO errors.
    pub fn action_counts(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut out = std::collections::BTreeMap::new();
        self.scan_prefix(Table::LastAction, &[], &mut |_, v| {
            let name = match codec::decode_last_action(v)?.action {
                Action::Block => "block",
                Action::Flag => "flag",
                Action::Allow => "allow",
            };
            *out.entry(name.to_owned()).or_insert(0) += 1;
            Ok(true)
        })?;
        Ok(out)
    }

    /// Remembers a published key record (rotation, revocation) so it is
    /// republished whenever the PubSub service lost it. Durable on return.
    ///
    /// # Errors
    /// IO errors.
    pub fn add_key_record(&self, item_id: &str, xml: &str) -> Result<()> {
        self.batch(true, &mut |tx| tx.add_key_record(item_id, xml))
    }

    /// Key records to keep published: `(item id, payload XML)`.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn key_records(&self) -> Result<Vec<(String, String)>> {
        Ok(match self.kv.get(Table::Meta, KEY_RECORDS)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => Vec::new(),
        })
    }

    /// A clean shutdown: everything made durable, then, if the files are
    /// small enough to rewrite quickly ([`COMPACT_AT_SHUTDOWN_MAX`]), their
    /// free space given back (redb's copy-on-write pages leave much of it
    /// behind under many small commits). Returns the bytes on disk before
    /// and after.
    ///
    /// # Errors
    /// IO errors.
    pub fn shut_down(&self) -> Result<(u64, u64)> {
        self.flush()?;
        let before = self.size_on_disk();
        if before <= COMPACT_AT_SHUTDOWN_MAX {
            self.kv.compact()?;
        }
        Ok((before, self.size_on_disk()))
    }

    /// Rewrites the database without its free space, whatever its size
    /// (`corvidd compact`, with corvidd stopped).
    ///
    /// # Errors
    /// IO errors.
    pub fn compact(&self) -> Result<(u64, u64)> {
        self.flush()?;
        let before = self.size_on_disk();
        self.kv.compact()?;
        Ok((before, self.size_on_disk()))
    }

    /// Bytes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.kv.size_on_disk()
    }

    /// The engine underneath, for tests that write raw values.
    pub fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
    }
}

/// One write transaction of the data model: every method reads the
/// transaction's own earlier writes. Built by [`Store::batch`], which
/// commits all of it at once (one fsync for a whole batch when durable).
pub struct Tx<'a> {
    store: &'a Store,
    t: &'a mut dyn Txn,
    fresh: &'a mut Vec<(String, u32)>,
    /// The decision sequence as this transaction has advanced it: read
    /// once, written once when the body is done.
    decision_seq: Option<(u64, bool)>,
    /// Whether an own record was written (the log moved on).
    own_written: bool,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl Tx<'_> {
    fn intern(&mut self, name: &str) -> Result<u32> {
        self.store.intern(self.t, name, self.fresh)
    }

    fn source_id(&mut self, name: &str) -> Result<Option<u32>> {
        if let Some(id) = self.store.source_id(name) {
            return Ok(Some(id));
        }
        if let Some((_, id)) = self.fresh.iter().find(|(n, _)| n == name) {
            return Ok(Some(*id));
        }
        Ok(None)
    }

    /// What local users did with a subject's messages, as of this
    /// transaction.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn signals(&mut self, subject: &str) -> Result<Option<LocalSignals>> {
        match self.t.get(Table::Signals, &codec::subject(subject))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Stores what local users did with a subject's messages.
    ///
    /// # Errors
    /// IO errors.
    pub fn put_signals(&mut self, subject: &str, signals: &LocalSignals) -> Result<()> {
        self.t.put(
            Table::Signals,
            &codec::subject(subject),
            &serde_json::to_vec(signals)?,
        )
    }

    /// A subject's last recorded action, as of this transaction.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn last_action(&mut self, subject: &str) -> Result<Option<LastAction>> {
        match self.t.get(Table::LastAction, &codec::subject(subject))? {
            Some(v) => Ok(Some(codec::decode_last_action(&v)?)),
            None => Ok(None),
        }
    }

    /// Every source's entry for `subject`, as of this transaction.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn about(&mut self, subject: &str) -> Result<Vec<(String, Stored)>> {
        let prefix = codec::subject(subject);
        let mut found = Vec::new();
        let mut failed = None;
        self.t.scan_prefix(Table::Contrib, &prefix, &mut |k, v| {
            match be32(&k[prefix.len()..]).ok_or_else(|| corrupt("contribution key")) {
                Ok(id) => found.push((id, v.to_vec())),
                Err(e) => failed = Some(e),
            }
            failed.is_none()
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let mut out = Vec::with_capacity(found.len());
        for (id, v) in found {
            let name = match self.fresh.iter().find(|(_, i)| *i == id) {
                Some((name, _)) => name.clone(),
                None => self.store.source_name(id)?,
            };
            out.push((name, codec::decode_stored(subject, &v)?));
        }
        Ok(out)
    }

    /// Records this server's own record and queues it for publication.
    ///
    /// # Errors
    /// IO errors.
    pub fn put_own(&mut self, record: &Record) -> Result<()> {
        let key = codec::subject(record.subject().as_str());
        let mut records = self.own_records()?;
        if let Some(v) = self.t.get(Table::Own, &key)? {
            let old = codec::decode_record(record.subject().as_str(), &v)?;
            self.t.remove(Table::OwnLog, &old.id().to_bytes())?;
        } else {
            records += 1;
            if members_only(record.subject().as_str()) {
                self.add_members_only(1)?;
            }
        }
        self.t.put(Table::OwnLog, &record.id().to_bytes(), &key)?;
        let last = self.last_own_id()?;
        if last.is_none_or(|l| record.id() > l) {
            self.t
                .put(Table::Meta, LAST_OWN_ID, &record.id().to_bytes())?;
        }
        self.t
            .put(Table::Meta, OWN_RECORDS, &records.to_be_bytes())?;
        self.t.put(Table::Own, &key, &codec::record(record))?;
        self.own_written = true;
        self.t.put(Table::Outbox, &key, &[])
    }

    fn add_members_only(&mut self, delta: i64) -> Result<()> {
        let n = match self.t.get(Table::Meta, OWN_MEMBERS_ONLY)? {
            Some(v) => be64(&v).ok_or_else(|| corrupt("own members-only count"))?,
            None => 0,
        }
        .saturating_add_signed(delta);
        self.t.put(Table::Meta, OWN_MEMBERS_ONLY, &n.to_be_bytes())
    }

    fn own_records(&mut self) -> Result<u64> {
        Ok(match self.t.get(Table::Meta, OWN_RECORDS)? {
            Some(v) => be64(&v).ok_or_else(|| corrupt("own record count"))?,
            None => 0,
        })
    }

    /// The id of the newest own record ever written: a new one must be
    /// newer (the log's order is the ids' order).
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn last_own_id(&mut self) -> Result<Option<ReportId>> {
        Ok(match self.t.get(Table::Meta, LAST_OWN_ID)? {
            Some(v) => Some(ReportId::from_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| corrupt("last own id"))?,
            )),
            None => None,
        })
    }

    /// This server's record for a subject, as of this transaction.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn own(&mut self, subject: &SubjectKey) -> Result<Option<Record>> {
        match self.t.get(Table::Own, &codec::subject(subject.as_str()))? {
            Some(v) => Ok(Some(codec::decode_record(subject.as_str(), &v)?)),
            None => Ok(None),
        }
    }

    /// Marks a subject published.
    ///
    /// # Errors
    /// IO errors.
    pub fn published(&mut self, subject: &SubjectKey) -> Result<()> {
        self.t
            .remove(Table::Outbox, &codec::subject(subject.as_str()))
            .map(drop)
    }

    /// Removes one own record if it has expired.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn drop_own_if_expired(&mut self, subject: &str, now: u64) -> Result<()> {
        let key = codec::subject(subject);
        if let Some(v) = self.t.get(Table::Own, &key)? {
            let old = codec::decode_record(subject, &v)?;
            if old.expires_at() <= now {
                self.t.remove(Table::Own, &key)?;
                self.t.remove(Table::Outbox, &key)?;
                self.t.remove(Table::OwnLog, &old.id().to_bytes())?;
                let records = self.own_records()?.saturating_sub(1);
                self.t
                    .put(Table::Meta, OWN_RECORDS, &records.to_be_bytes())?;
                if members_only(subject) {
                    self.add_members_only(-1)?;
                }
            }
        }
        Ok(())
    }

    /// A contribution, as of this transaction.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn get(&mut self, subject: &str, source: &str) -> Result<Option<Stored>> {
        let Some(id) = self.source_id(source)? else {
            return Ok(None);
        };
        match self.t.get(Table::Contrib, &contrib_key(subject, id))? {
            Some(v) => Ok(Some(codec::decode_stored(subject, &v)?)),
            None => Ok(None),
        }
    }

    /// Reads, decides and writes one contribution with its indexes:
    /// `decide` sees the stored value (if any) and returns the new one, or
    /// `None` to leave it.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn upsert(
        &mut self,
        subject: &str,
        source: &str,
        decide: impl FnOnce(Option<&Stored>) -> Option<Stored>,
    ) -> Result<Upserted> {
        let id = self.intern(source)?;
        let t = &mut *self.t;
        let key = contrib_key(subject, id);
        let back = back_key(id, subject);
        let old = match t.get(Table::Contrib, &key)? {
            Some(v) => Some(codec::decode_stored(subject, &v)?),
            None => None,
        };
        let Some(new) = decide(old.as_ref()) else {
            return Ok(Upserted::Kept);
        };
        t.put(Table::Contrib, &key, &codec::stored(&new))?;
        // The indexes change only where the entry's indexed values did.
        let old_expiry = old.as_ref().map(|o| o.record.expires_at());
        if old_expiry != Some(new.record.expires_at()) {
            if let Some(at) = old_expiry {
                t.remove(Table::Expiry, &expiry_key(at, id, subject))?;
            }
            t.put(
                Table::Expiry,
                &expiry_key(new.record.expires_at(), id, subject),
                &[],
            )?;
        }
        if old.is_none() {
            t.put(Table::BySource, &back, &[])?;
        }
        let old_missing = old.as_ref().and_then(|o| o.missing_since);
        match new.missing_since {
            Some(since) if old_missing != Some(since) => {
                t.put(Table::Missing, &back, &since.to_be_bytes())?;
            }
            Some(_) => {}
            None if old_missing.is_some() => {
                t.remove(Table::Missing, &back)?;
            }
            None => {}
        }
        Ok(if old.is_none() {
            Upserted::Added
        } else {
            Upserted::Replaced
        })
    }

    /// Deletes a contribution if `still` holds for its stored value.
    /// Returns whether it was deleted.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn remove_if(
        &mut self,
        subject: &str,
        source: &str,
        still: impl FnOnce(&Stored) -> bool,
    ) -> Result<bool> {
        let Some(id) = self.source_id(source)? else {
            return Ok(false);
        };
        let t = &mut *self.t;
        let key = contrib_key(subject, id);
        let back = back_key(id, subject);
        let Some(v) = t.get(Table::Contrib, &key)? else {
            return Ok(false);
        };
        let old = codec::decode_stored(subject, &v)?;
        if !still(&old) {
            return Ok(false);
        }
        t.remove(Table::Contrib, &key)?;
        if old.missing_since.is_some() {
            t.remove(Table::Missing, &back)?;
        }
        t.remove(
            Table::Expiry,
            &expiry_key(old.record.expires_at(), id, subject),
        )?;
        t.remove(Table::BySource, &back)?;
        Ok(true)
    }

    /// A source's state, as of this transaction.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn peer(&mut self, source: &str) -> Result<PeerState> {
        Ok(match self.t.get(Table::Peers, source.as_bytes())? {
            Some(v) => serde_json::from_slice(&v)?,
            None => PeerState::default(),
        })
    }

    /// Updates a source's state.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn update_peer(
        &mut self,
        source: &str,
        f: impl FnOnce(&mut PeerState),
    ) -> Result<PeerState> {
        let mut state = self.peer(source)?;
        f(&mut state);
        self.t.put(
            Table::Peers,
            source.as_bytes(),
            &serde_json::to_vec(&state)?,
        )?;
        Ok(state)
    }

    /// Keeps a JSON value in the meta table.
    ///
    /// # Errors
    /// IO or encode errors.
    pub fn put_meta_json<T: Serialize>(&mut self, key: &str, value: &T) -> Result<()> {
        self.t
            .put(Table::Meta, key.as_bytes(), &serde_json::to_vec(value)?)?;
        Ok(())
    }

    /// Records a subject's action: appends a decision if its action or
    /// origin changed (returns its sequence), and keeps the subject in the
    /// recheck index at `due` (when decay alone may change it).
    ///
    /// # Errors
    /// IO errors.
    pub fn record_decision(
        &mut self,
        subject: &str,
        now_action: (Action, Origin),
        score: f64,
        now: u64,
        due: Option<u64>,
    ) -> Result<Option<u64>> {
        self.record_decision_in(subject, now_action, None, score, now, due)
    }

    /// As [`Tx::record_decision`], with the category that weighs most
    /// behind it: a change of category alone is a new decision too.
    ///
    /// # Errors
    /// IO errors.
    pub fn record_decision_in(
        &mut self,
        subject: &str,
        now_action: (Action, Origin),
        category: Option<Category>,
        score: f64,
        now: u64,
        due: Option<u64>,
    ) -> Result<Option<u64>> {
        let (action, origin) = now_action;
        // Only a federation flag or block has a category that matters.
        let category = category.filter(|_| action != Action::Allow && origin == Origin::Federation);
        let t = &mut *self.t;
        let key = codec::subject(subject);
        let previous = match t.get(Table::LastAction, &key)? {
            Some(v) => Some(codec::decode_last_action(&v)?),
            None => None,
        };
        let percent = if subject.starts_with("domain:") {
            // Whole percent, rounded down: a threshold is met only when
            // the score really reaches it.
            (score.clamp(0.0, 1.0) * 100.0).floor() as u8
        } else {
            0
        };
        let next = LastAction {
            action,
            origin,
            due,
            percent,
            category,
        };
        if previous == Some(next) {
            return Ok(None);
        }
        let old_due = previous.and_then(|p| p.due);
        if old_due != due {
            if let Some(at) = old_due {
                t.remove(Table::Due, &due_key(at, &key))?;
            }
            if let Some(at) = due {
                t.put(Table::Due, &due_key(at, &key), &[])?;
            }
        }
        let unchanged = match previous {
            Some(p) => {
                p.action == action
                    && p.origin == origin
                    && p.percent == percent
                    && p.category == category
            }
            // A subject never decided was allowed by the federation.
            None => action == Action::Allow && origin == Origin::Federation,
        };
        if unchanged && previous.is_none() && due.is_none() && percent == 0 {
            return Ok(None);
        }
        t.put(Table::LastAction, &key, &codec::last_action(&next))?;
        if unchanged {
            return Ok(None);
        }
        let last = match self.decision_seq {
            Some((seq, _)) => seq,
            None => match t.get(Table::Meta, DECISION_SEQ)? {
                Some(v) => be64(&v).ok_or_else(|| corrupt("decision sequence"))?,
                None => 0,
            },
        };
        let seq = last + 1;
        self.decision_seq = Some((seq, true));
        let d = Decision {
            seq,
            subject: subject.to_owned(),
            action,
            previous: Some(previous.map_or(Action::Allow, |p| p.action)),
            origin,
            category,
            score,
            at: now,
        };
        t.put(Table::Decisions, &seq.to_be_bytes(), &codec::decision(&d))?;
        if seq > DECISIONS_KEPT {
            t.remove(Table::Decisions, &(seq - DECISIONS_KEPT).to_be_bytes())?;
        }
        Ok(Some(seq))
    }

    /// Remembers a published key record (rotation, revocation).
    ///
    /// # Errors
    /// IO errors.
    pub fn add_key_record(&mut self, item_id: &str, xml: &str) -> Result<()> {
        self.own_written = true;
        let mut list: Vec<(String, String)> = match self.t.get(Table::Meta, KEY_RECORDS)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => Vec::new(),
        };
        list.retain(|(id, _)| id != item_id);
        list.push((item_id.to_owned(), xml.to_owned()));
        self.t
            .put(Table::Meta, KEY_RECORDS, &serde_json::to_vec(&list)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_directory_is_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let parent = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        // Created by corvidd: 0700 whatever the umask.
        let fresh = parent.path().join("fresh");
        drop(Store::open(&fresh, 1 << 20).expect("store"));
        assert_eq!(mode(&fresh), 0o700);
        // Made beforehand with 0755: tightened at the next open.
        let made = parent.path().join("made");
        std::fs::create_dir(&made).expect("mkdir");
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        drop(Store::open(&made, 1 << 20).expect("store"));
        assert_eq!(mode(&made), 0o700);
    }

    #[test]
    fn a_newer_schema_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), 1 << 20).expect("fresh store");
            store
                .kv()
                .write(true, &mut |t| {
                    t.put(Table::Meta, SCHEMA, &99u32.to_be_bytes())
                })
                .expect("write");
            store.flush().expect("flush");
        }
        let err = Store::open(dir.path(), 1 << 20).expect_err("schema 99 must be refused");
        assert!(
            format!("{err:#}").contains("newer than this corvidd understands"),
            "{err:#}"
        );
    }

    #[test]
    fn decisions_are_recorded_only_on_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("store");
        assert_eq!(
            store
                .record_decision("jid:x", (Action::Allow, Origin::Federation), 0.0, 1, None)
                .expect("d"),
            None,
            "allow from nothing is no change"
        );
        let first = store
            .record_decision(
                "jid:x",
                (Action::Flag, Origin::Federation),
                0.5,
                2,
                Some(100),
            )
            .expect("d")
            .expect("changed");
        assert_eq!(
            store
                .record_decision(
                    "jid:x",
                    (Action::Flag, Origin::Federation),
                    0.6,
                    3,
                    Some(100)
                )
                .expect("d"),
            None
        );
        let second = store
            .record_decision(
                "jid:x",
                (Action::Block, Origin::Federation),
                0.9,
                4,
                Some(200),
            )
            .expect("d")
            .expect("changed");
        let (list, gap) = store.decisions_since(first, 10).expect("list");
        assert!(!gap);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].seq, second);
        assert_eq!(list[0].action, Action::Block);
        // The recheck index holds the subject at its latest due time only.
        assert!(store.due(150, 10).expect("due").is_empty());
        assert_eq!(store.due(200, 10).expect("due"), vec!["jid:x".to_owned()]);
        // A local allow entry is a decision even from nothing, and is in
        // the snapshot; a plain allow is not.
        let third = store
            .record_decision("jid:y", (Action::Allow, Origin::LocalAllow), 0.0, 5, None)
            .expect("d")
            .expect("changed");
        assert_eq!(third, second + 1);
        let page = store.decided_after(None, &["jid"], 10).expect("page");
        let names: Vec<&str> = page.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, ["jid:x", "jid:y"]);
        assert_eq!(
            store
                .decided_after(Some("jid:x"), &["jid"], 10)
                .expect("page")
                .len(),
            1
        );
        assert!(
            store
                .decided_after(None, &["domain"], 10)
                .expect("page")
                .is_empty()
        );
        store
            .record_decision("jid:x", (Action::Allow, Origin::Federation), 0.0, 6, None)
            .expect("d")
            .expect("changed");
        assert!(store.due(u64::MAX, 10).expect("due").is_empty());
        // A cursor older than what is kept (or ahead of a reset store) is a gap.
        assert!(
            !store
                .decisions_since(store.decision_seq().expect("seq"), 10)
                .expect("d")
                .1
        );
    }
}
