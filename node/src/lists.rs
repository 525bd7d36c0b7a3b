//! Block lists for servers that run only the standard modules.
//!
//! corvidd's component (see [`crate::component`]) serves three nodes in
//! the xmppbl.org convention from this server's `block` verdicts, so that
//! unmodified `mod_anti_spam`, `mod_muc_rtbl` and ejabberd's
//! `mod_muc_rtbl`/`mod_antispam` enforce them:
//!
//! - `muc_bans_sha256`: the SHA-256 of each blocked bare JID (the 64 hex
//!   digits of its `jid:` key) and of each blocked domain;
//! - `spam_source_jids_sha256`: the blocked JIDs' hashes;
//! - `spam_source_domains`: the blocked domains themselves.
//!
//! Consumers read only item ids. They fetch once at start without RSM and
//! never retry; their subscribe can fail (Prosody 13 at start); they ignore
//! purges. So this service remembers its consumers (every subscriber, every
//! server or component that fetched a list, and the configured ones),
//! pushes every list to them as notifications whenever the component
//! connection comes up, follows the store's decision stream to publish and
//! retract entries as verdicts change (decay, expiry, retraction, local
//! list edits: every change of decision), keeps a non-RSM result below the
//! 512 KiB stanza limit (the rest follows as notifications), and never
//! purges.
//!
//! Everything here is synchronous and takes the store and the time as
//! arguments; the component task is the only caller and does the IO.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use corvid_protocol::aggregate::Action;
use corvid_protocol::subject::jid_hash;
use serde::{Deserialize, Serialize};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use crate::ratelimit::TokenBucket;
use crate::store::{Result, Store};

// The namespaces, as xmpp-parsers names them.
pub use xmpp_parsers::ns::{
    DISCO_INFO as NS_DISCO_INFO, DISCO_ITEMS as NS_DISCO_ITEMS, PING as NS_PING,
    PUBSUB as NS_PUBSUB, PUBSUB_ERRORS as NS_PUBSUB_ERRORS, PUBSUB_EVENT as NS_PUBSUB_EVENT,
    RSM as NS_RSM, SPAM_REPORTING as NS_REPORTING,
};

/// Entries in one notification message (a consumer's server handles each
/// in one go; 250 JID entries are about 40 KB).
pub const ITEMS_PER_MESSAGE: usize = 250;
/// Entries a non-RSM items result holds at most.
pub const NON_RSM_MAX_ITEMS: usize = 3000;
/// Bytes of entries a result holds at most: with the envelope it stays
/// well below Prosody's 512 KiB stanza limit, over which it drops the
/// component connection (and a remote server closes the s2s stream).
pub const RESULT_MAX_BYTES: usize = 400 * 1024;
/// Entries an RSM page holds at most, whatever `max` asks.
pub const RSM_MAX_ITEMS: usize = 1000;
/// Consumers one domain may have remembered.
pub const CONSUMERS_PER_DOMAIN: usize = 16;
/// A consumer nobody configured is forgotten after this long without a
/// fetch or subscribe (servers fetch again at every start).
pub const CONSUMER_IDLE_SECS: u64 = 30 * 86_400;
/// Subjects one page scans at most.
const SCAN_BUDGET: usize = 20_000;
/// Remote domains whose request rate is tracked at once.
const MAX_BUCKETS: usize = 10_000;

const CONSUMERS_KEY: &str = "component_consumers";
const CURSOR_KEY: &str = "component_lists_cursor";

/// One served list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListNode {
    /// `muc_bans_sha256`: JID and domain hashes (mod_muc_rtbl).
    MucBans,
    /// `spam_source_jids_sha256`: JID hashes (mod_anti_spam).
    SpamJids,
    /// `spam_source_domains`: domains (mod_anti_spam).
    SpamDomains,
}

impl ListNode {
    /// Every list.
    pub const ALL: [Self; 3] = [Self::MucBans, Self::SpamJids, Self::SpamDomains];

