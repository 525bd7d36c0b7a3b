//! The node's durable state in sled.
//!
//! Trees:
//! - `meta`: schema version, and the key records to keep published;
//! - `own`: this server's records (subject key → record), the source of
//!   truth for its feed; `outbox`: subjects not yet published;
//! - `contrib`: every contribution, keyed `subject \0 source`;
//! - `by_source`: `source \0 subject`, to walk one peer's entries;
//! - `expiry`: `expires_at (BE) source \0 subject`, for incremental expiry;
//! - `peers`: per-source state (sync time, counts, keys, suspension);
//! - `decisions` + `last_action`: the change stream for consumers.
//!
//! Raw IP addresses are never written here: only tokens.

use std::path::Path;

use corvid_protocol::aggregate::Action;
use corvid_protocol::record::Record;
use corvid_protocol::subject::SubjectKey;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

/// A storage failure. The API answers [`StoreError::Io`] with 503 (the
/// disk or the database is failing: retry later, nothing was stored) and
/// [`StoreError::Corrupt`] with 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory cannot be created.
    #[error("cannot create data_dir {dir}: {source}")]
    CreateDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database cannot be opened.
    #[error("cannot open the database in {dir} (is another corvidd using it?): {source}")]
    Open {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Why.
        source: sled::Error,
    },
    /// The database was written by a newer corvidd.
    #[error(
        "data_dir {dir} holds schema version {found}, newer than this corvidd understands ({ours}); run a newer corvidd or point data_dir elsewhere"
    )]
    NewerSchema {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Version found.
        found: u32,
        /// Version this build writes.
        ours: u32,
    },
    /// A read, write or flush failed.
    #[error("storage failed: {0}")]
    Io(#[from] sled::Error),
    /// A stored value does not decode.
    #[error("a stored value does not decode (database damaged?): {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// Results of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => Self::Io(e),
        }
    }
}

/// Aborts a sled transaction with a store error.
fn abort<T>(
    e: impl Into<StoreError>,
) -> std::result::Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(e.into()))
}

/// The schema this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// How many decisions the change stream keeps.
const DECISIONS_KEPT: u64 = 200_000;

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
    /// Score then.
    pub score: f64,
    /// When.
    pub at: u64,
}

/// The sled database.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    own: sled::Tree,
    outbox: sled::Tree,
    contrib: sled::Tree,
    by_source: sled::Tree,
    expiry: sled::Tree,
    peers: sled::Tree,
    decisions: sled::Tree,
    last_action: sled::Tree,
    missing: sled::Tree,
    meta: sled::Tree,
}

