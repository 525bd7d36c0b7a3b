//! This server's feed served as a log by its component (layout 2, spec
//! §4.6).
//!
//! The feed node holds one signed item per subject (`d/<subject key>`, the
//! item format of layout 1), in the order of the records' ids: own record
//! ids only grow, so the log is the own records sorted by id, and a
//! follower resumes with RSM `after` the id of the newest record it holds.
//! A new report or retraction reaches each subscriber once, as one item
//! notification; a signed checkpoint (the newest id and the number of
//! reports) follows every [`CHECKPOINT_EVERY`], so a follower that missed
//! a notification, or lost its subscription, notices within that time and
//! fetches what it lacks, without polling. Nothing is republished on a
//! restart: items are signed when they are served.
//!
//! Everything here is synchronous and takes the store, the signer and the
//! time as arguments; the component task does the IO.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use corvid_protocol::feed::{CHECKPOINT_ITEM, delta_item_id};
use corvid_protocol::item::{Body, Envelope, FeedAddress, ItemError, SignedItem};
use corvid_protocol::keys::Signer;
use corvid_protocol::ns;
use corvid_protocol::record::{Issuer, Record, ReportId};
use serde::{Deserialize, Serialize};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom::Element;

use crate::lists::{NS_PUBSUB, NS_PUBSUB_EVENT, NS_RSM, attr};
use crate::store::{Result, Store};

/// The feed's node on the component.
pub const FEED_NODE: &str = "corvid";
/// The node serving the same log in its compact form (for reads): pages of
/// records signed by the hundred, deflated.
pub const COMPACT_NODE: &str = "corvid/compact";
/// Records one compact item holds at most (its payload stays below the
/// 64 KiB item limit for ordinary records; larger ones are split).
pub const COMPACT_RECORDS: usize = 400;
/// Records a compact page holds at most.
pub const COMPACT_PAGE: usize = 2400;
/// Items an RSM page of the log holds at most.
pub const PAGE_MAX: usize = 500;
/// Bytes of items a result holds at most (below the 512 KiB stanza limit).
pub const PAGE_MAX_BYTES: usize = 400 * 1024;
/// Items one notification message carries at most.
pub const NOTIFY_MAX: usize = 50;
/// How often subscribers get a checkpoint.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(20);
/// Subscribers remembered at most.
pub const MAX_SUBSCRIBERS: usize = 10_000;
/// Subscribers one domain may have.
pub const SUBSCRIBERS_PER_DOMAIN: usize = 4;

const SUBSCRIBERS_KEY: &str = "feed_subscribers";

/// A subscriber of the feed node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    /// The subscribed JID.
    pub jid: String,
    /// When it subscribed (Unix seconds).
    pub since: u64,
}

/// The feed as a log: its address, its subscribers, and how far they were
/// notified.
#[derive(Debug)]
pub struct FeedLog {
    feed: FeedAddress,
    issuer: Issuer,
    subscribers: BTreeMap<String, Subscriber>,
    /// The newest own record notified (or present when the log started).
    notified: Option<ReportId>,
    /// Key records notified (or present when the log started).
    keys_notified: usize,
    dirty: bool,
    /// The trusted peers' feed services (their components): only they get
    /// records about IP tokens (spec §19).
    members: std::collections::BTreeSet<String>,
}

/// Who asks for items, as far as the answer depends on it.
#[derive(Debug, Default)]
pub struct Asker {
    /// A member (a trusted peer's feed service): IP tokens included.
    pub member: bool,
    /// The membership card to serve as `card`, if one is configured.
    pub card: Option<SignedItem>,
}

/// Whether a record may go to someone who is not a federation member: IP
/// tokens go to members only.
fn public(record: &Record) -> bool {
    !record.subject().as_str().starts_with("ip:")
}

/// A record as served: to a member as issued; to anyone else not at all
/// for an IP token, and a report without its free text (its note and
/// sample message), which may quote what a user received. Everything a
/// verdict depends on is kept, so members and non-members reach the same
/// verdicts.
fn served(record: &Record, member: bool) -> Option<Cow<'_, Record>> {
    if member {
        return Some(Cow::Borrowed(record));
    }
    if !public(record) {
        return None;
    }
    match record {
        Record::Report(r) if r.evidence.note.is_some() || r.evidence.message_text.is_some() => {
            let mut r = r.clone();
            r.evidence.note = None;
            r.evidence.message_text = None;
            Some(Cow::Owned(Record::Report(r)))
        }
        _ => Some(Cow::Borrowed(record)),
    }
}

