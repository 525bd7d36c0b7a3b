//! Hostile input: forged, tampered, replayed and misaddressed items are
//! rejected, counted per peer and reason, and never stop the node.

use std::time::Duration;

use corvid_protocol::feed;
use corvid_protocol::item::{Body, Envelope, FeedAddress, SignedItem};
use corvid_protocol::keys::{SecretKey, Signer};
use corvid_protocol::record::{Category, Evidence, Issuer, Record, Report, ReportId};
use corvid_protocol::subject::SubjectKey;
use corvid_tests::client::Client;
use corvid_tests::node::{Identity, Node};
use corvid_tests::prosody::{Prosody, ProsodyOptions};
use xmpp_parsers::minidom::Element;

const T: Duration = Duration::from_secs(30);

fn report(jid: &str, now: u64, ttl: u64) -> Record {
    Record::Report(Report {
        id: ReportId::new(now * 1000, [7; 10]),
        subject: SubjectKey::for_jid(jid).expect("jid"),
        category: Category::Spam,
        confidence: 90,
        issued_at: now.saturating_sub(10),
        expires_at: now + ttl,
        evidence: Evidence {
            count: 1,
            first_seen: now - 10,
            last_seen: now - 10,
            note: None,
            abuse_contacted_at: None,
            message_text: None,
        },
    })
}

fn signed_delta(
    key: &SecretKey,
    domain: &str,
    feed: &FeedAddress,
    record: Record,
    item_id: Option<&str>,
) -> (String, SignedItem) {
    let id = item_id.map_or_else(|| feed::delta_item_id(record.subject()), str::to_owned);
    let env = Envelope {
        corvid: 1,
        issuer: Issuer {
            domain: domain.into(),
            key: key.public_key().key_id(),
        },
        body: Body::Delta { record },
    };
    (
        id.clone(),
        SignedItem::sign(key, &env, feed, &id).expect("sign"),
    )
}