fn pair(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn expiry_key(at: u64, source: &str, subject: &str) -> Vec<u8> {
    let mut k = at.to_be_bytes().to_vec();
    k.extend_from_slice(&pair(source, subject));
    k
}

fn split_pair(k: &[u8]) -> Option<(String, String)> {
    let i = k.iter().position(|&b| b == 0)?;
    Some((
        String::from_utf8(k[..i].to_vec()).ok()?,
        String::from_utf8(k[i + 1..].to_vec()).ok()?,
    ))
}

impl Store {
    /// Opens (or creates) the database, checking and migrating its schema.
    ///
    /// # Errors
    /// IO errors, or a schema newer than this build.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|source| StoreError::Open {
                dir: dir.to_owned(),
                source,
            })?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema")? {
            None => {
                meta.insert("schema", &SCHEMA_VERSION.to_be_bytes())?;
            }
            Some(v) => {
                let found = u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0xff; 4]));
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        dir: dir.to_owned(),
                        found,
                        ours: SCHEMA_VERSION,
                    });
                }
                // Version 1 is the first schema: nothing older to migrate from yet.
            }
        }
        Ok(Self {
            own: db.open_tree("own")?,
            outbox: db.open_tree("outbox")?,
            contrib: db.open_tree("contrib")?,
            by_source: db.open_tree("by_source")?,
            expiry: db.open_tree("expiry")?,
            peers: db.open_tree("peers")?,
            decisions: db.open_tree("decisions")?,
            last_action: db.open_tree("last_action")?,
            missing: db.open_tree("missing")?,
            meta,
            db,
        })
    }

    /// Forces everything written so far to disk.
    ///
    /// # Errors
    /// IO errors.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Records this server's own record and queues it for publication, in
    /// one transaction, then flushes: on return it survives a SIGKILL.
    ///
    /// # Errors
    /// IO errors.
    pub fn put_own_durable(&self, record: &Record) -> Result<()> {
        let key = record.subject().as_str().as_bytes().to_vec();
        let value = serde_json::to_vec(record)?;
        (&self.own, &self.outbox).transaction(|(own, outbox)| {
            own.insert(key.as_slice(), value.as_slice())?;
            outbox.insert(key.as_slice(), &[])?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        self.flush()
    }

    /// This server's record for a subject.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn own(&self, subject: &SubjectKey) -> Result<Option<Record>> {
        Ok(match self.own.get(subject.as_str())? {
            Some(v) => Some(serde_json::from_slice(&v)?),
            None => None,
        })
    }

    /// All own records.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn own_records(&self) -> Result<Vec<Record>> {
        self.own
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Subjects waiting for publication.
    ///
    /// # Errors
    /// IO errors.
    pub fn outbox(&self) -> Result<Vec<SubjectKey>> {
        self.outbox
            .iter()
            .keys()
            .filter_map(|k| {
                k.ok()
                    .and_then(|k| String::from_utf8(k.to_vec()).ok())
                    .and_then(|s| s.parse().ok())
            })
            .map(Ok)
            .collect()
    }

    /// Marks a subject published (if its record is still the one published).
    ///
    /// # Errors
    /// IO errors.
    pub fn published(&self, subject: &SubjectKey) -> Result<()> {
        self.outbox.remove(subject.as_str())?;
        Ok(())
    }

    /// Unconfirmed entries whose grace ended before `cutoff`: `(source, subject)`.
    ///
    /// # Errors
    /// IO errors.
    pub fn missing_before(&self, cutoff: u64, limit: usize) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for item in self.missing.iter() {
            let (k, v) = item?;
            let since = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
            if since < cutoff
                && let Some(p) = split_pair(&k)
            {
                out.push(p);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Removes one own record if it has expired.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn drop_own_if_expired(&self, subject: &str, now: u64) -> Result<()> {
        (&self.own, &self.outbox).transaction(|(own, outbox)| {
            if let Some(v) = own.get(subject)? {
                let record: Record = match serde_json::from_slice(&v) {
                    Ok(r) => r,
                    Err(e) => return abort(e),
                };
                if record.expires_at() <= now {
                    own.remove(subject)?;
                    outbox.remove(subject)?;
                }
            }
            Ok(())
        })?;
        Ok(())
    }

    /// A contribution.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn get(&self, subject: &str, source: &str) -> Result<Option<Stored>> {
        Ok(match self.contrib.get(pair(subject, source))? {
            Some(v) => Some(serde_json::from_slice(&v)?),
            None => None,
        })
    }

    /// Every contribution about a subject: `(source, stored)`.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn about(&self, subject: &str) -> Result<Vec<(String, Stored)>> {
        let mut prefix = subject.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.contrib.scan_prefix(&prefix) {
            let (k, v) = item?;
            let source = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push((source, serde_json::from_slice(&v)?));
        }
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
    /// interleave: the loser's `decide` runs again on the winner's value.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn upsert(
        &self,
        subject: &str,
        source: &str,
        decide: impl Fn(Option<&Stored>) -> Option<Stored>,
    ) -> Result<Upserted> {
        let key = pair(subject, source);
        let back = pair(source, subject);
        let outcome = (&self.contrib, &self.by_source, &self.expiry, &self.missing).transaction(
            |(contrib, by_source, expiry, missing)| {
                let old: Option<Stored> = match contrib.get(&key)? {
                    Some(v) => match serde_json::from_slice(&v) {
                        Ok(s) => Some(s),
                        Err(e) => return abort(e),
                    },
                    None => None,
                };
                let Some(new) = decide(old.as_ref()) else {
                    return Ok(Upserted::Kept);
                };
                let value = match serde_json::to_vec(&new) {
                    Ok(v) => v,
                    Err(e) => return abort(e),
                };
                contrib.insert(key.as_slice(), value)?;
                if let Some(old) = &old {
                    expiry.remove(expiry_key(old.record.expires_at(), source, subject))?;
                }
                by_source.insert(back.as_slice(), &[])?;
                expiry.insert(expiry_key(new.record.expires_at(), source, subject), &[])?;
                match new.missing_since {
                    Some(since) => missing.insert(back.as_slice(), &since.to_be_bytes())?,
                    None => missing.remove(back.as_slice())?,
                };
                Ok(if old.is_none() {
                    Upserted::Added
                } else {
                    Upserted::Replaced
                })
            },
        )?;
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
        let key = pair(subject, source);
        let back = pair(source, subject);
        let removed = (&self.contrib, &self.by_source, &self.expiry, &self.missing).transaction(
            |(contrib, by_source, expiry, missing)| {
                let Some(v) = contrib.get(&key)? else {
                    return Ok(false);
                };
                let old: Stored = match serde_json::from_slice(&v) {
                    Ok(s) => s,
                    Err(e) => return abort(e),
                };
                if !still(&old) {
                    return Ok(false);
                }
                contrib.remove(key.as_slice())?;
                missing.remove(back.as_slice())?;
                expiry.remove(expiry_key(old.record.expires_at(), source, subject))?;
                by_source.remove(back.as_slice())?;
                Ok(true)
            },
        )?;
        Ok(removed)
    }

    /// Subjects one source contributes to.
    ///
    /// # Errors
    /// IO errors.
    pub fn subjects_of(&self, source: &str) -> Result<Vec<String>> {
        let mut prefix = source.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for k in self.by_source.scan_prefix(&prefix).keys() {
            let k = k?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Up to `limit` contributions expired at `now`: `(source, subject)`.
    ///
    /// # Errors
    /// IO errors.
    pub fn expired(&self, now: u64, limit: usize) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for k in self
            .expiry
            .range(..now.saturating_add(1).to_be_bytes().to_vec())
            .keys()
            .take(limit)
        {
            let k = k?;
            if let Some(p) = split_pair(&k[8..]) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Number of stored contributions.
    pub fn contribution_count(&self) -> usize {
        self.contrib.len()
    }

    /// Every distinct subject with contributions (for exports), in order.
    ///
    /// # Errors
    /// IO errors.
    pub fn subjects(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for k in self.contrib.iter().keys() {
            let k = k?;
            if let Some((subject, _)) = split_pair(&k)
                && out.last() != Some(&subject)
            {
                out.push(subject);
            }
        }
        Ok(out)
    }

    /// A source's state.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn peer(&self, source: &str) -> Result<PeerState> {
        Ok(match self.peers.get(source)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => PeerState::default(),
        })
    }

    /// Updates a source's state.
    ///
    /// # Errors
    /// IO or decode errors.
    /// The read, `f` and the write are one transaction: concurrent updates
    /// of one peer (a revocation and a sync time, say) both land.
    pub fn update_peer(&self, source: &str, f: impl Fn(&mut PeerState)) -> Result<PeerState> {
        let state = self.peers.transaction(|peers| {
            let mut state = match peers.get(source)? {
                Some(v) => match serde_json::from_slice(&v) {
                    Ok(s) => s,
                    Err(e) => return abort(e),
                },
                None => PeerState::default(),
            };
            f(&mut state);
            match serde_json::to_vec(&state) {
                Ok(v) => peers.insert(source, v)?,
                Err(e) => return abort(e),
            };
            Ok(state)
        })?;
        Ok(state)
    }

    /// Appends a decision if the subject's action changed.
    ///
    /// # Errors
    /// IO errors.
    pub fn record_decision(
        &self,
        subject: &str,
        action: Action,
        score: f64,
        now: u64,
    ) -> Result<Option<u64>> {
        let encoded = [action as u8];
        let previous = self.last_action.insert(subject, &encoded)?;
        let unchanged = match &previous {
            Some(p) => p.as_ref() == encoded,
            None => action == Action::Allow,
        };
        if unchanged {
            return Ok(None);
        }
        let seq = self.db.generate_id()? + 1;
        let d = Decision {
            seq,
            subject: subject.to_owned(),
            action,
            score,
            at: now,
        };
        self.decisions
            .insert(seq.to_be_bytes(), serde_json::to_vec(&d)?)?;
        if seq > DECISIONS_KEPT {
            let cut = (seq - DECISIONS_KEPT).to_be_bytes();
            for k in self.decisions.range(..cut.to_vec()).keys().take(1000) {
                self.decisions.remove(k?)?;
            }
        }
        Ok(Some(seq))
    }

    /// Decisions after a cursor.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn decisions_since(&self, since: u64, limit: usize) -> Result<Vec<Decision>> {
        let start = since.saturating_add(1).to_be_bytes().to_vec();
        self.decisions
            .range(start..)
            .values()
            .take(limit)
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Subjects by their last recorded action.
    ///
    /// # Errors
    /// IO errors.
    pub fn action_counts(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut out = std::collections::BTreeMap::new();
        for v in self.last_action.iter().values() {
            let name = match v?.first() {
                Some(2) => "block",
                Some(1) => "flag",
                _ => "allow",
            };
            *out.entry(name.to_owned()).or_insert(0) += 1;
        }
        Ok(out)
    }

    /// Remembers a published key record (rotation, revocation) so it is
    /// republished whenever the PubSub service lost it.
    ///
    /// # Errors
    /// IO errors.
    pub fn add_key_record(&self, item_id: &str, xml: &str) -> Result<()> {
        let mut list = self.key_records()?;
        list.retain(|(id, _)| id != item_id);
        list.push((item_id.to_owned(), xml.to_owned()));
        self.meta
            .insert("key_records", serde_json::to_vec(&list)?)?;
        self.flush()
    }

    /// Key records to keep published: `(item id, payload XML)`.
    ///
    /// # Errors
    /// IO or decode errors.
    pub fn key_records(&self) -> Result<Vec<(String, String)>> {
        Ok(match self.meta.get("key_records")? {
            Some(v) => serde_json::from_slice(&v)?,
            None => Vec::new(),
        })
    }

    /// Bytes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_schema_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), 1 << 20).expect("fresh store");
            store
                .db
                .open_tree("meta")
                .expect("meta")
                .insert("schema", &99u32.to_be_bytes())
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
                .record_decision("jid:x", Action::Allow, 0.0, 1)
                .expect("d"),
            None,
            "allow from nothing is no change"
        );
        let first = store
            .record_decision("jid:x", Action::Flag, 0.5, 2)
            .expect("d")
            .expect("changed");
        assert_eq!(
            store
                .record_decision("jid:x", Action::Flag, 0.6, 3)
                .expect("d"),
            None
        );
        let second = store
            .record_decision("jid:x", Action::Block, 0.9, 4)
            .expect("d")
            .expect("changed");
        let list = store.decisions_since(first, 10).expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].seq, second);
        assert_eq!(list[0].action, Action::Block);
    }
}
