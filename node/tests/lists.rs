//! The block-list service driven directly: what consumers are sent as
//! verdicts change, paging within the stanza limit, and what it refuses.

use std::time::{Duration, Instant};

use corvid_node::config::ComponentConfig;
use corvid_node::lists::{self, Handled, ListNode, Service};
use corvid_node::store::{Origin, Store};
use corvid_protocol::aggregate::Action;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::message::Message;
use xmpp_parsers::minidom::Element;

const NOW: u64 = 1_767_225_600;

fn config() -> ComponentConfig {
    ComponentConfig {
        jid: "corvid.a.test".into(),
        secret_file: "unused".into(),
        server: "127.0.0.1:5347".into(),
        lists: ListNode::ALL.iter().map(|n| n.name().to_owned()).collect(),
        list_consumers: vec!["rooms.a.test".into()],
        max_consumers: 4,
        requests_per_domain_per_sec: 5,
    }
}

fn hex(i: u64) -> String {
    format!("{i:064x}")
}

fn decide(store: &Store, subject: &str, action: Action) {
    let origin = Origin::Federation;
    store
        .record_decision(subject, (action, origin), 0.9, NOW, None)
        .expect("decision");
}

fn attr(name: &'static str) -> xmpp_parsers::minidom::rxml::NcName {
    xmpp_parsers::minidom::rxml::NcName::try_from(name).expect("name")
}

fn get(from: &str, payload: Element) -> Iq {
    Iq::Get {
        from: Some(from.parse().expect("jid")),
        to: Some("corvid.a.test".parse().expect("jid")),
        id: "q1".into(),
        payload,
    }
}

fn items_request(node: &str, rsm: Option<(usize, Option<&str>)>) -> Element {
    let mut p = Element::builder("pubsub", lists::NS_PUBSUB)
        .append(
            Element::builder("items", lists::NS_PUBSUB)
                .attr(attr("node"), node)
                .build(),
        )
        .build();
    if let Some((max, after)) = rsm {
        let mut set = Element::builder("set", lists::NS_RSM)
            .append(
                Element::builder("max", lists::NS_RSM)
                    .append(max.to_string())
                    .build(),
            )
            .build();
        if let Some(a) = after {
            set.append_child(Element::builder("after", lists::NS_RSM).append(a).build());
        }
        p.append_child(set);
    }
    p
}

fn result_payload(reply: Option<Iq>) -> Element {
    match reply {
        Some(Iq::Result {
            payload: Some(p), ..
        }) => p,
        other => panic!("not a result with a payload: {other:?}"),
    }
}

fn error_condition(reply: Option<Iq>) -> String {
    match reply {
        Some(Iq::Error { error, .. }) => format!("{:?}", error.defined_condition),
        other => panic!("not an error: {other:?}"),
    }
}

fn ids(payload: &Element) -> Vec<String> {
    payload
        .get_child("items", lists::NS_PUBSUB)
        .expect("items")
        .children()
        .filter_map(|c| c.attr("id").map(str::to_owned))
        .collect()
}

/// (to, node, item ids, retract ids) of a notification.
fn notified(m: &Message) -> (String, String, Vec<String>, Vec<String>) {
    let event = m
        .payloads
        .iter()
        .find(|p| p.is("event", lists::NS_PUBSUB_EVENT))
        .expect("event");
    let items = event
        .get_child("items", lists::NS_PUBSUB_EVENT)
        .expect("items");
    let of = |name: &str| {
        items
            .children()
            .filter(|c| c.name() == name)
            .filter_map(|c| c.attr("id").map(str::to_owned))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    };
    (
        m.to.as_ref().map(ToString::to_string).unwrap_or_default(),
        items.attr("node").unwrap_or_default().to_owned(),
        of("item"),
        of("retract"),
    )
}

