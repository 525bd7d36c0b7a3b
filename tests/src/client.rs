//! A plain XMPP client for tests that play another party (an attacker, an
//! operator purging a node), built on corvidd's own link and PubSub code.

use std::time::Duration;

use corvid_node::config::{TlsMode, XmppConfig};
use corvid_node::pubsub;
use corvid_node::xmpp::{self, Backoff, Link, LinkEvent};
use xmpp_parsers::minidom::Element;

use crate::prosody::{Prosody, password};
use crate::write_private;

const COMMANDS: &str = "http://jabber.org/protocol/commands";
/// mod_corvid's ad-hoc command node for the spam folder.
pub const SPAM_FOLDER: &str = "urn:x-corvid:spam-folder";

fn attr(name: &'static str) -> xmpp_parsers::minidom::rxml::NcName {
    xmpp_parsers::minidom::rxml::NcName::try_from(name).expect("attribute name")
}

/// One opened session of mod_corvid's "Spam folder" command.
#[derive(Debug)]
pub struct SpamFolder {
    /// The ad-hoc session to complete.
    pub session: String,
    /// The form's instructions (how many are held).
    pub instructions: String,
    /// The held messages, newest last: (label, id).
    pub messages: Vec<(String, String)>,
}

/// A logged-in client with its own runtime.
#[derive(Debug)]
pub struct Client {
    rt: tokio::runtime::Runtime,
    link: Link,
    _dir: tempfile::TempDir,
    /// Events received (PubSub), drained by tests that care.
    pub events: tokio::sync::mpsc::Receiver<LinkEvent>,
    /// Every message and presence received.
    pub stanzas: std::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Element>>,
}

impl Client {
    /// Logs in as `user@host` (registered by the harness).
    ///
    /// # Panics
    /// If the login fails.
    pub fn login(prosody: &Prosody, user: &str, host: &str) -> Self {
        Self::login_at(prosody.c2s_addr(), user, host)
    }

    /// Logs in as `user@host` at a server's c2s address (`ip:port`),
    /// plaintext, with the harness's password for the account.
    ///
    /// # Panics
    /// If the login fails.
    pub fn login_at(server: String, user: &str, host: &str) -> Self {
        Self::login_with(server, &format!("{user}@{host}"), &password(user, host))
    }

    /// Logs in as `jid` with `secret` at a server's c2s address
    /// (`ip:port`), plaintext.
    ///
    /// # Panics
    /// If the login fails.
    pub fn login_with(server: String, jid: &str, secret: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("pw");
        write_private(&pw, secret);
        let config = XmppConfig {
            jid: jid.to_owned(),
            password_file: pw,
            server: Some(server),
            tls: TlsMode::Plaintext,
            login_timeout_secs: 10,
            iq_timeout_secs: 20,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, events) = tokio::sync::mpsc::channel(65_536);
        let (stanzas_tx, stanzas) = tokio::sync::mpsc::unbounded_channel();
        let link = rt.block_on(async {
            let link = xmpp::start(
                &config,
                Backoff {
                    initial: Duration::from_millis(200),
                    max: Duration::from_secs(2),
                },
                xmpp::EventSink::new(tx).with_stanzas(stanzas_tx),
            )
            .expect("link");
            link.wait_online(Duration::from_secs(20))
                .await
                .expect("login");
            link
        });
        Self {
            rt,
            link,
            _dir: dir,
            events,
            stanzas: std::sync::Mutex::new(stanzas),
        }
    }

    /// The link, for direct calls inside [`Client::run`].
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Runs a future on the client's runtime.
    pub fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Creates (or reconfigures) a node with Corvid's feed configuration.
    pub fn ensure_node(&self, service: &str, node: &str) {
        self.run(pubsub::ensure_node(
            &self.link,
            service,
            node,
            &pubsub::feed_node_config(256, "open"),
        ))
        .expect("ensure node");
    }

    /// Publishes an item.
    pub fn publish(&self, service: &str, node: &str, id: &str, payload: Element) {
        self.run(pubsub::publish(&self.link, service, node, id, payload))
            .expect("publish");
    }

    /// Publishes what a feed writer asks for (its retractions are not
    /// needed on a fresh node); the number of items published.
    pub fn publish_ops(&self, service: &str, ops: Vec<corvid_protocol::feed::FeedOp>) -> usize {
        let mut count = 0;
        for op in ops {
            if let corvid_protocol::feed::FeedOp::Publish {
                node,
                item_id,
                item,
            } = op
            {
                self.publish(service, &node, &item_id, item.to_element());
                count += 1;
            }
        }
        count
    }

    /// Purges a node.
    pub fn purge(&self, service: &str, node: &str) {
        self.run(pubsub::purge(&self.link, service, node))
            .expect("purge");
    }

    /// Deletes a node.
    pub fn delete(&self, service: &str, node: &str) {
        self.run(pubsub::delete(&self.link, service, node))
            .expect("delete");
    }

    /// Sends a raw stanza.
    pub fn send(&self, stanza: xmpp_parsers::stanza::Stanza) {
        self.run(self.link.send(stanza)).expect("send");
    }

