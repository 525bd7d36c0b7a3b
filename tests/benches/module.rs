//! mod_corvid against real Prosody (issue "Prosody protects its users"):
//!
//! 1. the latency a stranger's message gains through Prosody with the
//!    module, against without it: one Prosody serves four hosts, two with
//!    the module (content digests on and off) and two without it
//!    (`modules_disabled`; the second shows what the bench resolves); the
//!    hosts take turns message by message, one message in flight at a
//!    time, sender and recipients in this process, the servers pinned to
//!    core 0 and this process to core 1 (target: at most 50 µs at p50 and
//!    1 ms at p99), for four kinds of body and a contact's message, with
//!    100 content digests flagged in the copy (so that every stranger's
//!    body is digested);
//! 2. freshness: from corvidd acknowledging a block to the module refusing
//!    that JID, found by probes every 2 ms (target: p50 at most 50 ms);
//! 3. a copy of `CORVID_BENCH_MIRROR` (default 1,000,000) blocked JIDs:
//!    Prosody's resident memory with it against without it (target at
//!    most 150 MB), and the longest stall of Prosody's event loop while it
//!    reads the snapshot, seen as the slowest answer to XMPP pings sent
//!    every 5 ms (target at most 50 ms).
//!
//! Run: `cargo bench -p corvid-tests --bench module` (Prosody 0.12 of
//! Debian 12; `CORVID_BENCH_PROSODY=13` for Prosody 13).

use std::time::{Duration, Instant};

use corvid_tests::client::Client;
use corvid_tests::node::{Identity, Node};
use corvid_tests::prosody::{Prosody, ProsodyOptions, Version};
use corvid_tests::{free_port, wait_for};
use xmpp_parsers::minidom::Element;

struct Servers {
    a: Prosody,
    b: Prosody,
    _node: Option<Node>,
}

impl Servers {
    /// Pins both Prosodys and corvidd to `cpu` (util-linux's `taskset`);
    /// whether every pin held.
    fn pin(&self, cpu: usize) -> bool {
        [
            self.a.pid(),
            self.b.pid(),
            self._node.as_ref().and_then(Node::pid),
        ]
        .into_iter()
        .flatten()
        .all(|pid| pin(pid, cpu))
    }
}

