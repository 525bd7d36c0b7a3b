//! corvidd as an external component (XEP-0114) of its XMPP server.
//!
//! One task owns the component stream: it logs in with the shared secret,
//! answers the requests addressed to the component (through
//! [`crate::lists::Service`]), sends the block lists' notifications, and
//! reconnects after any loss within a second, backing off with jitter up
//! to 30 s while the server refuses or is away.
//!
//! The stream is read and written here rather than through tokio-xmpp:
//! its stream code insists on `version='1.0'` in the server's stream
//! header, which Prosody does not send on component streams, unless its
//! `component` feature is on, and that feature switches xmpp-parsers'
//! stanzas to the component namespace for the whole binary, which breaks
//! the c2s link that still carries the feed. So stanzas cross the
//! component stream as plain elements: the component namespace is mapped
//! to `jabber:client` on the way in (for xmpp-parsers' types) and back on
//! the way out. A stanza that cannot be read (a remote entity can send one
//! through the server) is counted and skipped; a quiet stream is kept
//! alive with a ping of the server and dropped when even that goes
//! unanswered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::io::{AsyncWriteExt as _, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use xmpp_parsers::component::Handshake;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom::rxml::{AsyncRawReader, RawEvent};
use xmpp_parsers::minidom::tree_builder::TreeBuilder;
use xmpp_parsers::minidom::{Element, Node};
use xmpp_parsers::presence::Presence;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use std::collections::HashMap;

use corvid_protocol::feed::LOG_FEATURE;
use corvid_protocol::item::FeedAddress;
use corvid_protocol::record::Issuer;

use crate::config::{ComponentConfig, read_secret};
use crate::engine::Engine;
use crate::lists::{Handled, NS_DISCO_INFO, NS_PUBSUB, NS_RSM, Service, attr};
use crate::log::{CHECKPOINT_EVERY, COMPACT_NODE, FEED_NODE, FeedLog};
use crate::xmpp::{Backoff, EventSink, IqError};

const NS_COMPONENT: &str = "jabber:component:accept";
const NS_CLIENT: &str = "jabber:client";
const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// The largest stanza read from the server (Prosody's own limit is
/// 512 KiB); a larger one ends the connection.
const MAX_STANZA_BYTES: usize = 1024 * 1024;
/// Silence after which the server is pinged.
const PING_AFTER: Duration = Duration::from_secs(60);
/// Silence after which the connection is given up.
const DEAD_AFTER: Duration = Duration::from_secs(150);

/// Where the component connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentState {
    /// Connecting, or waiting to reconnect.
    Connecting {
        /// Why the last attempt or connection ended.
        last_error: Option<String>,
        /// When it ended (Unix seconds).
        since: u64,
    },
    /// Connected and serving.
    Online {
        /// When it came up (Unix seconds).
        since: u64,
        /// Consumers remembered.
        consumers: usize,
    },
}

/// The running component: its state for `status`, and IQs to other
/// entities (peers' components) sent from its JID.
#[derive(Debug, Clone)]
pub struct ComponentHandle {
    /// The component's domain.
    pub jid: String,
    /// Its state.
    pub state: watch::Receiver<ComponentState>,
    commands: mpsc::Sender<Request>,
    timeout: Duration,
}

/// An IQ to send, and where its reply goes.
#[derive(Debug)]
struct Request {
    iq: Iq,
    reply: tokio::sync::oneshot::Sender<Iq>,
}

impl ComponentHandle {
    /// Sends an IQ from the component's JID and waits for the reply of the
    /// entity it went to.
    ///
    /// # Errors
    /// [`IqError`] for error replies, timeouts and a lost connection.
    pub async fn iq(&self, mut iq: Iq) -> std::result::Result<Option<Element>, IqError> {
        if let Iq::Get { from, .. } | Iq::Set { from, .. } = &mut iq {
            *from = Jid::new(&self.jid).ok();
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(Request { iq, reply })
            .await
            .map_err(|_| IqError::Closed)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(IqError::Timeout(self.timeout)),
            Ok(Err(_)) => Err(IqError::Closed),
            Ok(Ok(reply)) => crate::xmpp::iq_outcome(reply),
        }
    }

