//! A test-only feed writer that announces log versions other than the one
//! corvidd implements (spec §13.1), run as an XMPP component on a real
//! Prosody: it serves log version 1 (a checkpoint and one compact page of
//! signed records) beside a "version 2" whose items today's reader cannot
//! parse, and counts every request for the version-2 nodes.

use std::sync::{Arc, Mutex};

use corvid_node::component::RawStream;
use corvid_protocol::feed::{CHECKPOINT_ITEM, CHUNK_PREFIX};
use corvid_protocol::item::{Body, Envelope, FeedAddress, SignedItem};
use corvid_protocol::keys::{SecretKey, Signer as _};
use corvid_protocol::record::{Issuer, Record};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::minidom::rxml::NcName;

const NS_CLIENT: &str = "jabber:client";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// What the writer serves, changeable while it runs.
#[derive(Debug, Default)]
pub struct WriterState {
    /// The log versions its feed node announces.
    pub versions: Vec<u32>,
    /// The records of its log (version 1), in id order.
    pub records: Vec<Record>,
    /// Requests for nodes of versions other than 1.
    pub other_version_requests: u64,
    /// Requests for the version-1 nodes.
    pub v1_requests: u64,
    /// Hostile items served in the first compact page beside the records:
    /// see [`hostile_items`].
    pub hostile: bool,
}

/// Three items a reader must reject and count, never store: one whose
/// JSON was altered after signing (`bad-signature`), one signed for
/// another feed and replayed here (`bad-signature`), and one over the
/// 64 KiB item limit (`oversized`).
pub fn hostile_items(
    key: &SecretKey,
    issuer: &Issuer,
    feed: &FeedAddress,
    record: &Record,
) -> Vec<Element> {
    let body = || Body::Snapshot {
        generation: 0,
        records: vec![record.clone()],
    };
    let id = format!("{CHUNK_PREFIX}{}", record.id());
    let tampered = {
        let item = signed(key, issuer, feed, &id, body());
        let xml = String::from(&item).replacen("\"confidence\":", "\"confidence\":1", 1);
        xml.parse::<Element>().expect("tampered item")
    };
    let elsewhere: FeedAddress = "xmpp:corvid.elsewhere.test?;node=corvid"
        .parse()
        .expect("feed");
    let replayed = signed(key, issuer, &elsewhere, &id, body());
    let oversized = Element::builder("item", NS_PUBSUB)
        .attr(name("id"), id.as_str())
        .append(
            Element::builder("report", "urn:xmpp:reporting:1")
                .attr(name("reason"), "urn:xmpp:reporting:spam")
                .append(
                    Element::builder("signed", "urn:x-corvid:1")
                        .attr(name("encoding"), "json")
                        .attr(name("sig"), "A".repeat(86))
                        .append(format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000)))
                        .build(),
                )
                .build(),
        )
        .build();
    vec![tampered, replayed, oversized]
}

/// A running writer: its state, shared with the test.
#[derive(Debug, Clone)]
pub struct Writer {
    /// What it serves and what it was asked.
    pub state: Arc<Mutex<WriterState>>,
}

fn name(n: &str) -> NcName {
    NcName::try_from(n).expect("an XML name")
}

impl Writer {
    /// Connects to `server` as the component `jid` (the feed's service) and
    /// serves the feed `xmpp:{jid}?;node=corvid` signed by `key` for
    /// `domain`, on a thread of its own until the process ends.
    pub fn start(server: &str, jid: &str, secret: &str, domain: &str, key: SecretKey) -> Self {
        let state = Arc::new(Mutex::new(WriterState::default()));
        let writer = Self {
            state: Arc::clone(&state),
        };
        let (server, jid, secret, domain) = (
            server.to_owned(),
            jid.to_owned(),
            secret.to_owned(),
            domain.to_owned(),
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                // The server may not listen for components yet.
                let started = std::time::Instant::now();
                let mut stream = loop {
                    match RawStream::connect(&server, &jid, &secret).await {
                        Ok(s) => break s,
                        Err(e) if started.elapsed() > std::time::Duration::from_secs(15) => {
                            panic!("the test writer cannot log in as a component: {e:#}")
                        }
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                    }
                };
                let _ = ready_tx.send(());
                let feed: FeedAddress = format!("xmpp:{jid}?;node=corvid").parse().expect("feed");
                let issuer = Issuer {
                    domain,
                    key: key.public_key().key_id(),
                };
                while let Ok(stanza) = stream.next().await {
                    if stanza.name() != "iq" {
                        continue;
                    }
                    let reply = answer(&stanza, &state, &feed, &issuer, &key);
                    if let Some(reply) = reply {
                        let _ = stream.send(reply).await;
                    }
                }
            });
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the test writer connected");
        writer
    }
}

fn signed(key: &SecretKey, issuer: &Issuer, feed: &FeedAddress, id: &str, body: Body) -> Element {
    let envelope = Envelope {
        corvid: 1,
        issuer: issuer.clone(),
        body,
    };
    let item = SignedItem::sign(key, &envelope, feed, id).expect("signs");
    Element::builder("item", NS_PUBSUB)
        .attr(name("id"), id)
        .append(item.to_element())
        .build()
}