/// Pins every thread of process `pid` to `cpu`.
fn pin(pid: u32, cpu: usize) -> bool {
    std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn servers(version: Version, ips: (&str, &str), module: Option<&str>, bots: usize) -> Servers {
    servers_on(version, ips, module, bots, None)
}

fn servers_on(
    version: Version,
    ips: (&str, &str),
    module: Option<&str>,
    bots: usize,
    data: Option<&std::path::Path>,
) -> Servers {
    let hosts = std::env::temp_dir().join(format!("corvid-bench-hosts-{}", free_port()));
    std::fs::write(
        &hosts,
        format!(
            "{} a.test pubsub.a.test\n{} b.test pubsub.b.test\n",
            ips.0, ips.1
        ),
    )
    .expect("hosts");
    let api_port = free_port();
    let opts = |iface: &str, with: bool| ProsodyOptions {
        interface: iface.into(),
        s2s: true,
        hosts_file: Some(hosts.clone()),
        version,
        // mod_limits would throttle a thousand messages and hide what is
        // measured.
        limits: false,
        modules: if with {
            vec!["corvid".into()]
        } else {
            Vec::new()
        },
        global: match (with, module) {
            (true, Some(extra)) => format!(
                "corvid_api_url = \"http://127.0.0.1:{api_port}\"\ncorvid_api_token = \"read-a.test\"\ncorvid_mode = \"enforce\"\n{extra}\n"
            ),
            _ => String::new(),
        },
        ..ProsodyOptions::default()
    };
    let a = Prosody::start(
        &["a.test"],
        &["corvidd@a.test", "alice@a.test"],
        opts(ips.0, module.is_some()),
    );
    let mut accounts = vec!["stranger@b.test".to_owned(), "friend@b.test".to_owned()];
    accounts.extend((0..bots).map(|i| format!("bot{i}@b.test")));
    let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
    let b = Prosody::start(&["b.test"], &accounts, opts(ips.1, false));
    let node = module.map(|_| {
        let n = Node::start_with_data(
            &a,
            &Identity::new("a.test"),
            &format!("api.listen = \"127.0.0.1:{api_port}\""),
            data,
        );
        module_ready(&a);
        n
    });
    Servers { a, b, _node: node }
}

/// Waits until mod_corvid in `a` holds its copy of the verdicts and has
/// built the digest tables (read whatever `corvid_digests` says).
fn module_ready(a: &Prosody) {
    wait_for(
        Duration::from_secs(300),
        "the module's copy to load",
        || {
            let log = a.log();
            (log.contains("copy of Corvid's verdicts loaded")
                && log.contains("content digests computed in Prosody"))
            .then_some(())
        },
    );
}

fn attr(name: &'static str) -> xmpp_parsers::minidom::rxml::NcName {
    xmpp_parsers::minidom::rxml::NcName::try_from(name).expect("attribute name")
}

fn body_of(s: &Element) -> Option<String> {
    (s.name() == "message" && s.attr("type") != Some("error"))
        .then(|| s.get_child("body", "jabber:client").map(Element::text))
        .flatten()
}

/// The bodies measured: Latin and Cyrillic text, and a combining accent
/// (normalized with its neighbours), are digested inside Prosody; more
/// combining marks in a row than Unicode's stream-safe limit are left to
/// corvidd.
const BODIES: [(&str, &str); 4] = [
    ("Latin text", "are we still on for lunch tomorrow?"),
    (
        "Cyrillic text",
        "мы завтра обедаем вместе, как договорились?",
    ),
    (
        "a combining accent",
        "lunch at the cafe\u{301} tomorrow, as agreed?",
    ),
    (
        "40 combining marks, digested by corvidd",
        "a\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323}\u{301}\u{323} tomorrow?",
    ),
];

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Pings `a.test` every 5 ms until `done` says stop; the slowest answer.
fn slowest_ping(c: &Client, mut done: impl FnMut() -> bool) -> Duration {
    let mut worst = Duration::ZERO;
    while !done() {
        let iq = xmpp_parsers::iq::Iq::from_get("", xmpp_parsers::ping::Ping)
            .with_to("a.test".parse().expect("jid"));
        let t = Instant::now();
        c.run(c.link().iq(iq)).expect("ping");
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    worst
}

/// Prints the latencies with the module (digests off, then on) against
/// those without it.
fn print_added(
    case: &str,
    without: &mut [Duration],
    off: &mut [Duration],
    on: &mut [Duration],
    p50_target: &str,
) {
    let (p50, p99) = (pct(without, 0.5), pct(without, 0.99));
    for (name, v) in [("module, digests off", off), ("module, digests on", on)] {
        let (m50, m99) = (pct(v, 0.5), pct(v, 0.99));
        println!(
            "- {case}, {name}: p50 {:.0} µs, p99 {:.0} µs; without the module p50 {:.0} µs, p99 {:.0} µs; added p50 {:+.0} µs{p50_target}, p99 {:+.0} µs (target <= 1000); {} messages each",
            micros(m50),
            micros(m99),
            micros(p50),
            micros(p99),
            micros(m50) - micros(p50),
            micros(m99) - micros(p99),
            v.len()
        );
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    corvid_tests::node::set_corvidd_bin(env!("CARGO_BIN_EXE_corvidd-under-test"));
    let version = match std::env::var("CORVID_BENCH_PROSODY").as_deref() {
        Ok("13") => Version::Backports13,
        _ => Version::Debian12,
    };
    println!(
        "mod_corvid on {} (release build of corvidd)",
        version.name()
    );

    // `CORVID_BENCH_ONLY=latency` measures the first part only.
    let only_latency = std::env::var("CORVID_BENCH_ONLY").as_deref() == Ok("latency");
    // `CORVID_BENCH_ONLY=mirror` measures the third part only.
    if std::env::var("CORVID_BENCH_ONLY").as_deref() != Ok("mirror") {
        latency_and_freshness(version, only_latency);
    }
    if !only_latency {
        big_copy(version);
    }
}

/// The cost of digesting in Prosody's Lua alone, caches cold
/// (hooks/prosody/test/digest_bench.lua).
fn digest_cost(version: Version) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tables = dir.path().join("tables.json");
    let bodies = dir.path().join("bodies.json");
    std::fs::write(&tables, corvid_node::api::digest_tables_json()).expect("write");
    std::fs::write(&bodies, serde_json::to_vec(&BODIES).expect("json")).expect("write");
    let out =
        corvid_tests::prosody::run_lua_script("digest_bench.lua", version, &[&tables, &bodies]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

/// The hosts of the latency bench, all served by one Prosody process:
/// (host, what it is).
const LATENCY_HOSTS: [(&str, &str); 4] = [
    ("a.test", "module, digests on"),
    ("w.test", "module, digests off"),
    ("p.test", "without the module"),
    ("q.test", "without the module, second host"),
];

/// Content digests flagged in the copy while latency is measured.
const LISTED_DIGESTS: usize = 100;

/// One Prosody for every host of [`LATENCY_HOSTS`] (mod_corvid on the
/// first two only: `modules_disabled` on the others), and one for the
/// strangers' `b.test`, with corvidd for `a.test`.
fn latency_servers(version: Version) -> Servers {
    let (ip_a, ip_b) = ("127.0.0.30", "127.0.0.31");
    let names: Vec<&str> = LATENCY_HOSTS.iter().map(|(h, _)| *h).collect();
    let hosts = std::env::temp_dir().join(format!("corvid-bench-hosts-{}", free_port()));
    let resolved: Vec<String> = names
        .iter()
        .flat_map(|h| [h.to_string(), format!("pubsub.{h}")])
        .collect();
    std::fs::write(
        &hosts,
        format!(
            "{ip_a} {}\n{ip_b} b.test pubsub.b.test\n",
            resolved.join(" ")
        ),
    )
    .expect("hosts");
    let api_port = free_port();
    let base = |iface: &str| ProsodyOptions {
        interface: iface.into(),
        s2s: true,
        hosts_file: Some(hosts.clone()),
        version,
        // mod_limits would throttle a thousand messages and hide what is
        // measured.
        limits: false,
        ..ProsodyOptions::default()
    };
    let mut accounts = vec!["corvidd@a.test".to_owned()];
    accounts.extend(names.iter().map(|h| format!("alice@{h}")));
    let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
    let a = Prosody::start(
        &names,
        &accounts,
        ProsodyOptions {
            modules: vec!["corvid".into()],
            global: format!(
                "corvid_api_url = \"http://127.0.0.1:{api_port}\"\ncorvid_api_token = \"read-a.test\"\ncorvid_mode = \"enforce\"\ncorvid_digests = true\n"
            ),
            tail: "\nVirtualHost \"w.test\"\n    corvid_digests = false\nVirtualHost \"p.test\"\n    modules_disabled = { \"corvid\" }\nVirtualHost \"q.test\"\n    modules_disabled = { \"corvid\" }\n".into(),
            ..base(ip_a)
        },
    );
    let b = Prosody::start(
        &["b.test"],
        &["stranger@b.test", "friend@b.test"],
        base(ip_b),
    );
    let node = Node::start(
        &a,
        &Identity::new("a.test"),
        &format!("api.listen = \"127.0.0.1:{api_port}\""),
    );
    module_ready(&a);
    // Flagged content digests in the copy, as at a server whose federation
    // reports spam texts: with none listed the module digests nothing.
    for i in 0..LISTED_DIGESTS {
        let key = corvid_protocol::digest::body_digest(&format!(
            "listed spam text {i}: cheap pills at spam{i}.example, reply now"
        ))
        .expect("a digest");
        node.report(key.as_str(), "spam", 90);
        if i + 1 == LISTED_DIGESTS {
            node.wait_action("digest", key.as_str(), "flag", Duration::from_secs(10));
        }
    }
    // (The decision stream brings the last one to the module in
    // milliseconds; a second is ample.)
    std::thread::sleep(Duration::from_secs(1));
    // The module runs on the first two hosts and on no other.
    let log = a.log();
    for (i, (h, _)) in LATENCY_HOSTS.iter().enumerate() {
        let loaded = log
            .lines()
            .any(|l| l.contains(&format!("{h}:corvid")) && l.contains("Corvid verdicts from"));
        assert_eq!(loaded, i < 2, "mod_corvid on {h}: {loaded}");
    }
    Servers {
        a,
        b,
        _node: Some(node),
    }
}

/// One-way latency of one message from `from` to `to` (whose JID is
/// `jid`).
fn latency(from: &Client, to: &Client, jid: &str, text: &str) -> Duration {
    let t = Instant::now();
    from.message(jid, text);
    to.wait_stanza(Duration::from_secs(5), |s| {
        body_of(s).as_deref() == Some(text)
    })
    .unwrap_or_else(|| panic!("a message to {jid} never arrived"));
    t.elapsed()
}

/// Added latency: the hosts of one Prosody process, with the module and
/// without it, take turns message by message, so that the process, its
/// memory, its s2s code and whatever else the machine does fall on all of
/// them alike; two hosts without the module show what the bench resolves.
fn added_latency(version: Version) {
    let s = latency_servers(version);
    // The servers on core 0, the clients (this process) on core 1.
    let pinned = s.pin(0) && pin(std::process::id(), 1);
    println!(
        "{}",
        if pinned {
            "servers (Prosody, corvidd) pinned to core 0, clients to core 1"
        } else {
            "NOT pinned: taskset failed"
        }
    );
    println!(
        "one Prosody serves every recipient: {}",
        LATENCY_HOSTS
            .iter()
            .map(|(h, what)| format!("{h} ({what})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let stranger = Client::login(&s.b, "stranger", "b.test");
    let friend = Client::login(&s.b, "friend", "b.test");
    let alices: Vec<(String, Client)> = LATENCY_HOSTS
        .iter()
        .map(|(h, _)| (format!("alice@{h}"), Client::login(&s.a, "alice", h)))
        .collect();
    // A contact: every alice wrote to friend@b.test first, so the module
    // lets friend's messages through unchecked.
    for (jid, alice) in &alices {
        alice.message("friend@b.test", &format!("hello, friend, from {jid}"));
        friend
            .wait_stanza(Duration::from_secs(10), |st| body_of(st).is_some())
            .expect("alice's first message");
    }
    // Warm the s2s streams.
    for i in 0..20 {
        for (jid, alice) in &alices {
            latency(&stranger, alice, jid, &format!("warm {i}"));
            latency(&friend, alice, jid, &format!("warm {i}"));
        }
    }
    let per = std::env::var("CORVID_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000usize);
    let n = alices.len();
    // [host][body] for strangers, [host] for the contact.
    let mut strangers = vec![vec![Vec::with_capacity(per); BODIES.len()]; n];
    let mut contact = vec![Vec::with_capacity(per); n];
    // Which host goes first turns with every message: the first after a
    // switch pays for cold caches, and that must not fall on one of them.
    for i in 0..per {
        for (k, (_, body)) in BODIES.iter().enumerate() {
            let text = format!("{i} {body}");
            for turn in 0..n {
                let h = (turn + i + k) % n;
                let (jid, alice) = &alices[h];
                strangers[h][k].push(latency(&stranger, alice, jid, &text));
            }
        }
        let text = format!("{i} {}", BODIES[0].1);
        for turn in 0..n {
            let h = (turn + i) % n;
            let (jid, alice) = &alices[h];
            contact[h].push(latency(&friend, alice, jid, &text));
        }
    }
    // Hosts: 0 digests on, 1 digests off, 2 without, 3 without (second).
    let [on, off, without, second] = <[_; 4]>::try_from(strangers).expect("four hosts");
    let [c_on, c_off, mut c_without, _] = <[_; 4]>::try_from(contact).expect("four hosts");
    for l in s.a.log().lines().filter(|l| l.contains("PROF")) {
        println!("{l}");
    }
    for (k, (text, _)) in BODIES.iter().enumerate() {
        let (mut a, mut b) = (without[k].clone(), second[k].clone());
        let (a50, a99) = (pct(&mut a, 0.5), pct(&mut a, 0.99));
        let (b50, b99) = (pct(&mut b, 0.5), pct(&mut b, 0.99));
        println!(
            "- resolution: a second host without the module ({text}): p50 {:+.0} µs, p99 {:+.0} µs against the first",
            micros(b50) - micros(a50),
            micros(b99) - micros(a99)
        );
    }
    print_added(
        "a contact's message over s2s (Latin text)",
        &mut c_without,
        &mut c_off.clone(),
        &mut c_on.clone(),
        "",
    );
    for (k, (text, _)) in BODIES.iter().enumerate() {
        print_added(
            &format!("stranger's message over s2s ({text})"),
            &mut without[k].clone(),
            &mut off[k].clone(),
            &mut on[k].clone(),
            " (target <= 50)",
        );
    }
}

fn latency_and_freshness(version: Version, only_latency: bool) {
    digest_cost(version);
    // 1. Added latency.
    added_latency(version);
    if only_latency {
        return;
    }

    // 2. Freshness: corvidd acknowledges a block, probes find when the
    // module refuses.
    let bots = 20;
    let s = servers(
        version,
        ("127.0.0.36", "127.0.0.37"),
        Some("corvid_digests = false"),
        bots,
    );
    let node = s._node.as_ref().expect("node");
    let _alice = Client::login(&s.a, "alice", "a.test");
    let mut fresh = Vec::new();
    let mut first_probe = 0;
    for i in 0..bots {
        let bot = Client::login(&s.b, &format!("bot{i}"), "b.test");
        // The stream to a.test is open before the block.
        bot.message("alice@a.test", "hello");
        std::thread::sleep(Duration::from_millis(100));
        node.report(&format!("bot{i}@b.test"), "spam", 90);
        let acked = Instant::now();
        let mut sent = Vec::new();
        let found = loop {
            let id = format!("probe-{}", sent.len());
            sent.push(acked.elapsed());
            let probe = Element::builder("message", "jabber:client")
                .attr(attr("to"), "alice@a.test")
                .attr(attr("type"), "chat")
                .attr(attr("id"), id.as_str())
                .append(
                    Element::builder("body", "jabber:client")
                        .append(format!("probe {id}"))
                        .build(),
                )
                .build();
            bot.send(
                xmpp_parsers::message::Message::try_from(probe)
                    .expect("message")
                    .into(),
            );
            if let Some(e) = bot.wait_stanza(Duration::from_millis(2), |s| {
                s.attr("type") == Some("error") && s.name() == "message"
            }) {
                break e;
            }
            assert!(acked.elapsed() < Duration::from_secs(10), "never refused");
        };
        // The refusal answers the first probe the module refused: its id
        // says which, and when that probe was sent is the freshness (to
        // within the 2 ms between probes).
        let n: usize = found
            .attr("id")
            .and_then(|id| id.strip_prefix("probe-"))
            .and_then(|n| n.parse().ok())
            .expect("the refusal names its probe");
        fresh.push(sent[n]);
        first_probe += usize::from(n == 0);
    }
    let (f50, f99) = (pct(&mut fresh, 0.5), pct(&mut fresh, 0.99));
    println!(
        "- freshness, block acknowledged by corvidd -> module refuses (probes every 2 ms, {} blocks; {first_probe} refused the first probe, sent right after the acknowledgement): p50 {:.1} ms (target <= 50), max {:.1} ms",
        fresh.len(),
        f50.as_secs_f64() * 1e3,
        f99.as_secs_f64() * 1e3
    );

    drop(s);
}

fn big_copy(version: Version) {
    // 3. A copy of many blocked JIDs: decisions written straight into a
    // store that corvidd then opens.
    let n: u64 = std::env::var("CORVID_BENCH_MIRROR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let data = tempfile::tempdir().expect("tempdir");
    {
        let store = corvid_node::store::Store::open(data.path(), 64 << 20).expect("store");
        let t = Instant::now();
        let mut i = 0;
        while i < n {
            let end = (i + 20_000).min(n);
            store
                .batch(false, &mut |tx| {
                    for k in i..end {
                        let key = corvid_protocol::subject::SubjectKey::for_jid(&format!(
                            "bot{k}@spam{}.example",
                            k % 1000
                        ))
                        .expect("jid");
                        tx.record_decision(
                            key.as_str(),
                            (
                                corvid_protocol::aggregate::Action::Block,
                                corvid_node::store::Origin::LocalDeny,
                            ),
                            1.0,
                            1,
                            None,
                        )?;
                    }
                    Ok(())
                })
                .expect("decisions");
            i = end;
        }
        println!(
            "  ({n} blocked JIDs written to the store in {:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
    let empty = servers(
        version,
        ("127.0.0.38", "127.0.0.39"),
        Some("corvid_digests = false"),
        0,
    );
    std::thread::sleep(Duration::from_secs(2));
    let base = rss(empty.a.pid().expect("pid"));
    drop(empty);
    // Prosody first, with a client that pings it every 5 ms; then corvidd
    // with the big store: the module reads the snapshot while the pings run.
    let api_port = free_port();
    let a = Prosody::start(
        &["a.test"],
        &["corvidd@a.test", "alice@a.test"],
        ProsodyOptions {
            interface: "127.0.0.40".into(),
            version,
            limits: false,
            modules: vec!["corvid".into()],
            global: format!(
                "corvid_api_url = \"http://127.0.0.1:{api_port}\"\ncorvid_api_token = \"read-a.test\"\ncorvid_mode = \"enforce\"\ncorvid_digests = false\n"
            ),
            ..ProsodyOptions::default()
        },
    );
    let pinger = Client::login(&a, "alice", "a.test");
    let t = Instant::now();
    let (worst, node) = std::thread::scope(|scope| {
        let pings = scope.spawn(|| {
            // Until the copy is read and the digest tables after it built.
            slowest_ping(&pinger, || {
                let log = a.log();
                (log.contains("copy of Corvid's verdicts loaded")
                    && log.contains("content digests computed in Prosody"))
                    || t.elapsed() > Duration::from_secs(600)
            })
        });
        let node = Node::start_with_data(
            &a,
            &Identity::new("a.test"),
            &format!("api.listen = \"127.0.0.1:{api_port}\""),
            Some(data.path()),
        );
        (pings.join().expect("pings"), node)
    });
    let load = t.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let loaded = rss(a.pid().expect("pid"));
    let line = a
        .log()
        .lines()
        .find(|l| l.contains("copy of Corvid's verdicts loaded"))
        .unwrap_or_default()
        .to_owned();
    println!(
        "- a copy of {n} blocked JIDs: Prosody RSS {:.0} MB against {:.0} MB with an empty copy: {:+.0} MB (target <= 150); read in {:.1} s from corvidd's start; slowest of the pings sent every 5 ms meanwhile {:.1} ms (target: longest stall <= 50); module: {}",
        loaded as f64 / 1e6,
        base as f64 / 1e6,
        (loaded as f64 - base as f64) / 1e6,
        load.as_secs_f64(),
        worst.as_secs_f64() * 1e3,
        line.trim()
    );
    drop(node);
}