    /// The node name.
    pub fn name(self) -> &'static str {
        match self {
            Self::MucBans => "muc_bans_sha256",
            Self::SpamJids => "spam_source_jids_sha256",
            Self::SpamDomains => "spam_source_domains",
        }
    }

    /// The list of a node name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.name() == name)
    }

    /// The subject kinds the list is made of.
    fn kinds(self) -> &'static [&'static str] {
        match self {
            Self::MucBans => &["jid", "domain"],
            Self::SpamJids => &["jid"],
            Self::SpamDomains => &["domain"],
        }
    }

    /// The item ids that stand for `subject` in this list: none for the
    /// kinds it does not hold; a domain in both its U-label and A-label
    /// forms (a server may meet either on the wire). `domain:*.d` stands
    /// for `d` itself: consumers match exact names only.
    pub fn ids(self, subject: &str) -> Vec<String> {
        if let Some(hex) = subject.strip_prefix("jid:") {
            return match self {
                Self::MucBans | Self::SpamJids => vec![hex.to_owned()],
                Self::SpamDomains => Vec::new(),
            };
        }
        let Some(domain) = domain_of(subject) else {
            return Vec::new();
        };
        let forms = domain_forms(domain);
        match self {
            Self::SpamJids => Vec::new(),
            Self::SpamDomains => forms,
            Self::MucBans => forms.iter().map(|d| jid_hash(d)).collect(),
        }
    }
}

/// The domain a `domain:` subject names (`domain:*.d` gives `d`).
fn domain_of(subject: &str) -> Option<&str> {
    let d = subject.strip_prefix("domain:")?;
    Some(d.strip_prefix("*.").unwrap_or(d))
}

/// A domain, and its A-label form when that differs.
fn domain_forms(domain: &str) -> Vec<String> {
    let mut out = vec![domain.to_owned()];
    if let Some(a) = corvid_protocol::subject::domain_a_label(domain)
        && a != domain
    {
        out.push(a);
    }
    out
}

/// An attribute name known valid at compile time.
pub(crate) fn attr(name: &'static str) -> xmpp_parsers::minidom::rxml::NcName {
    match xmpp_parsers::minidom::rxml::NcName::try_from(name) {
        Ok(n) => n,
        Err(_) => unreachable!("static attribute names are valid NCNames"),
    }
}

/// The subjects whose `block` puts `subject`'s ids on a list: a domain is
/// listed by its exact key or by its subdomain key.
fn covering(subject: &str) -> Vec<String> {
    match domain_of(subject) {
        Some(d) => vec![format!("domain:{d}"), format!("domain:*.{d}")],
        None => vec![subject.to_owned()],
    }
}

fn blocked(store: &Store, subject: &str) -> Result<bool> {
    Ok(store
        .last_action(subject)?
        .is_some_and(|l| l.action == Action::Block))
}

