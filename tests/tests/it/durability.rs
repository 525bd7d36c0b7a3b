//! Nothing acknowledged is lost: SIGKILL, purged and deleted nodes, and a
//! peer's PubSub service that restarts with memory storage (over real s2s).

use std::time::Duration;

use corvid_tests::client::Client;
use corvid_tests::node::{Identity, Node};
use corvid_tests::prosody::{Prosody, ProsodyOptions};
use corvid_tests::wait_for;

const T: Duration = Duration::from_secs(30);

fn status_of(n: &Node, jid: &str, source: &str) -> Option<String> {
    let key = corvid_protocol::subject::SubjectKey::for_jid(jid).expect("jid");
    let v = n.get(&format!("/v1/explain?subject={key}")).json;
    v["contributions"]
        .as_array()?
        .iter()
        .find(|c| c["source"] == source)
        .and_then(|c| c["status"].as_str().map(str::to_owned))
}

#[test]
fn sigkill_right_after_an_acknowledged_report_loses_nothing() {
    crate::init();
    let prosody = Prosody::start(
        &["a.test", "b.test"],
        &["corvidd@a.test", "corvidd@b.test"],
        ProsodyOptions::default(),
    );
    let (ia, ib) = (Identity::new("a.test"), Identity::new("b.test"));
    let mut a = Node::start(&prosody, &ia, "");
    let b = Node::start(&prosody, &ib, &ia.peer_block(1.0, "enforce"));
    // Stop A's XMPP side from publishing in time: kill it the moment the
    // API acknowledges.
    let ids: Vec<String> = (0..5)
        .map(|i| a.report(&format!("killed{i}@spam.example"), "spam", 90))
        .collect();
    a.kill();
    a.restart();
    for i in 0..5 {
        assert_eq!(
            a.action("jid", &format!("killed{i}@spam.example")),
            "block",
            "verdict intact after restart"
        );
    }
    for i in 0..5 {
        b.wait_action("jid", &format!("killed{i}@spam.example"), "flag", T);
    }
    assert_eq!(ids.len(), 5);
    // A clean SIGTERM exits 0.
    assert_eq!(a.terminate(), Some(0));
}