#[test]
fn consumers_get_every_change_of_decision_and_nothing_about_flags_ips_or_digests() {
    let store = Store::in_memory();
    let mut s = Service::new(&store, &config(), NOW).expect("service");
    let t = Instant::now();
    // A server fetches spam_source_domains: it becomes a consumer of it.
    let (reply, handled) = s
        .handle_iq(
            &store,
            get("b.test", items_request("spam_source_domains", None)),
            t,
            NOW,
        )
        .expect("items");
    assert_eq!(handled, Handled::Answered("items"));
    assert!(ids(&result_payload(reply)).is_empty());
    // A user's client is answered but not remembered.
    s.handle_iq(
        &store,
        get("eve@b.test/x", items_request("muc_bans_sha256", None)),
        t,
        NOW,
    )
    .expect("items");
    let consumers: Vec<String> = s.consumers().map(|c| c.jid.clone()).collect();
    assert_eq!(consumers, ["b.test", "rooms.a.test"]);

    decide(&store, &format!("jid:{}", hex(1)), Action::Block);
    decide(&store, "domain:spam.example", Action::Block);
    decide(&store, &format!("jid:{}", hex(2)), Action::Flag);
    decide(
        &store,
        "ip:f:1:v4-24:00000000000000000000000000000001",
        Action::Block,
    );
    let (out, cursor, gap) = s.changes(&store, 100).expect("changes");
    assert!(!gap);
    let sent: Vec<_> = out.iter().map(notified).collect();
    // rooms.a.test (configured: every list) and b.test (the domains only).
    let domain_hash = lists::ListNode::MucBans.ids("domain:spam.example")[0].clone();
    assert!(
        sent.contains(&(
            "rooms.a.test".into(),
            "muc_bans_sha256".into(),
            {
                let mut v = vec![hex(1), domain_hash.clone()];
                v.sort();
                v
            },
            vec![]
        )),
        "{sent:?}"
    );
    assert!(
        sent.contains(&(
            "b.test".into(),
            "spam_source_domains".into(),
            vec!["spam.example".into()],
            vec![]
        )),
        "{sent:?}"
    );
    assert!(
        !sent
            .iter()
            .any(|(to, node, _, _)| to == "b.test" && node != "spam_source_domains"),
        "{sent:?}"
    );
    assert!(
        !sent
            .iter()
            .any(|(_, _, items, retracts)| items.contains(&hex(2)) || retracts.contains(&hex(2))),
        "a flag is not a block: {sent:?}"
    );
    s.commit(&store, cursor).expect("commit");
    assert!(s.changes(&store, 100).expect("changes").0.is_empty());

    // The block ends (expiry, retraction, allow-listing): retracted.
    decide(&store, "domain:spam.example", Action::Allow);
    let (out, cursor, _) = s.changes(&store, 100).expect("changes");
    let sent: Vec<_> = out.iter().map(notified).collect();
    assert!(
        sent.contains(&(
            "b.test".into(),
            "spam_source_domains".into(),
            vec![],
            vec!["spam.example".into()]
        )),
        "{sent:?}"
    );
    s.commit(&store, cursor).expect("commit");

    // A domain listed by its subdomain key stays listed while either holds.
    decide(&store, "domain:relay.example", Action::Block);
    decide(&store, "domain:*.relay.example", Action::Block);
    s.commit(&store, s.changes(&store, 100).expect("changes").1)
        .expect("commit");
    decide(&store, "domain:relay.example", Action::Allow);
    let (out, _, _) = s.changes(&store, 100).expect("changes");
    assert!(
        out.iter()
            .map(notified)
            .all(|(_, _, _, retracts)| retracts.is_empty()),
        "still listed by domain:*.relay.example"
    );

    // The cursor survives a restart of the service: nothing is sent twice,
    // and what changed while it was away is sent.
    s.commit(&store, s.changes(&store, 100).expect("changes").1)
        .expect("commit");
    s.save(&store).expect("save");
    decide(&store, &format!("jid:{}", hex(1)), Action::Allow);
    let s2 = Service::new(&store, &config(), NOW).expect("service");
    let (out, _, _) = s2.changes(&store, 100).expect("changes");
    let sent: Vec<_> = out.iter().map(notified).collect();
    assert_eq!(
        sent,
        vec![
            (
                "rooms.a.test".into(),
                "muc_bans_sha256".into(),
                vec![],
                vec![hex(1)]
            ),
            (
                "rooms.a.test".into(),
                "spam_source_jids_sha256".into(),
                vec![],
                vec![hex(1)]
            ),
        ]
    );
    assert_eq!(s2.consumers().count(), 2, "consumers are kept");
}