#[test]
fn forged_tampered_and_replayed_items_are_rejected_and_counted() {
    crate::init();
    let prosody = Prosody::start(
        &["m.test", "b.test"],
        &["corvidd@m.test", "corvidd@b.test", "mallory@b.test"],
        ProsodyOptions::default(),
    );
    let im = Identity::new("m.test");
    let ib = Identity::new("b.test");
    let b = Node::start(&prosody, &ib, &im.peer_block(1.0, "enforce"));
    // The peer's account, controlled by the test: it publishes hostile items.
    let m = Client::login(&prosody, "corvidd", "m.test");
    let feed: FeedAddress = im.feed().parse().expect("feed");
    m.ensure_node(&feed.service, &feed.node);
    let now = corvid_node::now();
    let other_key = SecretKey::from_seed([66; 32]);

    // Forged: signed by another key that claims the pinned key's id.
    let (id, item) = {
        let record = report("forged@x.example", now, 3600);
        let id = feed::delta_item_id(record.subject());
        let env = Envelope {
            corvid: 1,
            issuer: Issuer {
                domain: "m.test".into(),
                key: im.public().key_id(),
            },
            body: Body::Delta { record },
        };
        (
            id.clone(),
            SignedItem::sign(&other_key, &env, &feed, &id).expect("sign"),
        )
    };
    m.publish(&feed.service, &feed.node, &id, item.to_element());
    // Tampered: a valid item with its confidence changed after signing.
    let (id, item) = signed_delta(
        &im.key,
        "m.test",
        &feed,
        report("tampered@x.example", now, 3600),
        None,
    );
    let tampered: Element = item
        .to_xml()
        .replace("\"confidence\":90", "\"confidence\":99")
        .parse()
        .expect("xml");
    m.publish(&feed.service, &feed.node, &id, tampered);
    // Replayed onto another item id.
    let (_, item) = signed_delta(
        &im.key,
        "m.test",
        &feed,
        report("replayed@x.example", now, 3600),
        None,
    );
    let other_id = feed::delta_item_id(&SubjectKey::for_jid("victim@x.example").expect("jid"));
    m.publish(&feed.service, &feed.node, &other_id, item.to_element());
    // Replayed from another feed (signed for the same key but another node).
    let elsewhere: FeedAddress = "xmpp:pubsub.m.test?;node=other".parse().expect("feed");
    let (id, item) = signed_delta(
        &im.key,
        "m.test",
        &elsewhere,
        report("moved@x.example", now, 3600),
        None,
    );
    m.publish(&feed.service, &feed.node, &id, item.to_element());
    // Expired.
    let mut old = report("old@x.example", now - 7200, 60);
    if let Record::Report(r) = &mut old {
        r.issued_at = now - 7200;
        r.evidence.first_seen = now - 7200;
        r.evidence.last_seen = now - 7200;
    }
    let (id, item) = signed_delta(&im.key, "m.test", &feed, old, None);
    m.publish(&feed.service, &feed.node, &id, item.to_element());
    // Garbage that is not a Corvid item at all.
    m.publish(
        &feed.service,
        &feed.node,
        "d/junk",
        "<junk xmlns='urn:example:junk'>hello</junk>"
            .parse()
            .expect("xml"),
    );
    // And one genuine item, which must get through.
    let (id, item) = signed_delta(
        &im.key,
        "m.test",
        &feed,
        report("genuine@x.example", now, 3600),
        None,
    );
    m.publish(&feed.service, &feed.node, &id, item.to_element());

    b.wait_action("jid", "genuine@x.example", "flag", T);
    corvid_tests::wait_for(T, "rejections to be counted", || {
        (b.counter("corvid_rejected_items_total", &["peer=\"m.test\""]) >= 6).then_some(())
    });
    assert!(
        b.counter(
            "corvid_rejected_items_total",
            &["peer=\"m.test\"", "reason=\"bad-signature\""]
        ) >= 4,
        "{}",
        b.metrics()
    );
    assert!(
        b.counter(
            "corvid_rejected_items_total",
            &["peer=\"m.test\"", "reason=\"expired\""]
        ) >= 1,
        "{}",
        b.metrics()
    );
    assert!(
        b.counter(
            "corvid_rejected_items_total",
            &["peer=\"m.test\"", "reason=\"malformed\""]
        ) >= 1,
        "{}",
        b.metrics()
    );
    // The peer's own view counts the same, from the core, not from the
    // metrics text.
    let peers = b.get("/v1/peers").json;
    let m_peer = peers["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["domain"] == "m.test"))
        .unwrap_or_else(|| panic!("m.test in {peers}"));
    assert!(
        m_peer["rejected"]["bad-signature"].as_u64() >= Some(4),
        "{m_peer}"
    );
    assert!(
        m_peer["rejected"]["expired"].as_u64() >= Some(1),
        "{m_peer}"
    );
    for jid in [
        "forged@x.example",
        "tampered@x.example",
        "replayed@x.example",
        "victim@x.example",
        "moved@x.example",
        "old@x.example",
    ] {
        assert_eq!(b.action("jid", jid), "allow", "{jid} must not count");
    }

    // A PubSub event sent directly by a user, pretending to be the feed: dropped.
    let mallory = Client::login(&prosody, "mallory", "b.test");
    let (id, item) = signed_delta(
        &im.key,
        "m.test",
        &feed,
        report("spoofed@x.example", now, 3600),
        None,
    );
    let event: Element = format!(
        "<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='corvid'><item id='{id}'>{}</item></items></event>",
        item.to_xml()
    )
    .parse()
    .expect("event");
    let mut msg = xmpp_parsers::message::Message::new(Some(
        xmpp_parsers::jid::Jid::new("corvidd@b.test").expect("jid"),
    ));
    msg.payloads.push(event);
    mallory.send(msg.into());
    corvid_tests::wait_for(T, "the spoofed event to be counted", || {
        (b.counter(
            "corvid_rejected_items_total",
            &["reason=\"unknown-sender\""],
        ) >= 1)
            .then_some(())
    });
    assert_eq!(b.action("jid", "spoofed@x.example"), "allow");
    // The node is still healthy.
    assert_eq!(b.get("/healthz").json["xmpp"], "online");
}

#[test]
fn bad_requests_get_json_errors() {
    crate::init();
    let prosody = Prosody::start(&["b.test"], &["corvidd@b.test"], ProsodyOptions::default());
    let b = Node::start(&prosody, &Identity::new("b.test"), "");
    let api = &b.api;
    use corvid_tests::http::request;
    let r = request(api, "GET", "/v1/verdict?jid=a%40b.example", None, None);
    assert_eq!(r.status, 401);
    let r = request(
        api,
        "POST",
        "/v1/reports",
        Some(&b.read),
        Some(&serde_json::json!({"subject": "x@y.example", "category": "spam"})),
    );
    assert_eq!(r.status, 403, "the read token cannot write");
    let r = b.get("/v1/verdict?jid=not%20a%20jid%40");
    assert_eq!(r.status, 400);
    assert!(r.json["error"].is_string());
    let r = b.get("/v1/verdict?jid=a%40b.example&domain=b.example");
    assert_eq!(r.status, 400);
    let r = b.get("/v1/verdict?colour=blue");
    assert_eq!(r.status, 400);
    let r = b.post(
        "/v1/reports",
        &serde_json::json!({"subject": "x@y.example", "category": "rudeness"}),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown category")),
        "{}",
        r.text
    );
    let r = b.post(
        "/v1/reports",
        &serde_json::json!({"subject": "b.test", "category": "spam"}),
    );
    assert_eq!(r.status, 400, "own host is a canary: {}", r.text);
    let big = "x".repeat(2 << 20);
    let r = b.post(
        "/v1/reports",
        &serde_json::json!({"subject": "x@y.example", "category": "spam", "note": big}),
    );
    assert_eq!(r.status, 413);
    // A raw IP lookup works and never echoes the address.
    let r = b.get("/v1/verdict?ip=192.0.2.7");
    assert_eq!(r.status, 200);
    assert!(!r.text.contains("192.0.2.7"));
    let r = b.post("/v1/reports", &serde_json::json!({"subject": "ip:192.0.2.7/24", "category": "open-proxy", "confidence": 90}));
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        !r.text.contains("192.0.2"),
        "the response shows the token, not the address: {}",
        r.text
    );
    assert_eq!(
        b.action("ip", "192.0.2.200"),
        "block",
        "same /24, own report"
    );
    assert!(
        !b.log().contains("192.0.2.7"),
        "raw IP must not reach the log"
    );
    // The prefix a report named is a subject `verdict` takes too (any
    // address inside it names it), and a bad address is called one.
    for prefix in ["ip:192.0.2.0/24", "ip:192.0.2.99/24"] {
        let r = b.get(&format!(
            "/v1/verdict?subject={}",
            prefix.replace('/', "%2F")
        ));
        assert_eq!(r.status, 200, "{prefix}: {}", r.text);
        assert_eq!(r.json["action"], "block", "{prefix}: {}", r.text);
    }
    let r = b.get("/v1/verdict?subject=ip:192.0.3.0%2F24");
    assert_eq!(r.json["action"], "allow", "another /24: {}", r.text);
    let r = b.get("/v1/verdict?subject=ip:999.1.1.1");
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.text.contains("not an IP address") && !r.text.contains("domain"),
        "{}",
        r.text
    );
    // A report is refused, never altered, when its evidence is wrong.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    for (body, says) in [
        (
            serde_json::json!({"subject": "x@y.example", "category": "spam", "count": 0}),
            "count",
        ),
        (
            serde_json::json!({"subject": "x@y.example", "category": "spam", "first_seen": later}),
            "first_seen",
        ),
    ] {
        let r = b.post("/v1/reports", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.text.contains(says), "{body}: {}", r.text);
    }
    // A log file (not a terminal) gets no colour codes.
    assert!(
        !b.log().is_empty() && !b.log().contains('\u{1b}'),
        "colour codes in a log file"
    );
}

