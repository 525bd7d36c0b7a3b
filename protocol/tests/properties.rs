//! Property tests: the aggregation maths and the untrusted-input decoders.

use std::collections::BTreeSet;

use corvid_protocol::aggregate::{Action, Contribution, Lookup, Mode, Policy, SourceKind, decide};
use corvid_protocol::canonical::CanonicalJson;
use corvid_protocol::item::SignedItem;
use corvid_protocol::record::{
    Category, Evidence, Record, Report, ReportId, Retraction, RetractionReason,
};
use corvid_protocol::subject::{SubjectKey, domain_lookup_keys};
use proptest::prelude::*;

const NOW: u64 = 1_767_225_600;

fn subject(i: u8) -> SubjectKey {
    match i % 3 {
        0 => SubjectKey::for_jid("bot@spam.example").expect("jid"),
        1 => SubjectKey::for_domain("spam.example", false).expect("domain"),
        _ => SubjectKey::for_domain("spam.example", true).expect("domain"),
    }
}

#[derive(Debug, Clone)]
struct Input {
    source: u8,
    kind: SourceKind,
    weight: f64,
    observe: bool,
    subject: u8,
    confidence: u8,
    age: u64,
    retraction: bool,
    n: u8,
}

fn input() -> impl Strategy<Value = Input> {
    (
        0u8..6,
        prop_oneof![
            Just(SourceKind::Peer),
            Just(SourceKind::Peer),
            Just(SourceKind::Local),
            Just(SourceKind::Rtbl)
        ],
        0.0f64..=1.0,
        any::<bool>(),
        0u8..3,
        1u8..=100,
        0u64..(60 * 86_400),
        prop::bool::weighted(0.15),
        any::<u8>(),
    )
        .prop_map(
            |(source, kind, weight, observe, subject, confidence, age, retraction, n)| Input {
                source,
                kind,
                weight,
                observe,
                subject,
                confidence,
                age,
                retraction,
                n,
            },
        )
}

fn contribution(i: &Input) -> Contribution {
    let subject = subject(i.subject);
    let issued_at = NOW - i.age;
    let id = ReportId::new(issued_at * 1000, [i.n; 10]);
    let record = if i.retraction {
        Record::Retraction(Retraction {
            id,
            subject,
            retracts: id,
            reason: RetractionReason::Resolved,
            issued_at,
            expires_at: NOW + 86_400,
        })
    } else {
        Record::Report(Report {
            id,
            subject,
            category: Category::Spam,
            confidence: i.confidence,
            issued_at,
            expires_at: NOW + 86_400,
            evidence: Evidence {
                count: 1,
                first_seen: issued_at,
                last_seen: issued_at,
                note: None,
                abuse_contacted_at: None,
                message_text: None,
            },
        })
    };
    let source = match i.kind {
        SourceKind::Local => "local".to_owned(),
        SourceKind::Rtbl => format!("rtbl:{}", i.source),
        _ => format!("peer{}.example", i.source),
    };
    Contribution {
        source,
        kind: i.kind,
        weight: i.weight,
        alone: false,
        mode: if i.observe {
            Mode::Observe
        } else {
            Mode::Enforce
        },
        confirmed: true,
        record,
    }
}

fn lookup(contributions: Vec<Contribution>) -> Lookup {
    Lookup {
        exact: vec![subject(0)],
        covering: domain_lookup_keys("spam.example"),
        contributions,
        ..Lookup::default()
    }
}

fn verdict_of(inputs: &[Input]) -> (Action, f64) {
    let v = decide(
        &lookup(inputs.iter().map(contribution).collect()),
        &Policy::default(),
        NOW,
    );
    (v.action, v.score)
}