/// Whether `subject`'s ids are on the lists now.
pub fn listed(store: &Store, subject: &str) -> Result<bool> {
    for s in covering(subject) {
        if blocked(store, &s)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One page of a list, in the store's subject order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Item ids.
    pub ids: Vec<String>,
    /// The subject of the first entry (RSM `first`).
    pub first: Option<String>,
    /// The subject of the last entry (RSM `last`): the cursor to continue
    /// after, when `more`.
    pub last: Option<String>,
    /// Whether entries follow.
    pub more: bool,
}

/// Bytes one entry takes in a result or a notification.
fn entry_bytes(id: &str) -> usize {
    id.len() + 96
}

/// Reads up to `max_items` entries (and `max_bytes` of them) of `node`
/// after the subject `after`.
///
/// # Errors
/// Storage errors.
pub fn page(
    store: &Store,
    node: ListNode,
    after: Option<&str>,
    max_items: usize,
    max_bytes: usize,
) -> Result<Page> {
    let mut out = Page::default();
    let mut cursor = after.map(str::to_owned);
    let mut bytes = 0;
    let mut scanned = 0;
    let max_items = max_items.max(1);
    loop {
        let batch = store.decided_after(cursor.as_deref(), node.kinds(), 512)?;
        let end = batch.len() < 512;
        for (subject, last) in batch {
            scanned += 1;
            if last.action == Action::Block {
                // `domain:*.d` adds nothing when `domain:d` is listed too.
                let duplicate = subject.starts_with("domain:*.")
                    && domain_of(&subject)
                        .map(|d| blocked(store, &format!("domain:{d}")))
                        .transpose()?
                        .unwrap_or(false);
                let ids = if duplicate {
                    Vec::new()
                } else {
                    node.ids(&subject)
                };
                if !ids.is_empty() {
                    let more: usize = ids.iter().map(|i| entry_bytes(i)).sum();
                    if !out.ids.is_empty()
                        && (out.ids.len() + ids.len() > max_items || bytes + more > max_bytes)
                    {
                        // Continue after the last subject included.
                        out.more = true;
                        return Ok(out);
                    }
                    bytes += more;
                    out.ids.extend(ids);
                    if out.first.is_none() {
                        out.first = Some(subject.clone());
                    }
                    out.last = Some(subject.clone());
                }
            }
            cursor = Some(subject);
        }
        if end {
            return Ok(out);
        }
        // A long run of flags and allows ends the page early, so that one
        // request never scans the whole table: continue where the scan
        // stopped.
        if scanned >= SCAN_BUDGET {
            out.last = cursor;
            out.more = true;
            return Ok(out);
        }
    }
}

/// The payload every entry carries.
fn report() -> Element {
    Element::builder("report", NS_REPORTING)
        .attr(attr("reason"), "urn:xmpp:reporting:spam")
        .build()
}

/// `<items node='…'>` of an items result.
fn items_element(node: ListNode, ids: &[String], ns: &str) -> Element {
    let mut items = Element::builder("items", ns)
        .attr(attr("node"), node.name())
        .build();
    for id in ids {
        items.append_child(
            Element::builder("item", ns)
                .attr(attr("id"), id.as_str())
                .append(report())
                .build(),
        );
    }
    items
}

/// A notification of new entries, or of retracted ones.
pub fn notification(
    from: &str,
    to: &Jid,
    node: ListNode,
    ids: &[String],
    retract: bool,
) -> Message {
    let mut items = Element::builder("items", NS_PUBSUB_EVENT)
        .attr(attr("node"), node.name())
        .build();
    for id in ids {
        let child = if retract {
            Element::builder("retract", NS_PUBSUB_EVENT)
                .attr(attr("id"), id.as_str())
                .build()
        } else {
            Element::builder("item", NS_PUBSUB_EVENT)
                .attr(attr("id"), id.as_str())
                .append(report())
                .build()
        };
        items.append_child(child);
    }
    let event = Element::builder("event", NS_PUBSUB_EVENT)
        .append(items)
        .build();
    let mut m =
        Message::new_with_type(MessageType::Headline, Some(to.clone())).with_payloads(vec![event]);
    m.from = Jid::new(from).ok();
    m
}

/// Someone who receives the lists' changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    /// Where notifications go (as the consumer addressed us).
    pub jid: String,
    /// The lists it fetched or subscribed to.
    pub nodes: BTreeSet<String>,
    /// The lists it subscribed to.
    pub subscribed: BTreeSet<String>,
    /// When it last fetched or subscribed (Unix seconds).
    pub last_seen: u64,
}

/// One list pushed to one consumer, a page at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Job {
    to: String,
    node: ListNode,
    after: Option<String>,
}