#[test]
fn rtbl_nodes_are_ingested_as_low_trust_sources() {
    crate::init();
    let prosody = Prosody::start(
        &["rtbl.test", "b.test"],
        &["corvidd@rtbl.test", "corvidd@b.test"],
        ProsodyOptions::default(),
    );
    let list = Client::login(&prosody, "corvidd", "rtbl.test");
    list.ensure_node("pubsub.rtbl.test", "muc_bans_sha256");
    let report: Element = "<report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'/>"
        .parse()
        .expect("xml");
    let jid_hash = corvid_protocol::subject::jid_hash("troll@chat.example");
    let domain_hash = corvid_protocol::subject::jid_hash("spamhost.example");
    list.publish(
        "pubsub.rtbl.test",
        "muc_bans_sha256",
        &jid_hash,
        report.clone(),
    );
    list.publish(
        "pubsub.rtbl.test",
        "muc_bans_sha256",
        &domain_hash,
        report.clone(),
    );
    let b = Node::start(
        &prosody,
        &Identity::new("b.test"),
        "\n[[rtbl]]\nservice = \"pubsub.rtbl.test\"\nnode = \"muc_bans_sha256\"\nweight = 0.9\n",
    );
    // Unsigned: capped at 0.5 and never a quorum, so flag at most.
    b.wait_action("jid", "troll@chat.example", "flag", T);
    b.wait_action("domain", "spamhost.example", "flag", T);
    let v = b.verdict("jid", "troll@chat.example");
    assert_eq!(v["score"], 0.5, "{v}");
    // A live listing arrives by event; a retract delists at once.
    let late = corvid_protocol::subject::jid_hash("late@chat.example");
    list.publish("pubsub.rtbl.test", "muc_bans_sha256", &late, report);
    b.wait_action("jid", "late@chat.example", "flag", T);
    list.run(corvid_node::pubsub::retract(
        list.link(),
        "pubsub.rtbl.test",
        "muc_bans_sha256",
        &jid_hash,
    ))
    .expect("retract");
    b.wait_action("jid", "troll@chat.example", "allow", T);
}

