//! Soak runs of feeds served as a log (issue "Corvid serves its own
//! feeds"), too long for `cargo test`; `scripts/soak.sh` runs them with a
//! time budget, and CI calls it. Each prints its figures and exits non-zero
//! when a goal is missed.
//!
//! - `restarts`: B backfills a 1M-record feed from A, unthrottled; once with
//!   B's Prosody restarted when B holds a third of it, once with A's
//!   corvidd restarted there. B's corvidd is never restarted: the read
//!   resumes from its cursor. Goal: complete, no stall.
//! - `live`: B follows a 100k-record feed and A reports 5/s for 2 minutes;
//!   B's server runs Debian's default `mod_limits` (`s2sin` 30 kB/s) with
//!   A's component not in `unlimited_jids`, then listed. Goal: at the end B
//!   is at most 10 s behind (not listed), at most 1 s (listed).
//! - `capacity` (only with `CORVID_SOAK_10M=1`: about an hour): a 10M-record
//!   feed; B backfills it; A's corvidd restarts and republishes nothing (B
//!   receives only checkpoints for a minute); a live report still arrives.
//!
//! Run: `cargo bench -p corvid-tests --bench soak` (all), or name runs:
//! `... --bench soak -- restarts live`.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corvid_protocol::subject::SubjectKey;
use corvid_tests::node::Node;
use corvid_tests::pair::{Pair, bytes_in};
use corvid_tests::prosody::Version;
use corvid_tests::wait_for;