/// What the component did with a stanza, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Answered (the kind of request).
    Answered(&'static str),
    /// Refused (the reason).
    Refused(&'static str),
    /// Nothing to answer (a reply, a presence, an error bounce).
    Ignored(&'static str),
}

/// An IQ get or set addressed to the component, and how to answer it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The sender.
    pub from: Jid,
    /// Where it was sent (the component, or a JID at it).
    pub to: Option<Jid>,
    /// Its id.
    pub id: String,
    /// Its payload.
    pub payload: Element,
    /// A set (not a get).
    pub set: bool,
}

impl Request {
    /// The request in an IQ; what to count it as when it is none (a reply,
    /// or no sender).
    ///
    /// # Errors
    /// The [`Handled`] of an IQ that is not a request to answer.
    pub fn of(iq: Iq) -> std::result::Result<Self, Handled> {
        let (from, to, id, payload, set) = match iq {
            Iq::Get {
                from,
                to,
                id,
                payload,
            } => (from, to, id, payload, false),
            Iq::Set {
                from,
                to,
                id,
                payload,
            } => (from, to, id, payload, true),
            Iq::Result { .. } => return Err(Handled::Ignored("result")),
            Iq::Error { .. } => return Err(Handled::Ignored("error")),
        };
        let from = from.ok_or(Handled::Refused("no-sender"))?;
        Ok(Self {
            from,
            to,
            id,
            payload,
            set,
        })
    }

    /// An error reply.
    pub fn error(
        &self,
        condition: DefinedCondition,
        type_: ErrorType,
        extra: Option<Element>,
    ) -> Iq {
        Iq::Error {
            from: self.to.clone(),
            to: Some(self.from.clone()),
            id: self.id.clone(),
            payload: None,
            error: StanzaError {
                type_,
                by: None,
                defined_condition: condition,
                texts: Default::default(),
                other: extra,
            },
        }
    }

    /// A result reply.
    pub fn result(&self, payload: Option<Element>) -> Iq {
        Iq::Result {
            from: self.to.clone(),
            to: Some(self.from.clone()),
            id: self.id.clone(),
            payload,
        }
    }
}

/// The block-list service: consumers, the decision cursor, pushes under
/// way, and the per-domain request budget.
#[derive(Debug)]
pub struct Service {
    jid: String,
    nodes: Vec<ListNode>,
    configured: BTreeSet<String>,
    consumers: BTreeMap<String, Consumer>,
    max_consumers: usize,
    rate: u32,
    buckets: HashMap<String, TokenBucket>,
    cursor: u64,
    jobs: VecDeque<Job>,
    dirty: bool,
}

impl Service {
    /// Loads the remembered consumers and cursor.
    ///
    /// # Errors
    /// Storage errors.
    pub fn new(store: &Store, config: &crate::config::ComponentConfig, now: u64) -> Result<Self> {
        let nodes: Vec<ListNode> = config
            .lists
            .iter()
            .filter_map(|n| ListNode::parse(n))
            .collect();
        let saved: Vec<Consumer> = store.meta_json(CONSUMERS_KEY)?.unwrap_or_default();
        let configured: BTreeSet<String> = config.list_consumers.iter().cloned().collect();
        let mut consumers: BTreeMap<String, Consumer> = saved
            .into_iter()
            .filter(|c| now.saturating_sub(c.last_seen) < CONSUMER_IDLE_SECS)
            .map(|c| (c.jid.clone(), c))
            .collect();
        for j in &configured {
            let c = consumers.entry(j.clone()).or_insert_with(|| Consumer {
                jid: j.clone(),
                nodes: BTreeSet::new(),
                subscribed: BTreeSet::new(),
                last_seen: now,
            });
            c.nodes.extend(nodes.iter().map(|n| n.name().to_owned()));
        }
        let cursor = match store.meta_json::<u64>(CURSOR_KEY)? {
            Some(c) => c,
            // First start: the push on connection brings everyone up to date.
            None => store.decision_seq()?,
        };
        Ok(Self {
            jid: config.jid.clone(),
            nodes,
            configured,
            consumers,
            max_consumers: config.max_consumers,
            rate: config.requests_per_domain_per_sec,
            buckets: HashMap::new(),
            cursor,
            jobs: VecDeque::new(),
            dirty: true,
        })
    }

    /// The remembered consumers.
    pub fn consumers(&self) -> impl Iterator<Item = &Consumer> {
        self.consumers.values()
    }

    /// Pushes under way.
    pub fn pending_pushes(&self) -> usize {
        self.jobs.len()
    }

    /// The connection came up: every consumer gets every list it reads,
    /// from the start, as notifications (what it missed while the
    /// component was away, or what its start-up fetch lost).
    pub fn connected(&mut self) {
        self.jobs.clear();
        for c in self.consumers.values() {
            for n in &c.nodes {
                if let Some(node) = ListNode::parse(n)
                    && self.nodes.contains(&node)
                {
                    self.jobs.push_back(Job {
                        to: c.jid.clone(),
                        node,
                        after: None,
                    });
                }
            }
        }
    }

    /// Saves the consumers if they changed.
    ///
    /// # Errors
    /// Storage errors.
    pub fn save(&mut self, store: &Store) -> Result<()> {
        if self.dirty {
            let list: Vec<&Consumer> = self.consumers.values().collect();
            store.batch(false, &mut |tx| tx.put_meta_json(CONSUMERS_KEY, &list))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// The next page of the next push, round-robin over the pushes under
    /// way (one consumer's large list never holds up another's).
    ///
    /// # Errors
    /// Storage errors.
    pub fn next_push(&mut self, store: &Store) -> Result<Option<Message>> {
        while let Some(mut job) = self.jobs.pop_front() {
            let Ok(to) = Jid::new(&job.to) else { continue };
            let p = page(
                store,
                job.node,
                job.after.as_deref(),
                ITEMS_PER_MESSAGE,
                RESULT_MAX_BYTES,
            )?;
            if p.more {
                job.after.clone_from(&p.last);
                self.jobs.push_back(job.clone());
            }
            if !p.ids.is_empty() {
                return Ok(Some(notification(&self.jid, &to, job.node, &p.ids, false)));
            }
        }
        Ok(None)
    }

    /// Decisions since the cursor, as notifications to every consumer of
    /// each list; returns them with the cursor to commit once they are
    /// sent, and whether decisions were lost to the stream's window (then
    /// some retractions cannot be sent: logged by the caller).
    ///
    /// # Errors
    /// Storage errors.
    pub fn changes(&self, store: &Store, limit: usize) -> Result<(Vec<Message>, u64, bool)> {
        let (decisions, gap) = store.decisions_since(self.cursor, limit)?;
        let Some(last) = decisions.last().map(|d| d.seq) else {
            return Ok((Vec::new(), self.cursor, gap));
        };
        // Per subject: whether any of its decisions here may have taken it
        // off a list (a block ended, or the previous action is unknown);
        // flags coming and going never touch the lists.
        let mut subjects: BTreeMap<&str, bool> = BTreeMap::new();
        for d in &decisions {
            if !(d.subject.starts_with("jid:") || d.subject.starts_with("domain:")) {
                continue;
            }
            let was_blocked = d.previous.is_none_or(|p| p == Action::Block);
            if d.action == Action::Block || was_blocked {
                *subjects.entry(d.subject.as_str()).or_default() |= was_blocked;
            }
        }
        let mut adds: BTreeMap<ListNode, Vec<String>> = BTreeMap::new();
        let mut removes: BTreeMap<ListNode, Vec<String>> = BTreeMap::new();
        for (subject, was_blocked) in subjects {
            let on = listed(store, subject)?;
            if !on && !was_blocked {
                continue;
            }
            for &node in &self.nodes {
                let ids = node.ids(subject);
                if ids.is_empty() {
                    continue;
                }
                let into = if on { &mut adds } else { &mut removes };
                into.entry(node).or_default().extend(ids);
            }
        }
        let mut out = Vec::new();
        for (map, retract) in [(&adds, false), (&removes, true)] {
            for (node, ids) in map {
                for c in self.consumers.values() {
                    if !c.nodes.contains(node.name()) {
                        continue;
                    }
                    let Ok(to) = Jid::new(&c.jid) else { continue };
                    // One retraction per message: ejabberd's mod_muc_rtbl
                    // (24.12) applies only the last <retract/> of one.
                    let per = if retract { 1 } else { ITEMS_PER_MESSAGE };
                    for chunk in ids.chunks(per) {
                        out.push(notification(&self.jid, &to, *node, chunk, retract));
                    }
                }
            }
        }
        Ok((out, last, gap))
    }

    /// Commits the cursor once the changes up to it were sent.
    ///
    /// # Errors
    /// Storage errors.
    pub fn commit(&mut self, store: &Store, cursor: u64) -> Result<()> {
        if cursor != self.cursor {
            self.cursor = cursor;
            store.batch(false, &mut |tx| tx.put_meta_json(CURSOR_KEY, &cursor))?;
        }
        Ok(())
    }

    /// Remembers `jid` as a consumer of `node` (a fetch or a subscribe).
    fn remember(&mut self, jid: &Jid, node: ListNode, subscribed: Option<bool>, now: u64) {
        let key = jid.to_string();
        if !self.consumers.contains_key(&key) {
            let domain = jid.domain().as_str();
            let same_domain = self
                .consumers
                .values()
                .filter(|c| Jid::new(&c.jid).is_ok_and(|j| j.domain().as_str() == domain))
                .count();
            if self.consumers.len() >= self.max_consumers || same_domain >= CONSUMERS_PER_DOMAIN {
                return;
            }
        }
        let c = self
            .consumers
            .entry(key.clone())
            .or_insert_with(|| Consumer {
                jid: key,
                nodes: BTreeSet::new(),
                subscribed: BTreeSet::new(),
                last_seen: now,
            });
        c.last_seen = now;
        c.nodes.insert(node.name().to_owned());
        match subscribed {
            Some(true) => {
                c.subscribed.insert(node.name().to_owned());
            }
            Some(false) => {
                c.subscribed.remove(node.name());
            }
            None => {}
        }
        self.dirty = true;
    }

    /// Forgets `jid`'s interest in `node` (an unsubscribe), unless the
    /// operator configured it.
    fn forget(&mut self, jid: &Jid, node: ListNode) {
        let key = jid.to_string();
        if self.configured.contains(&key) {
            return;
        }
        if let Some(c) = self.consumers.get_mut(&key) {
            c.nodes.remove(node.name());
            c.subscribed.remove(node.name());
            if c.nodes.is_empty() {
                self.consumers.remove(&key);
            }
            self.dirty = true;
        }
    }

    /// Takes one request from `from`'s domain budget.
    pub fn allowed(&mut self, from: &Jid, now: Instant) -> bool {
        if self.buckets.len() >= MAX_BUCKETS {
            self.buckets.clear();
        }
        let rate = f64::from(self.rate);
        self.buckets
            .entry(from.domain().as_str().to_owned())
            .or_insert_with(|| TokenBucket::new(rate, now))
            .take(now)
    }

    /// Answers an IQ addressed to the component. `now` paces the
    /// per-domain budget; `unix` dates the consumers.
    ///
    /// # Errors
    /// Storage errors (the caller answers `internal-server-error`).
    pub fn handle_iq(
        &mut self,
        store: &Store,
        iq: Iq,
        now: Instant,
        unix: u64,
    ) -> Result<(Option<Iq>, Handled)> {
        let req = match Request::of(iq) {
            Ok(r) => r,
            Err(h) => return Ok((None, h)),
        };
        let (from, payload, set) = (req.from.clone(), &req.payload, req.set);
        let to = req.to.clone();
        let error = |condition, type_, extra| req.error(condition, type_, extra);
        let result = |payload| req.result(payload);
        if !self.allowed(&from, now) {
            return Ok((
                Some(error(
                    DefinedCondition::ResourceConstraint,
                    ErrorType::Wait,
                    None,
                )),
                Handled::Refused("rate-limited"),
            ));
        }
        // Only the component's own domain is a service; nobody lives at it.
        if to
            .as_ref()
            .is_some_and(|t| t.node().is_some() || t.resource().is_some())
        {
            return Ok((
                Some(error(
                    DefinedCondition::ServiceUnavailable,
                    ErrorType::Cancel,
                    None,
                )),
                Handled::Refused("not-a-service"),
            ));
        }
        if payload.is("ping", NS_PING) && !set {
            return Ok((Some(result(None)), Handled::Answered("ping")));
        }
        if payload.is("query", NS_DISCO_INFO) && !set {
            return Ok(match payload.attr("node") {
                None => (
                    Some(result(Some(self.disco_info(None)))),
                    Handled::Answered("disco"),
                ),
                Some(n) => match ListNode::parse(n).filter(|n| self.nodes.contains(n)) {
                    Some(node) => (
                        Some(result(Some(self.disco_info(Some(node))))),
                        Handled::Answered("disco"),
                    ),
                    None => (
                        Some(error(
                            DefinedCondition::ItemNotFound,
                            ErrorType::Cancel,
                            None,
                        )),
                        Handled::Refused("unknown-node"),
                    ),
                },
            });
        }
        if payload.is("query", NS_DISCO_ITEMS) && !set {
            let mut q = Element::builder("query", NS_DISCO_ITEMS).build();
            if payload.attr("node").is_none() {
                for n in &self.nodes {
                    q.append_child(
                        Element::builder("item", NS_DISCO_ITEMS)
                            .attr(attr("jid"), self.jid.as_str())
                            .attr(attr("node"), n.name())
                            .attr(attr("name"), n.name())
                            .build(),
                    );
                }
            }
            return Ok((Some(result(Some(q))), Handled::Answered("disco")));
        }
        if !payload.is("pubsub", NS_PUBSUB) {
            return Ok((
                Some(error(
                    DefinedCondition::ServiceUnavailable,
                    ErrorType::Cancel,
                    None,
                )),
                Handled::Refused("unsupported"),
            ));
        }
        let unsupported = |feature: &str| {
            let extra = Element::builder("unsupported", NS_PUBSUB_ERRORS)
                .attr(attr("feature"), feature)
                .build();
            error(
                DefinedCondition::FeatureNotImplemented,
                ErrorType::Cancel,
                Some(extra),
            )
        };
        let Some(op) = payload.children().find(|c| !c.is("set", NS_RSM)) else {
            return Ok((
                Some(error(DefinedCondition::BadRequest, ErrorType::Modify, None)),
                Handled::Refused("bad-request"),
            ));
        };
        let node = op
            .attr("node")
            .and_then(ListNode::parse)
            .filter(|n| self.nodes.contains(n));
        let unknown_node = || {
            (
                Some(error(
                    DefinedCondition::ItemNotFound,
                    ErrorType::Cancel,
                    None,
                )),
                Handled::Refused("unknown-node"),
            )
        };
        match (op.name(), set) {
            ("items", false) => {
                let Some(node) = node else {
                    return Ok(unknown_node());
                };
                let rsm = payload.get_child("set", NS_RSM);
                let (reply, handled) = self.items(store, &from, node, op, rsm, unix)?;
                Ok((Some(result(Some(reply))), handled))
            }
            ("subscribe" | "unsubscribe", true) => {
                let Some(node) = node else {
                    return Ok(unknown_node());
                };
                // XEP-0060 §6.1.3.1: the JID subscribed must be the sender's.
                let jid = op.attr("jid").and_then(|j| Jid::new(j).ok());
                let Some(jid) = jid.filter(|j| j.to_bare() == from.to_bare()) else {
                    let extra = Element::builder("invalid-jid", NS_PUBSUB_ERRORS).build();
                    return Ok((
                        Some(error(
                            DefinedCondition::BadRequest,
                            ErrorType::Modify,
                            Some(extra),
                        )),
                        Handled::Refused("jids-mismatch"),
                    ));
                };
                if op.name() == "unsubscribe" {
                    self.forget(&jid, node);
                    return Ok((Some(result(None)), Handled::Answered("unsubscribe")));
                }
                self.remember(&jid, node, Some(true), unix);
                let sub = Element::builder("subscription", NS_PUBSUB)
                    .attr(attr("node"), node.name())
                    .attr(attr("jid"), jid.to_string())
                    .attr(attr("subscription"), "subscribed")
                    .build();
                let reply = Element::builder("pubsub", NS_PUBSUB).append(sub).build();
                Ok((Some(result(Some(reply))), Handled::Answered("subscribe")))
            }
            ("subscriptions", false) => {
                let mut subs = Element::builder("subscriptions", NS_PUBSUB).build();
                if let Some(c) = self.consumers.get(&from.to_string()) {
                    for n in &c.subscribed {
                        subs.append_child(
                            Element::builder("subscription", NS_PUBSUB)
                                .attr(attr("node"), n.as_str())
                                .attr(attr("jid"), c.jid.as_str())
                                .attr(attr("subscription"), "subscribed")
                                .build(),
                        );
                    }
                }
                let reply = Element::builder("pubsub", NS_PUBSUB).append(subs).build();
                Ok((
                    Some(result(Some(reply))),
                    Handled::Answered("subscriptions"),
                ))
            }
            ("publish" | "retract" | "create" | "delete" | "purge" | "configure", _) => Ok((
                Some(error(DefinedCondition::Forbidden, ErrorType::Auth, None)),
                Handled::Refused("forbidden"),
            )),
            (name, _) => {
                let feature = match name {
                    "options" => "subscription-options",
                    "affiliations" => "retrieve-affiliations",
                    "default" => "retrieve-default",
                    _ => "unknown",
                };
                Ok((Some(unsupported(feature)), Handled::Refused("unsupported")))
            }
        }
    }

    /// An items request: one RSM page, or (without RSM) as much of the
    /// list as fits in a stanza, the rest following as notifications.
    fn items(
        &mut self,
        store: &Store,
        from: &Jid,
        node: ListNode,
        op: &Element,
        rsm: Option<&Element>,
        unix: u64,
    ) -> Result<(Element, Handled)> {
        let max_items = op.attr("max_items").and_then(|m| m.parse::<usize>().ok());
        let mut out = Element::builder("pubsub", NS_PUBSUB).build();
        let wanted: Vec<&str> = op
            .children()
            .filter(|c| c.is("item", NS_PUBSUB))
            .filter_map(|c| c.attr("id"))
            .take(RSM_MAX_ITEMS)
            .collect();
        if !wanted.is_empty() {
            // Particular items (XEP-0060 §6.5.8): those listed now. A
            // domain's hash in muc_bans_sha256 cannot be turned back into
            // its domain, so only JID hashes are found there by id.
            let mut ids = Vec::new();
            for id in wanted {
                let subject = match node {
                    ListNode::MucBans | ListNode::SpamJids => format!("jid:{id}"),
                    ListNode::SpamDomains => match corvid_protocol::subject::normalize_domain(id) {
                        Ok(d) => format!("domain:{d}"),
                        Err(_) => continue,
                    },
                };
                if node.ids(&subject).iter().any(|i| i == id) && listed(store, &subject)? {
                    ids.push(id.to_owned());
                }
            }
            out.append_child(items_element(node, &ids, NS_PUBSUB));
            return Ok((out, Handled::Answered("items-by-id")));
        }
        if let Some(rsm) = rsm {
            let max = rsm
                .get_child("max", NS_RSM)
                .and_then(|m| m.text().trim().parse::<usize>().ok())
                .or(max_items)
                .unwrap_or(RSM_MAX_ITEMS)
                .min(RSM_MAX_ITEMS);
            let after = rsm
                .get_child("after", NS_RSM)
                .map(|a| a.text().trim().to_owned())
                .filter(|a| !a.is_empty());
            let p = page(store, node, after.as_deref(), max, RESULT_MAX_BYTES)?;
            out.append_child(items_element(node, &p.ids, NS_PUBSUB));
            let mut set = Element::builder("set", NS_RSM).build();
            if let Some(f) = &p.first {
                set.append_child(Element::builder("first", NS_RSM).append(f.as_str()).build());
            }
            if let Some(l) = &p.last {
                set.append_child(Element::builder("last", NS_RSM).append(l.as_str()).build());
            }
            out.append_child(set);
            return Ok((out, Handled::Answered("items-page")));
        }
        let max = max_items
            .unwrap_or(NON_RSM_MAX_ITEMS)
            .min(NON_RSM_MAX_ITEMS);
        let p = page(store, node, None, max, RESULT_MAX_BYTES)?;
        out.append_child(items_element(node, &p.ids, NS_PUBSUB));
        // A server or component fetching the list is a consumer (its
        // modules fetch at start and then rely on notifications); users'
        // clients are answered but not remembered.
        if from.node().is_none() {
            self.remember(from, node, None, unix);
        }
        if p.more && max_items.is_none() {
            // The rest follows as notifications after the result.
            self.jobs.push_front(Job {
                to: from.to_string(),
                node,
                after: p.last.clone(),
            });
        }
        Ok((out, Handled::Answered("items")))
    }

    fn disco_info(&self, node: Option<ListNode>) -> Element {
        let mut q = match node {
            Some(n) => Element::builder("query", NS_DISCO_INFO).attr(attr("node"), n.name()),
            None => Element::builder("query", NS_DISCO_INFO),
        }
        .build();
        let (category, type_, name) = match node {
            None => ("pubsub", "service", "Corvid block lists"),
            Some(n) => ("pubsub", "leaf", n.name()),
        };
        q.append_child(
            Element::builder("identity", NS_DISCO_INFO)
                .attr(attr("category"), category)
                .attr(attr("type"), type_)
                .attr(attr("name"), name)
                .build(),
        );
        for f in [
            NS_DISCO_INFO,
            NS_DISCO_ITEMS,
            NS_PUBSUB,
            "http://jabber.org/protocol/pubsub#retrieve-items",
            "http://jabber.org/protocol/pubsub#subscribe",
            "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
            "http://jabber.org/protocol/pubsub#retract-items",
            NS_RSM,
            NS_PING,
        ] {
            q.append_child(
                Element::builder("feature", NS_DISCO_INFO)
                    .attr(attr("var"), f)
                    .build(),
            );
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_ids_follow_the_xmppbl_convention() {
        let jid = "jid:7583a9b348a498d329089a20d51b4fa0da65da0cab52bf300e0d775750311fc9";
        assert_eq!(
            ListNode::MucBans.ids(jid),
            vec!["7583a9b348a498d329089a20d51b4fa0da65da0cab52bf300e0d775750311fc9"]
        );
        assert_eq!(ListNode::SpamJids.ids(jid), ListNode::MucBans.ids(jid));
        assert!(ListNode::SpamDomains.ids(jid).is_empty());
        assert_eq!(
            ListNode::SpamDomains.ids("domain:spam.example"),
            vec!["spam.example"]
        );
        assert_eq!(
            ListNode::SpamDomains.ids("domain:*.spam.example"),
            vec!["spam.example"]
        );
        // printf spam.example | sha256sum
        assert_eq!(
            ListNode::MucBans.ids("domain:spam.example"),
            vec![jid_hash("spam.example")]
        );
        assert!(ListNode::SpamJids.ids("domain:spam.example").is_empty());
        assert_eq!(
            ListNode::SpamDomains.ids("domain:bücher.example"),
            vec!["bücher.example", "xn--bcher-kva.example"]
        );
        for s in ["ip:f:1:v4-24:00000000000000000000000000000000", "digest:00"] {
            for n in ListNode::ALL {
                assert!(n.ids(s).is_empty(), "{s} never leaves the server");
            }
        }
    }

    #[test]
    fn the_sha256_of_a_jid_matches_the_substrate_note() {
        assert!(jid_hash("sales@stolen-cardz.example").starts_with("7583a9b3"));
    }
}
