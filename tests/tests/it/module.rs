//! mod_corvid on real Prosody 13 and 0.12 (issue "Prosody protects its
//! users"): keys computed in Lua against the spec's vectors, and a remote
//! spammer's messages and subscription requests refused over real s2s.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use corvid_node::xmpp::LinkState;
use corvid_tests::client::Client;
use corvid_tests::node::{Identity, Node};
use corvid_tests::prosody::{Prosody, ProsodyOptions, Version, run_lua_script};
use corvid_tests::{free_port, wait_for};
use xmpp_parsers::minidom::Element;

/// Runs a check script of hooks/prosody/test with one Prosody's
/// libraries; its output, once it succeeded.
fn run_lua(script: &str, version: Version, args: &[&Path]) -> String {
    let out = run_lua_script(script, version, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}: {text}{}",
        version.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn lua_keys_match_the_vectors_on_prosody_13_and_0_12() {
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/test-vectors/subjects.json");
    for version in Version::ALL {
        let text = run_lua("keys.lua", version, &[&vectors]);
        // Every JID and domain case and every lookup case was checked.
        assert!(
            text.contains("checked 27, refused by Prosody's prep 0, mismatched 0"),
            "{}: {text}",
            version.name()
        );
    }
}

/// Texts built from pieces that exercise every rule of spec §10 and §10.1:
/// schemes, hosts, ports, paths, brackets, trailing punctuation, emails,
/// digits of several scripts, white space, and characters that fold.
fn random_bodies(n: usize) -> Vec<String> {
    const PIECES: &[&str] = &[
        "http://",
        "https://",
        "ftp://",
        "mailto:",
        "xmpp:",
        "www.",
        "WWW.",
        ".",
        ".",
        ":",
        "/",
        "//",
        "?",
        "#",
        "@",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        "'",
        "\"",
        "<",
        ">",
        "!",
        ",",
        ";",
        " ",
        " ",
        " ",
        "  ",
        "\t",
        "\n",
        "\u{a0}",
        "\u{2028}",
        "\u{3000}",
        "\u{85}",
        "a",
        "b",
        "co",
        "Example",
        "scam",
        "com",
        "org",
        "de",
        "e1",
        "x-y",
        "_",
        "%",
        "&",
        "=",
        "+",
        "~",
        "$",
        "\\",
        "192.168.1.1",
        "256.1.1.1",
        "1.2.3",
        ":8080",
        ":80/x",
        "42",
        "7",
        "\u{661}\u{662}",
        "\u{96f6}",
        "\u{2155}",
        "Straße",
        "ＦＲＥＥ",
        "ﬁ",
        "İstanbul",
        "ΣΊΣΥΦΟΣ",
        "Привет",
        "бесплатно",
        "мир.рф",
        "bücher",
        "中文",
        "网站",
        ".中国",
        "日本語テキスト",
        "ｶﾀｶﾅ",
        "\u{1f4b0}",
        "…",
        "—",
        "xn--bcher-kva",
        "xn--zz",
        "café",
        "cafe\u{301}",
        "ǅ",
        "ß.example",
        "a.b",
        "sub.scam.example",
        "user:pass@",
        "[::1]",
        "e\u{0308}",
        "\u{1100}\u{1161}",
        "가",
        "Ⅻ",
        "²",
        "ℌ",
        // Characters whose normalization depends on their neighbours.
        "\u{301}",
        "\u{323}",
        "\u{307}",
        "\u{345}",
        "\u{1161}",
        "\u{11a8}",
        "\u{ac00}",
        "u\u{308}\u{304}",
        "\u{1e0b}\u{323}",
        "\u{212b}",
        "K",
        "\u{212a}",
        "ᾳ\u{301}",
        "ΐ",
        "ﬃ",
        "क्षि",
        "\u{94d}",
        "\u{93c}",
        "ไม้",
        "\u{e49}",
        "مَرْحَبًا",
        "\u{5b7}",
        "\u{3099}",
        "か\u{3099}",
        "\u{ff76}\u{ff9e}",
        "\u{0b47}\u{0b3e}",
        "\u{1100}",
        "\u{327}\u{301}\u{323}\u{300}",
        "İ\u{301}",
        "ß\u{301}",
        "\u{fdfa}",
        // Punycode, valid and not.
        "xn--80ak6aa92e",
        "xn--mgbh0fb",
        "xn--fiqs8s",
        "xn--ls8h",
        "xn--",
        "xn---",
        "xn--a-",
        "xn--9999999999a",
        "XN--BCHER-KVA",
        "xn--ü-kva",
        "xn--a-ecp",
        "xn--zca",
        "xn--1ug",
    ];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let len = 1 + (next() % 40) as usize;
            (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect()
        })
        .collect()
}