    /// Whether the component is connected.
    pub fn online(&self) -> bool {
        matches!(*self.state.borrow(), ComponentState::Online { .. })
    }
}

/// What one connection serves, kept across reconnections.
struct Parts {
    service: Service,
    feed: FeedLog,
    events: EventSink,
    commands: mpsc::Receiver<Request>,
}

/// What the reader task hands over.
type Input = Result<Element, String>;

/// Decisions read per round of change notifications.
const CHANGES_PER_ROUND: usize = 500;
/// Pages of block-list pushes sent per round (250 items each): the rest
/// of a round reads the store, so a page per round would make a 10k-entry
/// list take seconds.
const PUSH_PAGES_PER_ROUND: usize = 16;
/// Own records read per round of feed notifications.
const FEED_CHANGES_PER_ROUND: usize = 200;

/// Starts the component task.
///
/// # Errors
/// A bad JID or an unreadable secret.
pub fn start(
    config: &ComponentConfig,
    engine: Arc<Engine>,
    events: EventSink,
) -> Result<ComponentHandle> {
    let jid = BareJid::new(&config.jid).map_err(|e| anyhow!("component.jid: {e}"))?;
    let secret = read_secret(&config.secret_file)?;
    let service = Service::new(engine.store(), config, crate::now())
        .context("component: reading its consumers")?;
    let feed = FeedLog::new(
        engine.store(),
        own_feed(&config.jid)?,
        Issuer {
            domain: engine.settings().domain.clone(),
            key: engine.public_key().key_id(),
        },
    )
    .context("component: reading the feed's subscribers")?;
    let (tx, rx) = watch::channel(ComponentState::Connecting {
        last_error: None,
        since: crate::now(),
    });
    let (commands_tx, commands) = mpsc::channel(256);
    let server = config.server.clone();
    let parts = Parts {
        service,
        feed,
        events,
        commands,
    };
    tokio::spawn(run(jid, secret, server, engine, parts, tx));
    Ok(ComponentHandle {
        jid: config.jid.clone(),
        state: rx,
        commands: commands_tx,
        timeout: Duration::from_secs(30),
    })
}

/// The feed a component serves: its JID and [`FEED_NODE`].
///
/// # Errors
/// A JID that is not a feed service.
pub fn own_feed(jid: &str) -> Result<FeedAddress> {
    FeedAddress::new(jid, FEED_NODE).map_err(|e| anyhow!("component.jid: {e}"))
}

