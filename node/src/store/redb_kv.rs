//! The default engine: redb, a copy-on-write B-tree in one file, with
//! checksummed pages and an fsync on every durable commit.
//!
//! Non-durable commits (peers' records, which a backfill can fetch again)
//! are made durable by a background thread within [`SYNC_EVERY`], and by
//! the next durable commit; a crash loses the tail, never half of a
//! transaction.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::kv::{Body, Kv, Table, Txn, io};
use super::{Result, StoreError};

/// How long a non-durable commit may wait for its fsync.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn def(table: Table) -> Def {
    TableDefinition::new(table.name())
}

#[derive(Debug)]
struct Inner {
    /// Held shared by every operation and exclusively by compaction.
    db: RwLock<Database>,
    path: std::path::PathBuf,
    dirty: AtomicBool,
    /// Set when the store is dropped: the background sync ends.
    closing: AtomicBool,
}

/// A redb database file.
#[derive(Debug)]
pub struct RedbKv {
    inner: Arc<Inner>,
    /// The background sync, joined on drop: the file is closed (and its
    /// lock released) when the store is dropped, not when a sync that was
    /// under way at that moment ends.
    syncer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for RedbKv {
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::Release);
        let syncer = self
            .syncer
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = syncer {
            handle.thread().unpark();
            let _ = handle.join();
        }
        if self.inner.dirty.swap(false, Ordering::AcqRel)
            && let Err(e) = sync(&self.inner.read())
        {
            tracing::error!(error = %e, "storage: the last sync before closing failed");
        }
    }
}

impl RedbKv {
    /// Opens or creates `path` with a page cache of `cache_bytes`, creates
    /// every table, and starts the background sync.
    ///
    /// # Errors
    /// [`StoreError::Locked`] if another process has it open, or the
    /// engine's error.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self> {
        let dir = path.parent().unwrap_or(path).to_owned();
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { dir: dir.clone() },
                other => StoreError::Open {
                    dir: dir.clone(),
                    source: Box::new(other),
                },
            })?;
        let tx = db.begin_write().map_err(io)?;
        for table in Table::ALL {
            tx.open_table(def(table)).map_err(io)?;
        }
        tx.commit().map_err(io)?;
        let inner = Arc::new(Inner {
            db: RwLock::new(db),
            path: path.to_owned(),
            dirty: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&inner);
        let syncer = std::thread::Builder::new()
            .name("redb-sync".into())
            .spawn(move || background_sync(&weak))
            .map_err(io)?;
        Ok(Self {
            inner,
            syncer: std::sync::Mutex::new(Some(syncer)),
        })
    }
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, Database> {
        // Nothing runs under the lock that could leave the database
        // half-changed on a panic: redb's own transactions guard that.
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn background_sync(weak: &Weak<Inner>) {
    loop {
        // Woken early when the store closes.
        std::thread::park_timeout(SYNC_EVERY);
        let Some(inner) = weak.upgrade() else { return };
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        if inner.dirty.swap(false, Ordering::AcqRel)
            && let Err(e) = sync(&inner.read())
        {
            inner.dirty.store(true, Ordering::Release);
            tracing::error!(error = %e, "storage: background sync failed; retrying");
        }
    }
}

fn sync(db: &Database) -> Result<()> {
    let mut tx = db.begin_write().map_err(io)?;
    tx.set_durability(Durability::Immediate).map_err(io)?;
    tx.commit().map_err(io)
}

type RawTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

struct RedbTxn<'t> {
    tx: &'t redb::WriteTransaction,
    open: Vec<(Table, RawTable<'t>)>,
}

impl<'t> RedbTxn<'t> {
    fn table(&mut self, table: Table) -> Result<&mut RawTable<'t>> {
        let i = match self.open.iter().position(|(t, _)| *t == table) {
            Some(i) => i,
            None => {
                let t = self.tx.open_table(def(table)).map_err(io)?;
                self.open.push((table, t));
                self.open.len() - 1
            }
        };
        Ok(&mut self.open[i].1)
    }
}

impl Txn for RedbTxn<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .table(table)?
            .get(key)
            .map_err(io)?
            .map(|v| v.value().to_vec()))
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.table(table)?.insert(key, value).map_err(io)?;
        Ok(())
    }

    fn remove(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        Ok(self.table(table)?.remove(key).map_err(io)?.is_some())
    }

    fn scan_prefix(
        &mut self,
        table: Table,
        prefix: &[u8],
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        for entry in self.table(table)?.range(prefix..).map_err(io)? {
            let (k, v) = entry.map_err(io)?;
            if !k.value().starts_with(prefix) || !each(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }
}

impl Kv for RedbKv {
    fn engine(&self) -> &'static str {
        "redb"
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let rx = self.inner.read().begin_read().map_err(io)?;
        let t = rx.open_table(def(table)).map_err(io)?;
        Ok(t.get(key).map_err(io)?.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        from: &[u8],
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let rx = self.inner.read().begin_read().map_err(io)?;
        let t = rx.open_table(def(table)).map_err(io)?;
        for entry in t.range(from..).map_err(io)? {
            let (k, v) = entry.map_err(io)?;
            if !each(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }

    fn len(&self, table: Table) -> Result<u64> {
        let rx = self.inner.read().begin_read().map_err(io)?;
        let t = rx.open_table(def(table)).map_err(io)?;
        t.len().map_err(io)
    }

    fn write(&self, durable: bool, body: &mut Body<'_>) -> Result<()> {
        let db = self.inner.read();
        let mut tx = db.begin_write().map_err(io)?;
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(io)?;
        {
            let mut txn = RedbTxn {
                tx: &tx,
                open: Vec::new(),
            };
            // An error drops the transaction: redb aborts it.
            body(&mut txn)?;
        }
        tx.commit().map_err(io)?;
        if !durable {
            self.inner.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.inner.dirty.store(false, Ordering::Release);
        sync(&self.inner.read())
    }

    fn compact(&self) -> Result<()> {
        self.sync()?;
        let mut db = self
            .inner
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        db.compact(redb::CompactionMode::Maximum).map_err(io)?;
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.inner.path).map_or(0, |m| m.len())
    }
}