/// An own record as the log item that carries it.
///
/// # Errors
/// A record too large to sign.
pub fn log_item(
    signer: &dyn Signer,
    issuer: &Issuer,
    feed: &FeedAddress,
    record: &Record,
) -> std::result::Result<(String, SignedItem), ItemError> {
    let id = delta_item_id(record.subject());
    let envelope = Envelope {
        corvid: ns::PROTOCOL_MAJOR,
        issuer: issuer.clone(),
        body: Body::Delta {
            record: record.clone(),
        },
    };
    let item = SignedItem::sign(signer, &envelope, feed, &id)?;
    Ok((id, item))
}

fn item_element(ns: &str, id: &str, item: &SignedItem) -> Element {
    Element::builder("item", ns)
        .attr(attr("id"), id)
        .append(item.to_element())
        .build()
}

impl FeedLog {
    /// The log of `feed` (the component's JID and [`FEED_NODE`]).
    ///
    /// # Errors
    /// Storage errors.
    pub fn new(store: &Store, feed: FeedAddress, issuer: Issuer) -> Result<Self> {
        let saved: Vec<Subscriber> = store.meta_json(SUBSCRIBERS_KEY)?.unwrap_or_default();
        let (notified, _, _) = store.own_log_state()?;
        let keys_notified = store.key_records()?.len();
        Ok(Self {
            feed,
            issuer,
            subscribers: saved.into_iter().map(|s| (s.jid.clone(), s)).collect(),
            notified,
            keys_notified,
            dirty: false,
            members: std::collections::BTreeSet::new(),
        })
    }

    /// The feed's address.
    pub fn feed(&self) -> &FeedAddress {
        &self.feed
    }

    /// The signing identity changed (a key rotation).
    pub fn set_issuer(&mut self, issuer: Issuer) {
        self.issuer = issuer;
    }

    /// Sets the members: the trusted peers' feed services.
    pub fn set_members(&mut self, members: std::collections::BTreeSet<String>) {
        self.members = members;
    }

    /// Whether `jid` is a member's service.
    pub fn is_member(&self, jid: &Jid) -> bool {
        self.members.contains(jid.domain().as_str())
    }

    /// Subscribers.
    pub fn subscribers(&self) -> impl Iterator<Item = &Subscriber> {
        self.subscribers.values()
    }

