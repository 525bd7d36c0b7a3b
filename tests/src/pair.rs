//! Two servers over s2s on loopback whose corvidds serve their feeds
//! through their components, set up as the README says, with A's feed
//! filled straight into its store: for the feed benchmark and the soak
//! runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use corvid_node::store::Store;
use corvid_protocol::record::Category;

use crate::node::{Identity, Node, component_config};
use crate::prosody::{Prosody, Version, hosts_file, start_with_component};
use crate::{free_port, numbered_report, write_private};

const SECRET: &str = "pair-component-secret";

/// A (publisher, running) and B (follower's server running, its corvidd
/// started by [`Pair::follower`]).
#[derive(Debug)]
pub struct Pair {
    /// A's server.
    pub a: Prosody,
    /// B's server.
    pub b: Prosody,
    /// A's corvidd.
    pub na: Node,
    ips: (String, String),
    b_port: u16,
    secret: PathBuf,
    _dirs: Vec<tempfile::TempDir>,
}

/// Bytes a corvidd's component received.
pub fn bytes_in(n: &Node) -> u64 {
    n.counter("corvid_component_bytes_total", &["in"])
}

/// A store in `dir` with `n` own reports about `log{i}@spam.example`,
/// written straight into it.
pub fn fill(dir: &Path, n: u64) {
    let store = Store::open(dir, 64 << 20).expect("store");
    let now = corvid_node::now();
    let mut i = 0;
    while i < n {
        let end = (i + 100_000).min(n);
        store
            .batch(false, &mut |tx| {
                for j in i..end {
                    tx.put_own(&numbered_report("log", Category::Spam, j, now))?;
                }
                Ok(())
            })
            .expect("fill");
        i = end;
    }
    store.shut_down().expect("close");
}

impl Pair {
    /// A with `n` records running; B's Prosody (listing A's component in
    /// `unlimited_jids` when `unlimited`, else throttled by Debian's
    /// `mod_limits`) running, B's corvidd not yet.
    /// With `tls`, s2s runs over TLS (self-signed certificates, dialback).
    pub fn start(version: Version, n: u64, ips: (&str, &str), unlimited: bool, tls: bool) -> Self {
        let hosts = hosts_file(&format!(
            "{} a.test pubsub.a.test corvid.a.test\n{} b.test pubsub.b.test corvid.b.test\n",
            ips.0, ips.1
        ));
        let (pa, pb) = (free_port(), free_port());
        let start = |ip: &str, domain: &str, port: u16, peer: Option<&str>| {
            let peers: Vec<&str> = peer.into_iter().collect();
            start_with_component(version, ip, domain, &hosts, port, SECRET, &peers, tls)
        };
        let a = start(ips.0, "a.test", pa, Some("corvid.b.test"));
        let b = start(ips.1, "b.test", pb, unlimited.then_some("corvid.a.test"));
        let secrets = tempfile::tempdir().expect("tempdir");
        let secret = secrets.path().join("secret");
        write_private(&secret, SECRET);
        let data = tempfile::tempdir().expect("tempdir");
        let t = Instant::now();
        fill(data.path(), n);
        eprintln!(
            "  (A's store filled with {n} records in {:.1} s)",
            t.elapsed().as_secs_f64()
        );
        let (ia, ib) = (Identity::new("a.test"), Identity::new("b.test"));
        let na = Node::start_with_data(
            &a,
            &ia,
            &component_config(&secret, ips.0, pa, "a.test", &ib),
            Some(data.path()),
        );
        Self {
            a,
            b,
            na,
            ips: (ips.0.to_owned(), ips.1.to_owned()),
            b_port: pb,
            secret,
            _dirs: vec![secrets, data],
        }
    }

    /// Starts B's corvidd, following A.
    pub fn follower(&self) -> Node {
        Node::start(
            &self.b,
            &Identity::new("b.test"),
            &component_config(
                &self.secret,
                &self.ips.1,
                self.b_port,
                "b.test",
                &Identity::new("a.test"),
            ),
        )
    }
}
