//! sled 0.34, the engine of corvid 0.1, still selectable
//! (`storage_engine = "sled"`). It takes about twice redb's disk per record
//! (BENCHMARKS.md), and its `flush()` does not sync the file's metadata:
//! prefer redb where power loss matters.

use std::path::Path;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::kv::{Body, Buffered, Committed, Kv, Table, io};
use super::{Result, StoreError};

/// A sled database directory.
#[derive(Debug)]
pub struct SledKv {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// Held by a write from its first read to its commit.
    writer: std::sync::Mutex<()>,
}

impl SledKv {
    /// Opens or creates the database in `path` (a directory).
    ///
    /// # Errors
    /// The engine's error.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self> {
        let dir = path.parent().unwrap_or(path).to_owned();
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked { dir: dir.clone() }
                }
                other => StoreError::Open {
                    dir: dir.clone(),
                    source: Box::new(other),
                },
            })?;
        let trees = Table::ALL
            .iter()
            .map(|t| db.open_tree(t.name()).map_err(io))
            .collect::<Result<_>>()?;
        Ok(Self {
            db,
            trees,
            writer: std::sync::Mutex::new(()),
        })
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        &self.trees[table as usize]
    }
}

/// A write transaction's body reads the committed trees with its own
/// writes buffered over them ([`Buffered`]: sled's transactions cannot
/// scan, and a read of a tree inside one waits for it forever); the buffer
/// then lands as one sled transaction that only writes. Writers are
/// serialized, so nothing commits between the body's reads and its writes.
impl Committed for &[sled::Tree] {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self[table as usize]
            .get(key)
            .map_err(io)?
            .map(|v| v.to_vec()))
    }

    fn under(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self[table as usize]
            .scan_prefix(prefix)
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io))
            .collect()
    }
}

impl Kv for SledKv {
    fn engine(&self) -> &'static str {
        "sled"
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(table).get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        from: &[u8],
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        for entry in self.tree(table).range(from..) {
            let (k, v) = entry.map_err(io)?;
            if !each(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn len(&self, table: Table) -> Result<u64> {
        Ok(self.tree(table).len() as u64)
    }

    fn write(&self, durable: bool, body: &mut Body<'_>) -> Result<()> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut txn = Buffered::new(self.trees.as_slice());
        body(&mut txn)?;
        let pending = txn.pending;
        if pending.is_empty() && !durable {
            return Ok(());
        }
        let outcome = self.trees.as_slice().transaction(|views| {
            for ((table, key), value) in &pending {
                let view: &TransactionalTree = &views[*table as usize];
                match value {
                    Some(v) => {
                        view.insert(key.as_slice(), v.as_slice())?;
                    }
                    None => {
                        view.remove(key.as_slice())?;
                    }
                }
            }
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        });
        match outcome {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(io(e)),
        }
        if durable {
            self.db.flush().map_err(io)?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.db.flush().map_err(io)?;
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
