//! A publisher with 1,000 subscribers: the time and the bytes to notify all
//! of them of one report (issue "Corvid serves its own feeds").
//!
//! One Prosody 0.12.3 for `a.test` on loopback, set up as the README says;
//! A's corvidd is its component `corvid.a.test`. The subscribers are 1,000
//! JIDs (`u1`..`u4` at 250 components `s0.a.test`..`s249.a.test` of the same
//! server, four per domain being the most a feed accepts from one domain),
//! each subscribed to A's feed, each component counting the notifications
//! it receives. For 20 reports, one every 2 s: the time from A's durable
//! acknowledgement until all 1,000 notifications arrived, and A's
//! component's bytes out per report.
//!
//! Not pinned: Prosody, corvidd and the bench share both cores.
//! Run: `cargo bench -p corvid-tests --bench fanout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corvid_node::component::RawStream;
use corvid_tests::node::{Identity, Node, component_config};
use corvid_tests::prosody::{Prosody, ProsodyOptions, Version, component_settings};
use corvid_tests::{free_port, wait_for, write_private};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::minidom::rxml::NcName;

const SECRET: &str = "fanout-component-secret";
const DOMAINS: usize = 250;
const PER_DOMAIN: usize = 4;
const REPORTS: usize = 20;

fn name(n: &str) -> NcName {
    NcName::try_from(n).expect("name")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    corvid_tests::node::set_corvidd_bin(env!("CARGO_BIN_EXE_corvidd-under-test"));
    let ip = "127.0.0.68";
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    write_private(&secret, SECRET);
    let (global, mut tail) = component_settings(ip, "a.test", port, SECRET, &[]);
    for i in 0..DOMAINS {
        tail.push_str(&format!(
            "Component \"s{i}.a.test\"\n    component_secret = \"{SECRET}\"\n"
        ));
    }
    let prosody = Prosody::start(
        &["a.test"],
        &["corvidd@a.test"],
        ProsodyOptions {
            interface: ip.into(),
            version: Version::Debian12,
            global,
            tail,
            ..ProsodyOptions::default()
        },
    );
    let na = Node::start(
        &prosody,
        &Identity::new("a.test"),
        &component_config(&secret, ip, port, "a.test", &Identity::new("b.test")),
    );
    na.wait_component_online(Duration::from_secs(30));
    let received = Arc::new(AtomicU64::new(0));
    let subscribed = Arc::new(AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let server = format!("{ip}:{port}");
    for i in 0..DOMAINS {
        let (received, subscribed, server) = (
            Arc::clone(&received),
            Arc::clone(&subscribed),
            server.clone(),
        );
        rt.spawn(async move {
            let domain = format!("s{i}.a.test");
            let mut stream = RawStream::connect(&server, &domain, SECRET)
                .await
                .expect("a subscriber component logs in");
            for u in 1..=PER_DOMAIN {
                let jid = format!("u{u}@{domain}");
                let iq = Element::builder("iq", "jabber:client")
                    .attr(name("type"), "set")
                    .attr(name("id"), format!("sub{u}"))
                    .attr(name("from"), jid.as_str())
                    .attr(name("to"), "corvid.a.test")
                    .append(
                        Element::builder("pubsub", "http://jabber.org/protocol/pubsub")
                            .append(
                                Element::builder("subscribe", "http://jabber.org/protocol/pubsub")
                                    .attr(name("node"), "corvid")
                                    .attr(name("jid"), jid.as_str())
                                    .build(),
                            )
                            .build(),
                    )
                    .build();
                stream.send(iq).await.expect("send");
            }
            while let Ok(stanza) = stream.next().await {
                match stanza.name() {
                    "iq" if stanza.attr("type") == Some("result") => {
                        subscribed.fetch_add(1, Ordering::Relaxed);
                    }
                    "message" => {
                        let items = stanza
                            .get_child("event", "http://jabber.org/protocol/pubsub#event")
                            .and_then(|e| e.get_child("items", "http://jabber.org/protocol/pubsub#event"));
                        // Reports only, not checkpoints.
                        let report = items.is_some_and(|i| {
                            i.children().any(|it| it.attr("id").is_some_and(|id| id.starts_with("d/")))
                        });
                        if report && received.fetch_add(1, Ordering::Relaxed) == 0 {
                            let mut wire = Vec::new();
                            let _ = stanza.write_to(&mut wire);
                            println!("  a notification as a subscriber's component receives it (parsed and written again, the JSON's quotes unescaped): {} B", wire.len());
                        }
                    }
                    _ => {}
                }
            }
        });
    }
    let total = (DOMAINS * PER_DOMAIN) as u64;
    wait_for(Duration::from_secs(60), "1,000 subscriptions", || {
        (subscribed.load(Ordering::Relaxed) >= total).then_some(())
    });
    println!(
        "fanout bench: one Prosody 0.12.3, A's component with {total} subscribers at {DOMAINS} components, not pinned"
    );
    let mut times = Vec::new();
    let out = |na: &Node| na.counter("corvid_component_bytes_total", &["out"]);
    let mut bytes = Vec::new();
    for r in 0..REPORTS {
        std::thread::sleep(Duration::from_secs(2));
        let (before, sent) = (received.load(Ordering::Relaxed), out(&na));
        na.report(&format!("fanout{r}@spam.example"), "spam", 90);
        let acked = Instant::now();
        // Polled every millisecond (wait_for's 50 ms would blur it).
        while received.load(Ordering::Relaxed) < before + total {
            assert!(
                acked.elapsed() < Duration::from_secs(60),
                "report {r}: {} of {total} notified after 60 s",
                received.load(Ordering::Relaxed) - before
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        times.push(acked.elapsed().as_secs_f64() * 1000.0);
        bytes.push(out(&na) - sent);
    }
    times.sort_by(f64::total_cmp);
    bytes.sort_unstable();
    println!(
        "  one report to {total} subscribers: all notified after p50 {:.1} ms, max {:.1} ms (of {REPORTS}); A's component sent {} bytes per report (p50; {:.0} per subscriber)",
        times[times.len() / 2],
        times[times.len() - 1],
        bytes[bytes.len() / 2],
        bytes[bytes.len() / 2] as f64 / total as f64
    );
    drop(na);
    drop(prosody);
}
