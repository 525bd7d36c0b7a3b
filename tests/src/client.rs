//! A plain XMPP client for tests that play another party (an attacker, an
//! operator purging a node), built on corvidd's own link and PubSub code.

use std::time::Duration;

use corvid_node::config::{TlsMode, XmppConfig};
use corvid_node::pubsub;
use corvid_node::xmpp::{self, Backoff, Link, LinkEvent};
use xmpp_parsers::minidom::Element;

use crate::prosody::{Prosody, password};
use crate::write_private;

/// A logged-in client with its own runtime.
#[derive(Debug)]
pub struct Client {
    rt: tokio::runtime::Runtime,
    link: Link,
    _dir: tempfile::TempDir,
    /// Events received (PubSub), drained by tests that care.
    pub events: tokio::sync::mpsc::Receiver<LinkEvent>,
}

impl Client {
    /// Logs in as `user@host` (registered by the harness).
    ///
    /// # Panics
    /// If the login fails.
    pub fn login(prosody: &Prosody, user: &str, host: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("pw");
        write_private(&pw, &password(user, host));
        let config = XmppConfig {
            jid: format!("{user}@{host}"),
            password_file: pw,
            server: Some(prosody.c2s_addr()),
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
        let link = rt.block_on(async {
            let link = xmpp::start(
                &config,
                Backoff {
                    initial: Duration::from_millis(200),
                    max: Duration::from_secs(2),
                },
                xmpp::EventSink::new(tx),
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
}