/// Goals missed in this run.
static MISSED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn goal(ok: bool, what: String) {
    println!("    {} {what}", if ok { "met:   " } else { "MISSED:" });
    if !ok {
        MISSED.lock().expect("missed").push(what);
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    corvid_tests::node::set_corvidd_bin(env!("CARGO_BIN_EXE_corvidd-under-test"));
    let started = Instant::now();
    if wants("restarts") {
        restarts(Restart::FollowersProsody, ("127.0.0.70", "127.0.0.71"));
        restarts(Restart::PublishersCorvidd, ("127.0.0.72", "127.0.0.73"));
    }
    if wants("live") {
        live(false, ("127.0.0.74", "127.0.0.75"));
        live(true, ("127.0.0.76", "127.0.0.77"));
    }
    if wants("capacity") && std::env::var_os("CORVID_SOAK_10M").is_some() {
        capacity(("127.0.0.78", "127.0.0.79"));
    }
    let missed = MISSED.lock().expect("missed");
    println!(
        "soak: {} goal(s) missed, {:.1} min",
        missed.len(),
        started.elapsed().as_secs_f64() / 60.0
    );
    if !missed.is_empty() {
        for m in missed.iter() {
            println!("  missed: {m}");
        }
        std::process::exit(1);
    }
}

#[derive(Debug, Clone, Copy)]
enum Restart {
    FollowersProsody,
    PublishersCorvidd,
}

fn restarts(what: Restart, ips: (&str, &str)) {
    const N: u64 = 1_000_000;
    println!("restarts: 1M-record backfill, {what:?} restarted at a third");
    let mut p = Pair::start(Version::Debian12, N, ips, true, false);
    let t = Instant::now();
    let nb = p.follower();
    wait_for(Duration::from_secs(600), "B to hold a third", || {
        (nb.peer_records("a.test") >= N / 3).then_some(())
    });
    let at = t.elapsed();
    match what {
        Restart::FollowersProsody => p.b.restart(),
        Restart::PublishersCorvidd => p.na.restart(),
    }
    println!(
        "    restarted at {:.1} s, B holding {}",
        at.as_secs_f64(),
        nb.peer_records("a.test")
    );
    let mut done = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    while Instant::now() < deadline {
        if nb.peer_records("a.test") >= N {
            done = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let peer = nb.peer("a.test");
    println!(
        "    B: {} records, {} bytes in, failures {}, last error {}",
        peer["records"],
        bytes_in(&nb),
        peer["failures"],
        peer["last_error"]
    );
    match done {
        Some(d) => goal(
            true,
            format!(
                "1M backfill with {what:?} restarted completed in {:.1} s, B's corvidd not restarted",
                d.as_secs_f64()
            ),
        ),
        None => goal(
            false,
            format!(
                "1M backfill with {what:?} restarted: stalled at {} records after 900 s",
                nb.peer_records("a.test")
            ),
        ),
    }
}

/// The first time B's decision stream names each of `keys`.
fn watch_decisions(
    nb: &Node,
    keys: HashMap<String, usize>,
    stop: &mpsc::Receiver<()>,
    cursor: &mut u64,
) -> HashMap<usize, Instant> {
    let mut seen = HashMap::new();
    let mut stopping: Option<Instant> = None;
    loop {
        let r = nb.get(&format!("/v1/decisions/stream?since={cursor}&wait=1"));
        if let Some(c) = r.json["next"].as_u64() {
            *cursor = c;
        }
        let now = Instant::now();
        for d in r.json["decisions"].as_array().into_iter().flatten() {
            if let Some(i) = d["subject"].as_str().and_then(|s| keys.get(s)) {
                seen.entry(*i).or_insert(now);
            }
        }
        if seen.len() == keys.len() {
            return seen;
        }
        if stopping.is_none() && stop.try_recv().is_ok() {
            stopping = Some(now);
        }
        // After the last report, wait up to a minute for the rest.
        if stopping.is_some_and(|s| s.elapsed() > Duration::from_secs(60)) {
            return seen;
        }
    }
}

fn live(listed: bool, ips: (&str, &str)) {
    const N: u64 = 100_000;
    const REPORTS: usize = 600;
    println!(
        "live: B follows a 100k-record feed, A reports 5/s for 2 min, A's component {} B's unlimited_jids",
        if listed { "in" } else { "not in" }
    );
    let p = Pair::start(Version::Debian12, N, ips, listed, false);
    let t = Instant::now();
    let nb = p.follower();
    wait_for(Duration::from_secs(900), "B to hold A's feed", || {
        (nb.peer_records("a.test") >= N).then_some(())
    });
    println!(
        "    backfill of 100k {:.1} s, {} bytes in",
        t.elapsed().as_secs_f64(),
        bytes_in(&nb)
    );
    let mut cursor = nb.decisions_end();
    let tag = if listed { "listed" } else { "throttled" };
    let keys: HashMap<String, usize> = (0..REPORTS)
        .map(|i| {
            let k = SubjectKey::for_jid(&format!("live{i}-{tag}@spam.example")).expect("jid");
            (k.to_string(), i)
        })
        .collect();
    let before = bytes_in(&nb);
    let (acks_tx, acks_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel();
    let start = Instant::now();
    let seen = std::thread::scope(|s| {
        let na = &p.na;
        s.spawn(move || {
            for i in 0..REPORTS {
                let due = start + Duration::from_millis(200 * i as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                na.report(&format!("live{i}-{tag}@spam.example"), "spam", 90);
                let _ = acks_tx.send((i, Instant::now()));
            }
            let _ = stop_tx.send(());
        });
        watch_decisions(&nb, keys, &stop_rx, &mut cursor)
    });
    let acks: HashMap<usize, Instant> = acks_rx.try_iter().collect();
    let mut lags: Vec<f64> = (0..REPORTS)
        .filter_map(|i| {
            let (a, s) = (acks.get(&i)?, seen.get(&i)?);
            Some(s.saturating_duration_since(*a).as_secs_f64())
        })
        .collect();
    let last = acks
        .get(&(REPORTS - 1))
        .zip(seen.get(&(REPORTS - 1)))
        .map(|(a, s)| s.saturating_duration_since(*a).as_secs_f64());
    lags.sort_by(f64::total_cmp);
    let bytes = bytes_in(&nb) - before;
    println!(
        "    {} of {REPORTS} reports arrived; lag p50 {:.3} s, p99 {:.3} s, max {:.3} s; {:.0} bytes in per report",
        seen.len(),
        lags.get(lags.len() / 2).copied().unwrap_or(f64::NAN),
        lags.get(lags.len() * 99 / 100).copied().unwrap_or(f64::NAN),
        lags.last().copied().unwrap_or(f64::NAN),
        bytes as f64 / REPORTS as f64
    );
    let limit = if listed { 1.0 } else { 10.0 };
    goal(
        seen.len() == REPORTS && last.is_some_and(|l| l <= limit),
        format!(
            "{tag}: B behind by {} at the end (goal at most {limit} s)",
            last.map_or("never caught up".to_owned(), |l| format!("{l:.3} s"))
        ),
    );
}

fn capacity(ips: (&str, &str)) {
    const N: u64 = 10_000_000;
    println!("capacity: a 10M-record feed");
    let mut p = Pair::start(Version::Debian12, N, ips, true, false);
    let t = Instant::now();
    let nb = p.follower();
    let done = {
        let deadline = Instant::now() + Duration::from_secs(5400);
        loop {
            let n = nb.peer_records("a.test");
            if n >= N {
                break Some(t.elapsed());
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    let peer = nb.peer("a.test");
    println!(
        "    B: {} records, {} bytes in ({:.1} B/record), failures {}",
        peer["records"],
        bytes_in(&nb),
        bytes_in(&nb) as f64 / N as f64,
        peer["failures"]
    );
    goal(
        done.is_some(),
        format!(
            "10M backfill: {}",
            done.map_or("did not complete in 90 min".to_owned(), |d| format!(
                "{:.0} s ({:.0} records/s)",
                d.as_secs_f64(),
                N as f64 / d.as_secs_f64()
            ))
        ),
    );
    // A restart republishes nothing: B receives checkpoints only.
    p.na.restart();
    p.na.wait_component_online(Duration::from_secs(120));
    let before = bytes_in(&nb);
    std::thread::sleep(Duration::from_secs(60));
    let quiet = bytes_in(&nb) - before;
    goal(
        quiet < 20_000,
        format!(
            "A's restart at 10M records: {quiet} bytes in at B in the next 60 s (checkpoints only; goal under 20 kB)"
        ),
    );
    let t = Instant::now();
    p.na.report("after-10m@spam.example", "spam", 90);
    nb.wait_action(
        "jid",
        "after-10m@spam.example",
        "flag",
        Duration::from_secs(30),
    );
    goal(
        t.elapsed() < Duration::from_secs(5),
        format!(
            "a live report at 10M records reached B in {:.3} s",
            t.elapsed().as_secs_f64()
        ),
    );
}
