//! Feeds served as a log by corvidd's own component (layout 2, issue
//! "Corvid serves its own feeds"): two servers over s2s, each corvidd the
//! PubSub service of its feed, following the other's through its own
//! component, on Prosody 0.12 and 13.

use std::path::Path;
use std::time::{Duration, Instant};

use corvid_tests::client::Client;
use corvid_tests::node::{Identity, Node};
use corvid_tests::prosody::{Prosody, Version, hosts_file, start_with_component};
use corvid_tests::{free_port, wait_for, write_private};
use xmpp_parsers::minidom::Element;

const SECRET: &str = "log-component-secret";

struct Side {
    prosody: Prosody,
    node: Option<Node>,
    port: u16,
    secret: tempfile::TempDir,
}

fn prosody(version: Version, ip: &str, domain: &str, hosts: &Path, port: u16) -> Prosody {
    let other = if domain == "a.test" {
        "b.test"
    } else {
        "a.test"
    };
    start_with_component(
        version,
        ip,
        domain,
        hosts,
        port,
        SECRET,
        &[&format!("corvid.{other}")],
        false,
    )
}

fn pair(version: Version, ips: (&str, &str)) -> (Side, Side) {
    let hosts = hosts_file(&format!(
        "{} a.test pubsub.a.test corvid.a.test\n{} b.test pubsub.b.test corvid.b.test\n",
        ips.0, ips.1
    ));
    let side = |ip: &str, domain: &str| {
        let port = free_port();
        let secret = tempfile::tempdir().expect("tempdir");
        write_private(&secret.path().join("secret"), SECRET);
        Side {
            prosody: prosody(version, ip, domain, &hosts, port),
            node: None,
            port,
            secret,
        }
    };
    (side(ips.0, "a.test"), side(ips.1, "b.test"))
}

fn start_node(side: &mut Side, ip: &str, me: &Identity, peer: &Identity) {
    let extra = corvid_tests::node::component_config(
        &side.secret.path().join("secret"),
        ip,
        side.port,
        &me.domain,
        peer,
    );
    side.node = Some(Node::start(&side.prosody, me, &extra));
}