async fn run(
    jid: BareJid,
    secret: String,
    server: String,
    engine: Arc<Engine>,
    mut parts: Parts,
    state: watch::Sender<ComponentState>,
) {
    let backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
    let mut attempt = 0;
    loop {
        let error = match tokio::time::timeout(
            Duration::from_secs(10),
            login(&server, &jid, &secret, Arc::clone(&engine.metrics)),
        )
        .await
        {
            Ok(Ok(stream)) => {
                attempt = 0;
                engine.metrics.component_connected();
                tracing::info!(component = %jid, server, "component connected; pushing the block lists to {} consumers", parts.service.consumers().count());
                state.send_replace(ComponentState::Online {
                    since: crate::now(),
                    consumers: parts.service.consumers().count(),
                });
                let e = serve(stream, &jid, &engine, &mut parts, &state).await;
                tracing::warn!(component = %jid, "component connection lost: {e:#}; reconnecting");
                format!("{e:#}")
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "login timed out after 10 s".to_owned(),
        };
        let delay = backoff.delay(attempt);
        if attempt > 0 {
            tracing::warn!(component = %jid, "component login failed: {error}; retrying in {delay:.1?}");
        }
        state.send_replace(ComponentState::Connecting {
            last_error: Some(error),
            since: crate::now(),
        });
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// One connection: stanzas in from the reader task, bytes out.
struct Connection {
    input: mpsc::Receiver<Input>,
    out: BufWriter<OwnedWriteHalf>,
    reader: tokio::task::JoinHandle<()>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    async fn send_element(&mut self, element: &Element) -> Result<()> {
        let mut bytes = Vec::with_capacity(512);
        element.write_to(&mut bytes).context("serialize")?;
        self.metrics.component_bytes("out", bytes.len() as u64);
        self.out.write_all(&bytes).await.context("send")?;
        self.out.flush().await.context("send")
    }

    async fn send(&mut self, stanza: Stanza) -> Result<()> {
        let element: Element = match stanza {
            Stanza::Iq(iq) => iq.into(),
            Stanza::Message(m) => m.into(),
            Stanza::Presence(p) => p.into(),
        };
        self.send_element(&renamespace(element, NS_CLIENT, NS_COMPONENT))
            .await
    }
}

/// A bare component stream (XEP-0114), logged in, without corvidd's
/// services: for tools that talk to an XMPP server as a component, such as
/// the test writers of other feed layouts.
pub struct RawStream(Connection);

impl std::fmt::Debug for RawStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawStream").finish_non_exhaustive()
    }
}

impl RawStream {
    /// Connects to `server` (host:port) and logs in as `jid` with `secret`.
    ///
    /// # Errors
    /// Connection, stream or handshake failures.
    pub async fn connect(server: &str, jid: &str, secret: &str) -> Result<Self> {
        let jid = BareJid::new(jid).map_err(|e| anyhow!("component jid: {e}"))?;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        Ok(Self(login(server, &jid, secret, metrics).await?))
    }

    /// The next stanza, in the `jabber:client` namespace.
    ///
    /// # Errors
    /// The stream ended, with why.
    pub async fn next(&mut self) -> Result<Element> {
        match self.0.input.recv().await {
            Some(Ok(e)) => Ok(renamespace(e, NS_COMPONENT, NS_CLIENT)),
            Some(Err(e)) => bail!("{e}"),
            None => bail!("the stream ended"),
        }
    }

    /// Sends a stanza given in the `jabber:client` namespace.
    ///
    /// # Errors
    /// Write failures.
    pub async fn send(&mut self, stanza: Element) -> Result<()> {
        self.0
            .send_element(&renamespace(stanza, NS_CLIENT, NS_COMPONENT))
            .await
    }
}

/// `element` with every element in `from` moved to `to` (the stanza
/// namespaces of c2s and component streams).
fn renamespace(element: Element, from: &str, to: &str) -> Element {
    let ns = element.ns();
    let name = element.name().to_owned();
    let mut out = Element::builder(&name, if ns == from { to } else { ns.as_str() }).build();
    *out.attrs_mut() = element.attrs().clone();
    let mut element = element;
    for node in element.take_nodes() {
        match node {
            Node::Element(child) => {
                out.append_child(renamespace(child, from, to));
            }
            Node::Text(text) => out.append_text(text),
        }
    }
    out
}

fn event_len(event: &RawEvent) -> usize {
    match event {
        RawEvent::XmlDeclaration(m, _)
        | RawEvent::ElementHeadOpen(m, _)
        | RawEvent::Attribute(m, _, _)
        | RawEvent::ElementHeadClose(m)
        | RawEvent::ElementFoot(m)
        | RawEvent::Text(m, _) => m.len(),
    }
}

/// Reads the stream: the header's id first (through `header`), then one
/// element per stanza, until the stream or the connection ends.
async fn read_stream(
    read: OwnedReadHalf,
    header: tokio::sync::oneshot::Sender<Option<String>>,
    tx: mpsc::Sender<Input>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut reader = AsyncRawReader::new(BufReader::new(read));
    let mut builder = TreeBuilder::new();
    let mut header = Some(header);
    let mut stanza_bytes = 0usize;
    let end = loop {
        let event = match reader.read().await {
            Ok(Some(e)) => e,
            Ok(None) => break "the server closed the connection".to_owned(),
            Err(e) => break format!("read: {e}"),
        };
        let depth = builder.depth();
        metrics.component_bytes("in", event_len(&event) as u64);
        if depth >= 1 {
            stanza_bytes += event_len(&event);
            if stanza_bytes > MAX_STANZA_BYTES {
                break format!("a stanza over {MAX_STANZA_BYTES} bytes");
            }
        }
        // Whitespace between stanzas (keepalives) is not kept.
        if depth == 1 && matches!(event, RawEvent::Text(..)) {
            stanza_bytes = 0;
            continue;
        }
        let foot = matches!(event, RawEvent::ElementFoot(_));
        let head_close = matches!(event, RawEvent::ElementHeadClose(_));
        if let Err(e) = builder.process_event(event) {
            break format!("unreadable XML: {e}");
        }
        if head_close && depth == 0 && builder.depth() == 1 {
            let id = builder.top().and_then(|s| s.attr("id").map(str::to_owned));
            if let Some(h) = header.take() {
                let _ = h.send(id);
            }
        }
        if foot {
            if builder.depth() == 0 {
                break "the server closed the component stream".to_owned();
            }
            if builder.depth() == 1 {
                let bytes = std::mem::take(&mut stanza_bytes);
                if let Some(stanza) = builder.unshift_child() {
                    tracing::trace!(bytes, stanza = %String::from(&stanza).chars().take(400).collect::<String>(), "component stanza in");
                    if tx.send(Ok(stanza)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let _ = tx.send(Err(end)).await;
}

/// Connects and authenticates (XEP-0114 handshake).
async fn login(
    server: &str,
    jid: &BareJid,
    secret: &str,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Connection> {
    let tcp = tokio::net::TcpStream::connect(server)
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    tcp.set_nodelay(true)?;
    let (read, write) = tcp.into_split();
    let (header_tx, header_rx) = tokio::sync::oneshot::channel();
    let (tx, input) = mpsc::channel(64);
    let reader = tokio::spawn(read_stream(read, header_tx, tx, Arc::clone(&metrics)));
    let mut c = Connection {
        input,
        out: BufWriter::new(write),
        reader,
        metrics,
    };
    let open = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_COMPONENT}' xmlns:stream='{NS_STREAMS}' to='{jid}'>"
    );
    c.out.write_all(open.as_bytes()).await?;
    c.out.flush().await?;
    let id = match header_rx.await {
        Ok(Some(id)) => id,
        Ok(None) => bail!("the server sent no stream id"),
        Err(_) => match c.input.recv().await {
            Some(Err(e)) => bail!("stream: {e}"),
            _ => bail!("the server closed the stream before its header"),
        },
    };
    let handshake: Element = Handshake::from_stream_id_and_password(id, secret).into();
    c.send_element(&renamespace(handshake, NS_CLIENT, NS_COMPONENT))
        .await?;
    match c.input.recv().await {
        Some(Ok(e)) if e.name() == "handshake" => Ok(c),
        Some(Ok(e)) if e.name() == "error" && e.ns() == NS_STREAMS => {
            let condition = e
                .children()
                .next()
                .map(|c| c.name().to_owned())
                .unwrap_or_default();
            bail!(
                "the server refused the component: {condition} (check component_secret and the Component line)"
            )
        }
        Some(Ok(e)) => bail!("unexpected <{}/> during the component handshake", e.name()),
        Some(Err(e)) => {
            bail!("handshake: {e} (is {jid} a Component of this server, with this secret?)")
        }
        None => bail!("the connection ended during the handshake"),
    }
}

/// A stanza element from the component stream as xmpp-parsers' type.
fn parse_stanza(element: Element) -> Option<Stanza> {
    let element = renamespace(element, NS_COMPONENT, NS_CLIENT);
    match element.name() {
        "iq" => Iq::try_from(element).ok().map(Stanza::Iq),
        "message" => Message::try_from(element).ok().map(Stanza::Message),
        "presence" => Presence::try_from(element).ok().map(Stanza::Presence),
        _ => None,
    }
}

/// Serves one connection until it ends; returns why.
async fn serve(
    mut conn: Connection,
    jid: &BareJid,
    engine: &Arc<Engine>,
    parts: &mut Parts,
    state: &watch::Sender<ComponentState>,
) -> anyhow::Error {
    parts.service.connected();
    // The push of every list to every consumer, under way: when it started
    // and how many messages it sent.
    let mut pushing = Some((Instant::now(), 0u64));
    let store = engine.store();
    let metrics = &engine.metrics;
    let me = jid.to_string();
    // The parent domain answers the keepalive pings.
    let parent = jid
        .domain()
        .as_str()
        .split_once('.')
        .and_then(|(_, p)| Jid::new(p).ok())
        .unwrap_or_else(|| Jid::from(jid.clone()));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut checkpoint = tokio::time::interval(CHECKPOINT_EVERY);
    checkpoint.tick().await;
    let mut heard = Instant::now();
    let mut pinged = false;
    let mut gaps_logged = false;
    // IQs sent for callers, by id: the reply must come from where it went.
    let mut pending: HashMap<String, (Option<Jid>, tokio::sync::oneshot::Sender<Iq>)> =
        HashMap::new();
    loop {
        // Registered before the store is read, so that a decision or an own
        // record written in between wakes the wait below.
        let decided = store.decided().notified();
        tokio::pin!(decided);
        decided.as_mut().enable();
        // New own records first (the feed's subscribers), then changes of
        // the block lists: both small and time-critical. Then a few pages of
        // a push, then input; every turn yields, so a large push never
        // holds up answers.
        // The trusted peers' feed services receive IP tokens; nobody else.
        parts.feed.set_members(
            engine
                .settings()
                .peers
                .values()
                .map(|p| p.feed.service.clone())
                .collect(),
        );
        // The signing key changes on a rotation: the issuer's key id
        // follows the key that signs.
        let signer = engine.signer();
        parts.feed.set_issuer(Issuer {
            domain: engine.settings().domain.clone(),
            key: corvid_protocol::keys::Signer::public_key(signer.as_ref()).key_id(),
        });
        let own = tokio::task::block_in_place(|| {
            parts
                .feed
                .changes(store, signer.as_ref(), &me, FEED_CHANGES_PER_ROUND)
        });
        match own {
            Ok((messages, notified)) => {
                let n = messages.len() as u64;
                for m in messages {
                    if let Err(e) = conn.send(m.into()).await {
                        return e;
                    }
                }
                if n > 0 {
                    metrics.component_sent("feed", n);
                    tracing::debug!(messages = n, "feed: new records sent to subscribers");
                }
                parts.feed.commit(notified);
            }
            Err(e) => return anyhow!("own log: {e}"),
        }
        match tokio::task::block_in_place(|| parts.feed.key_changes(store, &me)) {
            Ok((messages, n)) => {
                for m in messages {
                    if let Err(e) = conn.send(m.into()).await {
                        return e;
                    }
                }
                parts.feed.commit_keys(n);
            }
            Err(e) => return anyhow!("key records: {e}"),
        }
        let (messages, cursor, gap) =
            match tokio::task::block_in_place(|| parts.service.changes(store, CHANGES_PER_ROUND)) {
                Ok(c) => c,
                Err(e) => return anyhow!("decision stream: {e}"),
            };
        if gap && !gaps_logged {
            gaps_logged = true;
            tracing::warn!(
                "block lists: more decisions than the stream keeps happened while the component was away; entries removed then stay at consumers until they restart"
            );
        }
        let n = messages.len() as u64;
        for m in messages {
            if let Err(e) = conn.send(m.into()).await {
                return e;
            }
        }
        if n > 0 {
            metrics.component_sent("change", n);
        }
        if let Err(e) = tokio::task::block_in_place(|| parts.service.commit(store, cursor)) {
            return anyhow!("block lists: {e}");
        }
        let mut busy = false;
        for _ in 0..PUSH_PAGES_PER_ROUND {
            let push = match tokio::task::block_in_place(|| parts.service.next_push(store)) {
                Ok(p) => p,
                Err(e) => return anyhow!("block lists: {e}"),
            };
            let Some(m) = push else {
                if let Some((started, n)) = pushing.take() {
                    tracing::info!(
                        messages = n,
                        ms = started.elapsed().as_millis(),
                        "block lists pushed to their consumers"
                    );
                }
                break;
            };
            busy = true;
            if let Err(e) = conn.send(m.into()).await {
                return e;
            }
            metrics.component_sent("push", 1);
            if let Some((_, n)) = &mut pushing {
                *n += 1;
            }
        }
        if let Err(e) = tokio::task::block_in_place(|| {
            parts.service.save(store)?;
            parts.feed.save(store)
        }) {
            tracing::warn!("component: cannot save consumers and subscribers: {e}");
        }
        state.send_if_modified(|s| match s {
            ComponentState::Online { consumers, .. } => {
                let n = parts.service.consumers().count();
                let changed = *consumers != n;
                *consumers = n;
                changed
            }
            ComponentState::Connecting { .. } => false,
        });
        let input = if busy {
            // Take what has arrived, without waiting.
            match conn.input.try_recv() {
                Ok(i) => Some(i),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return anyhow!("the reader stopped");
                }
            }
        } else {
            tokio::select! {
                i = conn.input.recv() => match i {
                    Some(i) => Some(i),
                    None => return anyhow!("the reader stopped"),
                },
                request = parts.commands.recv() => {
                    if let Some(Request { mut iq, reply }) = request {
                        let id = crate::xmpp::iq_id();
                        *iq.id_mut() = id.clone();
                        pending.insert(id, (iq.to().cloned(), reply));
                        if let Err(e) = conn.send(iq.into()).await {
                            return e;
                        }
                    }
                    None
                }
                () = &mut decided => None,
                _ = checkpoint.tick() => {
                    let signer = engine.signer();
                    match tokio::task::block_in_place(|| {
                        parts.feed.checkpoint_notifications(store, signer.as_ref(), &me, crate::now())
                    }) {
                        Ok(messages) => {
                            for m in messages {
                                if let Err(e) = conn.send(m.into()).await {
                                    return e;
                                }
                            }
                        }
                        Err(e) => tracing::warn!("checkpoint not signed: {e}"),
                    }
                    pending.retain(|_, (_, reply)| !reply.is_closed());
                    None
                }
                _ = tick.tick() => None,
            }
        };
        let Some(input) = input else {
            if heard.elapsed() > DEAD_AFTER {
                return anyhow!("the server stopped answering pings");
            }
            if heard.elapsed() > PING_AFTER && !pinged {
                pinged = true;
                let ping = Iq::from_get(
                    format!("ping-{}", crate::now_ms()),
                    xmpp_parsers::ping::Ping,
                )
                .with_from(Jid::from(jid.clone()))
                .with_to(parent.clone());
                if let Err(e) = conn.send(ping.into()).await {
                    return e;
                }
            }
            continue;
        };
        heard = Instant::now();
        pinged = false;
        let element = match input {
            Ok(e) => e,
            Err(e) => return anyhow!("{e}"),
        };
        if element.name() == "error" && element.ns() == NS_STREAMS {
            let condition = element
                .children()
                .next()
                .map(|c| c.name().to_owned())
                .unwrap_or_default();
            return anyhow!("stream error from the server: {condition}");
        }
        let Some(stanza) = parse_stanza(element) else {
            metrics.component_refused("unreadable");
            continue;
        };
        // A reply to one of our IQs goes to its caller, if it comes from
        // where the IQ went.
        if let Stanza::Iq(iq @ (Iq::Result { .. } | Iq::Error { .. })) = &stanza
            && let Some((to, _)) = pending.get(iq.id())
        {
            let from_ok = match (to, iq.from()) {
                (Some(to), Some(from)) => to.to_bare() == from.to_bare(),
                _ => false,
            };
            if from_ok {
                if let Some((_, reply)) = pending.remove(iq.id()) {
                    let _ = reply.send(iq.clone());
                }
            } else {
                metrics.component_refused("forged-reply");
            }
            continue;
        }
        if let Some(reply) = handle(stanza, parts, engine)
            && let Err(e) = conn.send(reply).await
        {
            return e;
        }
    }
}

/// Whether an IQ is about the feed node (a PubSub request or a disco#info
/// query naming it).
fn about_feed(payload: &Element) -> bool {
    if payload.is("pubsub", NS_PUBSUB) {
        return payload
            .children()
            .find(|c| !c.is("set", NS_RSM))
            .and_then(|op| op.attr("node"))
            .is_some_and(|n| n == FEED_NODE || n == COMPACT_NODE);
    }
    payload.is("query", NS_DISCO_INFO)
        && payload
            .attr("node")
            .is_some_and(|n| n == FEED_NODE || n == COMPACT_NODE)
}

fn handle(stanza: Stanza, parts: &mut Parts, engine: &Engine) -> Option<Stanza> {
    let metrics = &engine.metrics;
    match stanza {
        Stanza::Iq(iq) => {
            let fallback = iq.clone();
            let feed = match &iq {
                Iq::Get { payload, .. } | Iq::Set { payload, .. } => about_feed(payload),
                _ => false,
            };
            let answered = tokio::task::block_in_place(|| {
                if feed {
                    feed_iq(parts, engine, iq)
                } else {
                    parts
                        .service
                        .handle_iq(engine.store(), iq, Instant::now(), crate::now())
                }
            });
            match answered {
                Ok((reply, handled)) => {
                    match handled {
                        Handled::Answered(k) => metrics.component_request(k),
                        Handled::Refused(r) => metrics.component_refused(r),
                        Handled::Ignored(_) => {}
                    }
                    reply.map(Stanza::from)
                }
                Err(e) => {
                    tracing::warn!("component: a request failed on storage: {e}");
                    metrics.component_refused("storage");
                    internal_error(fallback).map(Stanza::from)
                }
            }
        }
        Stanza::Message(m) => {
            if m.type_ == MessageType::Error {
                // Consumers' servers bounce notifications they cannot deliver.
                metrics.component_refused("bounced");
            } else if m
                .payloads
                .iter()
                .any(|p| p.is("event", xmpp_parsers::ns::PUBSUB_EVENT))
            {
                // A followed feed's notification: the sync manager's, behind
                // the same check of the sender as on the c2s link.
                crate::xmpp::forward_events(m, &parts.events);
            } else {
                metrics.component_refused("message");
            }
            None
        }
        Stanza::Presence(_) => None,
    }
}

/// A request about the feed node.
fn feed_iq(
    parts: &mut Parts,
    engine: &Engine,
    iq: Iq,
) -> crate::store::Result<(Option<Iq>, Handled)> {
    let store = engine.store();
    let req = match crate::lists::Request::of(iq) {
        Ok(r) => r,
        Err(h) => return Ok((None, h)),
    };
    let (from, payload, set) = (&req.from, &req.payload, req.set);
    let error = |condition, type_| req.error(condition, type_, None);
    let result = |payload| req.result(payload);
    if !parts.service.allowed(from, Instant::now()) {
        return Ok((
            Some(error(DefinedCondition::ResourceConstraint, ErrorType::Wait)),
            Handled::Refused("rate-limited"),
        ));
    }
    if payload.is("query", NS_DISCO_INFO) {
        let q = Element::builder("query", NS_DISCO_INFO)
            .attr(attr("node"), FEED_NODE)
            .append(
                Element::builder("identity", NS_DISCO_INFO)
                    .attr(attr("category"), "pubsub")
                    .attr(attr("type"), "leaf")
                    .attr(attr("name"), "Corvid feed")
                    .build(),
            )
            .append(
                Element::builder("feature", NS_DISCO_INFO)
                    .attr(attr("var"), LOG_FEATURE)
                    .build(),
            )
            .build();
        return Ok((Some(result(Some(q))), Handled::Answered("disco")));
    }
    let Some(op) = payload.children().find(|c| !c.is("set", NS_RSM)) else {
        return Ok((
            Some(error(DefinedCondition::BadRequest, ErrorType::Modify)),
            Handled::Refused("bad-request"),
        ));
    };
    match (op.name(), set) {
        ("items", false) => {
            let signer = engine.signer();
            let rsm = payload.get_child("set", NS_RSM);
            let member = parts.feed.is_member(from);
            let page = if op.attr("node") == Some(COMPACT_NODE) {
                parts.feed.compact(store, signer.as_ref(), rsm, member)?
            } else {
                // The membership card, when a directory is configured.
                let card = op
                    .children()
                    .any(|c| c.attr("id") == Some(corvid_protocol::feed::CARD_ITEM))
                    .then(|| crate::federation::own_card(engine))
                    .flatten()
                    .and_then(|card| {
                        crate::federation::sign_card(
                            engine,
                            &card,
                            parts.feed.feed(),
                            corvid_protocol::feed::CARD_ITEM,
                        )
                        .ok()
                    });
                parts.feed.items(
                    store,
                    signer.as_ref(),
                    op,
                    rsm,
                    crate::now(),
                    crate::log::Asker { member, card },
                )?
            };
            match page {
                Ok(reply) => Ok((Some(result(Some(reply))), Handled::Answered("feed-items"))),
                Err(why) => Ok((
                    Some(error(DefinedCondition::BadRequest, ErrorType::Modify)),
                    Handled::Refused(why),
                )),
            }
        }
        ("subscribe" | "unsubscribe", true) if op.attr("node") == Some(FEED_NODE) => {
            let jid = op.attr("jid").and_then(|j| Jid::new(j).ok());
            let Some(jid) = jid.filter(|j| j.to_bare() == from.to_bare()) else {
                return Ok((
                    Some(error(DefinedCondition::BadRequest, ErrorType::Modify)),
                    Handled::Refused("jids-mismatch"),
                ));
            };
            if op.name() == "unsubscribe" {
                parts.feed.unsubscribe(&jid);
                return Ok((Some(result(None)), Handled::Answered("feed-unsubscribe")));
            }
            if !parts.feed.subscribe(&jid, crate::now()) {
                return Ok((
                    Some(error(DefinedCondition::ResourceConstraint, ErrorType::Wait)),
                    Handled::Refused("too-many-subscribers"),
                ));
            }
            let sub = Element::builder("subscription", NS_PUBSUB)
                .attr(attr("node"), FEED_NODE)
                .attr(attr("jid"), jid.to_string())
                .attr(attr("subscription"), "subscribed")
                .build();
            Ok((
                Some(result(Some(
                    Element::builder("pubsub", NS_PUBSUB).append(sub).build(),
                ))),
                Handled::Answered("feed-subscribe"),
            ))
        }
        _ => Ok((
            Some(error(DefinedCondition::Forbidden, ErrorType::Auth)),
            Handled::Refused("forbidden"),
        )),
    }
}

fn internal_error(iq: Iq) -> Option<Iq> {
    match iq {
        Iq::Get { from, to, id, .. } | Iq::Set { from, to, id, .. } => Some(Iq::Error {
            from: to,
            to: from,
            id,
            payload: None,
            error: StanzaError {
                type_: ErrorType::Wait,
                by: None,
                defined_condition: DefinedCondition::InternalServerError,
                texts: Default::default(),
                other: None,
            },
        }),
        _ => None,
    }
}
