//! The PubSub feed layout (spec §"Feed layout").
//!
//! A default Prosody keeps at most 256 items per node, has no RSM paging,
//! and an s2s items result over 512 KiB closes the stream. So a feed is:
//!
//! - `head`: a signed index of the current snapshot: its generation and,
//!   in subject order, every chunk with its range start and SHA-256;
//! - `s/N`: snapshot chunks, each a signed object holding many records,
//!   deflated, at most [`TARGET_CHUNK_BYTES`] on the wire;
//! - `d/<subject key>`: one delta item per changed subject since the last
//!   compaction (a report, or the tombstone that replaced it);
//! - `key/rotation/<id>`, `key/revocation/<id>`, `card`: key records and
//!   the membership card.
//!
//! A reader fetches `head`, then each chunk by id (one per request, so no
//! result exceeds a stanza limit), then every `d/` item, and keeps per
//! subject the newest record. The writer folds deltas into the chunks whose
//! range they fall in once [`DELTA_BUDGET`] deltas are pending, rewriting
//! only the chunks that changed and splitting any that grew too big, so the
//! node never holds more than [`NODE_MAX_ITEMS`] items.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::item::{Body, ChunkRef, Envelope, FeedAddress, ItemError, SignedItem};
use crate::keys::{PublicKey, Signer};
use crate::ns;
use crate::record::{Issuer, Record};
use crate::subject::SubjectKey;
use crate::time::UnixTime;

/// The head item's id.
pub const HEAD_ITEM: &str = "head";
/// The membership card's item id.
pub const CARD_ITEM: &str = "card";
/// The checkpoint's item id (layout 2: a feed served as a log).
pub const CHECKPOINT_ITEM: &str = "checkpoint";
/// The disco#info feature of a feed served as a log (layout 2, log
/// version 1).
pub const LOG_FEATURE: &str = "urn:xmpp:corvid:log:1";
/// The prefix of the disco#info features that announce the log versions a
/// feed node serves (spec §13.1): the version follows as a decimal number.
pub const LOG_FEATURE_PREFIX: &str = "urn:xmpp:corvid:log:";
/// The log versions this implementation reads and writes.
pub const LOG_VERSIONS: &[u32] = &[1];

/// The log versions announced by a feed node's disco#info features
/// (`urn:xmpp:corvid:log:N`), ascending; features that do not parse as a
/// version are ignored.
pub fn log_versions<'a>(features: impl IntoIterator<Item = &'a str>) -> Vec<u32> {
    let mut out: Vec<u32> = features
        .into_iter()
        .filter_map(|f| f.strip_prefix(LOG_FEATURE_PREFIX))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0'))
        .filter_map(|v| v.parse().ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// How a reader that implements `known` reads a feed node announcing the
/// log versions `offered` (spec §13.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutChoice {
    /// No log version announced: layout 1 on an ordinary PubSub service.
    PubSub,
    /// The highest version both sides know.
    Log(u32),
    /// Only versions this reader does not implement: it reads nothing and
    /// keeps what it holds.
    Unsupported(Vec<u32>),
}

/// Picks the layout to read (spec §13.1).
pub fn choose_layout(offered: &[u32], known: &[u32]) -> LayoutChoice {
    if offered.is_empty() {
        return LayoutChoice::PubSub;
    }
    match offered.iter().rev().find(|v| known.contains(v)) {
        Some(v) => LayoutChoice::Log(*v),
        None => LayoutChoice::Unsupported(offered.to_vec()),
    }
}
/// Prefix of snapshot chunk item ids.
pub const CHUNK_PREFIX: &str = "s/";
/// Prefix of delta item ids.
pub const DELTA_PREFIX: &str = "d/";
/// Items a default Prosody node holds (`pubsub_max_items`).
pub const NODE_MAX_ITEMS: usize = 256;
/// Deltas pending before a compaction.
pub const DELTA_BUDGET: usize = 48;
/// Items kept free for head, card and key records.
pub const RESERVED_ITEMS: usize = 8;
/// Chunks one node may hold.
pub const CHUNK_BUDGET: usize = NODE_MAX_ITEMS - DELTA_BUDGET - RESERVED_ITEMS;
/// Largest chunk payload the writer produces (below the 64 KiB item limit).
pub const TARGET_CHUNK_BYTES: usize = 60 * 1024;

/// The delta item id of a subject.
pub fn delta_item_id(subject: &SubjectKey) -> String {
    format!("{DELTA_PREFIX}{subject}")
}

/// The item id of a rotation to `new`.
pub fn rotation_item_id(new: &PublicKey) -> String {
    format!("key/rotation/{}", new.key_id())
}

/// The item id of a revocation of `key`.
pub fn revocation_item_id(key: &PublicKey) -> String {
    format!("key/revocation/{}", key.key_id())
}

/// Keeps, per subject, the newest record.
pub fn merge_newest(into: &mut BTreeMap<SubjectKey, Record>, record: Record) {
    match into.get(record.subject()) {
        Some(old) if !record.supersedes(old) => {}
        _ => {
            into.insert(record.subject().clone(), record);
        }
    }
}

/// One change the writer wants made on the PubSub service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedOp {
    /// Publish (or replace) an item.
    Publish {
        /// Node.
        node: String,
        /// Item id.
        item_id: String,
        /// Payload.
        item: SignedItem,
    },
    /// Retract an item (with `notify`).
    Retract {
        /// Node.
        node: String,
        /// Item id.
        item_id: String,
    },
}

