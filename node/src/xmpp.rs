//! The XMPP link: one task owns a `StanzaStream` and moves stanzas.
//!
//! tokio-xmpp's high-level `Client` can hang when it sends while stanzas
//! arrive (see shared/notes), so the link drives `StanzaStream` directly
//! from a single task: requests come in over a channel, IQ replies are
//! matched to waiting callers by id, PubSub events go out over another
//! channel, and nothing in the task ever waits on a consumer.
//!
//! Logins go through our own reconnector so that each attempt has a
//! timeout, failures are reported (a wrong password is not silently retried
//! forever), and retries back off exponentially with jitter. Dead links are
//! found by XEP-0199 pings: tokio-xmpp's liveness probe plus our own ping
//! of the server, which restarts the stream after repeated silence.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use futures::StreamExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_xmpp::connect::{DnsConfig, ServerConnector};
use tokio_xmpp::stanzastream::{Connection, Event, StanzaStream, StreamEvent};
use tokio_xmpp::xmlstream::{StreamHeader, Timeouts};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::Message;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::presence::Presence;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use crate::config::{TlsMode, XmppConfig, read_secret};

/// Where the link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Connecting or reconnecting.
    Connecting {
        /// The last login error, if any.
        last_error: Option<String>,
    },
    /// Logged in: `session` increases with every new session.
    Online {
        /// Our full JID.
        bound: String,
        /// Session counter.
        session: u64,
    },
}

/// Something a consumer must react to.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// A new session: subscriptions may be gone, the feed may need republishing.
    Online {
        /// Session counter.
        session: u64,
    },
    /// A PubSub event message.
    PubSub {
        /// Who sent it.
        from: Option<Jid>,
        /// The `<event xmlns='http://jabber.org/protocol/pubsub#event'/>` element.
        event: Element,
    },
}

/// Where PubSub events go: a bounded queue, behind a check of the sender.
///
/// Anyone can send us a message that looks like a PubSub event, so only
/// events from the services in `senders` are queued (the configured peers'
/// and RTBLs' services and our own); the rest are counted and dropped
/// before they cost anything. When the queue is full an event is dropped
/// and `overflow` is signalled: the consumer then rereads every feed, so
/// nothing is lost for good.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<LinkEvent>,
    senders: Option<watch::Receiver<Arc<HashSet<BareJid>>>>,
    /// Signalled when an event was dropped because the queue was full.
    pub overflow: Arc<tokio::sync::Notify>,
    dropped_unknown: Arc<AtomicU64>,
    dropped_full: Arc<AtomicU64>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Every message and presence received, for clients that read them
    /// (the test harness's users); corvidd has none.
    stanzas: Option<mpsc::UnboundedSender<Element>>,
}

impl EventSink {
    /// A sink that queues events from any sender (test clients).
    pub fn new(tx: mpsc::Sender<LinkEvent>) -> Self {
        Self {
            tx,
            senders: None,
            overflow: Arc::new(tokio::sync::Notify::new()),
            dropped_unknown: Arc::default(),
            dropped_full: Arc::default(),
            metrics: None,
            stanzas: None,
        }
    }

    /// Also hands every message and presence received to `stanzas`.
    #[must_use]
    pub fn with_stanzas(mut self, stanzas: mpsc::UnboundedSender<Element>) -> Self {
        self.stanzas = Some(stanzas);
        self
    }

    fn tap(&self, stanza: impl FnOnce() -> Element) {
        if let Some(tx) = &self.stanzas {
            let _ = tx.send(stanza());
        }
    }

    /// Counts dropped events in `metrics` too
    /// (`corvid_rejected_items_total{reason="unknown-sender"}`,
    /// `corvid_event_queue_dropped_total`).
    #[must_use]
    pub fn counted_in(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Queues PubSub events only from these services' bare JIDs.
    #[must_use]
    pub fn only_from(mut self, senders: watch::Receiver<Arc<HashSet<BareJid>>>) -> Self {
        self.senders = Some(senders);
        self
    }

    /// Events dropped so far: `(unknown sender, queue full)`.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_unknown.load(Ordering::Relaxed),
            self.dropped_full.load(Ordering::Relaxed),
        )
    }

    fn accepts(&self, from: Option<&Jid>) -> bool {
        match (&self.senders, from) {
            (None, _) => true,
            (Some(senders), Some(from)) => senders.borrow().contains(&from.to_bare()),
            (Some(_), None) => false,
        }
    }

    fn push(&self, event: LinkEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped_full.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.metrics {
                m.event_dropped();
            }
            self.overflow.notify_one();
        }
    }
}

