//! Reports crossing between nodes through a real Prosody.

use std::time::Duration;

use corvid_tests::node::{Identity, Node};
use corvid_tests::prosody::{Prosody, ProsodyOptions};

const T: Duration = Duration::from_secs(30);

#[test]
fn a_report_at_a_reaches_b_and_only_trusting_nodes() {
    crate::init();
    let prosody = Prosody::start(
        &["a.test", "b.test", "c.test"],
        &["corvidd@a.test", "corvidd@b.test", "corvidd@c.test"],
        ProsodyOptions::default(),
    );
    let (ia, ib, ic) = (
        Identity::new("a.test"),
        Identity::new("b.test"),
        Identity::new("c.test"),
    );
    let a = Node::start(&prosody, &ia, "");
    let b = Node::start(&prosody, &ib, &ia.peer_block(1.0, "enforce"));
    // C trusts only B, not A.
    let c = Node::start(&prosody, &ic, &ib.peer_block(1.0, "enforce"));
    assert_eq!(b.action("jid", "bot@spam.example"), "allow");
    a.report("bot@spam.example", "spam", 90);
    // A's own report blocks at A; at B one peer gives flag.
    assert_eq!(a.action("jid", "bot@spam.example"), "block");
    b.wait_action("jid", "bot@spam.example", "flag", T);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.action("jid", "bot@spam.example"),
        "allow",
        "C does not trust A"
    );
    let v = b.get("/v1/explain?jid=bot%40spam.example").json;
    assert_eq!(v["contributions"][0]["source"], "a.test", "{v}");
    assert_eq!(v["contributions"][0]["status"], "confirmed");
}

fn three_servers() -> Prosody {
    Prosody::start(
        &["a.test", "b.test", "c.test"],
        &["corvidd@a.test", "corvidd@b.test", "corvidd@c.test"],
        ProsodyOptions::default(),
    )
}

#[test]
fn quorum_retraction_local_allow_and_expiry() {
    crate::init();
    let prosody = three_servers();
    let (ia, ib, ic) = (
        Identity::new("a.test"),
        Identity::new("b.test"),
        Identity::new("c.test"),
    );
    let a = Node::start(&prosody, &ia, "");
    let c = Node::start(&prosody, &ic, "");
    let mut peers = ia.peer_block(1.0, "enforce");
    peers.push_str(&ic.peer_block(1.0, "enforce"));
    let b = Node::start(&prosody, &ib, &peers);

    // Quorum: one peer gives flag, two give block.
    a.report("spammer@bad.example", "spam", 90);
    b.wait_action("jid", "spammer@bad.example", "flag", T);
    c.report("spammer@bad.example", "muc-spam", 90);
    b.wait_action("jid", "spammer@bad.example", "block", T);
    // A JID lookup also matches the JID's domain.
    a.report("bad.example", "open-relay", 90);
    c.report("bad.example", "open-relay", 90);
    b.wait_action("jid", "fresh-bot@bad.example", "block", T);

    // A retraction at A removes only A's contribution: back to flag.
    let r = a.retract("spammer@bad.example");
    assert_eq!(r.status, 200, "{}", r.text);
    // C's report and the domain reports still stand; check the JID alone via its key.
    let key = corvid_protocol::subject::SubjectKey::for_jid("spammer@bad.example").expect("jid");
    let explain = |n: &Node| n.get(&format!("/v1/explain?subject={}", key)).json;
    corvid_tests::wait_for(T, "A's contribution to leave B", || {
        let v = explain(&b);
        let sources: Vec<&str> = v["contributions"]
            .as_array()?
            .iter()
            .filter_map(|c| c["source"].as_str())
            .collect();
        (!sources.contains(&"a.test") && sources.contains(&"c.test")).then_some(())
    });
    assert_eq!(explain(&b)["action"], "flag");
    // A retraction of something never reported is a 404 with a JSON error.
    let r = a.retract("nobody@bad.example");
    assert_eq!(r.status, 404);
    assert!(
        r.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("no live report"))
    );

    // Expiry: a 3-second report at A flags at B, then stops counting.
    let r = a.post("/v1/reports", &serde_json::json!({"subject": "short@lived.example", "category": "spam", "confidence": 90, "ttl_secs": 3}));
    assert_eq!(r.status, 201, "{}", r.text);
    b.wait_action("jid", "short@lived.example", "flag", T);
    b.wait_action("jid", "short@lived.example", "allow", T);
}

#[test]
fn a_local_allow_wins_after_a_reload() {
    crate::init();
    let prosody = three_servers();
    let (ia, ib, ic) = (
        Identity::new("a.test"),
        Identity::new("b.test"),
        Identity::new("c.test"),
    );
    let a = Node::start(&prosody, &ia, "");
    let c = Node::start(&prosody, &ic, "");
    let mut peers = ia.peer_block(1.0, "enforce");
    peers.push_str(&ic.peer_block(1.0, "enforce"));
    let b = Node::start(&prosody, &ib, &peers);
    a.report("friend@partner.example", "spam", 90);
    c.report("friend@partner.example", "spam", 90);
    b.wait_action("jid", "friend@partner.example", "block", T);
    // The operator allows the JID and reloads with SIGHUP.
    let path = b.config_path().to_owned();
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace(
            "[policy]\n",
            "[policy]\nallow = [\"friend@partner.example\"]\n",
        ),
    )
    .expect("write config");
    b.reload();
    b.wait_action("jid", "friend@partner.example", "allow", T);
    let v = b.verdict("jid", "friend@partner.example");
    assert_eq!(v["reasons"][0]["rule"], "local-allow", "{v}");
    // A reload through the API answers with its outcome (what `corvid peer
    // set-weight` reports): taken...
    let r = b.post("/v1/admin/reload", &serde_json::json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json["restart_needed"],
        serde_json::json!([]),
        "{}",
        r.text
    );
    // A new XMPP password is read at the next start: the reload says so.
    let password = path.with_file_name("password");
    let old_password = std::fs::read_to_string(&password).expect("password");
    std::fs::write(&password, "a new password").expect("write");
    let r = b.post("/v1/admin/reload", &serde_json::json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.json["restart_needed"][0]
            .as_str()
            .is_some_and(|s| s.contains("XMPP password")),
        "{}",
        r.text
    );
    std::fs::write(&password, old_password).expect("write");
    // ...or refused with the reason, the running settings kept.
    let good = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, good.replace("[policy]\n", "[policy]\nalow = []\n")).expect("write");
    let r = b.post("/v1/admin/reload", &serde_json::json!({}));
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.text.contains("alow"),
        "the reason names the typo: {}",
        r.text
    );
    assert_eq!(b.action("jid", "friend@partner.example"), "allow");
    // A bad reload keeps the running configuration.
    std::fs::write(&path, "this is not toml").expect("write");
    b.reload();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.action("jid", "friend@partner.example"), "allow");
}
