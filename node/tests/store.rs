//! The store's model, the same on every engine, and the move from
//! corvid 0.1's layout.

use corvid_node::engine::listed_report;
use corvid_node::store::{Engine, Origin, Store, StoreError, Stored, Upserted};
use corvid_protocol::aggregate::Action;
use corvid_protocol::record::{Category, Record, ReportId};
use corvid_protocol::subject::SubjectKey;

const NOW: u64 = 1_767_225_600;

fn jid(n: u32) -> String {
    format!("jid:{:064x}", u64::from(n) * 0x9e37_79b9_7f4a_7c15)
}

fn stored(subject: &str, n: u64, ttl: u64) -> Stored {
    let key: SubjectKey = subject.parse().expect("subject");
    Stored {
        record: listed_report(
            ReportId::new(NOW * 1000 + n, [n as u8; 10]),
            key,
            Category::Spam,
            NOW,
            ttl,
        ),
        key_id: "0123456789abcdef".into(),
        missing_since: n.is_multiple_of(3).then_some(NOW + n),
        seen_ms: NOW * 1000 + n,
    }
}

/// Drives one store through every operation and returns what it saw, as
/// text: every engine must give the same bytes.
fn exercise(store: &Store) -> String {
    let mut out = String::new();
    let subjects: Vec<String> = (0..40)
        .map(jid)
        .chain([
            "domain:spam.example".into(),
            "domain:spam.example.org".into(),
        ])
        .collect();
    for (i, s) in subjects.iter().enumerate() {
        for source in ["b.example", "c.example"] {
            let n = i as u64;
            let o = store
                .upsert(s, source, |old| {
                    old.is_none().then(|| stored(s, n, 3600 * (n + 1)))
                })
                .expect("upsert");
            out += &format!("{o:?} ");
        }
    }
    let again = store
        .upsert(&subjects[0], "b.example", |_| None)
        .expect("keep");
    assert_eq!(again, Upserted::Kept);
    assert!(
        store
            .remove_if(&subjects[1], "c.example", |_| false)
            .is_ok_and(|r| !r)
    );
    assert!(store.remove(&subjects[1], "c.example").expect("remove"));
    assert!(!store.remove(&subjects[1], "c.example").expect("gone"));
    assert!(
        !store
            .remove(&subjects[1], "never.example")
            .expect("unknown source")
    );
    out += &format!("\ncount {}\n", store.contribution_count());
    out += &format!(
        "about {:?}\n",
        store.about("domain:spam.example").expect("about")
    );
    out += &format!("of c {:?}\n", store.subjects_of("c.example").expect("of"));
    out += &format!(
        "expired {:?}\n",
        store.expired(NOW + 3600 * 5, 100).expect("exp")
    );
    out += &format!(
        "missing {:?}\n",
        store.missing_before(NOW + 10, 100).expect("m")
    );
    out += &format!("subjects {:?}\n", store.subjects().expect("subjects"));
    let p = store
        .update_peer("b.example", |p| {
            p.records += 7;
            p.revoked.push("k".into());
        })
        .expect("peer");
    out += &format!("peer {p:?} {:?}\n", store.peer("b.example").expect("peer"));
    for (i, a) in [Action::Flag, Action::Flag, Action::Block, Action::Allow]
        .into_iter()
        .enumerate()
    {
        let d = store
            .record_decision(
                &subjects[2],
                (a, Origin::Federation),
                0.5,
                NOW + i as u64,
                None,
            )
            .expect("decision");
        out += &format!("decision {d:?} ");
    }
    out += &format!("\n{:?}\n", store.decisions_since(0, 10).expect("since"));
    out += &format!("{:?}\n", store.action_counts().expect("counts"));
    let own: Record = stored(&subjects[3], 9, 60).record;
    store.put_own_durable(&own).expect("own");
    out += &format!("outbox {:?}\n", store.outbox().expect("outbox"));
    store.published(own.subject()).expect("published");
    out += &format!(
        "outbox {:?} own {:?}\n",
        store.outbox().expect("o"),
        store.own_records().expect("own")
    );
    store
        .drop_own_if_expired(own.subject().as_str(), NOW + 61)
        .expect("drop");
    out += &format!("own {:?}\n", store.own(own.subject()).expect("own"));
    store.add_key_record("rot-1", "<x/>").expect("key record");
    out += &format!("keys {:?}\n", store.key_records().expect("keys"));
    // Inside a transaction, `about` sees the transaction's own writes: a
    // new source (interned in it), a replaced entry and a deleted one.
    let subject = &subjects[7];
    let mut seen = Vec::new();
    store
        .batch(false, &mut |tx| {
            seen.clear();
            seen.push(tx.about(subject)?);
            tx.upsert(subject, "e.example", |_| Some(stored(subject, 70, 60)))?;
            tx.upsert(subject, "b.example", |_| Some(stored(subject, 71, 60)))?;
            tx.remove_if(subject, "c.example", |_| true)?;
            seen.push(tx.about(subject)?);
            Ok(())
        })
        .expect("batch");
    let sources = |v: &Vec<(String, Stored)>| {
        v.iter()
            .map(|(s, st)| format!("{s}:{}", st.seen_ms % 1000))
            .collect::<Vec<_>>()
    };
    assert_eq!(sources(&seen[0]), ["b.example:7", "c.example:7"]);
    assert_eq!(sources(&seen[1]), ["b.example:71", "e.example:70"]);
    assert_eq!(
        store.about(subject).expect("about"),
        seen[1],
        "committed as seen"
    );
    out += &format!("tx view {:?}\n", sources(&seen[1]));
    out
}

