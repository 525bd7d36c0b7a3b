//! Key rotation and revocation, end to end.

use std::time::Duration;

use corvid_protocol::keys::SecretKey;
use corvid_tests::node::{Identity, Node};
use corvid_tests::prosody::{Prosody, ProsodyOptions};
use corvid_tests::{wait_for, write_private};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

#[test]
fn rotation_is_followed_where_allowed_and_revocation_drops_reports() {
    crate::init();
    let prosody = Prosody::start(
        &["a.test", "b.test", "c.test"],
        &["corvidd@a.test", "corvidd@b.test", "corvidd@c.test"],
        ProsodyOptions::default(),
    );
    let ia = Identity::new("a.test");
    let a = Node::start(&prosody, &ia, "");
    // B accepts A's rotations automatically; C waits for its operator.
    let b = Node::start(
        &prosody,
        &Identity::new("b.test"),
        &ia.peer_block(1.0, "enforce").replace(
            "mode = \"enforce\"",
            "mode = \"enforce\"\naccept_rotations = true",
        ),
    );
    let c = Node::start(
        &prosody,
        &Identity::new("c.test"),
        &ia.peer_block(1.0, "enforce"),
    );
    a.report("before@spam.example", "spam", 90);
    b.wait_action("jid", "before@spam.example", "flag", T);
    c.wait_action("jid", "before@spam.example", "flag", T);

    let dir = tempfile::tempdir().expect("tempdir");
    let new_key = dir.path().join("new.key");
    write_private(&new_key, &SecretKey::from_seed([5; 32]).to_key_file());
    let r = a.post(
        "/v1/keys/rotate",
        &json!({"new_key_file": new_key.display().to_string()}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["published"], true, "{}", r.text);

    a.report("after@spam.example", "spam", 90);
    b.wait_action("jid", "after@spam.example", "flag", T);
    // C has not accepted the new key: the new report does not count yet,
    // and the rotation waits for the operator.
    wait_for(T, "C to see the pending rotation", || {
        let v = c.get("/v1/peers").json;
        v["peers"][0]["pending_rotation"].as_str().map(|_| ())
    });
    assert_eq!(c.action("jid", "after@spam.example"), "allow");
    assert!(
        c.counter("corvid_rejected_items_total", &["reason=\"unknown-key\""]) >= 1,
        "{}",
        c.metrics()
    );
    let r = c.post("/v1/peers/a.test/confirm-rotation", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    c.wait_action("jid", "after@spam.example", "flag", T);
    // Reports signed before the rotation still count.
    assert_eq!(b.action("jid", "before@spam.example"), "flag");

    // A revokes its (new) key: every report signed with it stops counting.
    let r = a.post("/v1/keys/revoke", &json!({"reason": "test"}));
    assert_eq!(r.status, 200, "{}", r.text);
    b.wait_action("jid", "after@spam.example", "allow", T);
    c.wait_action("jid", "after@spam.example", "allow", T);
}
