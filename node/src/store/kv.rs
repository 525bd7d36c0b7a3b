//! The storage trait: a few ordered key-value tables with atomic,
//! optionally durable, write transactions. [`super::Store`] builds the
//! node's data model on it once; each engine only moves bytes.
//!
//! Engines: [`super::redb_kv::RedbKv`] (the default: checksummed pages,
//! fsync on durable commits), [`super::sled_kv::SledKv`] (selectable, the
//! engine of corvid 0.1), and [`MemKv`] for tests and simulation.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Mutex;

use super::{Result, StoreError};

/// The tables. Every engine creates all of them when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Schema version, counters, key records.
    Meta,
    /// This server's records: subject → record.
    Own,
    /// Own subjects not yet published.
    Outbox,
    /// Contributions: subject, source id → stored record.
    Contrib,
    /// Source id, subject → (): one source's entries.
    BySource,
    /// Expiry (BE seconds), source id, subject → (): the sweep's index.
    Expiry,
    /// Source name → its state (JSON).
    Peers,
    /// Sequence (BE) → decision.
    Decisions,
    /// Subject → its last recorded action, what decided it, and when it
    /// is due to be looked at again.
    LastAction,
    /// Due time (BE seconds), subject → (): the subjects whose action may
    /// change by decay alone, for the recheck of the sweep.
    Due,
    /// Source id, subject → since (BE): entries missing from their feed.
    Missing,
    /// Source name → source id (BE u32).
    Sources,
    /// Source id (BE u32) → source name.
    SourceNames,
    /// Own record id (16 bytes, BE) → subject: this server's log, in the
    /// order its records were written (ids only grow).
    OwnLog,
    /// Subject → what local users did with its messages (JSON).
    Signals,
}

impl Table {
    /// Every table.
    pub const ALL: [Self; 15] = [
        Self::Meta,
        Self::Own,
        Self::Outbox,
        Self::Contrib,
        Self::BySource,
        Self::Expiry,
        Self::Peers,
        Self::Decisions,
        Self::LastAction,
        Self::Due,
        Self::Missing,
        Self::Sources,
        Self::SourceNames,
        Self::OwnLog,
        Self::Signals,
    ];

    /// The table's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Self::Meta => "meta",
            Self::Own => "own",
            Self::Outbox => "outbox",
            Self::Contrib => "contrib",
            Self::BySource => "by_source",
            Self::Expiry => "expiry",
            Self::Peers => "peers",
            Self::Decisions => "decisions",
            Self::LastAction => "last_action",
            Self::Due => "due",
            Self::Missing => "missing",
            Self::Sources => "sources",
            Self::SourceNames => "source_names",
            Self::OwnLog => "own_log",
            Self::Signals => "signals",
        }
    }
}

/// Reads and writes inside one write transaction. Reads see the
/// transaction's own writes.
pub trait Txn {
    /// A value.
    ///
    /// # Errors
    /// Engine errors.
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Sets a value.
    ///
    /// # Errors
    /// Engine errors.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()>;
    /// Deletes a value; whether it existed.
    ///
    /// # Errors
    /// Engine errors.
    fn remove(&mut self, table: Table, key: &[u8]) -> Result<bool>;
    /// Calls `each` on the entries whose keys start with `prefix`, in key
    /// order and as of this transaction (its own writes included), until
    /// it returns `false`.
    ///
    /// # Errors
    /// Engine errors.
    fn scan_prefix(
        &mut self,
        table: Table,
        prefix: &[u8],
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;
}

/// A write transaction's body. It may run more than once (an engine with
/// optimistic transactions reruns it after a conflict), so it must not
/// have effects outside the transaction until [`Kv::write`] returns.
pub type Body<'a> = dyn FnMut(&mut dyn Txn) -> Result<()> + 'a;

/// An ordered key-value engine.
pub trait Kv: Send + Sync + fmt::Debug {
    /// The engine's name, as `storage_engine` spells it.
    fn engine(&self) -> &'static str;