proptest! {
    #[test]
    fn order_does_not_matter(inputs in prop::collection::vec(input(), 0..12), seed in any::<u64>()) {
        let mut shuffled = inputs.clone();
        // Deterministic shuffle from the seed.
        let len = shuffled.len();
        for i in (1..len).rev() {
            let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
            shuffled.swap(i, j);
        }
        let (a1, s1) = verdict_of(&inputs);
        let (a2, s2) = verdict_of(&shuffled);
        prop_assert_eq!(a1, a2);
        prop_assert!((s1 - s2).abs() < 1e-12);
    }

    #[test]
    fn duplicates_change_nothing(inputs in prop::collection::vec(input(), 0..12)) {
        let doubled: Vec<Input> = inputs.iter().chain(&inputs).cloned().collect();
        let (a1, s1) = verdict_of(&inputs);
        let (a2, s2) = verdict_of(&doubled);
        prop_assert_eq!(a1, a2);
        prop_assert!((s1 - s2).abs() < 1e-12);
    }

    #[test]
    fn more_weight_or_confidence_never_lowers_the_verdict(inputs in prop::collection::vec(input(), 1..10), pick in any::<prop::sample::Index>(), dw in 0.0f64..1.0, dc in 0u8..100) {
        let i = pick.index(inputs.len());
        let mut stronger = inputs.clone();
        stronger[i].weight = (stronger[i].weight + dw).min(1.0);
        stronger[i].confidence = stronger[i].confidence.saturating_add(dc).min(100);
        let (a1, s1) = verdict_of(&inputs);
        let (a2, s2) = verdict_of(&stronger);
        prop_assert!(s2 + 1e-12 >= s1, "score fell from {} to {}", s1, s2);
        prop_assert!(a2 >= a1);
    }

    #[test]
    fn one_peer_alone_never_exceeds_its_weight(reports in prop::collection::vec(input(), 1..8)) {
        // All from one peer source.
        let one: Vec<Input> = reports.into_iter().map(|mut i| { i.source = 1; i.kind = SourceKind::Peer; i.observe = false; i }).collect();
        let max_weight = one.iter().map(|i| i.weight).fold(0.0, f64::max);
        let (action, score) = verdict_of(&one);
        prop_assert!(score <= max_weight + 1e-12, "score {} above weight {}", score, max_weight);
        prop_assert!(action != Action::Block, "one peer cannot meet a quorum of two");
    }

    #[test]
    fn allow_listed_subjects_are_never_blocked(inputs in prop::collection::vec(input(), 0..12), which in 0usize..4, deny in any::<bool>()) {
        let mut l = lookup(inputs.iter().map(contribution).collect());
        let listed = l.exact.iter().chain(&l.covering).nth(which).cloned().unwrap_or_else(|| subject(0));
        // An exact allow beats everything; a domain allow beats all but exact lists.
        l.allowed = BTreeSet::from([l.exact[0].clone()]);
        if deny { l.denied = BTreeSet::from([listed]); }
        let v = decide(&l, &Policy::default(), NOW);
        prop_assert_eq!(v.action, Action::Allow);
    }

    #[test]
    fn canonical_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = CanonicalJson::from_bytes(&bytes);
    }

    #[test]
    fn canonical_encoding_round_trips(keys in prop::collection::btree_map("[a-zé\"\\\\\n]{0,6}", -1000i64..1000, 0..8)) {
        let value = serde_json::to_value(&keys).expect("json");
        let c = CanonicalJson::from_value(value).expect("encodes");
        prop_assert_eq!(CanonicalJson::from_bytes(c.as_bytes()).expect("parses"), c);
    }

    #[test]
    fn item_decoder_never_panics(text in ".{0,400}") {
        let _ = SignedItem::from_xml(&text);
        let wrapped = format!("<report xmlns='urn:xmpp:reporting:1'><signed xmlns='urn:x-corvid:1' sig='{}'>{}</signed></report>", "A".repeat(86), text.replace('&', "&amp;").replace('<', "&lt;"));
        let _ = SignedItem::from_xml(&wrapped);
    }

    #[test]
    fn subject_parser_never_panics(text in "(jid|domain|ip|digest)?:?.{0,80}") {
        let _ = text.parse::<SubjectKey>();
    }

    /// Spec §8.3: normalizing a normalized domain changes nothing, and its
    /// key reads back; from letters, digits, the characters nameprep maps
    /// or removes (ß, ς, ZWJ, fullwidth forms, asterisks) and A-labels.
    #[test]
    fn domain_normalization_is_idempotent(
        labels in prop::collection::vec("(xn--)?[a-zA-Z0-9ßςΣüÜ\u{200D}\u{FF0A}\u{FF41}\u{FF0E}_*-]{1,12}", 1..5),
        dot in any::<bool>(),
    ) {
        let input = labels.join(".") + if dot { "." } else { "" };
        if let Ok(d) = corvid_protocol::subject::normalize_domain(&input) {
            prop_assert_eq!(corvid_protocol::subject::normalize_domain(&d), Ok(d.clone()), "{}", input);
            prop_assert!(!d.contains('*'), "{} gave a wildcard {}", input, d);
            let key = SubjectKey::for_domain(&d, false).expect("valid");
            prop_assert_eq!(key.to_string().parse::<SubjectKey>(), Ok(key));
        }
    }

    /// The A-label written for a normalized domain normalizes back to it.
    #[test]
    fn a_labels_read_back(labels in prop::collection::vec("[a-zßüéσ\u{0627}-\u{0629}0-9-]{1,10}", 2..4)) {
        if let Ok(d) = corvid_protocol::subject::normalize_domain(&labels.join(".")) {
            let a = corvid_protocol::subject::domain_a_label(&d).expect("a-label");
            prop_assert!(a.is_ascii());
            let back = corvid_protocol::subject::normalize_domain(&a).expect("reads back");
            // Back to the same name, unless the U-label form failed the
            // whole-name bidi rule (then the A-labels stay, §8.3 step 5).
            prop_assert!(back == d || back == a, "{} -> {} -> {}", d, a, back);
        }
    }
}

proptest! {
    #[test]
    fn fast_canonical_check_agrees_with_the_full_parser(text in r#"[{}\[\]",:a-c0-9\\ntu.e-]{0,40}"#) {
        // from_bytes takes a fast path for canonical input; whatever it
        // accepts must be exactly what parse+encode reproduces.
        if let Ok(c) = CanonicalJson::from_bytes(text.as_bytes()) {
            let value: serde_json::Value = serde_json::from_str(&text).expect("valid json");
            prop_assert_eq!(corvid_protocol::canonical::encode(&value).expect("encodes"), c.as_bytes().to_vec());
        }
    }

    #[test]
    fn canonical_documents_are_accepted(doc in prop::collection::btree_map("[a-z\u{1}\u{8}é\"\\\\]{0,5}", prop_oneof![any::<i32>().prop_map(serde_json::Value::from), "[\u{0}-\u{7f}é]{0,6}".prop_map(serde_json::Value::from), Just(serde_json::Value::Null)], 0..6)) {
        let value = serde_json::json!({"doc": doc, "list": [1, -2, true]});
        let bytes = corvid_protocol::canonical::encode(&value).expect("encodes");
        prop_assert!(CanonicalJson::from_bytes(&bytes).is_ok());
    }
}
