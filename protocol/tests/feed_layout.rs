//! The feed layout against a simulated PubSub node that, like a default
//! Prosody, holds at most 256 items: every step keeps within the budget,
//! and a reader rebuilds exactly the writer's state.

use std::collections::BTreeMap;

use corvid_protocol::feed::{self, FeedOp, FeedReader, FeedWriter, NODE_MAX_ITEMS};
use corvid_protocol::item::{Body, FeedAddress, KeyRing, SignedItem, verify_signed};
use corvid_protocol::keys::{SecretKey, Signer};
use corvid_protocol::record::{
    Category, Evidence, Issuer, Record, Report, ReportId, Retraction, RetractionReason,
};
use corvid_protocol::subject::SubjectKey;

const NOW: u64 = 1_767_225_600;

fn report(i: u32, at: u64) -> Record {
    Record::Report(Report {
        id: ReportId::new(at * 1000 + u64::from(i % 1000), [(i % 251) as u8; 10]),
        subject: SubjectKey::for_jid(&format!("bot{i}@spam.example")).expect("jid"),
        category: Category::Spam,
        confidence: 80,
        issued_at: at,
        expires_at: at + 30 * 86_400,
        evidence: Evidence {
            count: 1,
            first_seen: at,
            last_seen: at,
            note: None,
            abuse_contacted_at: None,
            message_text: None,
        },
    })
}

struct Node(BTreeMap<String, SignedItem>);

impl Node {
    fn apply(&mut self, ops: Vec<FeedOp>) {
        for op in ops {
            match op {
                FeedOp::Publish { item_id, item, .. } => {
                    self.0.insert(item_id, item);
                }
                FeedOp::Retract { item_id, .. } => {
                    self.0.remove(&item_id);
                }
            }
            assert!(
                self.0.len() <= NODE_MAX_ITEMS,
                "node holds {} items",
                self.0.len()
            );
        }
    }

    fn read(&self, feed: &FeedAddress, ring: &KeyRing, now: u64) -> BTreeMap<SubjectKey, Record> {
        let mut reader = FeedReader::new();
        if let Some(head) = self.0.get(feed::HEAD_ITEM) {
            let Body::Head {
                generation, chunks, ..
            } = verify_signed(head, feed, feed::HEAD_ITEM, ring, now, 300)
                .expect("head")
                .body
            else {
                panic!("head")
            };
            for c in reader.accept_head(generation, chunks) {
                let item = &self.0[&c.item];
                let Body::Snapshot { records, .. } =
                    verify_signed(item, feed, &c.item, ring, now, 300)
                        .expect("chunk")
                        .body
                else {
                    panic!("chunk")
                };
                reader
                    .accept_chunk(&c.node, &c.item, item, records)
                    .expect("listed chunk");
            }
        }
        for (id, item) in self.0.range(feed::DELTA_PREFIX.to_owned()..) {
            if !id.starts_with(feed::DELTA_PREFIX) {
                break;
            }
            let Body::Delta { record } = verify_signed(item, feed, id, ring, now, 300)
                .expect("delta")
                .body
            else {
                panic!("delta")
            };
            reader.accept_delta(record);
        }
        reader.finish().expect("complete")
    }
}

#[test]
fn a_growing_feed_stays_within_256_items_and_reads_back_exactly() {
    let key = SecretKey::from_seed([9; 32]);
    let feed: FeedAddress = "xmpp:pubsub.a.example?;node=corvid".parse().expect("feed");
    let ring = KeyRing::pinned("a.example", key.public_key());
    let mut writer = FeedWriter::new(
        feed.clone(),
        Issuer {
            domain: "a.example".into(),
            key: key.public_key().key_id(),
        },
    );
    let mut node = Node(BTreeMap::new());
    // A bulk start, then single reports and retractions arriving over time.
    node.apply(
        writer
            .replace_all(&key, (0..20_000).map(|i| report(i, NOW)), NOW)
            .expect("fits"),
    );
    for i in 20_000..20_600u32 {
        node.apply(
            writer
                .upsert(&key, report(i, NOW + u64::from(i)), NOW + u64::from(i))
                .expect("fits"),
        );
    }
    for i in (0..300u32).step_by(3) {
        let Record::Report(r) = report(i, NOW) else {
            unreachable!()
        };
        let at = NOW + 50_000 + u64::from(i);
        let tomb = Retraction {
            id: ReportId::new(at * 1000, [1; 10]),
            subject: r.subject,
            retracts: r.id,
            reason: RetractionReason::FalsePositive,
            issued_at: at,
            expires_at: r.expires_at,
        };
        node.apply(
            writer
                .upsert(&key, Record::Retraction(tomb), at)
                .expect("fits"),
        );
    }
    let now = NOW + 60_000;
    let state = node.read(&feed, &ring, now);
    assert_eq!(state, writer.records());
    assert_eq!(state.len(), 20_600);
    assert_eq!(
        state
            .values()
            .filter(|r| matches!(r, Record::Retraction(_)))
            .count(),
        100
    );
    // Reconciliation after the service lost everything.
    let mut empty = Node(BTreeMap::new());
    empty.apply(writer.desired_items(&key, now).expect("encodes"));
    assert_eq!(empty.read(&feed, &ring, now), state);
}

#[test]
fn a_100k_feed_fits_one_default_node() {
    let key = SecretKey::from_seed([9; 32]);
    let feed: FeedAddress = "xmpp:pubsub.a.example?;node=corvid".parse().expect("feed");
    let mut writer = FeedWriter::new(
        feed,
        Issuer {
            domain: "a.example".into(),
            key: key.public_key().key_id(),
        },
    );
    let mut node = Node(BTreeMap::new());
    node.apply(
        writer
            .replace_all(&key, (0..100_000).map(|i| report(i, NOW)), NOW)
            .expect("100k reports fit"),
    );
    assert!(
        writer.item_count() <= feed::CHUNK_BUDGET + 1,
        "{} items",
        writer.item_count()
    );
    for (id, item) in &node.0 {
        assert!(
            item.payload_len() <= feed::TARGET_CHUNK_BYTES,
            "{id} is {} bytes",
            item.payload_len()
        );
    }
}
