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

use anyhow::{Context, Result, bail};
use corvid_protocol::aggregate::Action;
use corvid_protocol::record::Record;
use corvid_protocol::subject::SubjectKey;
use serde::{Deserialize, Serialize};
use sled::Transactional;

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
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500))
            .open()
            .with_context(|| {
                format!(
                    "cannot open the database in {} (is another corvidd using it?)",
                    dir.display()
                )
            })?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema")? {
            None => {
                meta.insert("schema", &SCHEMA_VERSION.to_be_bytes())?;
            }
            Some(v) => {
                let found = u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0xff; 4]));
                if found > SCHEMA_VERSION {
                    bail!(
                        "data_dir {} holds schema version {found}, newer than this corvidd understands ({SCHEMA_VERSION}); run a newer corvidd or point data_dir elsewhere",
                        dir.display()
                    );
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
        self.db.flush().context("flushing the database")?;
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
        (&self.own, &self.outbox)
            .transaction(|(own, outbox)| {
                own.insert(key.as_slice(), value.as_slice())?;
                outbox.insert(key.as_slice(), &[])?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| anyhow::anyhow!("storing own record: {e:?}"))?;
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
        if let Some(v) = self.own.get(subject)? {
            let record: Record = serde_json::from_slice(&v)?;
            if record.expires_at() <= now {
                self.own.remove(subject)?;
                self.outbox.remove(subject)?;
            }
        }
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
        let key = pair(subject, source);
        let old = self.contrib.insert(&key, serde_json::to_vec(stored)?)?;
        if let Some(old) = &old {
            let old: Stored = serde_json::from_slice(old)?;
            self.expiry
                .remove(expiry_key(old.record.expires_at(), source, subject))?;
        }
        self.by_source.insert(pair(source, subject), &[])?;
        self.expiry
            .insert(expiry_key(stored.record.expires_at(), source, subject), &[])?;
        match stored.missing_since {
            Some(since) => self
                .missing
                .insert(pair(source, subject), &since.to_be_bytes())?,
            None => self.missing.remove(pair(source, subject))?,
        };
        Ok(old.is_none())
    }

    /// Deletes a contribution. Returns whether it existed.
    ///
    /// # Errors
    /// IO errors.
    pub fn remove(&self, subject: &str, source: &str) -> Result<bool> {
        let Some(old) = self.contrib.remove(pair(subject, source))? else {
            return Ok(false);
        };
        let old: Stored = serde_json::from_slice(&old)?;
        self.missing.remove(pair(source, subject))?;
        self.expiry
            .remove(expiry_key(old.record.expires_at(), source, subject))?;
        self.by_source.remove(pair(source, subject))?;
        Ok(true)
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
            .range(..(now + 1).to_be_bytes().to_vec())
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
    pub fn update_peer(&self, source: &str, f: impl FnOnce(&mut PeerState)) -> Result<PeerState> {
        let mut state = self.peer(source)?;
        f(&mut state);
        self.peers.insert(source, serde_json::to_vec(&state)?)?;
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
