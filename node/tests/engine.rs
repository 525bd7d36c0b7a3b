//! The verdict engine driven directly, with explicit `now`.

use corvid_node::config::Config;
use corvid_node::engine::{Engine, Ingested, Settings};
use corvid_node::store::Store;
use corvid_node::subjects::Query;
use corvid_protocol::aggregate::Action;
use corvid_protocol::keys::{SecretKey, Signer};
use corvid_protocol::record::{Category, Evidence, Record, Report, ReportId};
use corvid_protocol::subject::SubjectKey;

const NOW: u64 = 1_767_225_600;

fn private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn engine(dir: &std::path::Path, extra: &str) -> Engine {
    for f in ["pw", "read", "write"] {
        private(&dir.join(f), "x");
    }
    let key = SecretKey::from_seed([1; 32]);
    private(&dir.join("key"), &key.to_key_file());
    private(
        &dir.join("fed"),
        "0000000000000000000000000000000000000000000000000000000000000000",
    );
    let peer = SecretKey::from_seed([2; 32]).public_key();
    let text = format!(
        "data_dir = \"data\"\n[xmpp]\njid = \"corvidd@a.example\"\npassword_file = \"pw\"\nserver = \"127.0.0.1:1\"\ntls = \"plaintext\"\n[feed]\nservice = \"pubsub.a.example\"\n[server]\ndomain = \"a.example\"\nhosts = [\"a.example\", \"muc.a.example\"]\n[keys]\nsigning_key_file = \"key\"\n[[keys.federation]]\nid = \"f\"\nsecret_file = \"fed\"\n[[peer]]\ndomain = \"b.example\"\nfeed = \"xmpp:pubsub.b.example?;node=corvid\"\nkey = \"{peer}\"\nmax_reports = 2\n[api]\nlisten = \"127.0.0.1:0\"\nread_token_file = \"read\"\nwrite_token_file = \"write\"\n{extra}"
    );
    std::fs::write(dir.join("c.toml"), text).expect("config");
    let config = Config::load(&dir.join("c.toml")).expect("valid config");
    let store = Store::open(&config.data_dir, 1 << 20).expect("store");
    Engine::new(
        store,
        Settings::from_config(&config).expect("settings"),
        key,
        "xmpp:pubsub.a.example?;node=corvid".parse().expect("feed"),
    )
    .expect("engine")
}

fn report(subject: SubjectKey, n: u8) -> Record {
    Record::Report(Report {
        id: ReportId::new(NOW * 1000, [n; 10]),
        subject,
        category: Category::Spam,
        confidence: 90,
        issued_at: NOW - 60,
        expires_at: NOW + 86_400,
        evidence: Evidence {
            count: 1,
            first_seen: NOW - 60,
            last_seen: NOW - 60,
            note: None,
            abuse_contacted_at: None,
            message_text: None,
        },
    })
}

#[test]
fn a_peer_reporting_an_own_host_is_suspended_until_the_operator_acts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path(), "");
    let spam = SubjectKey::for_jid("bot@spam.example").expect("jid");
    e.ingest(NOW, "b.example", &report(spam.clone(), 1), "")
        .expect("ingest");
    assert_eq!(
        e.verdict(NOW, &Query::Key(spam.clone())).expect("v").action,
        Action::Flag
    );
    // Reporting a subdomain key that covers our MUC host is a canary hit.
    let own = SubjectKey::for_domain("a.example", true).expect("domain");
    e.ingest(NOW, "b.example", &report(own.clone(), 2), "")
        .expect("ingest");
    assert!(e.is_suspended("b.example"));
    assert_eq!(
        e.verdict(NOW, &Query::Key(spam.clone())).expect("v").action,
        Action::Allow,
        "observe mode: nothing counts"
    );
    assert_ne!(
        e.verdict(
            NOW,
            &Query::Domain {
                domain: "muc.a.example".into()
            }
        )
        .expect("v")
        .action,
        Action::Block
    );
    e.lift_suspension("b.example").expect("lift");
    assert_eq!(
        e.verdict(NOW, &Query::Key(spam)).expect("v").action,
        Action::Flag
    );
}

#[test]
fn a_peer_over_its_cap_is_refused_new_subjects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path(), "");
    for (i, jid) in ["a@x.example", "b@x.example"].iter().enumerate() {
        let k = SubjectKey::for_jid(jid).expect("jid");
        assert_eq!(
            e.ingest(NOW, "b.example", &report(k, i as u8), "")
                .expect("ingest"),
            Ingested::Stored
        );
    }
    let third = SubjectKey::for_jid("c@x.example").expect("jid");
    assert_eq!(
        e.ingest(NOW, "b.example", &report(third, 3), "")
            .expect("ingest"),
        Ingested::OverCap
    );
    assert_eq!(e.record_count("b.example"), 2);
}

