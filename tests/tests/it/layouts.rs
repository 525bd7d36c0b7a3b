//! Feed layouts (spec §13.1): today's reader against a writer that also
//! serves a test-only log version 2, on a real Prosody where both are
//! components. The reader reads version 1 and never asks for version 2;
//! when only version 2 is offered it reads nothing, keeps what it holds,
//! and its status says why.

use std::time::Duration;

use corvid_protocol::record::{Category, Record};
use corvid_tests::node::{Identity, Node, component_config};
use corvid_tests::prosody::{Prosody, ProsodyOptions, Version, component_settings};
use corvid_tests::writer::Writer;
use corvid_tests::{free_port, numbered_report, wait_for, write_private};

const SECRET: &str = "layout-component-secret";

fn reads_the_log_version_it_knows(version: Version, ip: &str) {
    super::init();
    let (ia, ib) = (Identity::new("a.test"), Identity::new("b.test"));
    let port = free_port();
    let secret = tempfile::tempdir().expect("tempdir");
    write_private(&secret.path().join("secret"), SECRET);
    let (global, mut tail) = component_settings(ip, "b.test", port, SECRET, &["corvid.a.test"]);
    tail.push_str(&format!(
        "\nComponent \"corvid.a.test\"\n    component_secret = \"{SECRET}\"\n"
    ));
    let prosody = Prosody::start(
        &["b.test"],
        &["corvidd@b.test"],
        ProsodyOptions {
            interface: ip.into(),
            version,
            global,
            tail,
            ..ProsodyOptions::default()
        },
    );
    let writer = Writer::start(
        &format!("{ip}:{port}"),
        "corvid.a.test",
        SECRET,
        "a.test",
        Identity::new("a.test").key,
    );
    let now = corvid_api::now();
    {
        let mut st = writer.state.lock().expect("state");
        st.versions = vec![1, 2];
        // Beside the records, a tampered, a replayed and an oversized item.
        st.hostile = true;
        st.records = (0..50)
            .map(|i| numbered_report("v1-", Category::Spam, i, now))
            .collect();
        st.records.sort_by_key(Record::id);
    }
    let extra = component_config(&secret.path().join("secret"), ip, port, "b.test", &ia);
    let nb = Node::start(&prosody, &ib, &extra);
    wait_for(Duration::from_secs(60), "B to read A's log", || {
        (nb.peer_records("a.test") == 50).then_some(())
    });
    let (p, check) = nb.peer_status("a.test");
    assert_eq!(p["layout"], 2, "{p}");
    assert!(p["last_error"].is_null() && !check, "{p}");
    {
        let st = writer.state.lock().expect("state");
        assert_eq!(
            st.other_version_requests,
            0,
            "{}: the reader asked for version 2",
            version.name()
        );
        assert!(st.v1_requests >= 3, "subscribe, checkpoint, a page");
    }
    // The hostile items were counted by reason and dropped; nothing else
    // was refused, and the reader went on.
    let rejected = |reason: &str| nb.counter("corvid_rejected_items_total", &[reason]);
    assert_eq!(rejected("bad-signature"), 2, "{}", nb.metrics());
    assert_eq!(rejected("oversized"), 1, "{}", nb.metrics());
    assert_eq!(nb.counter("corvid_rejected_items_total", &[]), 3);

    // The writer offers only version 2: B reads nothing, keeps its 50
    // records, and its status names the layout error.
    let asked = {
        let mut st = writer.state.lock().expect("state");
        st.versions = vec![2];
        st.v1_requests
    };
    let (error, t) = (
        wait_for(
            Duration::from_secs(90),
            "B's status to name the unsupported layout",
            || {
                let (p, check) = nb.peer_status("a.test");
                let e = p["last_error"].as_str().unwrap_or_default().to_owned();
                (check && e.contains("unsupported-layout")).then_some(e)
            },
        ),
        std::time::Instant::now(),
    );
    eprintln!("{}: B says: {error}", version.name());
    assert!(error.contains("[2]"), "{error}");
    // A retry in between (10 s after the failure) finds the same.
    std::thread::sleep(Duration::from_secs(12).saturating_sub(t.elapsed()));
    assert_eq!(nb.peer_records("a.test"), 50, "B kept what it held");
    let (p, _) = nb.peer_status("a.test");
    assert!(p["failures"].as_u64().unwrap_or(0) >= 2, "{p}");
    {
        let st = writer.state.lock().expect("state");
        assert_eq!(st.v1_requests, asked, "B read nothing");
        assert_eq!(st.other_version_requests, 0);
    }
    assert_ne!(nb.action("jid", "v1-0@spam.example"), "allow");

    // Version 1 is offered again: the next retry reads it and the error
    // clears.
    writer.state.lock().expect("state").versions = vec![1, 2];
    wait_for(Duration::from_secs(60), "B's reads of A to recover", || {
        let (p, check) = nb.peer_status("a.test");
        (p["last_error"].is_null() && !check).then_some(())
    });
    assert_eq!(nb.peer_records("a.test"), 50);
}

#[test]
fn prosody_0_12_reader_picks_the_log_version_it_knows() {
    reads_the_log_version_it_knows(Version::Debian12, "127.0.0.58");
}

#[test]
fn prosody_13_reader_picks_the_log_version_it_knows() {
    reads_the_log_version_it_knows(Version::Backports13, "127.0.0.59");
}