enum Command {
    Iq {
        iq: Box<Iq>,
        reply: oneshot::Sender<Iq>,
    },
    Send(Box<Stanza>),
}

/// A handle to the link.
#[derive(Debug, Clone)]
pub struct Link {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<LinkState>,
    iq_timeout: Duration,
    bare: BareJid,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// An IQ failed.
#[derive(Debug, thiserror::Error)]
pub enum IqError {
    /// The entity answered with an error.
    #[error("{condition}{text}")]
    Stanza {
        /// The defined condition, as its Rust name (e.g. `ItemNotFound`).
        condition: String,
        /// Any text.
        text: String,
        /// The full error.
        error: Box<StanzaError>,
    },
    /// No answer in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The link is gone.
    #[error("the XMPP link is shut down")]
    Closed,
}

impl IqError {
    /// Whether this is the given condition.
    pub fn is(&self, condition: DefinedCondition) -> bool {
        matches!(self, Self::Stanza { error, .. } if error.defined_condition == condition)
    }
}

impl Link {
    /// Our bare JID.
    pub fn bare(&self) -> &BareJid {
        &self.bare
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// Waits until online (or `timeout`).
    ///
    /// # Errors
    /// On timeout, with the last login error.
    pub async fn wait_online(&self, timeout: Duration) -> Result<u64> {
        let mut rx = self.state.clone();
        let wait = async {
            loop {
                if let LinkState::Online { session, .. } = &*rx.borrow_and_update() {
                    return Ok(*session);
                }
                if rx.changed().await.is_err() {
                    bail!("the XMPP link is shut down");
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => match self.state() {
                LinkState::Connecting {
                    last_error: Some(e),
                } => bail!("not logged in after {timeout:?}: {e}"),
                _ => bail!("not logged in after {timeout:?}"),
            },
        }
    }

    /// Sends a stanza without waiting for anything.
    ///
    /// # Errors
    /// When the link is shut down.
    pub async fn send(&self, stanza: Stanza) -> Result<(), IqError> {
        self.commands
            .send(Command::Send(Box::new(stanza)))
            .await
            .map_err(|_| IqError::Closed)
    }

    /// Sends an IQ and waits for its reply.
    ///
    /// # Errors
    /// [`IqError`] for error replies, timeouts and a closed link.
    pub async fn iq(&self, iq: Iq) -> Result<Option<Element>, IqError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Iq {
                iq: Box::new(iq),
                reply,
            })
            .await
            .map_err(|_| IqError::Closed)?;
        match tokio::time::timeout(self.iq_timeout, rx).await {
            Err(_) => Err(IqError::Timeout(self.iq_timeout)),
            Ok(Err(_)) => Err(IqError::Closed),
            Ok(Ok(reply)) => iq_outcome(reply),
        }
    }
}

/// Login pacing.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First retry delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `n` (0-based): exponential, with ±50% jitter
    /// so that many nodes restarted together do not reconnect in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let mut r = [0u8; 2];
        let _ = getrandom::fill(&mut r);
        let jitter = f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX); // 0..1
        base.mul_f64(0.5 + jitter)
    }
}

