//! Load: a 100k-report feed backfilled through a default-configured
//! Prosody, and pipelined publishes while events pour in.

use std::time::{Duration, Instant};

use corvid_protocol::feed::FeedWriter;
use corvid_protocol::item::FeedAddress;
use corvid_protocol::record::{Category, Issuer, Record};
use corvid_tests::client::Client;
use corvid_tests::node::{Identity, Node};
use corvid_tests::prosody::{Prosody, ProsodyOptions};
use corvid_tests::{numbered_report, wait_for};

fn records(n: u32, now: u64) -> impl Iterator<Item = Record> {
    (0..n).map(move |i| numbered_report("bulk", Category::BulkRegistration, u64::from(i), now))
}

#[test]
fn a_100k_report_feed_backfills_completely() {
    crate::init();
    // Default pubsub_max_items (256), no RSM, default stanza limits and
    // mod_limits rates; corvidd's accounts are in unlimited_jids as the
    // README asks. PubSub items in memory so the test's publisher is quick.
    let prosody = Prosody::start(
        &["a.test", "b.test"],
        &["corvidd@a.test", "corvidd@b.test"],
        ProsodyOptions {
            memory_pubsub: true,
            ..ProsodyOptions::default()
        },
    );
    let ia = Identity::new("a.test");
    let feed: FeedAddress = ia.feed().parse().expect("feed");
    let publisher = Client::login(&prosody, "corvidd", "a.test");
    publisher.ensure_node(&feed.service, &feed.node);
    let now = corvid_node::now();
    let mut writer = FeedWriter::new(
        feed.clone(),
        Issuer {
            domain: "a.test".into(),
            key: ia.public().key_id(),
        },
    );
    let ops = writer
        .replace_all(&ia.key, records(100_000, now), now)
        .expect("100k fit one node");
    let published = Instant::now();
    let items = publisher.publish_ops(&feed.service, ops);
    assert!(items <= 256, "{items} items");
    eprintln!(
        "published 100k reports as {items} items in {:?}",
        published.elapsed()
    );

    let started = Instant::now();
    let b = Node::start(
        &prosody,
        &Identity::new("b.test"),
        &ia.peer_block(1.0, "enforce"),
    );
    wait_for(
        Duration::from_secs(180),
        "B to hold all 100k reports",
        || (b.peer_records("a.test") >= 100_000).then_some(()),
    );
    let took = started.elapsed();
    eprintln!(
        "BACKFILL 100k reports: {:.1} s (start of corvidd to last record stored)",
        took.as_secs_f64()
    );
    assert_eq!(b.peer_records("a.test"), 100_000);
    for i in [0u32, 4_242, 99_999] {
        assert_eq!(b.action("jid", &format!("bulk{i}@spam.example")), "flag");
    }
    assert_eq!(
        b.counter("corvid_rejected_items_total", &[]),
        0,
        "{}",
        b.metrics()
    );
}

#[test]
fn pipelined_publishes_while_events_arrive_never_hang() {
    crate::init();
    let prosody = Prosody::start(
        &["a.test", "b.test"],
        &["corvidd@a.test", "corvidd@b.test"],
        ProsodyOptions {
            memory_pubsub: true,
            ..ProsodyOptions::default()
        },
    );
    let (ia, ib) = (Identity::new("a.test"), Identity::new("b.test"));
    let a = Node::start(&prosody, &ia, &ib.peer_block(1.0, "enforce"));
    let b = Node::start(&prosody, &ib, &ia.peer_block(1.0, "enforce"));
    const N: usize = 400;
    std::thread::scope(|s| {
        for (node, tag) in [(&a, "from-a"), (&b, "from-b")] {
            for t in 0..4 {
                s.spawn(move || {
                    for i in (t..N).step_by(4) {
                        node.report(&format!("{tag}-{i}@flood.example"), "spam", 90);
                    }
                });
            }
        }
    });
    // Both links kept working: every report crossed in each direction.
    wait_for(
        Duration::from_secs(120),
        "all reports to cross both ways",
        || {
            (b.peer_records("a.test") >= N as u64 && a.peer_records("b.test") >= N as u64)
                .then_some(())
        },
    );
    assert_eq!(
        b.action("jid", &format!("from-a-{}@flood.example", N - 1)),
        "flag"
    );
    assert_eq!(a.action("jid", "from-b-0@flood.example"), "flag");
    assert_eq!(a.get("/healthz").json["xmpp"], "online");
    assert_eq!(b.get("/healthz").json["xmpp"], "online");
}