fn follows_a_log(version: Version, ips: (&str, &str)) {
    super::init();
    let (ia, ib) = (Identity::new("a.test"), Identity::new("b.test"));
    let (mut a, mut b) = pair(version, ips);
    start_node(&mut a, ips.0, &ia, &ib);
    let na = a.node.as_ref().expect("a");
    // A's log holds 1,200 reports before B follows it: three pages.
    for i in 0..1200 {
        na.report(&format!("early{i}@spam.example"), "spam", 90);
    }
    start_node(&mut b, ips.1, &ib, &ia);
    let nb = b.node.as_ref().expect("b");
    let t = Instant::now();
    wait_for(Duration::from_secs(60), "B to read A's log", || {
        (nb.peer_records("a.test") >= 1200).then_some(())
    });
    eprintln!(
        "{}: 1,200-report log read in {:?}",
        version.name(),
        t.elapsed()
    );
    // Read in the compact form: records signed by the hundred, deflated.
    let read = nb.counter("corvid_component_bytes_total", &["in"]);
    eprintln!(
        "{}: {read} bytes in at B's component for the read: {} per record",
        version.name(),
        read / 1200
    );
    assert!(read / 1200 <= 150, "{read} bytes for 1,200 records");
    nb.wait_action("jid", "early0@spam.example", "flag", Duration::from_secs(5));
    nb.wait_action(
        "jid",
        "early1199@spam.example",
        "flag",
        Duration::from_secs(5),
    );

    // A live report arrives as one notification.
    let t = Instant::now();
    let before = nb.counter("corvid_component_bytes_total", &["in"]);
    na.report("live@spam.example", "spam", 90);
    nb.wait_action("jid", "live@spam.example", "flag", Duration::from_secs(10));
    let live = nb.counter("corvid_component_bytes_total", &["in"]) - before;
    eprintln!(
        "{}: live report at B after {:?}, {live} bytes in",
        version.name(),
        t.elapsed()
    );
    // One notification (about 1.1 KB); a checkpoint may fall in the window.
    assert!(live <= 4000, "{live} bytes for one live report");
    // And a retraction.
    assert_eq!(na.retract("live@spam.example").status, 200);
    nb.wait_action("jid", "live@spam.example", "allow", Duration::from_secs(10));
    assert!(
        na.counter("corvid_component_sent_total", &["feed"]) >= 2,
        "{}",
        na.metrics()
    );

    // B's corvidd restarts: it resumes after its cursor; a report made
    // while it was down arrives.
    b.node.as_mut().expect("b").kill();
    na.report("while-b-was-down@spam.example", "spam", 90);
    b.node.as_mut().expect("b").restart();
    let nb = b.node.as_ref().expect("b");
    nb.wait_action(
        "jid",
        "while-b-was-down@spam.example",
        "flag",
        Duration::from_secs(30),
    );
    let pages = na.counter("corvid_component_requests_total", &["feed-items"]);
    assert!(
        pages <= 8,
        "B resumed after its cursor, not from the start: {pages} pages served"
    );

    // A's Prosody restarts (A's component and the s2s streams go): B is
    // current again within 30 s.
    a.prosody.restart();
    let na = a.node.as_ref().expect("a");
    na.wait_component_online(Duration::from_secs(20));
    let t = Instant::now();
    na.report("after-a-restart@spam.example", "spam", 90);
    nb.wait_action(
        "jid",
        "after-a-restart@spam.example",
        "flag",
        Duration::from_secs(30),
    );
    eprintln!(
        "{}: current {:?} after A's Prosody restarted",
        version.name(),
        t.elapsed()
    );

    // B's Prosody restarts: its subscription and the streams are gone; the
    // next checkpoint's absence makes B subscribe again and read on.
    b.prosody.restart();
    let t = Instant::now();
    na.report("after-b-restart@spam.example", "spam", 90);
    nb.wait_action(
        "jid",
        "after-b-restart@spam.example",
        "flag",
        Duration::from_secs(30),
    );
    eprintln!(
        "{}: current {:?} after B's Prosody restarted",
        version.name(),
        t.elapsed()
    );
    assert_eq!(
        nb.counter("corvid_rejected_items_total", &[]),
        0,
        "{}",
        nb.metrics()
    );
    // 1,200 early reports, the retraction that replaced the live one,
    // and three reports made around the restarts.
    assert_eq!(nb.peer_records("a.test"), 1204);
    // Nothing is owed: B's status counts no backlog behind A's checkpoint.
    wait_for(
        Duration::from_secs(30),
        "B's status to show A's log read",
        || {
            let (p, _) = nb.peer_status("a.test");
            (p["layout"] == 2 && p["backlog"] == 0 && p["last_error"].is_null()).then_some(())
        },
    );

    // A's corvidd stops: after a checkpoint interval and a half of silence
    // B reads, fails, and its status names the peer and the reason; once A
    // is back the error clears.
    a.node.as_mut().expect("a").kill();
    let t = Instant::now();
    let error = wait_for(
        Duration::from_secs(60),
        "B's status to name the failing reads",
        || {
            let (p, check) = nb.peer_status("a.test");
            check.then(|| p["last_error"].as_str().map(str::to_owned))?
        },
    );
    eprintln!(
        "{}: B's status named A's failing reads after {:?}: {error}",
        version.name(),
        t.elapsed()
    );
    // `corvid doctor`'s live check says why: A's server answers for its
    // component, which is gone.
    let link_a = |nb: &Node| {
        let d = nb.post("/v1/doctor", &serde_json::json!({}));
        assert_eq!(d.status, 200, "{}", d.text);
        d.json["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "link.a.test"))
            .cloned()
            .unwrap_or_default()
    };
    let link = link_a(nb);
    assert_eq!(link["severity"], "fail", "{link}");
    assert!(
        link["message"]
            .as_str()
            .is_some_and(|m| m.contains("component is not connected")),
        "{link}"
    );
    a.node.as_mut().expect("a").restart();
    let na = a.node.as_ref().expect("a");
    na.wait_component_online(Duration::from_secs(20));
    let link = link_a(nb);
    assert_eq!(link["severity"], "ok", "{link}");
    eprintln!("{}: doctor: {}", version.name(), link["message"]);
    wait_for(Duration::from_secs(30), "B's reads of A to recover", || {
        let (p, check) = nb.peer_status("a.test");
        (p["last_error"].is_null() && !check && p["backlog"] == 0).then_some(())
    });

    // IP tokens go to members only: B (a trusted peer's component) gets an
    // IP report; anyone else reading A's log gets everything but it.
    let r = na.post(
        "/v1/reports",
        &serde_json::json!({"subject": "ip:192.0.2.7/24", "category": "open-proxy", "confidence": 90}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let token = r.json["subject"].as_str().expect("token").to_owned();
    assert!(token.starts_with("ip:"), "{token}");
    wait_for(Duration::from_secs(10), "B to hold the IP report", || {
        (nb.peer_records("a.test") == 1205).then_some(())
    });
    let stranger = Client::login(&a.prosody, "corvidd", "a.test");
    let mut seen = 0;
    let mut after: Option<String> = None;
    loop {
        let mut set = Element::builder("set", "http://jabber.org/protocol/rsm").append(
            Element::builder("max", "http://jabber.org/protocol/rsm")
                .append("2400")
                .build(),
        );
        if let Some(a) = &after {
            set = set.append(
                Element::builder("after", "http://jabber.org/protocol/rsm")
                    .append(a.as_str())
                    .build(),
            );
        }
        let request = Element::builder("pubsub", "http://jabber.org/protocol/pubsub")
            .append(
                Element::builder("items", "http://jabber.org/protocol/pubsub")
                    .attr(
                        xmpp_parsers::minidom::rxml::NcName::try_from("node").expect("name"),
                        "corvid/compact",
                    )
                    .build(),
            )
            .append(set.build())
            .build();
        let reply = stranger
            .run(stranger.link().iq(xmpp_parsers::iq::Iq::Get {
                from: None,
                to: Some("corvid.a.test".parse().expect("jid")),
                id: String::new(),
                payload: request,
            }))
            .expect("a page")
            .expect("payload");
        // The compact items are deflated: each is opened to look inside.
        let items = reply
            .get_child("items", "http://jabber.org/protocol/pubsub")
            .expect("items");
        for item in items.children() {
            let payload = item.children().next().expect("payload");
            let signed = corvid_protocol::item::SignedItem::from_element(payload).expect("item");
            let json = signed.json().as_str();
            assert!(
                !json.contains("\"ip:"),
                "a non-member was served an IP token"
            );
            seen += json.matches("\"subject\":").count();
        }
        after = reply
            .get_child("set", "http://jabber.org/protocol/rsm")
            .and_then(|s| s.get_child("last", "http://jabber.org/protocol/rsm"))
            .map(Element::text);
        if after.is_none() {
            break;
        }
    }
    // Everything else: 1,200 early reports, the retraction, three reports.
    assert_eq!(seen, 1204);

    // A rotates its key: B (accept_rotations) takes it from the log, as a
    // notification, and A's next report counts; then A revokes the new
    // key: its reports stop counting at B.
    let dir = tempfile::tempdir().expect("tempdir");
    let new_key = dir.path().join("new.key");
    write_private(
        &new_key,
        &corvid_protocol::keys::SecretKey::from_seed([5; 32]).to_key_file(),
    );
    let r = na.post(
        "/v1/keys/rotate",
        &serde_json::json!({"new_key_file": new_key.display().to_string()}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    na.report("after-rotation@spam.example", "spam", 90);
    nb.wait_action(
        "jid",
        "after-rotation@spam.example",
        "flag",
        Duration::from_secs(10),
    );
    let r = na.post("/v1/keys/revoke", &serde_json::json!({"reason": "test"}));
    assert_eq!(r.status, 200, "{}", r.text);
    nb.wait_action(
        "jid",
        "after-rotation@spam.example",
        "allow",
        Duration::from_secs(10),
    );
}

#[test]
fn prosody_0_12_peers_follow_each_others_log_through_their_components() {
    follows_a_log(Version::Debian12, ("127.0.0.54", "127.0.0.55"));
}

#[test]
fn prosody_13_peers_follow_each_others_log_through_their_components() {
    follows_a_log(Version::Backports13, ("127.0.0.56", "127.0.0.57"));
}