/// Starts the link task.
///
/// # Errors
/// Bad JID, unreadable password file.
pub fn start(config: &XmppConfig, backoff: Backoff, events: EventSink) -> Result<Link> {
    let jid = BareJid::new(&config.jid).map_err(|e| anyhow!("xmpp.jid: {e}"))?;
    if jid.node().is_none() {
        bail!("xmpp.jid needs a localpart");
    }
    let password = read_secret(&config.password_file)?;
    let (state_tx, state_rx) = watch::channel(LinkState::Connecting { last_error: None });
    let state_tx = Arc::new(state_tx);
    let login_timeout = Duration::from_secs(config.login_timeout_secs.max(1));
    // Detect a dead link within about a minute.
    let timeouts = Timeouts {
        read_timeout: Duration::from_secs(45),
        response_timeout: Duration::from_secs(15),
    };
    let connector: Box<dyn FnMut(Option<String>, oneshot::Sender<Connection>) + Send> =
        match (config.tls, &config.server) {
            (TlsMode::Plaintext, Some(addr)) => reconnector(
                PlainNoDelay(DnsConfig::addr(addr)),
                jid.clone(),
                password,
                timeouts,
                login_timeout,
                backoff,
                Arc::clone(&state_tx),
            ),
            (TlsMode::Plaintext, None) => bail!("plaintext needs xmpp.server"),
            (TlsMode::Starttls, Some(addr)) => reconnector(
                StartTlsNoDelay(DnsConfig::addr(addr)),
                jid.clone(),
                password,
                timeouts,
                login_timeout,
                backoff,
                Arc::clone(&state_tx),
            ),
            (TlsMode::Starttls, None) => reconnector(
                StartTlsNoDelay(DnsConfig::srv_default_client(jid.domain().as_str())),
                jid.clone(),
                password,
                timeouts,
                login_timeout,
                backoff,
                Arc::clone(&state_tx),
            ),
        };
    let stream = StanzaStream::new(connector, 1024);
    let (commands, rx) = mpsc::channel(1024);
    let iq_timeout = Duration::from_secs(config.iq_timeout_secs.max(1));
    tokio::spawn(drive(stream, rx, events, state_tx, jid.clone(), iq_timeout));
    Ok(Link {
        commands,
        state: state_rx,
        iq_timeout,
        bare: jid,
    })
}

/// Connects with TCP_NODELAY: without it, a small publish can wait ~40 ms
/// for the server's delayed ACK (Nagle), the bulk of the propagation latency.
async fn connect_nodelay(dns: &DnsConfig) -> Result<tokio::net::TcpStream, tokio_xmpp::Error> {
    let tcp = dns.resolve().await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Opens an XMPP stream to `domain` over `io` (buffered).
async fn open_stream<Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: Io,
    domain: &str,
    ns: &'static str,
    timeouts: Timeouts,
) -> Result<tokio_xmpp::xmlstream::PendingFeaturesRecv<tokio::io::BufStream<Io>>, tokio_xmpp::Error>
{
    let header = StreamHeader {
        to: Some(std::borrow::Cow::Borrowed(domain)),
        from: None,
        id: None,
    };
    Ok(
        tokio_xmpp::xmlstream::initiate_stream(tokio::io::BufStream::new(io), ns, header, timeouts)
            .await?,
    )
}

/// What a connector returns.
type Connected<S> = Result<
    (
        tokio_xmpp::xmlstream::PendingFeaturesRecv<S>,
        sasl::common::ChannelBinding,
    ),
    tokio_xmpp::Error,
>;

/// A plain TCP connector with TCP_NODELAY (loopback only, see config).
#[derive(Debug, Clone)]
struct PlainNoDelay(DnsConfig);

impl ServerConnector for PlainNoDelay {
    type Stream = tokio::io::BufStream<tokio::net::TcpStream>;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Connected<Self::Stream> {
        let tcp = connect_nodelay(&self.0).await?;
        let pending = open_stream(tcp, jid.domain().as_str(), ns, timeouts).await?;
        Ok((pending, sasl::common::ChannelBinding::None))
    }
}

/// STARTTLS with TCP_NODELAY; the TLS part is tokio-xmpp's own.
#[derive(Debug, Clone)]
struct StartTlsNoDelay(DnsConfig);