    /// A committed value.
    ///
    /// # Errors
    /// Engine errors.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Calls `each` on the committed entries with keys `>= from`, in key
    /// order, until it returns `false` or the table ends.
    ///
    /// # Errors
    /// Engine errors.
    fn scan(
        &self,
        table: Table,
        from: &[u8],
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;

    /// Entries in a table.
    ///
    /// # Errors
    /// Engine errors.
    fn len(&self, table: Table) -> Result<u64>;

    /// Runs `body` as one atomic transaction: all of its writes land or
    /// none. With `durable`, the commit is on stable storage (fsync) when
    /// this returns; without, it is at the latest after the next
    /// [`Kv::sync`] or durable commit, and a crash before that loses it
    /// whole, never in part.
    ///
    /// # Errors
    /// Engine errors, or the first error `body` returned (nothing written).
    fn write(&self, durable: bool, body: &mut Body<'_>) -> Result<()>;

    /// Makes every committed write durable.
    ///
    /// # Errors
    /// Engine errors.
    fn sync(&self) -> Result<()>;

    /// Bytes the engine's files take (0 in memory).
    fn size_on_disk(&self) -> u64;

    /// Rewrites the files without their free space, blocking every other
    /// operation meanwhile. Engines that cannot do it do nothing.
    ///
    /// # Errors
    /// Engine errors.
    fn compact(&self) -> Result<()> {
        Ok(())
    }
}

/// Committed tables that a [`Buffered`] transaction reads through.
pub(super) trait Committed {
    /// A committed value.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// The committed entries whose keys start with `prefix`, in key order.
    fn under(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

/// A write transaction that buffers its writes over committed tables, for
/// engines whose own transactions cannot scan (sled) or have none (memory).
/// The engine serializes writers, so nothing commits between the body's
/// reads and its writes; it applies `pending` when the body succeeds.
pub(super) struct Buffered<C> {
    pub(super) committed: C,
    pub(super) pending: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
}

impl<C: Committed> Buffered<C> {
    pub(super) fn new(committed: C) -> Self {
        Self {
            committed,
            pending: BTreeMap::new(),
        }
    }
}

impl<C: Committed> Txn for Buffered<C> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.pending.get(&(table, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.committed.get(table, key),
        }
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.pending
            .insert((table, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn remove(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        let existed = self.get(table, key)?.is_some();
        self.pending.insert((table, key.to_vec()), None);
        Ok(existed)
    }

    fn scan_prefix(
        &mut self,
        table: Table,
        prefix: &[u8],
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let mut view: BTreeMap<Vec<u8>, Vec<u8>> =
            self.committed.under(table, prefix)?.into_iter().collect();
        let own = self
            .pending
            .range((table, prefix.to_vec())..)
            .take_while(|((t, k), _)| *t == table && k.starts_with(prefix));
        for ((_, k), v) in own {
            match v {
                Some(v) => {
                    view.insert(k.clone(), v.clone());
                }
                None => {
                    view.remove(k);
                }
            }
        }
        for (k, v) in &view {
            if !each(k, v) {
                break;
            }
        }
        Ok(())
    }
}

/// Every table's entries, in key order.
type MemTables = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Tables in memory: for tests and the simulator. Writers are serialized;
/// a failed body leaves nothing behind.
#[derive(Debug, Default)]
pub struct MemKv {
    tables: Mutex<MemTables>,
}

impl MemKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemTables> {
        // A panic while holding the lock cannot leave a half-applied
        // transaction (writes are applied after the body returns), so a
        // poisoned lock still holds consistent tables.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Committed for &MemTables {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(MemTables::get(self, &table)
            .and_then(|t| t.get(key))
            .cloned())
    }

    fn under(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(MemTables::get(self, &table)
            .into_iter()
            .flat_map(|t| t.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded)))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl Kv for MemKv {
    fn engine(&self) -> &'static str {
        "memory"
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn scan(
        &self,
        table: Table,
        from: &[u8],
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let tables = self.lock();
        if let Some(t) = tables.get(&table) {
            for (k, v) in t.range::<[u8], _>((Bound::Included(from), Bound::Unbounded)) {
                if !each(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }

    fn len(&self, table: Table) -> Result<u64> {
        Ok(self.lock().get(&table).map_or(0, |t| t.len() as u64))
    }

    fn write(&self, _durable: bool, body: &mut Body<'_>) -> Result<()> {
        let mut tables = self.lock();
        let pending = {
            let mut txn = Buffered::new(&*tables);
            body(&mut txn)?;
            txn.pending
        };
        for ((table, key), value) in pending {
            let t = tables.entry(table).or_default();
            match value {
                Some(v) => {
                    t.insert(key, v);
                }
                None => {
                    t.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

/// Maps an engine's error to [`StoreError::Io`].
pub(crate) fn io(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Io(Box::new(e))
}