#[test]
fn lua_digests_match_corvid_protocol_on_prosody_13_and_0_12() {
    let vectors: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/test-vectors/digests.json"),
        )
        .expect("digests.json"),
    )
    .expect("json");
    let mut bodies: Vec<String> = vectors["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["body"].as_str().expect("body").to_owned())
        .collect();
    let from_vectors = bodies.len();
    bodies.extend(random_bodies(20_000));
    // Beyond Unicode's stream-safe limit (30 combining marks in a row):
    // left to corvidd.
    bodies.push(format!(
        "a{} then some text to digest",
        "\u{301}\u{323}".repeat(20)
    ));
    let cases: Vec<serde_json::Value> = bodies
        .iter()
        .enumerate()
        .map(|(n, body)| {
            let normalized = corvid_protocol::digest::normalize_body(body);
            let subject = corvid_protocol::digest::body_digest(body).map(|k| k.to_string());
            if n < from_vectors {
                let case = &vectors["cases"][n];
                assert_eq!(case["normalized"].as_str(), Some(normalized.as_str()));
            }
            serde_json::json!({"body": body, "normalized": normalized, "subject": subject})
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let tables = dir.path().join("tables.json");
    let cases_file = dir.path().join("cases.json");
    std::fs::write(&tables, corvid_node::api::digest_tables_json()).expect("write");
    std::fs::write(&cases_file, serde_json::to_vec(&cases).expect("json")).expect("write");
    for version in Version::ALL {
        let text = run_lua("digest.lua", version, &[&tables, &cases_file]);
        eprintln!("{}: {text}", version.name());
        // Nearly every text is digested in Lua: those left to corvidd hold
        // more combining marks in a row than Unicode's stream-safe limit.
        let numbers: Vec<usize> = text
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        assert!(
            matches!(numbers[..], [checked, left, 0] if left <= 10 && checked + left == cases.len()),
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
    federation_with(version, ips, module_options, with_node, "")
}

fn federation_with(
    version: Version,
    ips: (&str, &str),
    module_options: &str,
    with_node: bool,
    node_extra: &str,
) -> Federation {
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "{} a.test pubsub.a.test muc.a.test\n{} b.test pubsub.b.test\n",
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
            // MAM, carbons and offline storage too: nothing refused may reach them.
            // mod_anti_spam beside it when its options are given.
            ["corvid", "mam", "carbons", "offline"]
                .into_iter()
                .chain(module_options.contains("anti_spam_").then_some("anti_spam"))
                .map(String::from)
                .collect()
        } else {
            Vec::new()
        },
        community_modules: module && module_options.contains("anti_spam_"),
        global: if module {
            format!(
                "corvid_api_url = \"http://127.0.0.1:{api_port}\"\ncorvid_api_token = \"read-a.test\"\n{module_options}\n"
            )
        } else {
            String::new()
        },
        tail: if module {
            "\nComponent \"muc.a.test\" \"muc\"\n    modules_enabled = { \"corvid\" }\n".into()
        } else {
            String::new()
        },
        ..ProsodyOptions::default()
    };
    let a = Prosody::start(
        &["a.test"],
        &["corvidd@a.test", "alice@a.test", "carol@a.test"],
        opts(ips.0, true),
    );
    let b = Prosody::start(
        &["b.test"],
        &[
            "bot@b.test",
            "friend@b.test",
            "buddy@b.test",
            "spammy@b.test",
            "phishy@b.test",
        ],
        opts(ips.1, false),
    );
    let node = with_node.then(|| {
        Node::start(
            &a,
            &Identity::new("a.test"),
            &format!("api.listen = \"127.0.0.1:{api_port}\"\n{node_extra}"),
        )
    });
    Federation {
        a,
        b,
        node,
        api_port,
    }
}

/// The operator blocks a JID (a report at 90), and corvidd says so.
fn block(node: &Node, jid: &str) {
    node.report(jid, "spam", 90);
    node.wait_action("jid", jid, "block", Duration::from_secs(10));
}

/// Waits until the module on `a.test` has read its first copy.
fn copy_loaded(f: &Federation) {
    wait_for(Duration::from_secs(30), "the module's copy to load", || {
        let log = f.a.log();
        (log.contains("copy of Corvid's verdicts loaded")
            && log.contains("content digests computed in Prosody"))
        .then_some(())
    });
}

/// A presence of `kind` to `to`; a room join carries the MUC payload.
fn presence(kind: xmpp_parsers::presence::Type, to: &str) -> xmpp_parsers::stanza::Stanza {
    let join = kind == xmpp_parsers::presence::Type::None && to.contains('/');
    let p = xmpp_parsers::presence::Presence::new(kind)
        .with_to(to.parse::<xmpp_parsers::jid::Jid>().expect("jid"));
    if join {
        p.with_payloads(vec![
            Element::builder("x", "http://jabber.org/protocol/muc").build(),
        ])
        .into()
    } else {
        p.into()
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
    alice.send(presence(
        xmpp_parsers::presence::Type::Subscribe,
        "buddy@b.test",
    ));
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
    bot.send(presence(
        xmpp_parsers::presence::Type::Subscribe,
        "alice@a.test",
    ));
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

    // Carol has not logged in: the friend's message waits in offline
    // storage, the bot's is refused and stored nowhere. (A client that only
    // drops its connection leaves a hibernating stream-management session,
    // which takes messages instead of offline storage.)
    bot.message("carol@a.test", "spam while carol is offline");
    assert!(
        bot.wait_stanza(Duration::from_secs(5), |s| is_error(
            s,
            "message",
            "policy-violation"
        ))
        .is_some(),
        "bounce of the message to an offline user"
    );
    friend.message("carol@a.test", "hello while you were away");
    wait_for(
        Duration::from_secs(10),
        "the friend's offline message",
        || {
            stored(&f.a, "offline", "carol")
                .contains("hello while you were away")
                .then_some(())
        },
    );
    let offline = stored(&f.a, "offline", "carol");
    let archive = stored(&f.a, "archive", "alice");
    // MAM archived what was delivered, so its absence below means something.
    assert!(
        archive.contains("hello from a friend"),
        "{}: MAM archived nothing: {archive}",
        version.name()
    );
    for (store, text) in [("offline", &offline), ("archive", &archive)] {
        assert!(
            !text.contains("spam to the") && !text.contains("spam while"),
            "{}: a refused message reached {store}: {text}",
            version.name()
        );
        assert!(
            !text.contains(&format!("probe {probes}")),
            "{}: the bounced probe reached {store}",
            version.name()
        );
    }
    let _ = (&f.b, f.api_port);
}

/// What Prosody's file storage holds in `store` for `user@a.test` (empty
/// when nothing).
fn stored(a: &Prosody, store: &str, user: &str) -> String {
    let dir = a.dir().join("data").join("a%2etest").join(store);
    ["list", "dat"]
        .iter()
        .filter_map(|ext| std::fs::read_to_string(dir.join(format!("{user}.{ext}"))).ok())
        .collect()
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
    block(node, "bot@b.test");
    let alice = Client::login(&f.a, "alice", "a.test");
    let bot = Client::login(&f.b, "bot", "b.test");
    copy_loaded(&f);
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

/// corvidd frozen (SIGSTOP), then killed: every stranger's message still
/// arrives, none waits longer than its digest timeout (only a body that
/// corvidd must digest waits at all), and the copy in memory keeps refusing
/// what it blocked.
#[test]
fn prosody_13_a_frozen_then_killed_corvidd_never_holds_messages() {
    super::init();
    let mut f = federation(
        Version::Backports13,
        ("127.0.0.83", "127.0.0.84"),
        "corvid_mode = \"enforce\"\ncorvid_digest_timeout = 0.5",
        true,
    );
    let node = f.node.as_ref().expect("node");
    block(node, "bot@b.test");
    // A listed digest: strangers' bodies are digested (with none listed,
    // the module digests none).
    let key = corvid_protocol::digest::body_digest("a spam text listed before the test begins")
        .expect("a digest");
    node.report(key.as_str(), "spam", 90);
    node.wait_action("digest", key.as_str(), "flag", Duration::from_secs(10));
    let alice = Client::login(&f.a, "alice", "a.test");
    let bot = Client::login(&f.b, "bot", "b.test");
    let friend = Client::login(&f.b, "friend", "b.test");
    copy_loaded(&f);
    until_bounced(&bot, "alice@a.test");
    // A stranger's message waits for its digest at most 0.5 s; over s2s
    // on loopback the rest of the trip takes milliseconds.
    let limit = Duration::from_millis(1500);
    // A body with more combining marks in a row than Unicode's stream-safe
    // limit is digested by corvidd; others in Lua.
    let deliver = |label: &str, accent: bool| {
        let mut slowest = Duration::ZERO;
        for i in 0..5 {
            let body = if accent {
                format!("{label} {i}: a{}", "\u{301}\u{323}".repeat(20))
            } else {
                format!("{label} {i}")
            };
            let sent = Instant::now();
            friend.message("alice@a.test", &body);
            assert!(
                alice
                    .wait_stanza(limit, |s| body_of(s).as_deref() == Some(body.as_str()))
                    .is_some(),
                "{body:?} did not arrive within {limit:?}"
            );
            eprintln!("{body:?} arrived after {:?}", sent.elapsed());
            slowest = slowest.max(sent.elapsed());
        }
        slowest
    };
    deliver("while corvidd runs", false);
    deliver("while corvidd runs", true);

    let pid = node.pid().expect("corvidd's pid");
    let stop = |signal: &str| {
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {signal} {pid}");
    };
    stop("-STOP");
    // Digested in Lua: no wait at all.
    let slowest = deliver("while corvidd is frozen", false);
    assert!(slowest < Duration::from_millis(450), "{slowest:?}");
    // Left to corvidd: each waited for its digest until the timeout.
    let slowest = deliver("while corvidd is frozen", true);
    assert!(slowest >= Duration::from_millis(450), "{slowest:?}");
    bot.message("alice@a.test", "spam while corvidd is frozen");
    assert!(
        bot.wait_stanza(Duration::from_secs(5), |s| is_error(
            s,
            "message",
            "policy-violation"
        ))
        .is_some(),
        "the copy in memory stopped refusing while corvidd was frozen"
    );
    stop("-CONT");
    f.node.as_mut().expect("node").kill();
    deliver("after corvidd was killed", false);
    deliver("after corvidd was killed", true);
    bot.message("alice@a.test", "spam after corvidd was killed");
    assert!(
        bot.wait_stanza(Duration::from_secs(5), |s| is_error(
            s,
            "message",
            "policy-violation"
        ))
        .is_some(),
        "the copy in memory stopped refusing once corvidd was gone"
    );
    // The frozen corvidd's digests timed out and were counted as such.
    let log = f.a.log();
    assert!(!log.contains("Traceback"), "{log}");
}

/// The error text of a bounce.
fn error_text(e: &Element) -> String {
    e.get_child("error", "jabber:client")
        .and_then(|e| e.get_child("text", "urn:ietf:params:xml:ns:xmpp-stanzas"))
        .map(Element::text)
        .unwrap_or_default()
}

/// An exact local allow entry beats a covering block, in mod_corvid and in
/// mod_anti_spam loaded beside it (through its spam-blocked veto).
#[test]
fn prosody_13_an_exact_allow_beats_a_covering_block_and_mod_anti_spam() {
    super::init();
    let f = federation(
        Version::Backports13,
        ("127.0.0.93", "127.0.0.94"),
        "corvid_mode = \"enforce\"\nanti_spam_block_strings = { \"cheap pills\" }",
        true,
    );
    let node = f.node.as_ref().expect("node");
    let alice = Client::login(&f.a, "alice", "a.test");
    let bot = Client::login(&f.b, "bot", "b.test");
    let buddy = Client::login(&f.b, "buddy", "b.test");
    copy_loaded(&f);
    // mod_anti_spam works on its own: it bounces the text it is told to.
    bot.message("alice@a.test", "cheap pills, first try");
    let e = bot
        .wait_stanza(Duration::from_secs(10), |s| {
            is_error(s, "message", "policy-violation")
        })
        .expect("mod_anti_spam's bounce");
    assert!(
        error_text(&e).contains("Rejected as spam"),
        "{}",
        error_text(&e)
    );

    // The operator allows bot@b.test; the federation blocks b.test (below
    // the s2s threshold, so the stream stays).
    let config = std::fs::read_to_string(node.config_path()).expect("config");
    std::fs::write(
        node.config_path(),
        config.replacen("[policy]\n", "[policy]\nallow = [\"bot@b.test\"]\n", 1),
    )
    .expect("config");
    node.reload();
    node.report("b.test", "spam", 80);
    node.wait_action("domain", "b.test", "block", Duration::from_secs(10));
    node.wait_action("jid", "bot@b.test", "allow", Duration::from_secs(10));
    until_bounced(&buddy, "alice@a.test");
    buddy.message("alice@a.test", "hello, I am covered by the block");
    let e = buddy
        .wait_stanza(Duration::from_secs(5), |s| {
            is_error(s, "message", "policy-violation")
        })
        .expect("Corvid's bounce");
    assert!(error_text(&e).contains("Corvid"), "{}", error_text(&e));

    // The exact allow wins in mod_corvid, and over mod_anti_spam's content
    // rule through its veto.
    bot.message("alice@a.test", "hello from an allowed sender");
    bot.message("alice@a.test", "cheap pills, allowed");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Some(s) = alice.wait_stanza(Duration::from_millis(200), |s| {
            body_of(s).is_some_and(|b| b.contains("allowed"))
        }) {
            seen.push(body_of(&s).expect("body"));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        ["cheap pills, allowed", "hello from an allowed sender"],
        "the allowed sender's messages"
    );
    assert!(
        bot.wait_stanza(Duration::from_millis(500), |s| s.attr("type")
            == Some("error"))
            .is_none(),
        "the allowed sender was bounced"
    );
}

fn flagged_messages_wait_in_the_spam_folder(version: Version, ips: (&str, &str)) {
    super::init();
    let f = federation(version, ips, "corvid_mode = \"enforce\"", true);
    let node = f.node.as_ref().expect("node");
    node.report("spammy@b.test", "spam", 50);
    node.wait_action("jid", "spammy@b.test", "flag", Duration::from_secs(10));
    let alice = Client::login(&f.a, "alice", "a.test");
    let spammy = Client::login(&f.b, "spammy", "b.test");
    copy_loaded(&f);
    // Until the copy has the flag, a message may still be delivered: send
    // until the folder's notice arrives instead.
    let start = Instant::now();
    let mut n = 0;
    let notice = loop {
        n += 1;
        spammy.message("alice@a.test", &format!("buy now {n}"));
        if let Some(s) = alice.wait_stanza(Duration::from_millis(500), |s| {
            s.attr("from") == Some("a.test")
                && body_of(s).is_some_and(|b| b.contains("spam folder"))
        }) {
            break body_of(&s).expect("body");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}: nothing was held",
            version.name()
        );
    };
    assert!(notice.contains("Nothing was deleted"), "{notice}");
    let held = format!("buy now {n}");
    spammy.message("alice@a.test", "buy now, second");
    // Held, not delivered, and not bounced: the sender learns nothing.
    assert!(
        alice
            .wait_stanza(Duration::from_secs(2), |s| body_of(s)
                .is_some_and(|b| b.starts_with("buy now")))
            .is_none(),
        "a flagged message was delivered"
    );
    assert!(
        spammy
            .wait_stanza(Duration::from_millis(300), |s| s.attr("type")
                == Some("error"))
            .is_none()
    );

    // The folder lists both; release the first, and choose to refuse.
    let folder = alice.spam_folder("a.test");
    let options = &folder.messages;
    assert_eq!(options.len(), 2, "{options:?}");
    assert!(
        options[0].0.contains(&held) && options[0].0.contains("spammy@b.test"),
        "{options:?}"
    );
    let done = alice.spam_folder_submit(
        "a.test",
        &folder,
        &[&options[0].1],
        "release",
        &[("flagged_spam", "refuse")],
    );
    assert_eq!(
        done.attr("status"),
        Some("completed"),
        "{}",
        String::from(&done)
    );
    let released = alice
        .wait_stanza(Duration::from_secs(5), |s| {
            body_of(s).as_deref() == Some(held.as_str())
        })
        .expect("the released message arrives");
    let delay = released
        .get_child("delay", "urn:xmpp:delay")
        .expect("a delay stamp with the time it arrived");
    assert!(delay.attr("stamp").is_some_and(|s| s.contains('T')));
    assert_eq!(
        released
            .attr("from")
            .map(|f| f.starts_with("spammy@b.test")),
        Some(true)
    );

    // The release went back to corvidd as a local signal, shown by `why`.
    wait_for(Duration::from_secs(10), "the release at corvidd", || {
        let v = node.get("/v1/explain?subject=spammy%40b.test").json;
        (v["local_signals"]["releases"] == 1).then_some(())
    });
    assert_eq!(node.counter("corvid_local_signals_total", &["release"]), 1);

    // Now the user refuses flagged messages: the sender gets an error.
    spammy.message("alice@a.test", "buy now, refused");
    assert!(
        spammy
            .wait_stanza(Duration::from_secs(5), |s| is_error(
                s,
                "message",
                "policy-violation"
            ))
            .is_some(),
        "{}: the user's choice to refuse was not honoured",
        version.name()
    );
    // The choice was for spam: a sender flagged for phishing still goes to
    // the folder, silently.
    node.report("phishy@b.test", "phishing", 50);
    node.wait_action("jid", "phishy@b.test", "flag", Duration::from_secs(10));
    let phishy = Client::login(&f.b, "phishy", "b.test");
    let start = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        phishy.message("alice@a.test", &format!("verify your account {n}"));
        // Until the copy has the flag the message may be delivered.
        if alice
            .wait_stanza(Duration::from_millis(500), |s| {
                body_of(s).is_some_and(|b| b.starts_with("verify your account"))
            })
            .is_none()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}: the phishing sender was never held",
            version.name()
        );
    }
    assert!(
        phishy
            .wait_stanza(Duration::from_millis(300), |s| s.attr("type")
                == Some("error"))
            .is_none(),
        "{}: a phishing-flagged message was refused though only spam is refused",
        version.name()
    );
    // One message is left in the folder, and MAM never saw it (nor the
    // refused one); it archived the released one.
    let left = alice.spam_folder("a.test");
    assert_eq!(left.messages.len(), 2, "{:?}", left.messages);
    assert!(
        left.messages[1]
            .0
            .contains(&format!("verify your account {n}")),
        "{:?}",
        left.messages
    );
    let archive = stored(&f.a, "archive", "alice");
    assert!(archive.contains(&held), "{}: {archive}", version.name());
    assert!(
        !archive.contains("buy now, second") && !archive.contains("buy now, refused"),
        "{}: a held or refused message reached MAM: {archive}",
        version.name()
    );
}