/// The feed cannot hold more records.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FeedError {
    /// More chunks than one node may hold.
    #[error("feed full: {records} records need more than {CHUNK_BUDGET} chunks")]
    Full {
        /// Records in the snapshot.
        records: usize,
    },
    /// An item could not be encoded.
    #[error(transparent)]
    Item(#[from] ItemError),
    /// A chunk did not match its head reference.
    #[error("chunk {item} does not match the head (changed since; refetch the head)")]
    StaleChunk {
        /// The chunk's item id.
        item: String,
    },
    /// Chunks listed by the head are still missing.
    #[error("{missing} chunks listed by the head are missing")]
    Incomplete {
        /// How many.
        missing: usize,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Chunk {
    item: String,
    /// The generation the chunk was last written in (kept so an unchanged
    /// chunk re-encodes to the same bytes).
    #[serde(default)]
    generation: u64,
    from: String,
    records: BTreeMap<SubjectKey, Record>,
    #[serde(skip)]
    encoded: Option<SignedItem>,
}

/// The writer side of a feed: which records sit in which items. Pure state,
/// serialisable so the node can persist it; the caller carries out the
/// returned [`FeedOp`]s in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeedWriter {
    feed: FeedAddress,
    issuer: Issuer,
    generation: u64,
    next_chunk: u64,
    chunks: Vec<Chunk>,
    deltas: BTreeMap<SubjectKey, Record>,
}

impl FeedWriter {
    /// An empty feed.
    pub fn new(feed: FeedAddress, issuer: Issuer) -> Self {
        Self {
            feed,
            issuer,
            generation: 0,
            next_chunk: 0,
            chunks: Vec::new(),
            deltas: BTreeMap::new(),
        }
    }

    /// The feed written.
    pub fn feed(&self) -> &FeedAddress {
        &self.feed
    }

    /// Records currently in the feed (snapshot and deltas), newest per subject.
    pub fn records(&self) -> BTreeMap<SubjectKey, Record> {
        let mut all = BTreeMap::new();
        for chunk in &self.chunks {
            for r in chunk.records.values() {
                merge_newest(&mut all, r.clone());
            }
        }
        for r in self.deltas.values() {
            merge_newest(&mut all, r.clone());
        }
        all
    }

    /// Number of items the feed occupies.
    pub fn item_count(&self) -> usize {
        usize::from(!self.chunks.is_empty()) + self.chunks.len() + self.deltas.len()
    }

    fn sign(
        &self,
        signer: &dyn Signer,
        body: Body,
        item_id: &str,
    ) -> Result<SignedItem, ItemError> {
        let envelope = Envelope {
            corvid: ns::PROTOCOL_MAJOR,
            issuer: self.issuer.clone(),
            body,
        };
        SignedItem::sign(signer, &envelope, &self.feed, item_id)
    }

    /// The publish of one record's delta item.
    fn delta_op(&self, signer: &dyn Signer, record: &Record) -> Result<FeedOp, ItemError> {
        let item_id = delta_item_id(record.subject());
        let item = self.sign(
            signer,
            Body::Delta {
                record: record.clone(),
            },
            &item_id,
        )?;
        Ok(self.publish(item_id, item))
    }

    fn publish(&self, item_id: String, item: SignedItem) -> FeedOp {
        FeedOp::Publish {
            node: self.feed.node.clone(),
            item_id,
            item,
        }
    }

    /// Adds or replaces one record (a new report, or a tombstone).
    ///
    /// # Errors
    /// [`FeedError`] if the record cannot be encoded or the feed is full.
    pub fn upsert(
        &mut self,
        signer: &dyn Signer,
        record: Record,
        now: UnixTime,
    ) -> Result<Vec<FeedOp>, FeedError> {
        let op = self.delta_op(signer, &record)?;
        let previous = self.deltas.insert(record.subject().clone(), record.clone());
        let mut ops = vec![op];
        if self.deltas.len() >= DELTA_BUDGET {
            match self.compact(signer, now) {
                Ok(more) => ops.extend(more),
                Err(e) => {
                    // Leave the writer as it was: the caller keeps the record
                    // queued and retries later.
                    match previous {
                        Some(p) => self.deltas.insert(record.subject().clone(), p),
                        None => self.deltas.remove(record.subject()),
                    };
                    return Err(e);
                }
            }
        }
        Ok(ops)
    }

    /// Replaces the whole feed content (bulk import, or first start), as
    /// one new generation.
    ///
    /// # Errors
    /// [`FeedError::Full`] when the records do not fit one node.
    pub fn replace_all(
        &mut self,
        signer: &dyn Signer,
        records: impl IntoIterator<Item = Record>,
        now: UnixTime,
    ) -> Result<Vec<FeedOp>, FeedError> {
        let backup = self.clone();
        let result = self.replace_all_inner(signer, records, now);
        if result.is_err() {
            *self = backup;
        }
        result
    }

    fn replace_all_inner(
        &mut self,
        signer: &dyn Signer,
        records: impl IntoIterator<Item = Record>,
        now: UnixTime,
    ) -> Result<Vec<FeedOp>, FeedError> {
        let mut merged = BTreeMap::new();
        for r in records.into_iter().filter(|r| r.expires_at() > now) {
            merge_newest(&mut merged, r);
        }
        let old_items: Vec<String> = self.chunks.iter().map(|c| c.item.clone()).collect();
        let old_deltas: Vec<SubjectKey> = std::mem::take(&mut self.deltas).into_keys().collect();
        self.generation += 1;
        self.chunks = Vec::new();
        // Chunk ids restart at s/0 and overwrite the old ones in place, so the
        // node never holds two snapshots at once (readers detect a chunk
        // that changed under them by its hash in the head).
        self.next_chunk = 0;
        let mut ops = self.pack(signer, merged)?;
        ops.push(self.head_op(signer, now)?);
        let live: Vec<&str> = self.chunks.iter().map(|c| c.item.as_str()).collect();
        ops.extend(
            old_items
                .iter()
                .filter(|i| !live.contains(&i.as_str()))
                .map(|i| FeedOp::Retract {
                    node: self.feed.node.clone(),
                    item_id: i.clone(),
                }),
        );
        ops.extend(old_deltas.iter().map(|s| FeedOp::Retract {
            node: self.feed.node.clone(),
            item_id: delta_item_id(s),
        }));
        Ok(ops)
    }

    /// Folds pending deltas into their chunks; rewrites only changed chunks.
    ///
    /// # Errors
    /// [`FeedError`] if encoding fails or the feed is full.
    pub fn compact(
        &mut self,
        signer: &dyn Signer,
        now: UnixTime,
    ) -> Result<Vec<FeedOp>, FeedError> {
        let backup = self.clone();
        let result = self.compact_inner(signer, now);
        if result.is_err() {
            *self = backup;
        }
        result
    }

    fn compact_inner(
        &mut self,
        signer: &dyn Signer,
        now: UnixTime,
    ) -> Result<Vec<FeedOp>, FeedError> {
        if self.chunks.is_empty() {
            let records = self.records();
            return self.replace_all(signer, records.into_values(), now);
        }
        self.generation += 1;
        let deltas = std::mem::take(&mut self.deltas);
        let mut touched = vec![false; self.chunks.len()];
        for (subject, record) in &deltas {
            let idx = self
                .chunks
                .partition_point(|c| c.from.as_str() <= subject.as_str())
                .saturating_sub(1);
            merge_newest(&mut self.chunks[idx].records, record.clone());
            touched[idx] = true;
        }
        let mut ops = Vec::new();
        let mut rebuilt = Vec::with_capacity(self.chunks.len());
        for (chunk, touched) in std::mem::take(&mut self.chunks).into_iter().zip(touched) {
            if !touched {
                rebuilt.push(chunk);
                continue;
            }
            let mut chunk = chunk;
            chunk.records.retain(|_, r| r.expires_at() > now);
            chunk.encoded = None;
            self.split_into(signer, chunk, &mut rebuilt, &mut ops)?;
        }
        self.chunks = rebuilt;
        if self.chunks.len() > CHUNK_BUDGET {
            // Too many chunks after splits: repack from scratch. The deltas
            // were folded into the chunks already, so retract them here.
            let records = self.records();
            let mut ops = self.replace_all_inner(signer, records.into_values(), now)?;
            ops.extend(deltas.keys().map(|s| FeedOp::Retract {
                node: self.feed.node.clone(),
                item_id: delta_item_id(s),
            }));
            return Ok(ops);
        }
        ops.push(self.head_op(signer, now)?);
        ops.extend(deltas.keys().map(|s| FeedOp::Retract {
            node: self.feed.node.clone(),
            item_id: delta_item_id(s),
        }));
        Ok(ops)
    }

    /// Every item the feed should hold, for reconciliation after a connect
    /// (the PubSub service may have lost them).
    ///
    /// # Errors
    /// [`FeedError`] if re-encoding fails.
    pub fn desired_items(
        &mut self,
        signer: &dyn Signer,
        now: UnixTime,
    ) -> Result<Vec<FeedOp>, FeedError> {
        let mut ops = Vec::new();
        if !self.chunks.is_empty() {
            for i in 0..self.chunks.len() {
                let item = self.encoded_chunk(signer, i)?;
                ops.push(self.publish(self.chunks[i].item.clone(), item));
            }
            ops.push(self.head_op(signer, now)?);
        }
        for record in self.deltas.values() {
            ops.push(self.delta_op(signer, record)?);
        }
        Ok(ops)
    }

    fn encoded_chunk(&mut self, signer: &dyn Signer, i: usize) -> Result<SignedItem, ItemError> {
        if let Some(item) = &self.chunks[i].encoded {
            return Ok(item.clone());
        }
        let body = Body::Snapshot {
            generation: self.chunks[i].generation,
            records: self.chunks[i].records.values().cloned().collect(),
        };
        let item = self.sign(signer, body, &self.chunks[i].item.clone())?;
        self.chunks[i].encoded = Some(item.clone());
        Ok(item)
    }

    fn head_op(&mut self, signer: &dyn Signer, now: UnixTime) -> Result<FeedOp, FeedError> {
        let mut refs = Vec::with_capacity(self.chunks.len());
        for i in 0..self.chunks.len() {
            let item = self.encoded_chunk(signer, i)?;
            let c = &self.chunks[i];
            refs.push(ChunkRef {
                node: self.feed.node.clone(),
                item: c.item.clone(),
                from: c.from.clone(),
                records: c.records.len() as u64,
                sha256: item.sha256(),
            });
        }
        let head = self.sign(
            signer,
            Body::Head {
                generation: self.generation,
                issued_at: now,
                chunks: refs,
            },
            HEAD_ITEM,
        )?;
        Ok(self.publish(HEAD_ITEM.to_owned(), head))
    }

    fn new_chunk_id(&mut self) -> String {
        let id = format!("{CHUNK_PREFIX}{}", self.next_chunk);
        self.next_chunk += 1;
        id
    }

    /// Packs sorted records into fresh chunks of at most the target size.
    fn pack(
        &mut self,
        signer: &dyn Signer,
        records: BTreeMap<SubjectKey, Record>,
    ) -> Result<Vec<FeedOp>, FeedError> {
        let total = records.len();
        let mut ops = Vec::new();
        let mut rest: Vec<(SubjectKey, Record)> = records.into_iter().collect();
        // Start from a guess of the encoded size of a record and refine it.
        let mut per_record = 110usize;
        let mut first = true;
        while !rest.is_empty() || first {
            let mut n = (TARGET_CHUNK_BYTES * 95 / 100 / per_record)
                .clamp(1, rest.len().max(1))
                .min(rest.len());
            loop {
                let from = if first {
                    String::new()
                } else {
                    rest[0].0.as_str().to_owned()
                };
                let taken: BTreeMap<SubjectKey, Record> = rest[..n].iter().cloned().collect();
                let item_id = format!("{CHUNK_PREFIX}{}", self.next_chunk);
                let body = Body::Snapshot {
                    generation: self.generation,
                    records: taken.values().cloned().collect(),
                };
                let item = match self.sign(signer, body, &item_id) {
                    Ok(item) => item,
                    Err(ItemError::Oversized { .. }) if n > 1 => {
                        n /= 2;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let size = item.payload_len();
                if size > TARGET_CHUNK_BYTES && n > 1 {
                    n = (n * TARGET_CHUNK_BYTES * 95 / 100 / size).clamp(1, n - 1);
                    continue;
                }
                if let Some(per) = size.checked_div(n) {
                    per_record = per.max(16);
                }
                self.next_chunk += 1;
                ops.push(self.publish(item_id.clone(), item.clone()));
                self.chunks.push(Chunk {
                    item: item_id,
                    generation: self.generation,
                    from,
                    records: taken,
                    encoded: Some(item),
                });
                rest.drain(..n);
                first = false;
                break;
            }
            if self.chunks.len() > CHUNK_BUDGET {
                return Err(FeedError::Full { records: total });
            }
        }
        Ok(ops)
    }

    /// Encodes a chunk, splitting it in halves while it is too big.
    fn split_into(
        &mut self,
        signer: &dyn Signer,
        mut chunk: Chunk,
        out: &mut Vec<Chunk>,
        ops: &mut Vec<FeedOp>,
    ) -> Result<(), FeedError> {
        let body = Body::Snapshot {
            generation: self.generation,
            records: chunk.records.values().cloned().collect(),
        };
        let encoded = match self.sign(signer, body, &chunk.item) {
            Ok(item) if chunk.records.len() < 2 || item.payload_len() <= TARGET_CHUNK_BYTES => {
                Some(item)
            }
            Ok(_) => None,
            Err(ItemError::Oversized { .. }) if chunk.records.len() >= 2 => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(item) = encoded {
            ops.push(self.publish(chunk.item.clone(), item.clone()));
            chunk.generation = self.generation;
            chunk.encoded = Some(item);
            out.push(chunk);
            return Ok(());
        }
        let half = chunk.records.len() / 2;
        let Some(split_key) = chunk.records.keys().nth(half).cloned() else {
            return Ok(());
        };
        let upper = chunk.records.split_off(&split_key);
        let second = Chunk {
            item: self.new_chunk_id(),
            generation: self.generation,
            from: split_key.as_str().to_owned(),
            records: upper,
            encoded: None,
        };
        self.split_into(signer, chunk, out, ops)?;
        self.split_into(signer, second, out, ops)
    }
}

/// The reader side: assembles a peer's feed from its items.
#[derive(Debug, Default)]
pub struct FeedReader {
    head: Option<(u64, Vec<ChunkRef>)>,
    chunks: HashMap<(String, String), Vec<Record>>,
    deltas: Vec<Record>,
}

impl FeedReader {
    /// A reader with nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a verified head. Returns the chunks to fetch.
    pub fn accept_head(&mut self, generation: u64, chunks: Vec<ChunkRef>) -> Vec<ChunkRef> {
        self.chunks.clear();
        let wanted = chunks.clone();
        self.head = Some((generation, chunks));
        wanted
    }

    /// Takes a verified chunk and the signed item it came from.
    ///
    /// # Errors
    /// [`FeedError::StaleChunk`] when it is not the chunk the head lists.
    pub fn accept_chunk(
        &mut self,
        node: &str,
        item_id: &str,
        signed: &SignedItem,
        records: Vec<Record>,
    ) -> Result<(), FeedError> {
        // Chunks are identified by node and item: overflow nodes may reuse ids.
        let listed = self
            .head
            .as_ref()
            .and_then(|(_, refs)| refs.iter().find(|r| r.node == node && r.item == item_id))
            .is_some_and(|r| r.sha256 == signed.sha256());
        if !listed {
            return Err(FeedError::StaleChunk {
                item: item_id.into(),
            });
        }
        self.chunks
            .insert((node.to_owned(), item_id.to_owned()), records);
        Ok(())
    }

    /// Takes a verified delta record.
    pub fn accept_delta(&mut self, record: Record) {
        self.deltas.push(record);
    }

    /// The full state: newest record per subject.
    ///
    /// # Errors
    /// [`FeedError::Incomplete`] while listed chunks are missing.
    pub fn finish(self) -> Result<BTreeMap<SubjectKey, Record>, FeedError> {
        if let Some((_, refs)) = &self.head {
            let missing = refs
                .iter()
                .filter(|r| !self.chunks.contains_key(&(r.node.clone(), r.item.clone())))
                .count();
            if missing > 0 {
                return Err(FeedError::Incomplete { missing });
            }
        }
        let mut all = BTreeMap::new();
        for r in self.chunks.into_values().flatten().chain(self.deltas) {
            merge_newest(&mut all, r);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_picks_the_highest_log_version_it_knows() {
        let offered = log_versions([
            "http://jabber.org/protocol/pubsub",
            "urn:xmpp:corvid:log:2",
            "urn:xmpp:corvid:log:1",
            "urn:xmpp:corvid:log:01",
            "urn:xmpp:corvid:log:",
            "urn:xmpp:corvid:log:x",
            "urn:xmpp:corvid:log:2",
        ]);
        assert_eq!(offered, vec![1, 2]);
        assert_eq!(choose_layout(&offered, &[1]), LayoutChoice::Log(1));
        assert_eq!(choose_layout(&offered, &[1, 2]), LayoutChoice::Log(2));
        assert_eq!(choose_layout(&[], &[1]), LayoutChoice::PubSub);
        assert_eq!(
            choose_layout(&[2, 3], &[1]),
            LayoutChoice::Unsupported(vec![2, 3])
        );
    }
}
