//! A spam wave across three servers (issue "Prosody protects its users"):
//! ten bots of a new domain write to twenty users on each of three servers
//! that run mod_corvid and follow each other's feeds through their
//! components. A's operator reports the bots once the first five messages
//! have arrived at A, B's operator ten seconds later. At C, what the bots
//! send once C's verdict turns `flag` must land in spam folders or be
//! refused (at least 95%), and once it turns `block` at least 99%; no
//! message between contacts may be lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corvid_tests::client::Client;
use corvid_tests::node::{Identity, Node, component_config_peers};
use corvid_tests::prosody::{Prosody, ProsodyOptions, Version, component_settings, hosts_file};
use corvid_tests::{free_port, wait_for, write_private};
use xmpp_parsers::minidom::Element;

const SECRET: &str = "wave-component-secret";
const USERS: usize = 20;
const BOTS: usize = 10;
const DOMAINS: [&str; 3] = ["a.test", "b.test", "c.test"];

struct Server {
    prosody: Prosody,
    node: Node,
}

fn server(
    version: Version,
    ip: &str,
    domain: &str,
    hosts: &std::path::Path,
    secret: &std::path::Path,
) -> Server {
    let others: Vec<&str> = DOMAINS.iter().copied().filter(|d| *d != domain).collect();
    let components: Vec<String> = others.iter().map(|d| format!("corvid.{d}")).collect();
    let components: Vec<&str> = components.iter().map(String::as_str).collect();
    let (port, api_port) = (free_port(), free_port());
    let (global, tail) = component_settings(ip, domain, port, SECRET, &components);
    let mut accounts: Vec<String> = (0..USERS).map(|i| format!("u{i}@{domain}")).collect();
    accounts.push(format!("corvidd@{domain}"));
    accounts.push(format!("pal@{domain}"));
    let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
    let prosody = Prosody::start(
        &[domain],
        &accounts,
        ProsodyOptions {
            interface: ip.into(),
            s2s: true,
            hosts_file: Some(hosts.to_owned()),
            version,
            modules: vec!["corvid".into(), "offline".into()],
            global: format!(
                "{global}corvid_api_url = \"http://127.0.0.1:{api_port}\"\n\
                 corvid_api_token = \"read-{domain}\"\ncorvid_mode = \"enforce\"\n"
            ),
            tail,
            ..ProsodyOptions::default()
        },
    );
    let peers: Vec<Identity> = others.iter().map(|d| Identity::new(d)).collect();
    let peers: Vec<&Identity> = peers.iter().collect();
    let node = Node::start(
        &prosody,
        &Identity::new(domain),
        &format!(
            "api.listen = \"127.0.0.1:{api_port}\"\n{}",
            component_config_peers(secret, ip, port, domain, &peers)
        ),
    );
    Server { prosody, node }
}

/// What Prosody's file storage holds in `store` for `user` of `domain`.
fn stored(p: &Prosody, domain: &str, store: &str, user: &str) -> String {
    let dir = p
        .dir()
        .join("data")
        .join(domain.replace('.', "%2e"))
        .join(store);
    std::fs::read_to_string(dir.join(format!("{user}.list"))).unwrap_or_default()
}

fn bodies(stanzas: &[Element]) -> Vec<String> {
    stanzas
        .iter()
        .filter(|s| s.name() == "message" && s.attr("type") != Some("error"))
        .filter_map(|s| s.get_child("body", "jabber:client").map(Element::text))
        .collect()
}

/// One bot message: who sent it to whom, its id and tag, and when.
struct Sent {
    bot: usize,
    server: usize,
    user: usize,
    id: String,
    tag: String,
    at: Instant,
}

fn bot_jid(i: usize) -> String {
    format!("bot{i}@spam.test")
}