#[test]
fn local_ip_lists_match_raw_addresses_without_echoing_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(
        dir.path(),
        "[policy]\ndeny = [\"ip:198.51.100.0/24\"]\nallow = [\"ip:2001:db8::/32\"]\n",
    );
    let v = e
        .verdict(NOW, &Query::Ip("198.51.100.77".parse().expect("ip")))
        .expect("v");
    assert_eq!(v.action, Action::Block);
    let text = serde_json::to_string(&*v).expect("json");
    assert!(
        text.contains("198.51.100.0/24") && !text.contains("198.51.100.77"),
        "{text}"
    );
    let v = e
        .verdict(NOW, &Query::Ip("2001:db8::5".parse().expect("ip")))
        .expect("v");
    assert_eq!(v.action, Action::Allow);
    assert_eq!(
        e.verdict(NOW, &Query::Ip("192.0.2.1".parse().expect("ip")))
            .expect("v")
            .action,
        Action::Allow
    );
}

/// A report with its own id and expiry (a newer id supersedes).
fn report_at(subject: SubjectKey, id_ms: u64, expires_at: u64) -> Record {
    let Record::Report(mut r) = report(subject, 0) else {
        unreachable!("report() builds a report")
    };
    r.id = ReportId::new(id_ms, [9; 10]);
    r.expires_at = expires_at;
    Record::Report(r)
}

// The races below were first reproduced against 99a502f (see the closing
// note of issue 8); they pass since the store's read-modify-writes became
// transactions.

#[test]
fn concurrent_peer_updates_are_never_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path(), "");
    let store = e.store().clone();
    std::thread::scope(|s| {
        for t in 0..8 {
            let store = store.clone();
            s.spawn(move || {
                for i in 0..200 {
                    let fp = format!("t{t}-{i}");
                    store
                        .update_peer("b.example", |p| p.revoked.push(fp.clone()))
                        .expect("update");
                }
            });
        }
    });
    let state = store.peer("b.example").expect("peer");
    assert_eq!(
        state.revoked.len(),
        1600,
        "every concurrent update (a revocation among them) must land"
    );
}

#[test]
fn the_newest_of_two_concurrent_copies_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path(), "");
    let subjects: Vec<SubjectKey> = (0..400)
        .map(|i| SubjectKey::for_jid(&format!("bot{i}@spam.example")).expect("jid"))
        .collect();
    std::thread::scope(|s| {
        for newer in [false, true] {
            let (e, subjects) = (&e, &subjects);
            s.spawn(move || {
                for subject in subjects {
                    let id_ms = if newer { NOW * 1000 + 5 } else { NOW * 1000 };
                    e.ingest(
                        NOW,
                        "a.example",
                        &report_at(subject.clone(), id_ms, NOW + 86_400),
                        "",
                    )
                    .expect("ingest");
                }
            });
        }
    });
    for subject in &subjects {
        let stored = e
            .store()
            .get(subject.as_str(), "a.example")
            .expect("get")
            .expect("stored");
        let Record::Report(r) = stored.record else {
            panic!("a report")
        };
        assert_eq!(
            r.id.timestamp_ms(),
            NOW * 1000 + 5,
            "{subject}: an older copy overwrote the newer one"
        );
    }
}

#[test]
fn indexes_stay_in_step_under_concurrent_writes_and_sweeps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path(), "");
    let subjects: Vec<SubjectKey> = (0..50)
        .map(|i| SubjectKey::for_jid(&format!("bot{i}@spam.example")).expect("jid"))
        .collect();
    std::thread::scope(|s| {
        // Two writers renew entries (each write newer and living longer),
        // while a sweeper expires at a time before every renewal's expiry
        // but after the first write's.
        for w in 0..2u64 {
            let (e, subjects) = (&e, &subjects);
            s.spawn(move || {
                for round in 0..40u64 {
                    for subject in subjects {
                        let n = round * 2 + w;
                        let record =
                            report_at(subject.clone(), NOW * 1000 + n, NOW + 10 + n * 1000);
                        e.ingest(NOW, "a.example", &record, "").expect("ingest");
                    }
                }
            });
        }
        let e = &e;
        s.spawn(move || {
            for _ in 0..200 {
                e.sweep(NOW + 100, 1000).expect("sweep");
            }
        });
    });
    let store = e.store();
    let indexed = store.subjects_of("a.example").expect("index");
    let in_expiry = store.expired(u64::MAX - 1, 100_000).expect("expiry index");
    eprintln!("expiry entries: {:?}", in_expiry.len());
    let mut live = 0;
    for subject in &subjects {
        let stored = store.get(subject.as_str(), "a.example").expect("get");
        let in_index = indexed.iter().any(|s| s == subject.as_str());
        assert_eq!(
            stored.is_some(),
            in_index,
            "{subject}: contribution and by-source index disagree"
        );
        if let Some(stored) = stored {
            live += 1;
            assert!(
                stored.record.expires_at() > NOW + 100,
                "{subject}: only the first write expires by NOW+100, and later writes supersede it"
            );
        }
    }
    assert_eq!(
        in_expiry.len(),
        live,
        "one expiry index entry per stored contribution"
    );
    assert_eq!(
        live,
        subjects.len(),
        "the last write of each subject is live"
    );
}