    /// Saves the subscribers if they changed.
    ///
    /// # Errors
    /// Storage errors.
    pub fn save(&mut self, store: &Store) -> Result<()> {
        if self.dirty {
            let list: Vec<&Subscriber> = self.subscribers.values().collect();
            store.batch(true, &mut |tx| tx.put_meta_json(SUBSCRIBERS_KEY, &list))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Adds a subscriber; false when the list is full.
    pub fn subscribe(&mut self, jid: &Jid, now: u64) -> bool {
        let key = jid.to_string();
        if self.subscribers.contains_key(&key) {
            return true;
        }
        let same_domain = self
            .subscribers
            .values()
            .filter(|s| Jid::new(&s.jid).is_ok_and(|j| j.domain() == jid.domain()))
            .count();
        // One domain cannot fill the list (each subscriber costs a message
        // per new record).
        if self.subscribers.len() >= MAX_SUBSCRIBERS || same_domain >= SUBSCRIBERS_PER_DOMAIN {
            return false;
        }
        self.subscribers.insert(
            key.clone(),
            Subscriber {
                jid: key,
                since: now,
            },
        );
        self.dirty = true;
        true
    }

    /// Removes a subscriber.
    pub fn unsubscribe(&mut self, jid: &Jid) {
        if self.subscribers.remove(&jid.to_string()).is_some() {
            self.dirty = true;
        }
    }

    /// A signed checkpoint of the log as it is at `now`.
    ///
    /// # Errors
    /// Storage errors; a signing failure is a storage-independent bug and
    /// reported as corrupt data.
    pub fn checkpoint(&self, store: &Store, signer: &dyn Signer, now: u64) -> Result<SignedItem> {
        let (last, records, members_only) = store.own_log_state()?;
        let keys = store.key_records()?.into_iter().map(|(id, _)| id).collect();
        let envelope = Envelope {
            corvid: ns::PROTOCOL_MAJOR,
            issuer: self.issuer.clone(),
            body: Body::Checkpoint {
                last,
                records,
                members_only,
                keys,
                issued_at: now,
            },
        };
        SignedItem::sign(signer, &envelope, &self.feed, CHECKPOINT_ITEM)
            .map_err(|e| crate::store::StoreError::Corrupt(format!("checkpoint: {e}")))
    }

    /// The checkpoint as a notification to every subscriber.
    ///
    /// # Errors
    /// Storage errors.
    pub fn checkpoint_notifications(
        &self,
        store: &Store,
        signer: &dyn Signer,
        from: &str,
        now: u64,
    ) -> Result<Vec<Message>> {
        if self.subscribers.is_empty() {
            return Ok(Vec::new());
        }
        let item = self.checkpoint(store, signer, now)?;
        let event = event(vec![item_element(NS_PUBSUB_EVENT, CHECKPOINT_ITEM, &item)]);
        Ok(self.to_subscribers(from, &event))
    }

    /// Own records written since the last call, as notifications to every
    /// subscriber, with the id to commit once they are sent.
    ///
    /// # Errors
    /// Storage errors.
    pub fn changes(
        &self,
        store: &Store,
        signer: &dyn Signer,
        from: &str,
        limit: usize,
    ) -> Result<(Vec<Message>, Option<ReportId>)> {
        let records = store.own_after(self.notified, limit)?;
        let Some(newest) = records.last().map(Record::id) else {
            return Ok((Vec::new(), self.notified));
        };
        if self.subscribers.is_empty() {
            return Ok((Vec::new(), Some(newest)));
        }
        let mut out = Vec::new();
        for chunk in records.chunks(NOTIFY_MAX) {
            let (mut all, mut open) = (Vec::with_capacity(chunk.len()), Vec::new());
            for r in chunk {
                match log_item(signer, &self.issuer, &self.feed, r) {
                    Ok((id, item)) => {
                        let el = item_element(NS_PUBSUB_EVENT, &id, &item);
                        match served(r, false) {
                            Some(Cow::Borrowed(_)) => open.push(el.clone()),
                            Some(Cow::Owned(p)) => {
                                match log_item(signer, &self.issuer, &self.feed, &p) {
                                    Ok((id, item)) => {
                                        open.push(item_element(NS_PUBSUB_EVENT, &id, &item));
                                    }
                                    Err(e) => {
                                        tracing::warn!(subject = %r.subject(), "own record not signed: {e}")
                                    }
                                }
                            }
                            None => {}
                        }
                        all.push(el);
                    }
                    Err(e) => tracing::warn!(subject = %r.subject(), "own record not signed: {e}"),
                }
            }
            let (all, open) = (event(all), (!open.is_empty()).then(|| event(open)));
            for s in self.subscribers.values() {
                let Ok(to) = Jid::new(&s.jid) else { continue };
                let payload = if self.is_member(&to) {
                    &all
                } else if let Some(o) = &open {
                    o
                } else {
                    continue;
                };
                let mut m = Message::new_with_type(MessageType::Headline, Some(to))
                    .with_payloads(vec![payload.clone()]);
                m.from = Jid::new(from).ok();
                out.push(m);
            }
        }
        Ok((out, Some(newest)))
    }

    /// Key records made since the last call (a rotation, a revocation), as
    /// notifications to every subscriber: they change what verifies, so
    /// followers apply them at once. Returns the count to commit.
    ///
    /// # Errors
    /// Storage errors.
    pub fn key_changes(&self, store: &Store, from: &str) -> Result<(Vec<Message>, usize)> {
        let keys = store.key_records()?;
        if keys.len() <= self.keys_notified {
            return Ok((Vec::new(), keys.len()));
        }
        let items: Vec<Element> = keys[self.keys_notified..]
            .iter()
            .filter_map(|(id, xml)| {
                SignedItem::from_xml(xml)
                    .ok()
                    .map(|item| item_element(NS_PUBSUB_EVENT, id, &item))
            })
            .collect();
        Ok((self.to_subscribers(from, &event(items)), keys.len()))
    }

    /// Commits how many key records were notified.
    pub fn commit_keys(&mut self, n: usize) {
        self.keys_notified = n;
    }

    /// Commits how far subscribers were notified.
    pub fn commit(&mut self, notified: Option<ReportId>) {
        self.notified = notified;
    }

    fn to_subscribers(&self, from: &str, event: &Element) -> Vec<Message> {
        self.subscribers
            .values()
            .filter_map(|s| Jid::new(&s.jid).ok())
            .map(|to| {
                let mut m = Message::new_with_type(MessageType::Headline, Some(to))
                    .with_payloads(vec![event.clone()]);
                m.from = Jid::new(from).ok();
                m
            })
            .collect()
    }

    /// An items request on the feed node: particular items by id
    /// (`checkpoint`, `card` when one is given, `d/<subject>`), or a page of the log after the RSM
    /// cursor (the id of a record), oldest first; without RSM, the first
    /// page.
    ///
    /// # Errors
    /// Storage errors.
    pub fn items(
        &self,
        store: &Store,
        signer: &dyn Signer,
        op: &Element,
        rsm: Option<&Element>,
        now: u64,
        asker: Asker,
    ) -> Result<std::result::Result<Element, &'static str>> {
        let Asker { member, card } = asker;
        let mut items = Element::builder("items", NS_PUBSUB)
            .attr(attr("node"), FEED_NODE)
            .build();
        let wanted: Vec<&str> = op
            .children()
            .filter(|c| c.is("item", NS_PUBSUB))
            .filter_map(|c| c.attr("id"))
            .take(PAGE_MAX)
            .collect();
        if !wanted.is_empty() {
            for id in wanted {
                if id == CHECKPOINT_ITEM {
                    let item = self.checkpoint(store, signer, now)?;
                    items.append_child(item_element(NS_PUBSUB, id, &item));
                } else if id.starts_with("key/") {
                    // Key records, as signed when they were made.
                    if let Some(item) = store
                        .key_records()?
                        .into_iter()
                        .find(|(k, _)| k == id)
                        .and_then(|(_, xml)| SignedItem::from_xml(&xml).ok())
                    {
                        items.append_child(item_element(NS_PUBSUB, id, &item));
                    }
                } else if id == corvid_protocol::feed::CARD_ITEM {
                    if let Some(c) = &card {
                        items.append_child(item_element(NS_PUBSUB, id, c));
                    }
                } else if let Some(subject) = id.strip_prefix(corvid_protocol::feed::DELTA_PREFIX)
                    && let Ok(key) = subject.parse()
                    && let Some(r) = store.own(&key)?
                    && let Some(r) = served(&r, member)
                    && let Ok((id, item)) = log_item(signer, &self.issuer, &self.feed, &r)
                {
                    items.append_child(item_element(NS_PUBSUB, &id, &item));
                }
            }
            return Ok(Ok(Element::builder("pubsub", NS_PUBSUB)
                .append(items)
                .build()));
        }
        let Some((max, after)) = rsm_request(rsm, PAGE_MAX) else {
            return Ok(Err("bad-after"));
        };
        let records = store.own_after(after, max)?;
        let mut bytes = 0;
        let mut first = None;
        let mut last = None;
        for r in &records {
            // Skipped for non-members, but the cursor moves past it.
            let Some(r) = served(r, member) else {
                last = Some(r.id());
                continue;
            };
            let Ok((id, item)) = log_item(signer, &self.issuer, &self.feed, &r) else {
                last = Some(r.id());
                continue;
            };
            let el = item_element(NS_PUBSUB, &id, &item);
            let size = item.payload_len() + id.len() + 64;
            if bytes + size > PAGE_MAX_BYTES && last.is_some() {
                break;
            }
            bytes += size;
            items.append_child(el);
            first.get_or_insert(r.id());
            last = Some(r.id());
        }
        let set = rsm_result(first, last);
        Ok(Ok(Element::builder("pubsub", NS_PUBSUB)
            .append(items)
            .append(set)
            .build()))
    }

    /// A page of the log in its compact form: the records after the RSM
    /// cursor, in id order, as `snapshot` items of up to
    /// [`COMPACT_RECORDS`] records each, signed for the feed node at ids
    /// `s/<id of the item's last record>`.
    ///
    /// # Errors
    /// Storage errors.
    pub fn compact(
        &self,
        store: &Store,
        signer: &dyn Signer,
        rsm: Option<&Element>,
        member: bool,
    ) -> Result<std::result::Result<Element, &'static str>> {
        let Some((max, after)) = rsm_request(rsm, COMPACT_PAGE) else {
            return Ok(Err("bad-after"));
        };
        let scanned = store.own_after(after, max)?;
        // IP tokens go to members only; the cursor still moves past them.
        let scanned_last = scanned.last().map(Record::id);
        let records: Vec<Record> = scanned
            .iter()
            .filter_map(|r| served(r, member).map(Cow::into_owned))
            .collect();
        let mut items = Element::builder("items", NS_PUBSUB)
            .attr(attr("node"), COMPACT_NODE)
            .build();
        let (mut bytes, mut first, mut last) = (0, None, None);
        let mut cut = false;
        let mut pending: Vec<&[Record]> = records.chunks(COMPACT_RECORDS).rev().collect();
        while let Some(chunk) = pending.pop() {
            let Some(end) = chunk.last() else { continue };
            let id = format!("{}{}", corvid_protocol::feed::CHUNK_PREFIX, end.id());
            let envelope = Envelope {
                corvid: ns::PROTOCOL_MAJOR,
                issuer: self.issuer.clone(),
                body: Body::Snapshot {
                    generation: 0,
                    records: chunk.to_vec(),
                },
            };
            let item = match SignedItem::sign(signer, &envelope, &self.feed, &id) {
                Ok(item) => item,
                // Records with long notes: the chunk is split in halves.
                Err(ItemError::Oversized { .. }) if chunk.len() > 1 => {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    pending.push(b);
                    pending.push(a);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(record = %end.id(), "own record not signed: {e}");
                    continue;
                }
            };
            let size = item.payload_len() + id.len() + 64;
            if bytes + size > PAGE_MAX_BYTES && last.is_some() {
                cut = true;
                break;
            }
            bytes += size;
            items.append_child(item_element(NS_PUBSUB, &id, &item));
            first = first.or(chunk.first().map(Record::id));
            last = Some(end.id());
        }
        if !cut {
            last = scanned_last;
        }
        let set = rsm_result(first, last);
        Ok(Ok(Element::builder("pubsub", NS_PUBSUB)
            .append(items)
            .append(set)
            .build()))
    }
}