#[test]
fn every_engine_keeps_the_same_model_and_it_survives_a_reopen() {
    let memory = exercise(&Store::in_memory());
    for engine in [Engine::Redb, Engine::Sled] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_with(dir.path(), engine, 1 << 20).expect("open");
        assert_eq!(exercise(&store), memory, "{engine:?} differs from memory");
        let about = store.about(&jid(5)).expect("about");
        store.flush().expect("flush");
        drop(store);
        let store = Store::open_with(dir.path(), engine, 1 << 20).expect("reopen");
        assert_eq!(store.about(&jid(5)).expect("about"), about, "{engine:?}");
        assert_eq!(store.contribution_count(), 83, "{engine:?}");
        assert_eq!(store.peer("b.example").expect("peer").records, 7);
        // The interned sources came back: a new source gets a new id.
        store
            .put(&jid(99), "d.example", &stored(&jid(99), 1, 60))
            .expect("put");
        assert_eq!(store.subjects_of("d.example").expect("d"), vec![jid(99)]);
        assert_eq!(store.subjects_of("b.example").expect("b").len(), 42);
    }
}

#[test]
fn a_second_corvidd_on_the_same_data_dir_is_told_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Store::open(dir.path(), 1 << 20).expect("open");
    let err = Store::open(dir.path(), 1 << 20).expect_err("second open");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("another corvidd"), "{err}");
}

#[test]
fn a_damaged_value_is_an_error_not_a_panic() {
    use corvid_node::store::kv::Table;
    let store = Store::in_memory();
    store
        .put(&jid(1), "b.example", &stored(&jid(1), 1, 60))
        .expect("put");
    let mut key = Vec::new();
    store
        .kv()
        .scan(Table::Contrib, &[], &mut |k, _| {
            key = k.to_vec();
            false
        })
        .expect("scan");
    store
        .kv()
        .write(true, &mut |t| t.put(Table::Contrib, &key, &[0, 1, 2]))
        .expect("damage");
    let err = store.get(&jid(1), "b.example").expect_err("damaged");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    let err = store.about(&jid(1)).expect_err("damaged");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

#[test]
fn a_corvid_0_1_store_is_moved_once_and_kept_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let own = stored(&jid(1), 1, 600).record;
    let theirs = stored(&jid(2), 2, 600);
    {
        let db = sled::open(dir.path().join("db")).expect("sled");
        let t = |n: &str| db.open_tree(n).expect("tree");
        t("meta").insert("schema", &1u32.to_be_bytes()).expect("w");
        t("own")
            .insert(jid(1), serde_json::to_vec(&own).expect("json"))
            .expect("w");
        t("outbox").insert(jid(1), &[]).expect("w");
        t("contrib")
            .insert(
                format!("{}\0b.example", jid(2)),
                serde_json::to_vec(&theirs).expect("json"),
            )
            .expect("w");
        t("contrib")
            .insert(format!("{}\0b.example", jid(3)), b"{not json".to_vec())
            .expect("w");
        t("peers")
            .insert(
                "b.example",
                br#"{"records":1,"rotated_keys":[],"revoked":["r"]}"#.to_vec(),
            )
            .expect("w");
        t("last_action").insert(jid(2), &[2u8]).expect("w");
        db.flush().expect("flush");
    }
    let store = Store::open(dir.path(), 1 << 20).expect("open");
    let m = corvid_node::store::migrate::from_v1(dir.path(), &store)
        .expect("migrate")
        .expect("there was a v1 store");
    assert_eq!((m.own, m.contributions, m.peers, m.skipped), (1, 1, 1, 1));
    assert_eq!(store.own_records().expect("own"), vec![own.clone()]);
    assert_eq!(
        store.outbox().expect("outbox"),
        vec![own.subject().clone()],
        "still waiting for publication"
    );
    assert_eq!(store.get(&jid(2), "b.example").expect("get"), Some(theirs));
    assert_eq!(
        store.peer("b.example").expect("peer").revoked,
        vec!["r".to_owned()]
    );
    assert_eq!(
        store.action_counts().expect("counts").get("block"),
        Some(&1)
    );
    assert!(dir.path().join("db.v1-migrated").exists());
    assert!(
        corvid_node::store::migrate::from_v1(dir.path(), &store)
            .expect("second run")
            .is_none(),
        "a migration runs once"
    );
}

/// A dropped store releases its file at once, even while its background
/// sync is at work: the next process (or test) can open it straight away.
#[test]
fn a_dropped_store_can_be_opened_again_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    for round in 0..20u32 {
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        store
            .batch(false, &mut |tx| {
                for i in 0..200 {
                    tx.put_meta_json(&format!("k{round}-{i}"), &i)?;
                }
                Ok(())
            })
            .expect("write");
        // Let the background sync find the store dirty and start.
        std::thread::sleep(
            corvid_node::store::redb_kv::SYNC_EVERY
                + std::time::Duration::from_millis(u64::from(round % 5)),
        );
        drop(store);
        Store::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}
