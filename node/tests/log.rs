//! The feed log driven directly: what a federation member and anyone else
//! are served (spec §4.6, "Members only").

use corvid_node::log::{Asker, FeedLog};
use corvid_node::store::Store;
use corvid_protocol::item::{Body, FeedAddress, KeyRing, SignedItem, verify_item};
use corvid_protocol::keys::{SecretKey, Signer as _};
use corvid_protocol::record::{Category, Evidence, Issuer, Record, Report, ReportId};
use corvid_protocol::subject::SubjectKey;
use xmpp_parsers::minidom::Element;

const NOW: u64 = 1_767_225_600;

fn name(n: &str) -> xmpp_parsers::minidom::rxml::NcName {
    xmpp_parsers::minidom::rxml::NcName::try_from(n).expect("name")
}

fn report(i: u8, subject: SubjectKey, note: Option<&str>, text: Option<&str>) -> Record {
    Record::Report(Report {
        id: ReportId::new(NOW * 1000 + u64::from(i), [i; 10]),
        subject: subject.clone(),
        category: Category::Spam,
        confidence: 90,
        issued_at: NOW - 60,
        expires_at: NOW + 86_400,
        evidence: Evidence {
            count: 3,
            first_seen: NOW - 600,
            last_seen: NOW - 60,
            note: note.map(str::to_owned),
            abuse_contacted_at: subject.as_str().starts_with("domain:").then_some(NOW - 120),
            message_text: text.map(str::to_owned),
        },
    })
}

/// The records in a page of the compact form, as signed.
fn records(page: &Element, feed: &FeedAddress, key: &SecretKey) -> Vec<Record> {
    let items = page
        .get_child("items", "http://jabber.org/protocol/pubsub")
        .expect("items");
    let ring = KeyRing::pinned("a.test", key.public_key());
    let mut out = Vec::new();
    for item in items.children() {
        let id = item.attr("id").expect("id");
        let payload = item.children().next().expect("payload");
        let v = verify_item(payload, feed, id, &ring, NOW, 300).expect("verifies");
        if let Body::Snapshot { records, .. } = v.body {
            out.extend(records);
        }
    }
    out
}

#[test]
fn non_members_get_neither_ip_tokens_nor_free_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 1 << 20).expect("open");
    let key = SecretKey::from_seed([7; 32]);
    let own = [
        report(
            1,
            SubjectKey::for_jid("bot@spam.example").expect("jid"),
            Some("sent 40 users a link"),
            Some("cheap pills at http://x.example"),
        ),
        report(
            2,
            SubjectKey::for_domain("spam.example", false).expect("domain"),
            None,
            None,
        ),
        report(
            3,
            "ip:example-fed:681:v4-24:e8dcb2abfef7087195ec3d14fbfa74e2"
                .parse()
                .expect("ip"),
            Some("open proxy"),
            None,
        ),
    ];
    for r in &own {
        store.put_own_durable(r).expect("own");
    }
    let feed: FeedAddress = "xmpp:corvid.a.test?;node=corvid".parse().expect("feed");
    let log = FeedLog::new(
        &store,
        feed.clone(),
        Issuer {
            domain: "a.test".into(),
            key: key.public_key().key_id(),
        },
    )
    .expect("log");

    let member = log
        .compact(&store, &key, None, true)
        .expect("store")
        .expect("page");
    assert_eq!(
        records(&member, &feed, &key),
        own.to_vec(),
        "a member gets every record as issued"
    );

    let other = log
        .compact(&store, &key, None, false)
        .expect("store")
        .expect("page");
    let got = records(&other, &feed, &key);
    assert_eq!(got.len(), 2, "{got:?}");
    let Record::Report(r) = &got[0] else {
        panic!("a report")
    };
    assert_eq!(r.subject, *own[0].subject());
    assert_eq!(
        (r.evidence.note.as_ref(), r.evidence.message_text.as_ref()),
        (None, None)
    );
    // What verdicts depend on is kept.
    let Record::Report(issued) = &own[0] else {
        panic!()
    };
    assert_eq!(
        (r.id, r.confidence, r.category, r.expires_at),
        (
            issued.id,
            issued.confidence,
            issued.category,
            issued.expires_at
        )
    );
    assert_eq!(
        (
            r.evidence.count,
            r.evidence.first_seen,
            r.evidence.last_seen
        ),
        (3, NOW - 600, NOW - 60)
    );
    assert_eq!(got[1], own[1]);

    // By id, as on the feed node: the same for each.
    let op = Element::builder("items", "http://jabber.org/protocol/pubsub")
        .attr(name("node"), "corvid")
        .append(
            Element::builder("item", "http://jabber.org/protocol/pubsub")
                .attr(name("id"), format!("d/{}", own[0].subject()))
                .build(),
        )
        .build();
    let by_id = |member: bool| {
        let page = log
            .items(&store, &key, &op, None, NOW, Asker { member, card: None })
            .expect("store")
            .expect("items");
        page.get_child("items", "http://jabber.org/protocol/pubsub")
            .and_then(|i| i.children().next())
            .and_then(|i| i.children().next())
            .map(|p| {
                SignedItem::from_element(p)
                    .expect("item")
                    .json()
                    .as_str()
                    .to_owned()
            })
            .expect("the item")
    };
    assert!(by_id(true).contains("cheap pills"));
    assert!(!by_id(false).contains("cheap pills") && !by_id(false).contains("40 users"));
}

#[test]
fn a_notification_is_its_item_plus_at_most_400_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 1 << 20).expect("open");
    let key = SecretKey::from_seed([7; 32]);
    let record = report(
        1,
        SubjectKey::for_jid("live17-100000@spam.example").expect("jid"),
        None,
        None,
    );
    store.put_own_durable(&record).expect("own");
    let feed: FeedAddress = "xmpp:corvid.jabber.example.net?;node=corvid"
        .parse()
        .expect("feed");
    let mut log = FeedLog::new(
        &store,
        feed,
        Issuer {
            domain: "jabber.example.net".into(),
            key: key.public_key().key_id(),
        },
    )
    .expect("log");
    log.commit(None);
    let to: xmpp_parsers::jid::Jid = "corvid.xmpp.example.org".parse().expect("jid");
    assert!(log.subscribe(&to, NOW));
    let (messages, _) = log
        .changes(&store, &key, "corvid.jabber.example.net", 10)
        .expect("changes");
    assert_eq!(messages.len(), 1);
    let element: Element = messages[0].clone().into();
    let mut wire = Vec::new();
    element.write_to(&mut wire).expect("xml");
    let item = element
        .get_child("event", "http://jabber.org/protocol/pubsub#event")
        .and_then(|e| e.get_child("items", "http://jabber.org/protocol/pubsub#event"))
        .and_then(|i| i.children().next())
        .and_then(|i| i.children().next())
        .expect("the signed item");
    let mut signed = Vec::new();
    item.write_to(&mut signed).expect("xml");
    // On a component stream the server adds xml:lang='en' and the
    // namespace is jabber:component:accept (23 bytes more); it also
    // escapes the JSON's quotes, which is the item's own size on the wire.
    let envelope = wire.len() - signed.len() + 23;
    eprintln!(
        "notification {} B, signed item {} B, envelope on a component stream {envelope} B",
        wire.len(),
        signed.len(),
    );
    assert!(envelope <= 400, "{}", String::from_utf8_lossy(&wire));
}
