//! mod_corvid on real Prosody 13 and 0.12 (issue "Prosody protects its
//! users"): keys computed in Lua against the spec's vectors, and a remote
//! spammer's messages and subscription requests refused over real s2s.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use corvid_node::xmpp::LinkState;
use corvid_tests::client::Client;
use corvid_tests::node::{Identity, Node};
use corvid_tests::prosody::{Prosody, ProsodyOptions, Version, module_dir};
use corvid_tests::{free_port, wait_for};
use xmpp_parsers::minidom::Element;

#[test]
fn lua_keys_match_the_vectors_on_prosody_13_and_0_12() {
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/test-vectors/subjects.json");
    for version in Version::ALL {
        let out = Command::new("lua5.4")
            .arg(module_dir().join("test/keys.lua"))
            .arg(version.source_dir())
            .arg(&vectors)
            .output()
            .expect("lua5.4 (installed with prosody)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {text}{}",
            version.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        // Every JID and domain case and every lookup case was checked.
        assert!(
            text.contains("checked 27, refused by Prosody's prep 0, mismatched 0"),
            "{}: {text}",
            version.name()
        );
    }
}

/// Two servers over s2s on their own loopback addresses: `a.test` runs
/// mod_corvid against its corvidd, `b.test` hosts the senders.
struct Federation {
    a: Prosody,
    b: Prosody,
    node: Option<Node>,
    api_port: u16,
}

fn federation(
    version: Version,
    ips: (&str, &str),
    module_options: &str,
    with_node: bool,
) -> Federation {
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "{} a.test pubsub.a.test\n{} b.test pubsub.b.test\n",
            ips.0, ips.1
        ),
    )
    .expect("hosts");
    let hosts = {
        // Kept for the servers' lifetime: the path lives in their config.
        let keep = std::env::temp_dir().join(format!("corvid-hosts-{}", free_port()));
        std::fs::copy(&hosts, &keep).expect("hosts copy");
        keep
    };
    let api_port = free_port();
    let opts = |iface: &str, module: bool| ProsodyOptions {
        interface: iface.into(),
        s2s: true,
        hosts_file: Some(hosts.clone()),
        version,
        modules: if module {
            vec!["corvid".into()]
        } else {
            Vec::new()
        },
        global: if module {
            format!(
                "corvid_api_url = \"http://127.0.0.1:{api_port}\"\ncorvid_api_token = \"read-a.test\"\n{module_options}\n"
            )
        } else {
            String::new()
        },
        ..ProsodyOptions::default()
    };
    let a = Prosody::start(
        &["a.test"],
        &["corvidd@a.test", "alice@a.test"],
        opts(ips.0, true),
    );
    let b = Prosody::start(
        &["b.test"],
        &["bot@b.test", "friend@b.test", "buddy@b.test"],
        opts(ips.1, false),
    );
    let node = with_node.then(|| {
        Node::start(
            &a,
            &Identity::new("a.test"),
            &format!("api.listen = \"127.0.0.1:{api_port}\""),
        )
    });
    Federation {
        a,
        b,
        node,
        api_port,
    }
}

fn is_error(stanza: &Element, name: &str, condition: &str) -> bool {
    stanza.name() == name
        && stanza.attr("type") == Some("error")
        && stanza
            .get_child("error", "jabber:client")
            .is_some_and(|e| e.has_child(condition, "urn:ietf:params:xml:ns:xmpp-stanzas"))
}

fn body_of(stanza: &Element) -> Option<String> {
    (stanza.name() == "message" && stanza.attr("type") != Some("error"))
        .then(|| stanza.get_child("body", "jabber:client").map(Element::text))
        .flatten()
}

fn full_jid(c: &Client) -> String {
    match c.link().state() {
        LinkState::Online { bound, .. } => bound,
        other => panic!("not online: {other:?}"),
    }
}

/// Until the module's copy has the block: the bot sends probes until one
/// bounces. Returns the probes the recipient may have seen before.
fn until_bounced(bot: &Client, to: &str) -> u32 {
    let start = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        bot.message(to, &format!("probe {n}"));
        if bot
            .wait_stanza(Duration::from_millis(500), |s| {
                is_error(s, "message", "policy-violation")
            })
            .is_some()
        {
            return n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the bot's messages were never refused"
        );
    }
}