#[test]
fn prosody_0_12_keeps_flagged_messages_in_a_spam_folder() {
    flagged_messages_wait_in_the_spam_folder(Version::Debian12, ("127.0.0.14", "127.0.0.15"));
}

#[test]
fn prosody_13_keeps_flagged_messages_in_a_spam_folder() {
    flagged_messages_wait_in_the_spam_folder(Version::Backports13, ("127.0.0.16", "127.0.0.17"));
}

/// A domain put on the deny list while its s2s stream is open: the stream
/// is closed and new ones are refused; a blocked JID cannot join a chat
/// room of this server.
fn a_denied_domain_loses_its_stream_and_a_blocked_jid_its_rooms(
    version: Version,
    ips: (&str, &str),
) {
    super::init();
    let f = federation(version, ips, "corvid_mode = \"enforce\"", true);
    let node = f.node.as_ref().expect("node");
    let alice = Client::login(&f.a, "alice", "a.test");
    let friend = Client::login(&f.b, "friend", "b.test");
    let bot = Client::login(&f.b, "bot", "b.test");
    copy_loaded(&f);

    // A chat room, made by alice (its owner): the blocked bot, not
    // affiliated, is refused at the door.
    alice.send(presence(
        xmpp_parsers::presence::Type::None,
        "room@muc.a.test/alice",
    ));
    alice
        .wait_stanza(Duration::from_secs(10), |s| {
            s.name() == "presence" && s.attr("from") == Some("room@muc.a.test/alice")
        })
        .expect("alice is in her room");
    block(node, "bot@b.test");
    let start = Instant::now();
    loop {
        bot.send(presence(
            xmpp_parsers::presence::Type::None,
            "room@muc.a.test/bot",
        ));
        let answer = bot
            .wait_stanza(Duration::from_secs(5), |s| {
                s.name() == "presence"
                    && s.attr("from")
                        .is_some_and(|f| f.starts_with("room@muc.a.test"))
            })
            .expect("the room answers");
        if is_error(&answer, "presence", "forbidden") {
            break;
        }
        // Joined before the copy had the block: leave and try again.
        bot.send(presence(
            xmpp_parsers::presence::Type::Unavailable,
            "room@muc.a.test/bot",
        ));
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the blocked JID kept joining"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // The stream from b.test is open (a friend's message arrives)...
    friend.message("alice@a.test", "before the deny entry");
    assert!(
        alice
            .wait_stanza(Duration::from_secs(10), |s| body_of(s).as_deref()
                == Some("before the deny entry"))
            .is_some()
    );
    // ...until the operator denies the domain.
    let config = std::fs::read_to_string(node.config_path()).expect("config");
    std::fs::write(
        node.config_path(),
        config.replacen("[policy]\n", "[policy]\ndeny = [\"b.test\"]\n", 1),
    )
    .expect("config");
    node.reload();
    wait_for(
        Duration::from_secs(15),
        "the open stream to be closed",
        || {
            f.a.log()
                .contains("closing the s2s stream from b.test")
                .then_some(())
        },
    );
    friend.message("alice@a.test", "after the deny entry");
    assert!(
        alice
            .wait_stanza(Duration::from_secs(3), |s| body_of(s).as_deref()
                == Some("after the deny entry"))
            .is_none(),
        "a denied domain's message arrived"
    );
}

/// The federation's block of a whole domain refuses its s2s stream only
/// at the stricter `corvid_s2s_threshold` (0.9): below it, its users'
/// messages are refused one by one, and the stream stays.
fn a_domain_block_closes_the_stream_only_above_the_s2s_threshold(
    version: Version,
    ips: (&str, &str),
) {
    super::init();
    let f = federation(version, ips, "corvid_mode = \"enforce\"", true);
    let node = f.node.as_ref().expect("node");
    let _alice = Client::login(&f.a, "alice", "a.test");
    let friend = Client::login(&f.b, "friend", "b.test");
    copy_loaded(&f);
    node.report("b.test", "spam", 80);
    node.wait_action("domain", "b.test", "block", Duration::from_secs(10));
    let n = until_bounced(&friend, "alice@a.test");
    assert!(n >= 1);
    assert!(
        !f.a.log().contains("closing the s2s stream from b.test"),
        "a block at 0.8 closed the whole stream"
    );
    node.report("b.test", "spam", 95);
    wait_for(
        Duration::from_secs(15),
        "the stream to be closed at 0.95",
        || {
            f.a.log()
                .contains(
                    "closing the s2s stream from b.test: the federation blocks the domain (score 9",
                )
                .then_some(())
        },
    );
}

/// `corvid brake on` makes the module observe at once, and `off` enforces
/// again; `corvid status` names the server that reads the verdicts.
fn the_emergency_brake_stops_refusals_at_once_and_status_shows_the_module(
    version: Version,
    ips: (&str, &str),
) {
    super::init();
    let f = federation(version, ips, "corvid_mode = \"enforce\"", true);
    let node = f.node.as_ref().expect("node");
    block(node, "bot@b.test");
    let alice = Client::login(&f.a, "alice", "a.test");
    let bot = Client::login(&f.b, "bot", "b.test");
    until_bounced(&bot, "alice@a.test");

    let status = node.get("/v1/status");
    let checks = status.json["checks"].as_array().expect("checks");
    let module = checks
        .iter()
        .find(|c| c["name"] == "enforcement.prosody:a.test")
        .unwrap_or_else(|| panic!("no enforcement check: {}", status.text));
    // The probes sent before the copy loaded passed unchecked: that is a
    // warning for ten minutes, and says so.
    assert!(
        module["severity"] == "ok"
            || module["fix"]
                .as_str()
                .is_some_and(|f| f.contains("unchecked")),
        "{module}"
    );
    let message = module["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("a.test=enforce") && message.contains("Prosody"),
        "{message}"
    );

    let r = node.post(
        "/v1/admin/brake",
        &serde_json::json!({"on": true, "reason": "test"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    wait_for(
        Duration::from_secs(5),
        "the module to see the brake",
        || f.a.log().contains("emergency brake is on").then_some(()),
    );
    bot.message("alice@a.test", "while the brake is on");
    assert!(
        alice
            .wait_stanza(Duration::from_secs(5), |s| body_of(s).as_deref()
                == Some("while the brake is on"))
            .is_some(),
        "the brake did not stop refusals"
    );
    let status = node.get("/v1/status");
    assert!(
        status.json["checks"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "enforcement.brake")),
        "{}",
        status.text
    );
    node.post("/v1/admin/brake", &serde_json::json!({"on": false}));
    wait_for(
        Duration::from_secs(5),
        "the module to see the release",
        || {
            f.a.log()
                .contains("emergency brake is released")
                .then_some(())
        },
    );
    bot.message("alice@a.test", "after the brake");
    assert!(
        bot.wait_stanza(Duration::from_secs(5), |s| is_error(
            s,
            "message",
            "policy-violation"
        ))
        .is_some(),
        "refusals did not resume"
    );
}

/// A stranger whose own verdict lets them through, with a body whose
/// content digest is flagged, lands in the spam folder; the same body as
/// an OMEMO fallback is never digested and is delivered.
fn a_flagged_body_from_a_stranger_is_held_and_encrypted_fallbacks_pass(
    version: Version,
    ips: (&str, &str),
) {
    super::init();
    let f = federation(version, ips, "corvid_mode = \"enforce\"", true);
    let node = f.node.as_ref().expect("node");
    let spam = "Cheap Bitcoin! Visit https://scam.example/ref?id=123 now, offer 42 ends soon";
    let key = corvid_protocol::digest::body_digest(spam).expect("a digest");
    node.report(key.as_str(), "spam", 90);
    node.wait_action("digest", key.as_str(), "flag", Duration::from_secs(10));
    let alice = Client::login(&f.a, "alice", "a.test");
    let friend = Client::login(&f.b, "friend", "b.test");
    copy_loaded(&f);

    // A variation of the spam (case, spacing, URL path, number).
    friend.message(
        "alice@a.test",
        "cheap  BITCOIN! visit http://SCAM.example/other now, offer 7 ends soon",
    );
    let notice = alice
        .wait_stanza(Duration::from_secs(10), |s| {
            s.attr("from") == Some("a.test") || body_of(s).is_some_and(|b| b.contains("BITCOIN"))
        })
        .expect("either the folder's notice or the message");
    assert_eq!(
        notice.attr("from"),
        Some("a.test"),
        "the flagged body was delivered"
    );

    // The same text as an OMEMO fallback body, and an ordinary message.
    let mut omemo = xmpp_parsers::message::Message::chat(Some(
        "alice@a.test"
            .parse::<xmpp_parsers::jid::Jid>()
            .expect("jid"),
    ));
    omemo
        .bodies
        .insert(xmpp_parsers::message::Lang::default(), spam.to_owned());
    omemo
        .payloads
        .push(Element::builder("encrypted", "eu.siacs.conversations.axolotl").build());
    friend.send(omemo.into());
    friend.message(
        "alice@a.test",
        "hello there, are we still on for lunch today?",
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Some(s) = alice.wait_stanza(Duration::from_millis(200), |s| body_of(s).is_some()) {
            seen.push(body_of(&s).expect("body"));
        }
    }
    assert!(
        seen.iter().any(|b| b == spam),
        "the OMEMO fallback was held: {seen:?}"
    );
    assert!(
        seen.iter().any(|b| b.starts_with("hello there")),
        "{seen:?}"
    );

    // A flagged body that Prosody leaves to corvidd (more combining marks
    // in a row than Unicode's stream-safe limit): held as well, and both
    // wait in the folder.
    let accented = format!(
        "Cafe{} deals: cheap bitcoin at scam.example today only",
        "\u{301}\u{323}".repeat(20)
    );
    let key = corvid_protocol::digest::body_digest(&accented).expect("a digest");
    node.report(key.as_str(), "spam", 90);
    node.wait_action("digest", key.as_str(), "flag", Duration::from_secs(10));
    friend.message("alice@a.test", &accented);
    friend.message("alice@a.test", "and a last ordinary message, delivered");
    assert!(
        alice
            .wait_stanza(Duration::from_secs(10), |s| body_of(s)
                .is_some_and(|b| b.starts_with("and a last")))
            .is_some()
    );
    // (The ordinary message does not wait for corvidd's answer, so it
    // may arrive first.)
    let folder = wait_for(Duration::from_secs(10), "both in the folder", || {
        let folder = alice.spam_folder("a.test");
        (folder.messages.len() == 2).then_some(folder)
    });
    assert!(
        folder
            .messages
            .iter()
            .any(|(label, _)| label.contains("deals")),
        "{:?}",
        folder.messages
    );
    let log = f.a.log();
    assert!(!log.contains("Traceback"), "{log}");
}

#[test]
fn prosody_0_12_a_denied_domain_loses_its_stream_and_a_blocked_jid_its_rooms() {
    a_denied_domain_loses_its_stream_and_a_blocked_jid_its_rooms(
        Version::Debian12,
        ("127.0.0.18", "127.0.0.19"),
    );
}

#[test]
fn prosody_13_a_denied_domain_loses_its_stream_and_a_blocked_jid_its_rooms() {
    a_denied_domain_loses_its_stream_and_a_blocked_jid_its_rooms(
        Version::Backports13,
        ("127.0.0.42", "127.0.0.43"),
    );
}

#[test]
fn prosody_0_12_a_domain_block_closes_the_stream_only_above_the_s2s_threshold() {
    a_domain_block_closes_the_stream_only_above_the_s2s_threshold(
        Version::Debian12,
        ("127.0.0.20", "127.0.0.21"),
    );
}

#[test]
fn prosody_13_a_domain_block_closes_the_stream_only_above_the_s2s_threshold() {
    a_domain_block_closes_the_stream_only_above_the_s2s_threshold(
        Version::Backports13,
        ("127.0.0.44", "127.0.0.45"),
    );
}

#[test]
fn prosody_0_12_the_emergency_brake_stops_refusals_at_once_and_status_shows_the_module() {
    the_emergency_brake_stops_refusals_at_once_and_status_shows_the_module(
        Version::Debian12,
        ("127.0.0.22", "127.0.0.23"),
    );
}

#[test]
fn prosody_13_the_emergency_brake_stops_refusals_at_once_and_status_shows_the_module() {
    the_emergency_brake_stops_refusals_at_once_and_status_shows_the_module(
        Version::Backports13,
        ("127.0.0.46", "127.0.0.47"),
    );
}

#[test]
fn prosody_0_12_a_flagged_body_from_a_stranger_is_held_and_encrypted_fallbacks_pass() {
    a_flagged_body_from_a_stranger_is_held_and_encrypted_fallbacks_pass(
        Version::Debian12,
        ("127.0.0.24", "127.0.0.25"),
    );
}

#[test]
fn prosody_13_a_flagged_body_from_a_stranger_is_held_and_encrypted_fallbacks_pass() {
    a_flagged_body_from_a_stranger_is_held_and_encrypted_fallbacks_pass(
        Version::Backports13,
        ("127.0.0.48", "127.0.0.49"),
    );
}
