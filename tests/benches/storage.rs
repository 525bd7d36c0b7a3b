//! Disk per stored contribution, per storage engine, measured the way the
//! core issue asks: `du` of the data directory after a clean shutdown,
//! after filling it through the engine's real ingest path (store, indexes,
//! decision stream). Also the time to reopen it and answer one read.
//!
//! Run: `cargo bench -p corvid-tests --bench storage`.
//! `CORVID_BENCH_SIZES=100000,1000000` (the default) sets the sizes,
//! `CORVID_BENCH_ENGINES=redb,sled` the engines.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Instant;

use corvid_node::config::Config;
use corvid_node::engine::{Engine, Ingested, Settings};
use corvid_node::store::{self, Store};
use corvid_protocol::subject::SubjectKey;
use corvid_tests::node::Identity;
use corvid_tests::{bot_report as report, write_private};

fn engine(dir: &Path, engine: &str, peer: &Identity, cap: u64) -> Engine {
    for f in ["pw", "read", "write"] {
        write_private(&dir.join(f), "x");
    }
    let me = Identity::new("a.test");
    write_private(&dir.join("key"), &me.key.to_key_file());
    let text = format!(
        "data_dir = \"data\"\nstorage_engine = \"{engine}\"\n[xmpp]\njid = \"corvidd@a.test\"\npassword_file = \"pw\"\nserver = \"127.0.0.1:1\"\ntls = \"plaintext\"\n[feed]\nservice = \"pubsub.a.test\"\n[server]\ndomain = \"a.test\"\n[keys]\nsigning_key_file = \"key\"\n[api]\nlisten = \"127.0.0.1:0\"\nread_token_file = \"read\"\nwrite_token_file = \"write\"\n{}max_reports = {cap}\n",
        peer.peer_block(1.0, "enforce")
    );
    std::fs::write(dir.join("c.toml"), text).expect("config");
    let config = Config::load(&dir.join("c.toml")).expect("config");
    let store = Store::open_with(&config.data_dir, config.storage_engine, 64 << 20).expect("store");
    Engine::new(
        store,
        Settings::from_config(&config).expect("settings"),
        me.key,
        "xmpp:pubsub.a.test?;node=corvid".parse().expect("feed"),
    )
    .expect("engine")
}

/// What `du` counts: allocated blocks, not apparent sizes.
fn du(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else {
        m.blocks() * 512
    }
}

fn main() {
    let sizes: Vec<u64> = std::env::var("CORVID_BENCH_SIZES")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let engines = std::env::var("CORVID_BENCH_ENGINES").unwrap_or_else(|_| "redb,sled".into());
    let now = corvid_node::now();
    let peer = Identity::new("b.test");
    println!(
        "| Engine | Contributions | Fill | Clean shutdown (file before -> after) | Disk (du) | Per contribution | Reopen + first read |"
    );
    println!("|---|---|---|---|---|---|---|");
    for name in engines.split(',') {
        let kind: store::Engine = name.parse().expect("engine name");
        for &n in &sizes {
            let dir = tempfile::tempdir().expect("tempdir");
            let shutdown;
            let t = Instant::now();
            {
                let e = engine(dir.path(), name, &peer, n);
                for i in 0..n {
                    match e.ingest(now, "b.test", &report(i, now), "0123456789abcdef") {
                        Ok(Ingested::Stored) => {}
                        other => panic!("report {i} not stored: {other:?}"),
                    }
                }
                let stored = e.store().contribution_count() as u64;
                assert_eq!(stored, n, "every report must be stored, or the figure lies");
                // What corvidd does on SIGTERM.
                let t = Instant::now();
                let (before, after) = e.store().shut_down().expect("shut down");
                shutdown = (t.elapsed(), before, after);
            }
            let fill = t.elapsed() - shutdown.0;
            let data = dir.path().join("data");
            let bytes = du(&data);
            let t = Instant::now();
            let s = Store::open_with(&data, kind, 64 << 20).expect("reopen");
            let subject = SubjectKey::for_jid("bot7@spam.example").expect("jid");
            assert!(s.get(subject.as_str(), "b.test").expect("read").is_some());
            let reopen = t.elapsed();
            println!(
                "| {name} | {n} | {:.0} s ({:.0}/s) | {:.1} s ({:.0} -> {:.0} MB) | {:.1} MB | **{} B** | {:.0} ms |",
                fill.as_secs_f64(),
                n as f64 / fill.as_secs_f64(),
                shutdown.0.as_secs_f64(),
                shutdown.1 as f64 / 1e6,
                shutdown.2 as f64 / 1e6,
                bytes as f64 / 1e6,
                bytes / n,
                reopen.as_secs_f64() * 1000.0
            );
        }
    }
}