    /// Sends a chat message with `body` to `to` (a bare or full JID).
    pub fn message(&self, to: &str, body: &str) {
        let mut m = xmpp_parsers::message::Message::chat(Some(to.parse().expect("jid")));
        m.bodies
            .insert(xmpp_parsers::message::Lang::default(), body.to_owned());
        self.send(m.into());
    }

    /// Runs one step of an ad-hoc command (XEP-0050) at `to`; the reply's
    /// `<command/>`.
    ///
    /// # Panics
    /// If the server answers with an error or without a command.
    pub fn command(&self, to: &str, payload: Element) -> Element {
        let iq = xmpp_parsers::iq::Iq::Set {
            from: None,
            to: Some(to.parse().expect("jid")),
            id: String::new(),
            payload,
        };
        self.run(self.link.iq(iq))
            .expect("ad-hoc command")
            .expect("a command element")
    }

    /// Opens mod_corvid's "Spam folder" command at `host`: the session and
    /// the held messages, each as (label, id).
    ///
    /// # Panics
    /// If the command is missing or its form is not mod_corvid's.
    pub fn spam_folder(&self, host: &str) -> SpamFolder {
        let reply = self.command(
            host,
            Element::builder("command", COMMANDS)
                .attr(attr("node"), SPAM_FOLDER)
                .attr(attr("action"), "execute")
                .build(),
        );
        let session = reply.attr("sessionid").expect("session").to_owned();
        let form = reply.get_child("x", "jabber:x:data").expect("form");
        let instructions = form
            .get_child("instructions", "jabber:x:data")
            .map(Element::text)
            .unwrap_or_default();
        let field = form
            .children()
            .find(|c| c.attr("var") == Some("messages"))
            .expect("messages field");
        let messages = field
            .children()
            .filter(|c| c.name() == "option")
            .map(|o| {
                (
                    o.attr("label").unwrap_or_default().to_owned(),
                    o.get_child("value", "jabber:x:data")
                        .map(Element::text)
                        .unwrap_or_default(),
                )
            })
            .collect();
        SpamFolder {
            session,
            instructions,
            messages,
        }
    }

    /// Completes a spam folder session: `action` ("release" or "delete")
    /// on the messages `ids`, and choices for flagged messages from now on,
    /// each a field (`flagged_spam`, `flagged_abuse`, `flagged_dangerous`)
    /// and "folder", "deliver" or "refuse". The reply's `<command/>`.
    pub fn spam_folder_submit(
        &self,
        host: &str,
        folder: &SpamFolder,
        ids: &[&str],
        action: &str,
        choices: &[(&str, &str)],
    ) -> Element {
        let field = |var: &str, values: &[&str]| {
            let mut f = Element::builder("field", "jabber:x:data").attr(attr("var"), var);
            for v in values {
                f = f.append(
                    Element::builder("value", "jabber:x:data")
                        .append((*v).to_owned())
                        .build(),
                );
            }
            f.build()
        };
        let mut form = Element::builder("x", "jabber:x:data")
            .attr(attr("type"), "submit")
            .append(field("FORM_TYPE", &[SPAM_FOLDER]))
            .append(field("messages", ids))
            .append(field("action", &[action]));
        for (var, choice) in choices {
            form = form.append(field(var, &[choice]));
        }
        self.command(
            host,
            Element::builder("command", COMMANDS)
                .attr(attr("node"), SPAM_FOLDER)
                .attr(attr("sessionid"), folder.session.clone())
                .attr(attr("action"), "complete")
                .append(form.build())
                .build(),
        )
    }

    /// Sends a chat message with `body` and the stanza id `id` to `to`.
    pub fn message_with_id(&self, to: &str, id: &str, body: &str) {
        let mut m = xmpp_parsers::message::Message::chat(Some(to.parse().expect("jid")));
        m.id = id.parse().ok();
        m.bodies
            .insert(xmpp_parsers::message::Lang::default(), body.to_owned());
        self.send(m.into());
    }

    /// Every stanza received so far, without waiting.
    pub fn drain(&self) -> Vec<Element> {
        let mut rx = self.stanzas.lock().expect("stanzas");
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    /// The first stanza received within `timeout` that `want` accepts;
    /// stanzas before it are dropped.
    pub fn wait_stanza(
        &self,
        timeout: Duration,
        mut want: impl FnMut(&Element) -> bool,
    ) -> Option<Element> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.stanzas.lock().expect("stanzas");
        self.rt.block_on(async {
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) if want(&s) => return Some(s),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return None,
                }
            }
        })
    }

    /// The bodies of chat messages received within `timeout`.
    pub fn bodies(&self, timeout: Duration) -> Vec<String> {
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + timeout;
        while let Some(s) = self.wait_stanza(
            deadline.saturating_duration_since(std::time::Instant::now()),
            |s| s.name() == "message" && s.get_child("body", "jabber:client").is_some(),
        ) {
            if let Some(b) = s.get_child("body", "jabber:client") {
                out.push(b.text());
            }
        }
        out
    }
}
