//! sled 0.34, the engine of corvid 0.1, still selectable
//! (`storage_engine = "sled"`). It takes about twice redb's disk per record
//! (BENCHMARKS.md), and its `flush()` does not sync the file's metadata:
//! prefer redb where power loss matters.

use std::path::Path;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::kv::{Body, Kv, Table, Txn, io};
use super::{Result, StoreError};

/// A sled database directory.
#[derive(Debug)]
pub struct SledKv {
    db: sled::Db,
    trees: Vec<sled::Tree>,
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
        Ok(Self { db, trees })
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        &self.trees[table as usize]
    }
}

struct SledTxn<'a> {
    views: &'a [TransactionalTree],
}

type Abort = ConflictableTransactionError<StoreError>;

fn conflict(e: sled::transaction::UnabortableTransactionError) -> StoreError {
    // Carried out of the body as a marker; `write` turns conflicts back
    // into sled's retry below.
    StoreError::Conflict(e)
}

impl Txn for SledTxn<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.views[table as usize]
            .get(key)
            .map_err(conflict)?
            .map(|v| v.to_vec()))
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.views[table as usize]
            .insert(key, value)
            .map_err(conflict)?;
        Ok(())
    }

    fn remove(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        Ok(self.views[table as usize]
            .remove(key)
            .map_err(conflict)?
            .is_some())
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
        // sled wants `Fn` (it reruns the body after a conflict); the body
        // is `FnMut` and runs once at a time.
        let body = std::cell::RefCell::new(body);
        let outcome = self.trees.as_slice().transaction(|views| {
            let mut txn = SledTxn { views };
            let mut body = body.borrow_mut();
            match (*body)(&mut txn) {
                Ok(()) => Ok(()),
                Err(StoreError::Conflict(e)) => Err(Abort::from(e)),
                Err(e) => Err(Abort::Abort(e)),
            }
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