impl ServerConnector for StartTlsNoDelay {
    type Stream =
        tokio::io::BufStream<tokio_xmpp::connect::tls_common::TlsStream<tokio::net::TcpStream>>;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Connected<Self::Stream> {
        let domain = jid.domain().as_str();
        let tcp = connect_nodelay(&self.0).await?;
        let (features, plain) = open_stream(tcp, domain, ns, timeouts)
            .await?
            .recv_features()
            .await?;
        if !features.can_starttls() {
            return Err(tokio_xmpp::Error::Protocol(
                tokio_xmpp::error::ProtocolError::NoTls,
            ));
        }
        let (tls, binding) = tokio_xmpp::connect::starttls::starttls(plain, domain).await?;
        Ok((open_stream(tls, domain, ns, timeouts).await?, binding))
    }
}

fn reconnector<C: ServerConnector>(
    server: C,
    jid: BareJid,
    password: String,
    timeouts: Timeouts,
    login_timeout: Duration,
    backoff: Backoff,
    state: Arc<watch::Sender<LinkState>>,
) -> Box<dyn FnMut(Option<String>, oneshot::Sender<Connection>) + Send> {
    Box::new(move |_preferred, slot: oneshot::Sender<Connection>| {
        let (server, jid, password, state) = (
            server.clone(),
            jid.clone(),
            password.clone(),
            Arc::clone(&state),
        );
        tokio::spawn(async move {
            let mut attempt = 0;
            loop {
                if slot.is_closed() {
                    return; // the stream was closed: stop retrying
                }
                let result = tokio::time::timeout(
                    login_timeout,
                    login(server.clone(), &jid, &password, timeouts),
                )
                .await;
                let error = match result {
                    Ok(Ok(connection)) => {
                        let _ = slot.send(connection);
                        return;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("login timed out after {login_timeout:?}"),
                };
                let delay = backoff.delay(attempt);
                tracing::warn!(jid = %jid, "XMPP login failed: {error}; retrying in {delay:.1?}");
                state.send_replace(LinkState::Connecting {
                    last_error: Some(error),
                });
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        });
    })
}

async fn login<C: ServerConnector>(
    server: C,
    jid: &BareJid,
    password: &str,
    timeouts: Timeouts,
) -> Result<Connection> {
    let full: Jid = jid.clone().into();
    let (stream, binding) = server
        .connect(&full, xmpp_parsers::ns::JABBER_CLIENT, timeouts)
        .await
        .map_err(|e| anyhow!("connect: {e}"))?;
    let (features, stream) = stream
        .recv_features()
        .await
        .map_err(|e| anyhow!("stream features: {e}"))?;
    let node = jid
        .node()
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default();
    let creds = sasl::common::Credentials::default()
        .with_username(node)
        .with_password(password.to_owned())
        .with_channel_binding(binding);
    let stream = tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds)
        .await
        .map_err(|e| anyhow!("authentication: {e}"))?;
    let stream = stream
        .send_header(StreamHeader {
            to: Some(std::borrow::Cow::Borrowed(jid.domain().as_str())),
            from: None,
            id: None,
        })
        .await
        .map_err(|e| anyhow!("stream restart: {e}"))?;
    let (features, stream) = stream
        .recv_features()
        .await
        .map_err(|e| anyhow!("stream features: {e}"))?;
    Ok(Connection {
        stream: stream.box_stream(),
        features,
        identity: full,
    })
}

/// What an IQ's reply means to its caller: the result's payload, or the
/// error with its condition.
///
/// # Errors
/// An error reply, or a reply that is not one.
pub fn iq_outcome(reply: Iq) -> Result<Option<Element>, IqError> {
    match reply {
        Iq::Result { payload, .. } => Ok(payload),
        Iq::Error { error, .. } => Err(IqError::Stanza {
            condition: format!("{:?}", error.defined_condition),
            text: error
                .texts
                .values()
                .next()
                .map(|t| format!(": {t}"))
                .unwrap_or_default(),
            error: Box::new(error),
        }),
        _ => Err(IqError::Closed),
    }
}

/// An IQ id nobody can guess: a forged reply must match the id of a
/// request in flight and come from the entity it was sent to.
pub(crate) fn iq_id() -> String {
    let mut b = [0u8; 12];
    // getrandom only fails without any OS entropy source; the link then
    // still matches replies by sender.
    let _ = getrandom::fill(&mut b);
    format!("corvid-{}", hex::encode(b))
}

/// Whether `from` may answer an IQ sent to `to`. An IQ without `to` goes
/// to our own account, answered by the server with no `from` or with our
/// bare or full JID.
fn reply_from_ok(to: Option<&Jid>, from: Option<&Jid>, own: &BareJid) -> bool {
    match (to, from) {
        (Some(to), Some(from)) => to == from,
        (None, None) => true,
        (None, Some(from)) => from.to_bare() == *own,
        (Some(to), None) => to.to_bare() == *own,
    }
}

struct Pending {
    to: Option<Jid>,
    reply: oneshot::Sender<Iq>,
}

async fn drive(
    mut stream: StanzaStream,
    mut commands: mpsc::Receiver<Command>,
    events: EventSink,
    state: Arc<watch::Sender<LinkState>>,
    own: BareJid,
    iq_timeout: Duration,
) {
    // Our server's JID: pings go to it, and its replies come from it.
    let server = Jid::from(BareJid::from_parts(None, own.domain()));
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut forged_replies: u64 = 0;
    let mut session: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    let mut ping_pending: Option<(String, tokio::time::Instant)> = None;
    loop {
        tokio::select! {
            event = stream.next() => {
                let Some(event) = event else {
                    tracing::error!("XMPP stream worker ended");
                    break;
                };
                match event {
                    Event::Stream(StreamEvent::Reset { bound_jid, .. }) => {
                        session += 1;
                        tracing::info!(jid = %bound_jid, session, "XMPP session established");
                        // Replies to IQs sent on the old stream will never come.
                        pending.clear();
                        ping_pending = None;
                        // Available presence: Prosody drops headline messages
                        // (PubSub notifications) for a bare JID with no available resource.
                        stream.send(Box::new(Presence::available().into())).await;
                        state.send_replace(LinkState::Online { bound: bound_jid.to_string(), session });
                        events.push(LinkEvent::Online { session });
                    }
                    Event::Stream(StreamEvent::Suspended) => {
                        tracing::warn!("XMPP connection lost; reconnecting");
                        state.send_replace(LinkState::Connecting { last_error: Some("connection lost".into()) });
                    }
                    Event::Stream(StreamEvent::Resumed) => {
                        tracing::info!("XMPP stream resumed");
                        state.send_replace(LinkState::Online { bound: String::new(), session });
                    }
                    Event::Stanza(Stanza::Iq(iq)) => match iq {
                        Iq::Result { .. } | Iq::Error { .. } => {
                            let from = iq.from().cloned();
                            if ping_pending.as_ref().is_some_and(|(id, _)| id == iq.id())
                                && reply_from_ok(Some(&server), from.as_ref(), &own)
                            {
                                ping_pending = None;
                            } else if let Some(p) = pending.get(iq.id()) {
                                if reply_from_ok(p.to.as_ref(), from.as_ref(), &own) {
                                    if let Some(p) = pending.remove(iq.id()) {
                                        let _ = p.reply.send(iq);
                                    }
                                } else {
                                    forged_replies += 1;
                                    tracing::debug!(
                                        from = ?from,
                                        forged_replies,
                                        "dropped an IQ reply from an entity the request did not go to"
                                    );
                                }
                            }
                        }
                        Iq::Get { from, id, payload, .. } | Iq::Set { from, id, payload, .. } => {
                            stream.send(Box::new(answer(from, id, &payload).into())).await;
                        }
                    },
                    Event::Stanza(Stanza::Message(message)) => {
                        events.tap(|| message.clone().into());
                        forward_events(message, &events);
                    }
                    Event::Stanza(Stanza::Presence(presence)) => events.tap(|| presence.into()),
                }
            }
            command = commands.recv() => {
                match command {
                    None => break,
                    Some(Command::Iq { mut iq, reply }) => {
                        let id = iq_id();
                        *iq.id_mut() = id.clone();
                        pending.insert(id, Pending { to: iq.to().cloned(), reply });
                        stream.send(Box::new((*iq).into())).await;
                    }
                    Some(Command::Send(stanza)) => {
                        stream.send(stanza).await;
                    }
                }
            }
            _ = tick.tick() => {
                pending.retain(|_, p| !p.reply.is_closed());
                let (unknown, full) = events.dropped();
                if unknown + full + forged_replies > 0 {
                    tracing::debug!(unknown_sender = unknown, queue_full = full, forged_replies, "XMPP input dropped so far");
                }
                // Our own XEP-0199 ping of the server: two unanswered pings
                // in a row mean a dead link.
                let online = matches!(*state.borrow(), LinkState::Online { .. });
                if online {
                    if let Some((_, sent)) = &ping_pending
                        && sent.elapsed() > iq_timeout * 2
                    {
                        tracing::warn!("server did not answer XEP-0199 pings; the stream's liveness probe will reconnect");
                        state.send_replace(LinkState::Connecting { last_error: Some("server stopped answering pings".into()) });
                        ping_pending = None;
                    }
                    if ping_pending.is_none() {
                        let id = iq_id();
                        let ping = Iq::from_get(id.clone(), xmpp_parsers::ping::Ping).with_to(server.clone());
                        stream.send(Box::new(ping.into())).await;
                        ping_pending = Some((id, tokio::time::Instant::now()));
                    }
                }
            }
        }
    }
    stream.close().await;
}

pub(crate) fn forward_events(message: Message, events: &EventSink) {
    let from = message.from.clone();
    let has_event = message
        .payloads
        .iter()
        .any(|p| p.is("event", xmpp_parsers::ns::PUBSUB_EVENT));
    if !has_event {
        return;
    }
    // The sender is checked before anything is queued.
    if !events.accepts(from.as_ref()) {
        events.dropped_unknown.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &events.metrics {
            m.rejected("unknown", "unknown-sender");
        }
        return;
    }
    for payload in message.payloads {
        if payload.is("event", xmpp_parsers::ns::PUBSUB_EVENT) {
            events.push(LinkEvent::PubSub {
                from: from.clone(),
                event: payload,
            });
        }
    }
}

fn answer(from: Option<Jid>, id: String, payload: &Element) -> Iq {
    if payload.is("ping", xmpp_parsers::ns::PING) {
        return Iq::Result {
            from: None,
            to: from,
            id,
            payload: None,
        };
    }
    if payload.is("time", xmpp_parsers::ns::TIME) {
        let t = xmpp_parsers::time::TimeResult::from(chrono::Utc::now());
        return Iq::Result {
            from: None,
            to: from,
            id,
            payload: Some(t.into()),
        };
    }
    Iq::Error {
        from: None,
        to: from,
        id,
        payload: None,
        error: StanzaError {
            type_: ErrorType::Cancel,
            by: None,
            defined_condition: DefinedCondition::ServiceUnavailable,
            texts: Default::default(),
            other: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::new(s).expect("jid")
    }

    #[test]
    fn an_iq_reply_counts_only_from_the_entity_it_went_to() {
        let own = BareJid::new("corvidd@b.test").expect("jid");
        let to = jid("pubsub.a.test");
        assert!(reply_from_ok(Some(&to), Some(&jid("pubsub.a.test")), &own));
        assert!(reply_from_ok(Some(&to), Some(&jid("PubSub.A.test")), &own));
        assert!(!reply_from_ok(
            Some(&to),
            Some(&jid("mallory@b.test")),
            &own
        ));
        assert!(!reply_from_ok(Some(&to), Some(&jid("pubsub.b.test")), &own));
        assert!(
            !reply_from_ok(Some(&to), None, &own),
            "no from = our own server"
        );
        // An IQ to our own account is answered by our server.
        assert!(reply_from_ok(None, None, &own));
        assert!(reply_from_ok(None, Some(&jid("corvidd@b.test/x")), &own));
        assert!(!reply_from_ok(None, Some(&jid("pubsub.a.test")), &own));
    }

    #[test]
    fn iq_ids_are_unpredictable() {
        let a = iq_id();
        let b = iq_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), "corvid-".len() + 24);
    }
}