#[test]
fn a_feed_corvidd_may_not_create_is_reported_by_health_checks() {
    crate::init();
    let prosody = Prosody::start(
        &["a.test", "b.test"],
        &["corvidd@a.test", "corvidd@b.test"],
        ProsodyOptions::default(),
    );
    let mut a = Node::start(&prosody, &Identity::new("a.test"), "");
    // Point A's feed at a component where its account is not an admin.
    let path = a.config_path().to_owned();
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace("service = \"pubsub.a.test\"", "service = \"pubsub.b.test\""),
    )
    .expect("write");
    a.restart();
    corvid_tests::wait_for(T, "a health warning about the feed", || {
        let v = a.get("/healthz").json;
        let warned = v["warnings"].as_array()?.iter().any(|w| {
            w.as_str()
                .is_some_and(|w| w.contains("cannot maintain the feed"))
        });
        (warned && v["status"] == "degraded").then_some(())
    });
    // Reports are still accepted and durable; they wait for the feed.
    assert_eq!(
        a.post(
            "/v1/reports",
            &serde_json::json!({"subject": "x@y.example", "category": "spam"})
        )
        .status,
        201
    );
    let status = a.get("/v1/status").json;
    assert!(
        status["own_reports_unpublished"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{status}"
    );
    // The status names the failing check, with its fix, and the link that
    // still works.
    let checks = status["checks"].as_array().expect("checks");
    let publish = checks
        .iter()
        .find(|c| c["name"] == "feed.publish")
        .expect("a feed.publish check");
    assert_eq!(publish["severity"], "fail", "{status}");
    assert!(publish["fix"].is_string(), "{status}");
    assert_eq!(status["worst"], "fail", "{status}");
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "xmpp.link" && c["severity"] == "ok"),
        "{status}"
    );
}
