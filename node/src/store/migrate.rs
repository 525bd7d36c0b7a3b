//! Moving a corvid 0.1 store (schema 1: sled in `data_dir/db`, JSON
//! values, text keys) into the current schema, once, at start.

use std::path::{Path, PathBuf};

use corvid_protocol::record::Record;

use super::kv::Table;
use super::{Result, Store, StoreError, Stored, codec};

/// What a migration moved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Where the old store was moved aside to.
    pub moved_to: PathBuf,
    /// Own records.
    pub own: u64,
    /// Contributions.
    pub contributions: u64,
    /// Per-source states.
    pub peers: u64,
    /// Values that did not decode and were left behind.
    pub skipped: u64,
}

fn old(e: sled::Error, dir: &Path) -> StoreError {
    StoreError::Open {
        dir: dir.to_owned(),
        source: format!(
            "reading the corvid 0.1 store in {}: {e}",
            dir.join("db").display()
        )
        .into(),
    }
}

/// If `data_dir/db` holds a schema-1 sled store, copies it into `store`
/// and renames it `db.v1-migrated` (kept until the operator deletes it).
/// Own records are written durably first: they are the one thing no peer
/// can give back.
///
/// # Errors
/// The old store cannot be read, or the new one written.
pub fn from_v1(dir: &Path, store: &Store) -> Result<Option<Migrated>> {
    let path = dir.join("db");
    if !path.join("conf").exists() {
        return Ok(None);
    }
    let db = sled::Config::new()
        .path(&path)
        .open()
        .map_err(|e| old(e, dir))?;
    let tree = |name: &str| db.open_tree(name).map_err(|e| old(e, dir));
    let meta = tree("meta")?;
    match meta.get("schema").map_err(|e| old(e, dir))? {
        Some(v) if v.as_ref() == 1u32.to_be_bytes() => {}
        _ => return Ok(None),
    }
    let mut m = Migrated::default();
    let outbox = tree("outbox")?;
    for entry in tree("own")?.iter() {
        let (k, v) = entry.map_err(|e| old(e, dir))?;
        let Ok(record) = serde_json::from_slice::<Record>(&v) else {
            m.skipped += 1;
            continue;
        };
        store.put_own_durable(&record)?;
        if !outbox.contains_key(&k).map_err(|e| old(e, dir))? {
            store.published(record.subject())?;
        }
        m.own += 1;
    }
    for entry in tree("contrib")?.iter() {
        let (k, v) = entry.map_err(|e| old(e, dir))?;
        let key = String::from_utf8_lossy(&k);
        let (Some((subject, source)), Ok(stored)) =
            (key.split_once('\0'), serde_json::from_slice::<Stored>(&v))
        else {
            m.skipped += 1;
            continue;
        };
        store.put(subject, source, &stored)?;
        m.contributions += 1;
    }
    for entry in tree("peers")?.iter() {
        let (k, v) = entry.map_err(|e| old(e, dir))?;
        let (Ok(source), Ok(state)) = (
            std::str::from_utf8(&k),
            serde_json::from_slice::<super::PeerState>(&v),
        ) else {
            m.skipped += 1;
            continue;
        };
        store.update_peer(source, |p| *p = state.clone())?;
        m.peers += 1;
    }
    for entry in tree("last_action")?.iter() {
        let (k, v) = entry.map_err(|e| old(e, dir))?;
        let (Ok(subject), [a @ 0..=2]) = (std::str::from_utf8(&k), v.as_ref()) else {
            m.skipped += 1;
            continue;
        };
        let key = codec::subject(subject);
        store
            .kv
            .write(false, &mut |t| t.put(Table::LastAction, &key, &[*a]))?;
    }
    if let Some(v) = meta.get("key_records").map_err(|e| old(e, dir))?
        && let Ok(list) = serde_json::from_slice::<Vec<(String, String)>>(&v)
    {
        for (id, xml) in list {
            store.add_key_record(&id, &xml)?;
        }
    }
    store.flush()?;
    drop(db);
    m.moved_to = dir.join("db.v1-migrated");
    std::fs::rename(&path, &m.moved_to).map_err(|e| StoreError::Io(Box::new(e)))?;
    Ok(Some(m))
}