fn a_spam_wave_is_held_or_refused_at_the_third_server(version: Version, ips: [&str; 4]) {
    super::init();
    let hosts = hosts_file(&format!(
        "{} a.test pubsub.a.test corvid.a.test\n{} b.test pubsub.b.test corvid.b.test\n\
         {} c.test pubsub.c.test corvid.c.test\n{} spam.test pubsub.spam.test\n",
        ips[0], ips[1], ips[2], ips[3]
    ));
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = secrets.path().join("secret");
    write_private(&secret, SECRET);
    let servers: Vec<Server> = DOMAINS
        .iter()
        .zip(ips)
        .map(|(d, ip)| server(version, ip, d, &hosts, &secret))
        .collect();
    let bot_accounts: Vec<String> = (0..BOTS).map(bot_jid).collect();
    let bot_accounts: Vec<&str> = bot_accounts.iter().map(String::as_str).collect();
    let spam = Prosody::start(
        &["spam.test"],
        &bot_accounts,
        ProsodyOptions {
            interface: ips[3].into(),
            s2s: true,
            hosts_file: Some(hosts.clone()),
            version,
            ..ProsodyOptions::default()
        },
    );
    let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
    for s in &servers {
        s.node.wait_component_online(Duration::from_secs(30));
    }
    // The feeds flow: C flags what A and B each report.
    a.node.report("ready-a@ready.test", "spam", 50);
    b.node.report("ready-b@ready.test", "spam", 50);
    for subject in ["ready-a@ready.test", "ready-b@ready.test"] {
        c.node
            .wait_action("jid", subject, "flag", Duration::from_secs(60));
    }
    for s in &servers {
        wait_for(Duration::from_secs(30), "mod_corvid's copy", || {
            s.prosody
                .log()
                .contains("copy of Corvid's verdicts loaded")
                .then_some(())
        });
    }

    // Contacts: u0@c.test and u1@c.test wrote first to pal@a.test and
    // pal@b.test, who write back all through the wave.
    let c0 = Client::login(&c.prosody, "u0", "c.test");
    let c1 = Client::login(&c.prosody, "u1", "c.test");
    let pal_a = Client::login(&a.prosody, "pal", "a.test");
    let pal_b = Client::login(&b.prosody, "pal", "b.test");
    c0.message("pal@a.test", "hi pal");
    c1.message("pal@b.test", "hi pal");
    for pal in [&pal_a, &pal_b] {
        assert!(
            pal.wait_stanza(Duration::from_secs(10), |s| bodies(std::slice::from_ref(s))
                .iter()
                .any(|b| b == "hi pal"))
                .is_some(),
            "the contacts' first message"
        );
    }
    let bots: Vec<Client> = (0..BOTS)
        .map(|i| Client::login(&spam, &format!("bot{i}"), "spam.test"))
        .collect();

    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (sent, pal_sent, t_flag, t_block) = std::thread::scope(|scope| {
        // The bots: a round of ten messages every 200 ms, to the sixty
        // users in turn, near-identical texts.
        let wave = scope.spawn(|| {
            let mut sent = Vec::new();
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let due = start + Duration::from_millis(200) * u32::try_from(round).expect("round");
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                for (i, bot) in bots.iter().enumerate() {
                    // Every round reaches all three servers.
                    let k = round * BOTS + i;
                    let (server, user) = (k % 3, (k / 3) % USERS);
                    let tag = format!("#{round}-{i} ");
                    let id = format!("w{round}-{i}");
                    let at = Instant::now();
                    bot.message_with_id(
                        &format!("u{user}@{}", DOMAINS[server]),
                        &id,
                        &format!("Hot deal {tag}cheap meds at http://spam.test/deal"),
                    );
                    sent.push(Sent {
                        bot: i,
                        server,
                        user,
                        id,
                        tag,
                        at,
                    });
                }
                round += 1;
            }
            sent
        });
        // The contacts write every 100 ms.
        let contacts = scope.spawn(|| {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                pal_a.message("u0@c.test", &format!("pal-a {n}"));
                pal_b.message("u1@c.test", &format!("pal-b {n}"));
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            n
        });

        // A's operator reports the bots once five of their messages have
        // arrived at A (its users are offline: offline storage).
        wait_for(Duration::from_secs(60), "five bot messages at A", || {
            let n: usize = (0..USERS)
                .map(|u| {
                    stored(&a.prosody, "a.test", "offline", &format!("u{u}"))
                        .matches("Hot deal")
                        .count()
                })
                .sum();
            (n >= 5).then_some(())
        });
        for i in 0..BOTS {
            a.node.report(&bot_jid(i), "spam", 90);
        }
        let t_a = Instant::now();
        eprintln!("A reported the bots at {:?}", start.elapsed());
        let mut t_flag: [Option<Instant>; BOTS] = [None; BOTS];
        let mut t_block: [Option<Instant>; BOTS] = [None; BOTS];
        let mut b_reported = false;
        loop {
            for i in 0..BOTS {
                let action = c.node.action("jid", &bot_jid(i));
                let now = Instant::now();
                if action == "flag" || action == "block" {
                    t_flag[i].get_or_insert(now);
                }
                if action == "block" {
                    t_block[i].get_or_insert(now);
                }
            }
            if !b_reported && t_a.elapsed() >= Duration::from_secs(10) {
                for i in 0..BOTS {
                    b.node.report(&bot_jid(i), "spam", 90);
                }
                b_reported = true;
                eprintln!("B reported the bots at {:?}", start.elapsed());
            }
            // Eight seconds after the last bot turned `block`, the wave ends.
            if t_block
                .iter()
                .all(|t| t.is_some_and(|t| t.elapsed() >= Duration::from_secs(8)))
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "C's verdicts did not turn: flag {t_flag:?}, block {t_block:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        (
            wave.join().expect("wave"),
            contacts.join().expect("contacts"),
            t_flag,
            t_block,
        )
    });
    // What is in flight arrives.
    std::thread::sleep(Duration::from_secs(3));
    let since = |t: Option<Instant>| t.map(|t| t.duration_since(start));
    eprintln!(
        "at C: flag after {:?}, block after {:?}",
        t_flag.iter().map(|t| since(*t)).collect::<Vec<_>>(),
        t_block.iter().map(|t| since(*t)).collect::<Vec<_>>()
    );

    // Where each message to C went.
    let refused: std::collections::HashSet<String> = bots
        .iter()
        .flat_map(|b| b.drain())
        .filter(|s| s.name() == "message" && s.attr("type") == Some("error"))
        .filter_map(|s| s.attr("id").map(str::to_owned))
        .collect();
    let online: Vec<String> = [&c0, &c1].iter().flat_map(|c| bodies(&c.drain())).collect();
    let held: Vec<String> = (0..USERS)
        .map(|u| stored(&c.prosody, "c.test", "corvid_spam", &format!("u{u}")))
        .collect();
    let offline: Vec<String> = (0..USERS)
        .map(|u| stored(&c.prosody, "c.test", "offline", &format!("u{u}")))
        .collect();
    #[derive(Default, Debug)]
    struct Tally {
        sent: usize,
        refused: usize,
        held: usize,
        delivered: usize,
        unaccounted: usize,
    }
    let (mut after_flag, mut after_block, mut before) =
        (Tally::default(), Tally::default(), Tally::default());
    for m in sent.iter().filter(|m| m.server == 2) {
        let tally = match (t_flag[m.bot], t_block[m.bot]) {
            (_, Some(b)) if m.at > b => &mut after_block,
            (Some(f), _) if m.at > f => &mut after_flag,
            _ => &mut before,
        };
        tally.sent += 1;
        if refused.contains(&m.id) {
            tally.refused += 1;
        } else if held[m.user].contains(&m.tag) {
            tally.held += 1;
        } else if offline[m.user].contains(&m.tag) || online.iter().any(|b| b.contains(&m.tag)) {
            tally.delivered += 1;
        } else {
            tally.unaccounted += 1;
        }
    }
    eprintln!(
        "{}: bot messages to C: before flag {before:?}\n  flagged {after_flag:?}\n  blocked {after_block:?}",
        version.name()
    );
    let stopped = |t: &Tally| (t.refused + t.held) as f64 / t.sent.max(1) as f64;
    assert!(after_flag.sent >= 100, "{after_flag:?}");
    assert!(after_block.sent >= 100, "{after_block:?}");
    assert!(
        stopped(&after_flag) >= 0.95,
        "{}: only {:.1}% stopped after flag: {after_flag:?}",
        version.name(),
        stopped(&after_flag) * 100.0
    );
    assert!(
        stopped(&after_block) >= 0.99,
        "{}: only {:.1}% stopped after block: {after_block:?}",
        version.name(),
        stopped(&after_block) * 100.0
    );
    // Nothing was lost without a trace: each message was refused (the bot
    // was told), held or delivered.
    for t in [&before, &after_flag, &after_block] {
        assert_eq!(t.unaccounted, 0, "{}: {t:?}", version.name());
    }

    // No contact's message was lost.
    for (who, prefix) in [("u0", "pal-a "), ("u1", "pal-b ")] {
        let got: std::collections::HashSet<&str> = online
            .iter()
            .filter(|b| b.starts_with(prefix))
            .map(String::as_str)
            .collect();
        let missing: Vec<String> = (0..pal_sent)
            .map(|n| format!("{prefix}{n}"))
            .filter(|b| !got.contains(b.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{who}@c.test lost {} of {pal_sent} messages from a contact: {missing:?}",
            missing.len()
        );
    }
}

#[test]
fn prosody_13_a_spam_wave_is_held_or_refused_at_the_third_server() {
    a_spam_wave_is_held_or_refused_at_the_third_server(
        Version::Backports13,
        ["127.0.0.85", "127.0.0.86", "127.0.0.87", "127.0.0.88"],
    );
}

#[test]
fn prosody_0_12_a_spam_wave_is_held_or_refused_at_the_third_server() {
    a_spam_wave_is_held_or_refused_at_the_third_server(
        Version::Debian12,
        ["127.0.0.89", "127.0.0.90", "127.0.0.91", "127.0.0.92"],
    );
}