#[test]
fn a_purged_or_deleted_feed_keeps_counting_and_is_republished() {
    crate::init();
    let prosody = Prosody::start(
        &["a.test", "b.test"],
        &["corvidd@a.test", "corvidd@b.test"],
        ProsodyOptions::default(),
    );
    let (ia, ib) = (Identity::new("a.test"), Identity::new("b.test"));
    let a = Node::start(&prosody, &ia, "");
    let b = Node::start(&prosody, &ib, &ia.peer_block(1.0, "enforce"));
    a.report("purged@spam.example", "spam", 90);
    b.wait_action("jid", "purged@spam.example", "flag", T);
    // Someone with owner rights purges A's node behind corvidd's back.
    let admin = Client::login(&prosody, "corvidd", "a.test");
    admin.purge("pubsub.a.test", "corvid");
    // B never drops it (at most unconfirmed), and A republishes.
    for _ in 0..20 {
        assert_eq!(
            b.action("jid", "purged@spam.example"),
            "flag",
            "nothing is dropped during the grace period"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for(T, "A to republish after the purge", || {
        let ids = admin
            .run(corvid_node::pubsub::item_ids(
                admin.link(),
                "pubsub.a.test",
                "corvid",
            ))
            .ok()?;
        ids.iter()
            .any(|i| i.starts_with("d/") || i == "head")
            .then_some(())
    });
    wait_for(T, "B to see the entry confirmed again", || {
        (status_of(&b, "purged@spam.example", "a.test")? == "confirmed").then_some(())
    });
    // Now the node is deleted outright.
    admin.delete("pubsub.a.test", "corvid");
    assert_eq!(b.action("jid", "purged@spam.example"), "flag");
    wait_for(T, "A to recreate its node", || {
        let ids = admin
            .run(corvid_node::pubsub::item_ids(
                admin.link(),
                "pubsub.a.test",
                "corvid",
            ))
            .ok()?;
        (!ids.is_empty()).then_some(())
    });
    a.report("after-delete@spam.example", "spam", 90);
    b.wait_action("jid", "after-delete@spam.example", "flag", T);
    wait_for(T, "B to resubscribe and confirm", || {
        (status_of(&b, "purged@spam.example", "a.test")? == "confirmed").then_some(())
    });
}

#[test]
fn peer_prosody_restart_with_memory_storage_over_s2s() {
    crate::init();
    // Two servers federating over s2s on 127.0.0.2 and 127.0.0.3.
    let shared = tempfile::tempdir().expect("tempdir");
    let hosts = shared.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.2 a.test pubsub.a.test\n127.0.0.3 b.test pubsub.b.test\n",
    )
    .expect("hosts");
    let opts = |iface: &str, memory: bool| ProsodyOptions {
        interface: iface.into(),
        memory_pubsub: memory,
        s2s: true,
        hosts_file: Some(hosts.clone()),
        ..ProsodyOptions::default()
    };
    let mut pa = Prosody::start(&["a.test"], &["corvidd@a.test"], opts("127.0.0.2", true));
    let pb = Prosody::start(&["b.test"], &["corvidd@b.test"], opts("127.0.0.3", false));
    let (ia, ib) = (Identity::new("a.test"), Identity::new("b.test"));
    let a = Node::start(&pa, &ia, "");
    let b = Node::start(&pb, &ib, &ia.peer_block(1.0, "enforce"));
    a.report("crossing@spam.example", "spam", 90);
    b.wait_action("jid", "crossing@spam.example", "flag", T);

    // Only the peer's server restarts; its PubSub items and subscriptions
    // were in memory and are gone.
    pa.restart();
    for _ in 0..10 {
        assert_eq!(
            b.action("jid", "crossing@spam.example"),
            "flag",
            "nothing is dropped while the peer is away"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A reconnects and republishes; B resubscribes; a new report arrives live.
    a.report("after-restart@spam.example", "spam", 90);
    b.wait_action(
        "jid",
        "after-restart@spam.example",
        "flag",
        Duration::from_secs(60),
    );
    wait_for(T, "the old entry to be confirmed again", || {
        (status_of(&b, "crossing@spam.example", "a.test")? == "confirmed").then_some(())
    });
    assert!(pb.log().contains("a.test") || !pb.log().is_empty());
}

#[test]
fn entries_missing_past_the_grace_period_are_dropped() {
    crate::init();
    let prosody = Prosody::start(
        &["a.test", "b.test"],
        &["corvidd@a.test", "corvidd@b.test"],
        ProsodyOptions::default(),
    );
    let (ia, ib) = (Identity::new("a.test"), Identity::new("b.test"));
    let mut a = Node::start(&prosody, &ia, "");
    let b = Node::start(
        &prosody,
        &ib,
        &format!(
            "policy.unconfirmed_grace_secs = 3\n{}",
            ia.peer_block(1.0, "enforce")
        ),
    );
    a.report("gone@spam.example", "spam", 90);
    b.wait_action("jid", "gone@spam.example", "flag", T);
    // A goes away for good and its node is purged: nobody republishes.
    a.kill();
    let admin = Client::login(&prosody, "corvidd", "a.test");
    admin.purge("pubsub.a.test", "corvid");
    wait_for(T, "B to mark it unconfirmed", || {
        (status_of(&b, "gone@spam.example", "a.test")? == "unconfirmed").then_some(())
    });
    assert_eq!(
        b.action("jid", "gone@spam.example"),
        "flag",
        "still counts during the grace period"
    );
    b.wait_action("jid", "gone@spam.example", "allow", T);
    assert!(b.counter("corvid_unconfirmed_dropped_total", &[]) >= 1);
}