fn answer(
    iq: &Element,
    state: &Mutex<WriterState>,
    feed: &FeedAddress,
    issuer: &Issuer,
    key: &SecretKey,
) -> Option<Element> {
    let type_ = iq.attr("type")?;
    if type_ != "get" && type_ != "set" {
        return None;
    }
    let reply = |type_: &str, payload: Option<Element>| {
        let mut r = Element::builder("iq", NS_CLIENT)
            .attr(name("type"), type_)
            .attr(name("id"), iq.attr("id").unwrap_or(""))
            .attr(name("from"), iq.attr("to").unwrap_or(""))
            .attr(name("to"), iq.attr("from").unwrap_or(""))
            .build();
        if let Some(p) = payload {
            r.append_child(p);
        }
        r
    };
    let error = |condition: &str| {
        let e = Element::builder("error", NS_CLIENT)
            .attr(name("type"), "cancel")
            .append(Element::builder(condition, NS_STANZAS).build())
            .build();
        reply("error", Some(e))
    };
    let payload = iq.children().next()?;
    let mut st = state.lock().expect("state");
    if payload.is("query", NS_DISCO_INFO) {
        let mut q = Element::builder("query", NS_DISCO_INFO)
            .attr(name("node"), payload.attr("node").unwrap_or(""))
            .append(
                Element::builder("identity", NS_DISCO_INFO)
                    .attr(name("category"), "pubsub")
                    .attr(name("type"), "leaf")
                    .build(),
            )
            .build();
        for v in &st.versions {
            q.append_child(
                Element::builder("feature", NS_DISCO_INFO)
                    .attr(name("var"), format!("urn:xmpp:corvid:log:{v}"))
                    .build(),
            );
        }
        return Some(reply("result", Some(q)));
    }
    if !payload.is("pubsub", NS_PUBSUB) {
        return Some(error("feature-not-implemented"));
    }
    let op = payload.children().find(|c| !c.is("set", NS_RSM))?;
    let node = op.attr("node").unwrap_or("");
    if node.starts_with("corvid/v") {
        // Another version: its items are not version 1's.
        st.other_version_requests += 1;
        let items = Element::builder("items", NS_PUBSUB)
            .attr(name("node"), node)
            .append(
                Element::builder("item", NS_PUBSUB)
                    .attr(name("id"), "v2/0")
                    .append(Element::builder("log", "urn:xmpp:corvid:log:2").build())
                    .build(),
            )
            .build();
        return Some(reply(
            "result",
            Some(Element::builder("pubsub", NS_PUBSUB).append(items).build()),
        ));
    }
    st.v1_requests += 1;
    match (op.name(), node) {
        ("subscribe", "corvid") => {
            let s = Element::builder("subscription", NS_PUBSUB)
                .attr(name("node"), "corvid")
                .attr(name("jid"), op.attr("jid").unwrap_or(""))
                .attr(name("subscription"), "subscribed")
                .build();
            Some(reply(
                "result",
                Some(Element::builder("pubsub", NS_PUBSUB).append(s).build()),
            ))
        }
        ("items", "corvid") => {
            let mut items = Element::builder("items", NS_PUBSUB)
                .attr(name("node"), "corvid")
                .build();
            if op.children().any(|i| i.attr("id") == Some(CHECKPOINT_ITEM)) {
                let body = Body::Checkpoint {
                    last: st.records.last().map(Record::id),
                    records: st.records.len() as u64,
                    members_only: 0,
                    keys: Vec::new(),
                    issued_at: corvid_api::now(),
                };
                items.append_child(signed(key, issuer, feed, CHECKPOINT_ITEM, body));
            }
            Some(reply(
                "result",
                Some(Element::builder("pubsub", NS_PUBSUB).append(items).build()),
            ))
        }
        ("items", "corvid/compact") => {
            // One page with every record; the page after it is empty and
            // names no last record, which ends the read.
            let after = payload
                .get_child("set", NS_RSM)
                .and_then(|s| s.get_child("after", NS_RSM))
                .map(Element::text);
            let mut items = Element::builder("items", NS_PUBSUB)
                .attr(name("node"), "corvid/compact")
                .build();
            let mut set = Element::builder("set", NS_RSM).build();
            if after.is_none()
                && let Some(last) = st.records.last()
            {
                let id = format!("{CHUNK_PREFIX}{}", last.id());
                let body = Body::Snapshot {
                    generation: 0,
                    records: st.records.clone(),
                };
                items.append_child(signed(key, issuer, feed, &id, body));
                if st.hostile {
                    for item in hostile_items(key, issuer, feed, last) {
                        items.append_child(item);
                    }
                }
                set.append_child(
                    Element::builder("last", NS_RSM)
                        .append(last.id().to_string())
                        .build(),
                );
            }
            Some(reply(
                "result",
                Some(
                    Element::builder("pubsub", NS_PUBSUB)
                        .append(items)
                        .append(set)
                        .build(),
                ),
            ))
        }
        _ => Some(error("feature-not-implemented")),
    }
}
