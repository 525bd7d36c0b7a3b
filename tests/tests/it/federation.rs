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
