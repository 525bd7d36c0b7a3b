//! Feeds served as a log by corvidd's component (layout 2), between two
//! Prosody servers over s2s on loopback, set up as the README says
//! (unlimited_jids for the peer's component, mod_limits on the component
//! host). For each size of A's feed (10k, 100k, 1M records):
//!
//! 1. backfill: B starts following A; time until B holds every record, and
//!    bytes received by B's component per record;
//! 2. live: 200 reports at A, one every 200 ms (so the window holds two
//!    checkpoints); for each, the time from A's durable acknowledgement to
//!    B's decision stream returning the new verdict, and the bytes B's
//!    component received per report (notifications and checkpoints).
//!
//! Then a throttled backfill: 10k records with B's server *not* listing A's
//! component in unlimited_jids (Debian's s2sin rate, 30 kB/s), against its
//! bytes divided by that rate.
//!
//! Not pinned: both Prosodys, both corvidds and the bench share both
//! cores. Run: `cargo bench -p corvid-tests --bench feed`;
//! `CORVID_BENCH_SIZES=10000,100000` picks the sizes.

use std::time::{Duration, Instant};

use corvid_tests::pair::{Pair, bytes_in};
use corvid_tests::prosody::Version;
use corvid_tests::wait_for;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    corvid_tests::node::set_corvidd_bin(env!("CARGO_BIN_EXE_corvidd-under-test"));
    let sizes: Vec<u64> = std::env::var("CORVID_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    println!("feed bench: layout 2, two Prosody 0.12 servers over s2s, not pinned");
    for (k, &n) in sizes.iter().enumerate() {
        let ips = match k {
            0 => ("127.0.0.60", "127.0.0.61"),
            1 => ("127.0.0.62", "127.0.0.63"),
            _ => ("127.0.0.64", "127.0.0.65"),
        };
        run_size(n, ips, true);
    }
    println!("throttled backfill (B's server does not list A's component in unlimited_jids):");
    run_size(10_000, ("127.0.0.66", "127.0.0.67"), false);
}

fn run_size(n: u64, ips: (&str, &str), unlimited: bool) {
    let p = Pair::start(Version::Debian12, n, ips, unlimited, true);
    let t = Instant::now();
    let nb = p.follower();
    wait_for(Duration::from_secs(900), "B to hold A's log", || {
        (nb.peer_records("a.test") >= n).then_some(())
    });
    let took = t.elapsed().as_secs_f64();
    let bytes = bytes_in(&nb);
    // What B's corvidd wrote to disk for it (the store), from /proc.
    let written = nb
        .pid()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/io")).ok())
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: ")?.trim().parse::<u64>().ok())
        });
    if let Some(w) = written {
        println!(
            "  {n:>9} records: B's corvidd wrote {w} bytes to disk during the backfill ({:.0} B per record)",
            w as f64 / n as f64
        );
    }
    println!(
        "  {n:>9} records: backfill {took:.2} s ({:.0} records/s), {} bytes in at B, {:.1} B/record{}",
        n as f64 / took,
        bytes,
        bytes as f64 / n as f64,
        if unlimited {
            String::new()
        } else {
            format!(
                "; bytes / 30 kB/s = {:.1} s: {:.2}x",
                bytes as f64 / 30_000.0,
                took / (bytes as f64 / 30_000.0)
            )
        }
    );
    if !unlimited {
        return;
    }
    // Live reports: A's acknowledgement to B's decision stream.
    // The decision stream's end, where the live phase starts.
    let mut cursor = nb.decisions_end();
    let before = bytes_in(&nb);
    let mut latencies = Vec::new();
    let start = Instant::now();
    for i in 0..200u32 {
        let due = start + Duration::from_millis(200 * u64::from(i));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        p.na.report(&format!("live{i}-{n}@spam.example"), "spam", 90);
        let acked = Instant::now();
        loop {
            let r = nb.get(&format!("/v1/decisions/stream?since={cursor}&wait=5"));
            if let Some(c) = r.json["next"].as_u64() {
                cursor = c;
            }
            let hit = r.json["decisions"]
                .as_array()
                .is_some_and(|ds| !ds.is_empty());
            if hit {
                latencies.push(acked.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            assert!(
                acked.elapsed() < Duration::from_secs(10),
                "report {i} never reached B"
            );
        }
    }
    // Let the last checkpoint of the window arrive.
    std::thread::sleep(Duration::from_secs(1));
    let live_bytes = bytes_in(&nb) - before;
    latencies.sort_by(f64::total_cmp);
    println!(
        "  {n:>9} records: live, 200 reports at 5/s: A's ack -> B's decision p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.0} bytes in at B per report ({} in {:.0} s)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        live_bytes as f64 / 200.0,
        live_bytes,
        start.elapsed().as_secs_f64()
    );
    drop(nb);
    let _ = (&p.a, &p.b);
}