fn refuses_a_blocked_stranger(version: Version, ips: (&str, &str)) {
    super::init();
    let f = federation(version, ips, "corvid_mode = \"enforce\"", true);
    let node = f.node.as_ref().expect("node");
    node.report("bot@b.test", "spam", 90);
    node.report("buddy@b.test", "spam", 90);
    node.wait_action("jid", "bot@b.test", "block", Duration::from_secs(10));

    let alice = Client::login(&f.a, "alice", "a.test");
    let bot = Client::login(&f.b, "bot", "b.test");
    let friend = Client::login(&f.b, "friend", "b.test");
    let buddy = Client::login(&f.b, "buddy", "b.test");
    // Alice wrote to buddy first (a subscription request): not a stranger.
    alice.send(
        xmpp_parsers::presence::Presence::new(xmpp_parsers::presence::Type::Subscribe)
            .with_to(
                "buddy@b.test"
                    .parse::<xmpp_parsers::jid::Jid>()
                    .expect("jid"),
            )
            .into(),
    );
    let probes = until_bounced(&bot, "alice@a.test");

    // To the bare JID, to the full JID, and a subscription request: refused
    // with policy-violation, and the text names the policy.
    bot.message("alice@a.test", "spam to the bare JID");
    let e = bot
        .wait_stanza(Duration::from_secs(5), |s| {
            is_error(s, "message", "policy-violation")
        })
        .expect("bounce of the message to the bare JID");
    let text = e
        .get_child("error", "jabber:client")
        .and_then(|e| e.get_child("text", "urn:ietf:params:xml:ns:xmpp-stanzas"))
        .map(Element::text)
        .unwrap_or_default();
    assert!(text.contains("Corvid"), "{text}");
    bot.message(&full_jid(&alice), "spam to the full JID");
    assert!(
        bot.wait_stanza(Duration::from_secs(5), |s| is_error(
            s,
            "message",
            "policy-violation"
        ))
        .is_some(),
        "bounce of the message to the full JID"
    );
    bot.send(
        xmpp_parsers::presence::Presence::new(xmpp_parsers::presence::Type::Subscribe)
            .with_to(
                "alice@a.test"
                    .parse::<xmpp_parsers::jid::Jid>()
                    .expect("jid"),
            )
            .into(),
    );
    assert!(
        bot.wait_stanza(Duration::from_secs(5), |s| is_error(
            s,
            "presence",
            "policy-violation"
        ))
        .is_some(),
        "bounce of the subscription request"
    );

    // Someone not blocked, and a blocked contact, are delivered.
    friend.message("alice@a.test", "hello from a friend");
    buddy.message("alice@a.test", "hello from a contact");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && !(seen.iter().any(|b: &String| b.contains("friend"))
            && seen.iter().any(|b| b.contains("contact")))
    {
        if let Some(s) = alice.wait_stanza(Duration::from_millis(200), |s| body_of(s).is_some()) {
            seen.push(body_of(&s).expect("body"));
        }
    }
    assert!(
        seen.iter().any(|b| b == "hello from a friend"),
        "{}: {seen:?}",
        version.name()
    );
    assert!(seen.iter().any(|b| b == "hello from a contact"), "{seen:?}");
    assert!(
        !seen.iter().any(|b| b.starts_with("spam")),
        "{}: a refused message reached alice: {seen:?}",
        version.name()
    );
    // Of the probes, only those sent before the copy held the block can
    // have arrived, and none after the first bounce.
    assert!(
        !seen.iter().any(|b| b == &format!("probe {probes}")),
        "{seen:?}"
    );
    assert!(
        f.a.log().contains("copy of Corvid's verdicts loaded"),
        "{}",
        f.a.log()
    );
    let _ = (&f.b, f.api_port);
}

#[test]
fn prosody_0_12_refuses_a_blocked_stranger_over_s2s() {
    refuses_a_blocked_stranger(Version::Debian12, ("127.0.0.4", "127.0.0.5"));
}

#[test]
fn prosody_13_refuses_a_blocked_stranger_over_s2s() {
    refuses_a_blocked_stranger(Version::Backports13, ("127.0.0.6", "127.0.0.7"));
}

/// Observe mode refuses nothing; without corvidd, messages flow (fail
/// open), and with `corvid_fail = "closed"` strangers are refused.
#[test]
fn observe_mode_and_a_missing_corvidd_never_stop_messages() {
    super::init();
    let f = federation(
        Version::Debian12,
        ("127.0.0.8", "127.0.0.9"),
        "corvid_mode = \"observe\"",
        true,
    );
    let node = f.node.as_ref().expect("node");
    node.report("bot@b.test", "spam", 90);
    node.wait_action("jid", "bot@b.test", "block", Duration::from_secs(10));
    let alice = Client::login(&f.a, "alice", "a.test");
    let bot = Client::login(&f.b, "bot", "b.test");
    wait_for(Duration::from_secs(30), "the module's copy to load", || {
        f.a.log()
            .contains("copy of Corvid's verdicts loaded")
            .then_some(())
    });
    bot.message("alice@a.test", "observed, not refused");
    assert!(
        alice
            .wait_stanza(Duration::from_secs(10), |s| body_of(s).as_deref()
                == Some("observed, not refused"))
            .is_some(),
        "observe mode delivered nothing"
    );
    drop(f);

    // No corvidd at all: fail open.
    let f = federation(
        Version::Debian12,
        ("127.0.0.10", "127.0.0.11"),
        "corvid_mode = \"enforce\"",
        false,
    );
    let alice = Client::login(&f.a, "alice", "a.test");
    let bot = Client::login(&f.b, "bot", "b.test");
    bot.message("alice@a.test", "corvidd is down");
    assert!(
        alice
            .wait_stanza(Duration::from_secs(10), |s| body_of(s).as_deref()
                == Some("corvidd is down"))
            .is_some(),
        "a missing corvidd stopped messages"
    );
    assert!(
        f.a.log().contains("no current copy of Corvid's verdicts"),
        "the fail-open is logged"
    );
    drop(f);

    // Failing closed refuses strangers while no copy is held.
    let f = federation(
        Version::Debian12,
        ("127.0.0.12", "127.0.0.13"),
        "corvid_mode = \"enforce\"\ncorvid_fail = \"closed\"",
        false,
    );
    let _alice = Client::login(&f.a, "alice", "a.test");
    let bot = Client::login(&f.b, "bot", "b.test");
    bot.message("alice@a.test", "refused while failing closed");
    assert!(
        bot.wait_stanza(Duration::from_secs(10), |s| is_error(
            s,
            "message",
            "policy-violation"
        ))
        .is_some(),
        "failing closed let a stranger through"
    );
}