#[test]
fn a_large_list_is_paged_below_the_stanza_limit_and_pushed_on_connection() {
    let store = Store::in_memory();
    for i in 0..7000 {
        decide(&store, &format!("jid:{}", hex(i)), Action::Block);
    }
    let mut s = Service::new(&store, &config(), NOW).expect("service");
    let t = Instant::now();
    // Without RSM: at most 3,000 entries, and the rest follows as
    // notifications after the result.
    let (reply, _) = s
        .handle_iq(
            &store,
            get("b.test", items_request("spam_source_jids_sha256", None)),
            t,
            NOW,
        )
        .expect("items");
    let payload = result_payload(reply);
    let first = ids(&payload);
    assert!(
        (2500..=lists::NON_RSM_MAX_ITEMS).contains(&first.len()),
        "{}",
        first.len()
    );
    assert!(String::from(&payload).len() < 500 * 1024);
    let mut rest = Vec::new();
    while let Some(m) = s.next_push(&store).expect("push") {
        let (to, node, items, _) = notified(&m);
        assert_eq!(
            (to.as_str(), node.as_str()),
            ("b.test", "spam_source_jids_sha256")
        );
        assert!(items.len() <= lists::ITEMS_PER_MESSAGE);
        rest.extend(items);
    }
    let mut all: Vec<String> = first.into_iter().chain(rest).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 7000, "every entry once, none lost");

    // RSM pages walk the list with the opaque `last` cursor.
    let mut after: Option<String> = None;
    let mut seen = 0;
    loop {
        let (reply, _) = s
            .handle_iq(
                &store,
                get(
                    "c.test",
                    items_request("muc_bans_sha256", Some((1000, after.as_deref()))),
                ),
                t + Duration::from_secs(seen as u64 + 1),
                NOW,
            )
            .expect("page");
        let p = result_payload(reply);
        let page = ids(&p);
        seen += page.len();
        let last = p
            .get_child("set", lists::NS_RSM)
            .and_then(|s| s.get_child("last", lists::NS_RSM))
            .map(Element::text);
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 1000);
        after = last;
    }
    assert_eq!(seen, 7000);

    // On connection every consumer gets every list it reads, once.
    s.connected();
    let mut pushed = std::collections::BTreeMap::<(String, String), usize>::new();
    while let Some(m) = s.next_push(&store).expect("push") {
        let (to, node, items, _) = notified(&m);
        *pushed.entry((to, node)).or_default() += items.len();
    }
    assert_eq!(
        pushed[&("b.test".into(), "spam_source_jids_sha256".into())],
        7000
    );
    assert_eq!(
        pushed[&("rooms.a.test".into(), "muc_bans_sha256".into())],
        7000
    );
    assert!(
        !pushed.contains_key(&("rooms.a.test".into(), "spam_source_domains".into())),
        "an empty list sends nothing"
    );
}

#[test]
fn the_service_refuses_writes_strangers_subscriptions_and_floods() {
    let store = Store::in_memory();
    let mut s = Service::new(&store, &config(), NOW).expect("service");
    let t = Instant::now();
    let publish = Element::builder("pubsub", lists::NS_PUBSUB)
        .append(
            Element::builder("publish", lists::NS_PUBSUB)
                .attr(attr("node"), "muc_bans_sha256")
                .build(),
        )
        .build();
    let set = Iq::Set {
        from: Some("mallory@evil.test/x".parse().expect("jid")),
        to: Some("corvid.a.test".parse().expect("jid")),
        id: "p".into(),
        payload: publish,
    };
    let (reply, handled) = s.handle_iq(&store, set, t, NOW).expect("publish");
    assert_eq!(error_condition(reply), "Forbidden");
    assert_eq!(handled, Handled::Refused("forbidden"));

    // Subscribing someone else is refused; subscribing oneself works.
    let subscribe = |jid: &str| {
        Element::builder("pubsub", lists::NS_PUBSUB)
            .append(
                Element::builder("subscribe", lists::NS_PUBSUB)
                    .attr(attr("node"), "muc_bans_sha256")
                    .attr(attr("jid"), jid)
                    .build(),
            )
            .build()
    };
    let as_set = |from: &str, payload| Iq::Set {
        from: Some(from.parse().expect("jid")),
        to: Some("corvid.a.test".parse().expect("jid")),
        id: "s".into(),
        payload,
    };
    let (reply, _) = s
        .handle_iq(
            &store,
            as_set("evil.test", subscribe("victim.test")),
            t,
            NOW,
        )
        .expect("subscribe");
    assert_eq!(error_condition(reply), "BadRequest");
    let (reply, handled) = s
        .handle_iq(
            &store,
            as_set("rooms.c.test", subscribe("rooms.c.test")),
            t,
            NOW,
        )
        .expect("subscribe");
    assert_eq!(handled, Handled::Answered("subscribe"));
    let sub = result_payload(reply);
    assert_eq!(
        sub.get_child("subscription", lists::NS_PUBSUB)
            .and_then(|c| c.attr("subscription")),
        Some("subscribed")
    );
    // Unknown nodes are not found.
    let (reply, _) = s
        .handle_iq(
            &store,
            get("d.test", items_request("spam_source_ips", None)),
            t,
            NOW,
        )
        .expect("ips");
    assert_eq!(error_condition(reply), "ItemNotFound");

    // Remembered consumers are bounded (4 here), whoever asks.
    for i in 0..10 {
        let _ = s
            .handle_iq(
                &store,
                get(
                    &format!("x{i}.test"),
                    items_request("spam_source_domains", None),
                ),
                t,
                NOW,
            )
            .expect("items");
    }
    assert_eq!(s.consumers().count(), 4);

    // One domain's flood is cut at its budget (5/s); another still gets in.
    let refused = (0..50)
        .filter(|_| {
            let (_, h) = s
                .handle_iq(
                    &store,
                    get("flood.test", items_request("spam_source_domains", None)),
                    t,
                    NOW,
                )
                .expect("items");
            h == Handled::Refused("rate-limited")
        })
        .count();
    assert_eq!(refused, 45);
    let (_, h) = s
        .handle_iq(
            &store,
            get("calm.test", items_request("spam_source_domains", None)),
            t,
            NOW,
        )
        .expect("items");
    assert_eq!(h, Handled::Answered("items"));
}