/// An RSM request's `max` (at most `cap`, `cap` without one) and `after`
/// (a record id); `None` when `after` is not one.
fn rsm_request(rsm: Option<&Element>, cap: usize) -> Option<(usize, Option<ReportId>)> {
    let max = rsm
        .and_then(|r| r.get_child("max", NS_RSM))
        .and_then(|m| m.text().trim().parse::<usize>().ok())
        .unwrap_or(cap)
        .clamp(1, cap);
    let after = match rsm
        .and_then(|r| r.get_child("after", NS_RSM))
        .map(|a| a.text().trim().to_owned())
        .filter(|a| !a.is_empty())
    {
        Some(a) => Some(a.parse::<ReportId>().ok()?),
        None => None,
    };
    Some((max, after))
}

/// A result's `<set/>`: the first and last record ids of the page.
fn rsm_result(first: Option<ReportId>, last: Option<ReportId>) -> Element {
    let mut set = Element::builder("set", NS_RSM).build();
    for (name, id) in [("first", first), ("last", last)] {
        if let Some(id) = id {
            set.append_child(
                Element::builder(name, NS_RSM)
                    .append(id.to_string())
                    .build(),
            );
        }
    }
    set
}

fn event(items: Vec<Element>) -> Element {
    let mut list = Element::builder("items", NS_PUBSUB_EVENT)
        .attr(attr("node"), FEED_NODE)
        .build();
    for i in items {
        list.append_child(i);
    }
    Element::builder("event", NS_PUBSUB_EVENT)
        .append(list)
        .build()
}
