//! Loads every file in `spec/test-vectors/` and checks this implementation
//! against it. With `CORVID_WRITE_VECTORS=1` the files are (re)written from
//! the fixed test key first; the check then still runs on what was written,
//! and in CI the files must already match what would be generated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use corvid_protocol::aggregate::{self, Contribution, Lookup, Mode, Policy, SourceKind};
use corvid_protocol::canonical::CanonicalJson;
use corvid_protocol::card::MembershipCard;
use corvid_protocol::digest::{body_digest, normalize_body};
use corvid_protocol::feed::{self, FeedOp, FeedReader, FeedWriter};
use corvid_protocol::iptoken::{FederationSecret, SecretId};
use corvid_protocol::item::{
    Body, Envelope, FeedAddress, KeyRing, SignedItem, verify_item, verify_signed,
};
use corvid_protocol::keys::{PublicKey, SecretKey, Signer};
use corvid_protocol::record::{
    Category, Evidence, Issuer, KeyRevocation, KeyRotation, Record, Report, ReportId, Retraction,
    RetractionReason,
};
use corvid_protocol::subject::{IpPrefix, SubjectKey, domain_lookup_keys};
use serde_json::{Value, json};

/// RFC 8032 test 1 secret key: the fixed key of every vector.
const SEED_HEX: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// A second fixed key (RFC 8032 test 2), for wrong-key and rotation cases.
const SEED2_HEX: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const DAY: u64 = 86_400;

fn seed(hex_seed: &str) -> SecretKey {
    let mut s = [0u8; 32];
    hex::decode_to_slice(hex_seed, &mut s).expect("fixed seed");
    SecretKey::from_seed(s)
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/test-vectors")
}

fn feed_a() -> FeedAddress {
    "xmpp:pubsub.a.example?;node=corvid".parse().expect("feed")
}

/// The federation directory node of the card vectors.
fn directory_feed() -> FeedAddress {
    "xmpp:pubsub.fed.example?;node=corvid-directory"
        .parse()
        .expect("feed")
}

/// The membership card of `a.example`, for its key.
fn card_a(key: &SecretKey) -> MembershipCard {
    MembershipCard {
        domain: "a.example".into(),
        hosts: vec!["a.example".into(), "conference.a.example".into()],
        feed: feed_a().to_string(),
        key: key.public_key(),
        abuse: vec![
            "mailto:abuse@a.example".into(),
            "xmpp:abuse@a.example".into(),
        ],
        listing_policy: "We list accounts and servers after at least three independent reports from our users or moderators, checked by a human.".into(),
        delisting_policy: "Write to abuse@a.example; we review every request within 48 hours and retract when we were wrong.".into(),
        issued_at: NOW - 60,
    }
}

fn issuer(key: &SecretKey) -> Issuer {
    Issuer {
        domain: "a.example".into(),
        key: key.public_key().key_id(),
    }
}

fn id(n: u8) -> ReportId {
    ReportId::new(NOW * 1000 - 3_600_000 + u64::from(n), [n; 10])
}

fn report(n: u8, subject: SubjectKey, category: Category, abuse: Option<u64>) -> Report {
    Report {
        id: id(n),
        subject,
        category,
        confidence: 90,
        issued_at: NOW - 3600,
        expires_at: NOW + 30 * DAY,
        evidence: Evidence {
            count: 3,
            first_seen: NOW - 2 * DAY,
            last_seen: NOW - 3600,
            note: Some("registered 40 accounts in 2 minutes".into()),
            abuse_contacted_at: abuse,
            message_text: None,
        },
    }
}

fn secret() -> FederationSecret {
    FederationSecret::new(
        SecretId::new("example-fed").expect("id"),
        (0u8..32).collect(),
        30 * DAY,
    )
    .expect("secret")
}

fn envelope(key: &SecretKey, body: Body) -> Envelope {
    Envelope {
        corvid: 1,
        issuer: issuer(key),
        body,
    }
}

fn signed(key: &SecretKey, body: Body, feed: &FeedAddress, item_id: &str) -> SignedItem {
    SignedItem::sign(key, &envelope(key, body), feed, item_id).expect("signs")
}

fn item_vector(name: &str, feed: &FeedAddress, item_id: &str, item: &SignedItem) -> Value {
    json!({
        "name": name,
        "feed": feed.to_string(),
        "item_id": item_id,
        "json": item.json().as_str(),
        "signature": corvid_protocol::keys::signature_to_text(item.signature()),
        "xml": item.to_xml(),
    })
}

fn delta(key: &SecretKey, record: Record) -> (String, SignedItem) {
    let item_id = feed::delta_item_id(record.subject());
    let item = signed(key, Body::Delta { record }, &feed_a(), &item_id);
    (item_id, item)
}

fn generate() -> BTreeMap<&'static str, Value> {
    let key = seed(SEED_HEX);
    let key2 = seed(SEED2_HEX);
    let mut files = BTreeMap::new();

    files.insert(
        "keys.json",
        json!({
            "description": "The fixed test keys: RFC 8032 test 1 and 2 seeds, their text forms.",
            "keys": ([key.public_key(), key2.public_key()]).iter().zip([SEED_HEX, SEED2_HEX]).map(|(p, s)| json!({
                "seed_hex": s,
                "secret_text": seed(s).to_secret_text(),
                "public_key": p.to_string(),
                "fingerprint": p.fingerprint().to_string(),
                "key_id": p.key_id().to_string(),
            })).collect::<Vec<_>>(),
        }),
    );

    let canonical_cases = [
        (r#"{"a":1,"b":[true,null,"x"]}"#, None),
        ("{\"z\":-5,\"é\":\"\\n\"}", None),
        (r#"{"b":1,"a":2}"#, Some("non-canonical")),
        (r#"{"a": 1}"#, Some("non-canonical")),
        (r#"{"a":"\u00e9"}"#, Some("non-canonical")),
        (r#"{"a":1,"a":1}"#, Some("duplicate-key")),
        (r#"{"a":1.5}"#, Some("number")),
        (r#"{"a":10000000000000000}"#, Some("number")),
        ("[1,2]", Some("not-an-object")),
    ];
    files.insert(
        "canonical-json.json",
        json!({
            "description": "Canonical JSON acceptance: error null means the bytes are canonical.",
            "cases": canonical_cases.iter().map(|(i, e)| json!({"input": i, "error": e})).collect::<Vec<_>>(),
        }),
    );

    let jids: [(&str, &str); 9] = [
        ("sales@stolen-cardz.example", "§8.2: the RTBL check value"),
        (
            "Sales@Stolen-Cardz.Example/Phone",
            "§8.2 steps 1-2: the resource is dropped, nodeprep and nameprep fold case",
        ),
        (
            "bot42@bücher.example",
            "§8.2 step 3: an IDN domain in U-labels",
        ),
        (
            "bot42@xn--bcher-kva.example",
            "§8.3 step 5: its A-label form gives the same key",
        ),
        (
            "bot@faß.de",
            "§8.3 step 3: nameprep maps ß to ss, as Prosody delivers it",
        ),
        ("bot@fass.de", "§8.3: the same key as bot@faß.de"),
        (
            "bot@xn--fa-hia.de",
            "§8.3 step 5: the A-label of faß (IDNA2008) stays an A-label, another key",
        ),
        (
            "ＢＯＴ@example.com/a/b@c",
            "§8.2: nodeprep applies NFKC; the resource starts at the first / and may hold / and @",
        ),
        (
            "  bot@example.com.  ",
            "§8.2 step 1 and §8.3 step 1: white space and one root dot",
        ),
    ];
    let invalid_jids: [(&str, &str); 6] = [
        ("example.com", "§8.2 step 1: no localpart"),
        ("@example.com", "§8.2 step 1: empty localpart"),
        (
            "a b@example.com",
            "§8.2 step 2: nodeprep prohibits ASCII space",
        ),
        (
            "a\u{0221}@example.com",
            "§8.2 step 2: a code point unassigned in Unicode 3.2",
        ),
        ("bot@localhost", "§8.3 step 6: a single-label domain"),
        ("bot@192.0.2.1", "§8.3 step 2: an IP literal domain"),
    ];
    let long_local = format!("{}@example.com", "a".repeat(1024));
    let domains: [(&str, bool, &str); 16] = [
        ("spam.example", false, "§8.3: ASCII, unchanged"),
        (
            "Bücher.example.",
            false,
            "§8.3 steps 1 and 3: root dot, case folded, U-labels kept",
        ),
        (
            "xn--bcher-kva.example",
            false,
            "§8.3 step 5: an A-label becomes its U-label",
        ),
        (
            "XN--BCHER-KVA.EXAMPLE",
            false,
            "§8.3 steps 3 and 5: an upper-case A-label",
        ),
        ("relay.example", true, "§8.1: subdomain scope"),
        (
            "faß.de",
            false,
            "§8.3 step 3: ß becomes ss (IDNA2003, as Prosody delivers it)",
        ),
        (
            "xn--fa-hia.de",
            false,
            "§8.3 step 5: IDNA2008's faß.de is another name; its A-label stays",
        ),
        ("ς.example", false, "§8.3 step 3: final sigma becomes σ"),
        (
            "xn--3xa.example",
            false,
            "§8.3 step 5: the A-label of ς stays",
        ),
        (
            "a\u{200D}b.example",
            false,
            "§8.3 step 3: ZWJ is removed (and ZWNJ)",
        ),
        (
            "ｅｘａｍｐｌｅ．com",
            false,
            "§8.3 step 3: NFKC maps fullwidth letters and the fullwidth full stop",
        ),
        (
            "under_score.example",
            false,
            "§8.3 step 6: underscores are accepted, as XMPP servers accept them",
        ),
        (
            "r3---sn-4g5e.googlevideo.com",
            false,
            "§8.3 step 6: -- inside a label is allowed",
        ),
        (
            "xn--mgbh0fb.example",
            false,
            "§8.3 step 5: the decoded name would fail nameprep's bidi rule, so the A-label stays",
        ),
        (
            "xn--mgbh0fb.xn--kgbechtv",
            false,
            "§8.3 step 5: an all right-to-left name is decoded",
        ),
        ("xn--i-7iq.ws", false, "§8.3 step 5: a symbol in a U-label"),
    ];
    let long_label = format!("{}.example", "a".repeat(64));
    let long_name = format!("{}.ab", vec!["a".repeat(50); 5].join("."));
    let invalid_domains: Vec<(String, &str, &str)> = vec![
        (String::new(), "not-a-domain", "§8.3 step 2: empty"),
        (
            "bot@spam.example".into(),
            "not-a-domain",
            "§8.3 step 2: a JID is not a domain",
        ),
        (
            "192.0.2.1".into(),
            "ip-literal",
            "§8.3 step 2: IPv4 literal",
        ),
        (
            "[2001:db8::1]".into(),
            "ip-literal",
            "§8.3 step 2: IPv6 literal",
        ),
        (
            "مثال.example".into(),
            "nameprep",
            "§8.3 step 3: mixed right-to-left and left-to-right in one name",
        ),
        (
            "＊.spam.example".into(),
            "character",
            "§8.3 step 4: a fullwidth asterisk is not a wildcard",
        ),
        (
            "﹡".into(),
            "character",
            "§8.3 step 4: a small asterisk is not a wildcard",
        ),
        (
            "*.spam.example".into(),
            "character",
            "§8.3 step 4: the wildcard is the key's syntax, not part of a domain",
        ),
        (
            "a。example".into(),
            "character",
            "§8.3 step 4: U+3002 is not a label separator",
        ),
        (
            "exa mple.com".into(),
            "character",
            "§8.3 step 6: ASCII space",
        ),
        (
            "xn--zz.example".into(),
            "a-label",
            "§8.3 step 5: not Punycode",
        ),
        (
            "xn--abc-.example".into(),
            "a-label",
            "§8.3 step 5: Punycode of ASCII text only",
        ),
        ("localhost".into(), "single-label", "§8.3 step 6: one label"),
        (
            "bücher.example..".into(),
            "label-shape",
            "§8.3 steps 1 and 6: only one root dot is removed",
        ),
        (
            "-lead.example".into(),
            "label-shape",
            "§8.3 step 6: a leading hyphen",
        ),
        (long_label, "length", "§8.3 step 6: a 64-octet label"),
        (long_name, "length", "§8.3 step 6: a 254-octet name"),
        (
            "x.123".into(),
            "numeric-tld",
            "§8.3 step 6: an all-digit last label",
        ),
    ];
    files.insert(
        "subjects.json",
        json!({
            "description": "Subject normalization (§8): JIDs (RTBL hash, §8.2), domains (§8.3) with the rule that rejects each invalid one, subdomain scope, and the domain keys a lookup checks (§8.4). Strict key parsing (§8.1): every key in `invalid` is rejected.",
            "jids": jids.iter().map(|(j, d)| json!({"description": d, "input": j, "key": SubjectKey::for_jid(j).expect("jid").to_string()})).collect::<Vec<_>>(),
            "invalid_jids": invalid_jids.iter().map(|(j, d)| json!({"description": d, "input": j})).chain(std::iter::once(json!({"description": "§8.2 step 2: a localpart over 1023 bytes", "input": long_local}))).collect::<Vec<_>>(),
            "domains": domains.iter().map(|(d, sub, desc)| json!({"description": desc, "input": d, "subdomains": sub, "key": SubjectKey::for_domain(d, *sub).expect("domain").to_string()})).collect::<Vec<_>>(),
            "invalid_domains": invalid_domains.iter().map(|(d, rule, desc)| json!({"description": desc, "input": d, "rule": rule})).collect::<Vec<_>>(),
            "domain_lookups": (["mail.relay.example", "bücher.example"]).iter().map(|d| json!({"domain": d, "keys": domain_lookup_keys(d).iter().map(ToString::to_string).collect::<Vec<_>>()})).collect::<Vec<_>>(),
            "invalid": ["", "jid:abc", "domain:Spam.example", "domain:xn--bcher-kva.example", "domain:faß.de", "domain:*", "domain:*.org", "domain:＊.spam.example", "domain:192.0.2.1", "domain:localhost", "ip:x:1:v4-32:00", "other:1"],
        }),
    );

    let s = secret();
    let addrs = [
        ("192.0.2.77", 32u8),
        ("192.0.2.77", 24),
        ("::ffff:192.0.2.77", 128),
        ("2001:db8:1:2::7", 128),
        ("2001:db8:1:2::7", 64),
        ("2001:db8:1:2::7", 48),
    ];
    let epoch = s.epoch_of(NOW);
    files.insert(
        "ip-tokens.json",
        json!({
            "description": "IP tokens. epoch_key = HKDF-SHA256(salt 'corvid-ip-epoch-v1', ikm secret, info id||0x00||epoch_be64); token = HMAC-SHA256(epoch_key, 'corvid-ip-token-v1'||0x00||family||len||network bytes)[..16].",
            "secret_id": s.id().as_str(),
            "secret_hex": hex::encode((0u8..32).collect::<Vec<_>>()),
            "epoch_secs": s.epoch_secs(),
            "now": NOW,
            "epoch": epoch,
            "epoch_key_hex": hex::encode(s.epoch_key(epoch)),
            "cases": addrs.iter().map(|(a, l)| {
                let p = IpPrefix::new(a.parse().expect("ip"), *l).expect("prefix");
                json!({"address": a, "prefix_len": l, "network": p.addr().to_string(), "class": p.class(),
                       "key": s.token(&p, epoch).to_string(), "key_previous_epoch": s.token(&p, epoch - 1).to_string()})
            }).collect::<Vec<_>>(),
        }),
    );

    let bodies: [(&str, &str); 28] = [
        (
            "Cheap Bitcoin! Visit https://scam.example/ref?id=123 now, offer 42 ends soon",
            "§10 steps 1-7: a URL with a scheme becomes its host, a digit run becomes #",
        ),
        (
            "cheap  BITCOIN! visit http://SCAM.example/other now, offer 7 ends soon ",
            "§10: a variation of the case before (case, spacing, path, number) with the same digest",
        ),
        (
            "ＦＲＥＥ crypto at www.Spam.Example/x — only 99 left!!",
            "§10 step 1 and §10.1: fullwidth letters by NFKC; a scheme-less URL loses its path and www.",
        ),
        (
            "Straße und STRASSE: 1234 Grüße an www.bücher.example",
            "§10 step 2: full case folding (ß to ss); an IDN host stays in U-labels",
        ),
        (
            "hi there",
            "§10 step 6: shorter than 24 characters, no digest",
        ),
        (
            "see (https://en.wikipedia.example/wiki/Foo_(bar)) and say (https://scam.example/x) ok",
            "§10.1: a closing bracket ends a URL only when it has no opening one inside it",
        ),
        (
            "at https://scam.example. Then \"https://scam.example/a,b\" and 'scam.example/c'.",
            "§10.1: trailing punctuation and quotes are not part of a URL",
        ),
        (
            "go to scam.example, or scam.example! or scam.example? yes",
            "§10.1: a bare host followed by punctuation is a URL of its host alone",
        ),
        (
            "<https://scam.example/x> [scam.example](https://scam.example/x)",
            "§10.1: < and > end a URL; Markdown links",
        ),
        (
            "https://user:pw@Scam.Example:8443/path and https://[2001:db8::1]:443/x now",
            "§10.1: user information and port are dropped; an IPv6 literal keeps its brackets (its digits then become #)",
        ),
        (
            "ftp://files.scam.example/a is a URL with any scheme",
            "§10.1: any scheme followed by ://",
        ),
        (
            "mailto:bob@scam.example and xmpp:spam@scam.example?join stay",
            "§10.1: a scheme without // is not a URL, and a host after @ is not one",
        ),
        (
            "write to first.last@scam.example now for a prize",
            "§10.1: an email address is not a URL",
        ),
        (
            "www.scam.example and WWW.SCAM.EXAMPLE/x and http://www.scam.example/",
            "§10.1: one leading www. is dropped from every host",
        ),
        (
            "xn--bcher-kva.example/angebot and https://xn--bcher-kva.example/ and bücher.example/x",
            "§10.1: xn-- labels are decoded, so A-label and U-label hosts agree",
        ),
        (
            "files at 192.0.2.1/x and 192.0.2.1:8080/y and 999.1.1.1/z",
            "§10.1: a dotted quad is a host; 999.1.1.1 is not one",
        ),
        (
            "scam.example:8080/path?q=1#frag but scam.example:http",
            "§10.1: a port is digits after the host; other text after : is not part of the URL",
        ),
        (
            "node.js is great, so is example.c and a.b.c.d.e.f.gh",
            "§10.1: the last label must start with two letters (node.js is a URL of host node.js)",
        ),
        (
            "http:/scam.example and https:// and file:///etc/passwd stay as they are",
            "§10.1: no // or no host: the text is kept",
        ),
        (
            "dots...everywhere..com and a..b.cd are not hosts",
            "§10.1: labels are separated by single dots",
        ),
        (
            "some text with no URL at all, and 123 numbers",
            "§10: text without URLs passes step 3 unchanged",
        ),
        (
            "::ffff:1.2.3.4::ffff:1.2.3.4::ffff:1.2.3.4::ffff:1.2.3.4",
            "§10.1: a host after : is inside something else; this input was quadratic under the old URL finder",
        ),
        (
            "a:b.ca:b.ca:b.ca:b.ca:b.ca:b.ca:b.c",
            "§10.1: no scheme without //; this input was quadratic under the old URL finder",
        ),
        (
            "ｈｔｔｐｓ：／／ＳＣＡＭ．ｅｘａｍｐｌｅ／ｘ fullwidth URL here",
            "§10 steps 1-3: NFKC makes a fullwidth URL ASCII before URLs are found",
        ),
        (
            "Ｔｅｓｔ ①②③ and ٣٤٥ and Ⅻ and ½ are numbers too",
            "§10 step 4: Nd, Nl and No characters are digits",
        ),
        (
            "tab\there\u{00a0}nbsp\u{2003}em\u{3000}ideographic\u{2028}line spaces",
            "§10 step 5: every White_Space character separates words",
        ),
        (
            "ǅemo ﬁne ﬀ ΣΑΣ Ὰͅ under case folding and NFKC",
            "§10 step 2: full case folding then NFKC (digraphs, ligatures, final sigma, iota subscript)",
        ),
        (
            "a very long host a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.ab is not one",
            "§10.1: a run of labels longer than 253 characters is not a host",
        ),
    ];
    files.insert(
        "digests.json",
        json!({
            "description": "Content digests (§10): normalized body and the digest subject, or null below the minimum length. The URL rule is §10.1.",
            "min_normalized_chars": corvid_protocol::digest::MIN_NORMALIZED_CHARS,
            "cases": bodies.iter().map(|(b, d)| json!({"description": d, "body": b, "normalized": normalize_body(b), "subject": body_digest(b).map(|k| k.to_string())})).collect::<Vec<_>>(),
        }),
    );

    // Valid items, one per subject kind, and the other record types.
    let feed = feed_a();
    let jid_report = report(
        1,
        SubjectKey::for_jid("sales@stolen-cardz.example").expect("jid"),
        Category::Spam,
        None,
    );
    let idn_report = report(
        2,
        SubjectKey::for_domain("xn--bcher-kva.example", true).expect("d"),
        Category::OpenRelay,
        Some(NOW - DAY),
    );
    let ip_key = s.token(&IpPrefix::parse("192.0.2.0/24").expect("p"), epoch);
    let ip_report = report(3, ip_key, Category::BulkRegistration, None);
    let digest_report = report(
        4,
        body_digest(bodies[0].0).expect("digest"),
        Category::Phishing,
        None,
    );
    let retraction = Retraction {
        id: id(5),
        subject: jid_report.subject.clone(),
        retracts: jid_report.id,
        reason: RetractionReason::FalsePositive,
        issued_at: NOW - 60,
        expires_at: jid_report.expires_at,
    };
    let mut items = Vec::new();
    for (name, record) in [
        ("report-jid", Record::Report(jid_report.clone())),
        ("report-domain-idn", Record::Report(idn_report.clone())),
        ("report-ip", Record::Report(ip_report.clone())),
        ("report-digest", Record::Report(digest_report.clone())),
        ("retraction", Record::Retraction(retraction.clone())),
    ] {
        let (item_id, item) = delta(&key, record);
        items.push(item_vector(name, &feed, &item_id, &item));
    }
    // §6.2: an IDN service signs in its one normalized form, whichever
    // spelling the feed address was given in.
    let idn_feed: FeedAddress = "xmpp:pubsub.xn--bcher-kva.example?;node=corvid"
        .parse()
        .expect("feed");
    let idn_item_id = feed::delta_item_id(&jid_report.subject);
    let idn_item = signed(
        &key,
        Body::Delta {
            record: Record::Report(jid_report.clone()),
        },
        &idn_feed,
        &idn_item_id,
    );
    items.push(item_vector(
        "idn-service",
        &idn_feed,
        &idn_item_id,
        &idn_item,
    ));
    let rotation = KeyRotation {
        old: key.public_key(),
        new: key2.public_key(),
        issued_at: NOW - 60,
    };
    let rot_id = feed::rotation_item_id(&key2.public_key());
    items.push(item_vector(
        "key-rotation",
        &feed,
        &rot_id,
        &signed(&key, Body::KeyRotation(rotation), &feed, &rot_id),
    ));
    let revocation = KeyRevocation {
        key: key.public_key(),
        issued_at: NOW - 30,
        reason: Some("key compromised".into()),
    };
    let rev_id = feed::revocation_item_id(&key.public_key());
    items.push(item_vector(
        "key-revocation",
        &feed,
        &rev_id,
        &signed(&key, Body::KeyRevocation(revocation), &feed, &rev_id),
    ));

    // The membership card, signed twice: as item `card` on the own feed and
    // as item `a.example` on the directory node (§17).
    let card = card_a(&key);
    items.push(item_vector(
        "card-own-feed",
        &feed,
        feed::CARD_ITEM,
        &signed(&key, Body::Card(card.clone()), &feed, feed::CARD_ITEM),
    ));
    let directory = directory_feed();
    let listed_card = signed(&key, Body::Card(card.clone()), &directory, &card.domain);
    items.push(item_vector(
        "card-directory",
        &directory,
        &card.domain,
        &listed_card,
    ));

    // A small feed: a snapshot (head + one chunk) and a delta after it.
    let mut writer = FeedWriter::new(feed.clone(), issuer(&key));
    let snapshot_ops = writer
        .replace_all(
            &key,
            [
                Record::Report(jid_report.clone()),
                Record::Report(idn_report.clone()),
                Record::Report(ip_report.clone()),
            ],
            NOW - 120,
        )
        .expect("fits");
    let delta_ops = writer
        .upsert(&key, Record::Retraction(retraction.clone()), NOW - 60)
        .expect("fits");
    let mut feed_items = Vec::new();
    for op in snapshot_ops.iter().chain(&delta_ops) {
        if let FeedOp::Publish { item_id, item, .. } = op {
            let name = if item_id == feed::HEAD_ITEM {
                "head"
            } else if item_id.starts_with(feed::CHUNK_PREFIX) {
                "snapshot-chunk"
            } else {
                "delta"
            };
            feed_items.push(item_vector(name, &feed, item_id, item));
            items.push(item_vector(name, &feed, item_id, item));
        }
    }
    // A chunk big enough to travel deflated (encoding='deflate', base64).
    let mut deflated = None;
    let mut big = FeedWriter::new(feed.clone(), issuer(&key));
    let many = (0..24u8).map(|i| {
        let mut r = report(
            100 + i,
            SubjectKey::for_jid(&format!("bulk{i}@spam.example")).expect("jid"),
            Category::BulkRegistration,
            None,
        );
        r.evidence.note = None;
        Record::Report(r)
    });
    for op in big.replace_all(&key, many, NOW - 120).expect("fits") {
        if let FeedOp::Publish { item_id, item, .. } = op
            && item_id.starts_with(feed::CHUNK_PREFIX)
        {
            assert!(
                item.to_xml().contains("encoding=\"deflate\"")
                    || item.to_xml().contains("encoding='deflate'"),
                "expected a deflated chunk"
            );
            items.push(item_vector(
                "snapshot-chunk-deflate",
                &feed,
                &item_id,
                &item,
            ));
            deflated = Some((item_id.clone(), item.to_xml()));
        }
    }
    // Layout 2 (§4.6): a record as a log item of the feed a component
    // serves, the checkpoint of that log, and a compact page of it.
    let log_feed: FeedAddress = "xmpp:corvid.a.example?;node=corvid".parse().expect("feed");
    let log_item_id = feed::delta_item_id(&jid_report.subject);
    let log_item = signed(
        &key,
        Body::Delta {
            record: Record::Report(jid_report.clone()),
        },
        &log_feed,
        &log_item_id,
    );
    items.push(item_vector("log-delta", &log_feed, &log_item_id, &log_item));
    let checkpoint = signed(
        &key,
        Body::Checkpoint {
            last: Some(jid_report.id.max(ip_report.id)),
            records: 2,
            members_only: 1,
            keys: Vec::new(),
            issued_at: NOW - 10,
        },
        &log_feed,
        feed::CHECKPOINT_ITEM,
    );
    items.push(item_vector(
        "checkpoint",
        &log_feed,
        feed::CHECKPOINT_ITEM,
        &checkpoint,
    ));
    // In id order, at `s/` and the id of its last record.
    let mut page = vec![
        Record::Report(jid_report.clone()),
        Record::Report(ip_report.clone()),
    ];
    page.sort_by_key(Record::id);
    let compact_id = format!(
        "{}{}",
        feed::CHUNK_PREFIX,
        page.last().map(Record::id).expect("records")
    );
    let compact = signed(
        &key,
        Body::Snapshot {
            generation: 0,
            records: page,
        },
        &log_feed,
        &compact_id,
    );
    items.push(item_vector("log-compact", &log_feed, &compact_id, &compact));
    files.insert(
        "items.json",
        json!({
            "description": "Valid signed items, all by keys[0] for issuer a.example, each verified against its own `feed` and `item_id` at `now` (the card-directory item is on the directory node). signature = ed25519(\"corvid-item-v1\" 0x00 service 0x00 node 0x00 item_id 0x00 json).",
            "now": NOW,
            "issuer_domain": "a.example",
            "public_key": key.public_key().to_string(),
            "items": items,
        }),
    );
    files.insert(
        "feed.json",
        json!({
            "description": "A feed with a snapshot (head + chunk) and a later delta; a reader keeps the newest record per subject.",
            "now": NOW,
            "feed": feed.to_string(),
            "issuer_domain": "a.example",
            "public_key": key.public_key().to_string(),
            "items": feed_items,
            "expected_state": writer.records().iter().map(|(k, r)| (k.to_string(), json!({"type": match r { Record::Report(_) => "report", Record::Retraction(_) => "retraction" }, "id": r.id().to_string()}))).collect::<BTreeMap<_, _>>(),
        }),
    );

    // Failure cases.
    let (jid_item_id, jid_item) = delta(&key, Record::Report(jid_report.clone()));
    let good_xml = jid_item.to_xml();
    let mut failures = Vec::new();
    let mut fail = |name: &str,
                    xml: String,
                    feed: &FeedAddress,
                    item_id: &str,
                    revoked: bool,
                    now: u64,
                    error: &str| {
        failures.push(json!({"name": name, "xml": xml, "feed": feed.to_string(), "item_id": item_id, "key_revoked": revoked, "now": now, "error": error}));
    };
    let tampered = good_xml.replace("\"confidence\":90", "\"confidence\":99");
    fail(
        "tampered-field",
        tampered,
        &feed,
        &jid_item_id,
        false,
        NOW,
        "bad-signature",
    );
    let (_, by_other_key) = {
        let item = SignedItem::sign(
            &key2,
            &Envelope {
                corvid: 1,
                issuer: Issuer {
                    domain: "a.example".into(),
                    key: key.public_key().key_id(),
                },
                body: Body::Delta {
                    record: Record::Report(jid_report.clone()),
                },
            },
            &feed,
            &jid_item_id,
        )
        .expect("signs");
        ((), item)
    };
    fail(
        "wrong-key",
        by_other_key.to_xml(),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "bad-signature",
    );
    let other_feed: FeedAddress = "xmpp:pubsub.b.example?;node=corvid".parse().expect("feed");
    fail(
        "replay-other-feed",
        good_xml.clone(),
        &other_feed,
        &jid_item_id,
        false,
        NOW,
        "bad-signature",
    );
    let other_node: FeedAddress = "xmpp:pubsub.a.example?;node=corvid-test"
        .parse()
        .expect("feed");
    fail(
        "replay-other-node",
        good_xml.clone(),
        &other_node,
        &jid_item_id,
        false,
        NOW,
        "bad-signature",
    );
    fail(
        "replay-other-item",
        good_xml.clone(),
        &feed,
        &feed::delta_item_id(&idn_report.subject),
        false,
        NOW,
        "bad-signature",
    );
    fail(
        "expired",
        good_xml.clone(),
        &feed,
        &jid_item_id,
        false,
        NOW + 31 * DAY,
        "expired",
    );
    fail(
        "from-the-future",
        good_xml.clone(),
        &feed,
        &jid_item_id,
        false,
        NOW - 2 * 3600,
        "clock-skew",
    );
    fail(
        "revoked-key",
        good_xml.clone(),
        &feed,
        &jid_item_id,
        true,
        NOW,
        "revoked-key",
    );
    // Integers out of a field's range (§5.3, §5.4): negative ones do not
    // fit the schema; non-negative ones outside the range, however far,
    // are record errors. Evidence is what was seen before the report was
    // issued.
    let jid_json = jid_item.json().as_str().to_owned();
    let issued = (NOW - 3600).to_string();
    for (name, from, to, error) in [
        (
            "confidence-negative",
            "\"confidence\":90",
            "\"confidence\":-1".to_owned(),
            "schema",
        ),
        (
            "confidence-101",
            "\"confidence\":90",
            "\"confidence\":101".to_owned(),
            "invalid-record",
        ),
        (
            "confidence-300",
            "\"confidence\":90",
            "\"confidence\":300".to_owned(),
            "invalid-record",
        ),
        (
            "count-negative",
            "\"count\":3",
            "\"count\":-3".to_owned(),
            "schema",
        ),
        (
            "count-zero",
            "\"count\":3",
            "\"count\":0".to_owned(),
            "invalid-record",
        ),
        (
            "last-seen-after-issued-at",
            &format!("\"last_seen\":{issued}"),
            format!("\"last_seen\":{}", NOW - 3599),
            "invalid-record",
        ),
        (
            "first-seen-after-last-seen",
            &format!("\"first_seen\":{}", NOW - 2 * DAY),
            format!("\"first_seen\":{}", NOW - 3500),
            "invalid-record",
        ),
    ] {
        assert!(jid_json.contains(from), "{name}: {from} not in the item");
        fail(
            name,
            signed_raw(&key, &feed, &jid_item_id, &jid_json.replacen(from, &to, 1)),
            &feed,
            &jid_item_id,
            false,
            NOW,
            error,
        );
    }
    let (idn_item_id, idn_item) = delta(&key, Record::Report(idn_report.clone()));
    let idn_json = idn_item.json().as_str().to_owned();
    let contacted = format!("\"abuse_contacted_at\":{}", NOW - DAY);
    assert!(idn_json.contains(&contacted));
    fail(
        "abuse-contacted-after-issued-at",
        signed_raw(
            &key,
            &feed,
            &idn_item_id,
            &idn_json.replacen(
                &contacted,
                &format!("\"abuse_contacted_at\":{}", NOW - 60),
                1,
            ),
        ),
        &feed,
        &idn_item_id,
        false,
        NOW,
        "invalid-record",
    );
    // The schema is checked before the signature (§6.5 step 9): an item
    // out of the schema is `schema` whatever its signature, and one of
    // another version `unsupported-version`.
    let garbage_sig =
        corvid_protocol::keys::signature_to_text(&ed25519_dalek::Signature::from_bytes(&[7u8; 64]));
    let unsigned = |json_text: &str| {
        format!(
            "<report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'><signed xmlns='urn:x-corvid:1' encoding='json' sig='{garbage_sig}'>{}</signed></report>",
            json_text.replace('&', "&amp;").replace('<', "&lt;")
        )
    };
    fail(
        "out-of-schema-and-bad-signature",
        unsigned(&jid_json.replacen("\"category\":\"spam\"", "\"category\":\"weather\"", 1)),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "schema",
    );
    fail(
        "other-version-and-bad-signature",
        unsigned(
            &jid_json
                .replacen("\"corvid\":1", "\"corvid\":2", 1)
                .replacen("\"category\":\"spam\"", "\"category\":\"weather\"", 1),
        ),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "unsupported-version",
    );
    // Without an `issuer` that can be read, another version is not
    // recognised: `schema`.
    let issuer_at = jid_json.find("\"issuer\":{").expect("issuer");
    let issuer_end = issuer_at + jid_json[issuer_at..].find('}').expect("issuer's end") + 1;
    let issuer_text = &jid_json[issuer_at..issuer_end];
    fail(
        "other-version-without-issuer",
        unsigned(
            &jid_json
                .replacen("\"corvid\":1", "\"corvid\":2", 1)
                .replacen(issuer_text, "\"issuer\":\"a.example\"", 1),
        ),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "schema",
    );
    let spaced = jid_item.json().as_str().replacen("{", "{ ", 1);
    let xml_with = |json_text: &str| {
        format!(
            "<report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'><signed xmlns='urn:x-corvid:1' encoding='json' sig='{}'>{}</signed></report>",
            corvid_protocol::keys::signature_to_text(jid_item.signature()),
            json_text.replace('&', "&amp;").replace('<', "&lt;")
        )
    };
    fail(
        "non-canonical-json",
        xml_with(&spaced),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "non-canonical",
    );
    let duplicated =
        jid_item
            .json()
            .as_str()
            .replacen("{\"corvid\":1,", "{\"corvid\":1,\"corvid\":1,", 1);
    fail(
        "duplicate-key",
        xml_with(&duplicated),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "duplicate-key",
    );
    fail(
        "oversized",
        xml_with(&format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000))),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "oversized",
    );
    let v2 = signed_raw(
        &key,
        &feed,
        &jid_item_id,
        &jid_item
            .json()
            .as_str()
            .replacen("\"corvid\":1", "\"corvid\":2", 1),
    );
    fail(
        "unsupported-version",
        v2,
        &feed,
        &jid_item_id,
        false,
        NOW,
        "unsupported-version",
    );
    let other_subject_id = feed::delta_item_id(&idn_report.subject);
    let misfiled = signed(
        &key,
        Body::Delta {
            record: Record::Report(jid_report.clone()),
        },
        &feed,
        &other_subject_id,
    );
    fail(
        "delta-under-wrong-item-id",
        misfiled.to_xml(),
        &feed,
        &other_subject_id,
        false,
        NOW,
        "item-id-mismatch",
    );
    // The directory card moved to another member's item id: its signature
    // is bound to the id `a.example`.
    fail(
        "card-under-another-domain",
        listed_card.to_xml(),
        &directory,
        "b.example",
        false,
        NOW,
        "bad-signature",
    );
    // A card validly signed for the id `b.example` that names `a.example`.
    let misfiled_card = signed(&key, Body::Card(card.clone()), &directory, "b.example");
    fail(
        "card-signed-under-another-domain",
        misfiled_card.to_xml(),
        &directory,
        "b.example",
        false,
        NOW,
        "item-id-mismatch",
    );
    // Signed by the pinned key, but naming another issuer.
    let other_issuer = SignedItem::sign(
        &key,
        &Envelope {
            corvid: 1,
            issuer: Issuer {
                domain: "b.example".into(),
                key: key.public_key().key_id(),
            },
            body: Body::Delta {
                record: Record::Report(jid_report.clone()),
            },
        },
        &feed,
        &jid_item_id,
    )
    .expect("signs");
    fail(
        "wrong-issuer",
        other_issuer.to_xml(),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "wrong-issuer",
    );
    // Signed by keys[1], which is not pinned (only keys[0] is).
    fail(
        "unknown-key",
        signed(
            &key2,
            Body::Delta {
                record: Record::Report(jid_report.clone()),
            },
            &feed,
            &jid_item_id,
        )
        .to_xml(),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "unknown-key",
    );
    // Layout 2: a checkpoint counting more members-only records than
    // records (§5.11).
    let log_feed: FeedAddress = "xmpp:corvid.a.example?;node=corvid".parse().expect("feed");
    fail(
        "checkpoint-members-only-over-records",
        signed(
            &key,
            Body::Checkpoint {
                last: Some(jid_report.id),
                records: 1,
                members_only: 2,
                keys: Vec::new(),
                issued_at: NOW - 10,
            },
            &log_feed,
            feed::CHECKPOINT_ITEM,
        )
        .to_xml(),
        &log_feed,
        feed::CHECKPOINT_ITEM,
        false,
        NOW,
        "malformed",
    );
    fail(
        "not-a-report",
        "<item xmlns='http://jabber.org/protocol/pubsub'/>".into(),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "malformed",
    );
    // White space and strict base64 (§2, §5.1, §5.2).
    let sig = corvid_protocol::keys::signature_to_text(jid_item.signature());
    let with_sig = |text: &str| good_xml.replace(&sig, text);
    let (head, tail) = sig.split_at(40);
    fail(
        "sig-white-space-inside",
        with_sig(&format!("{head} {tail}")),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "malformed",
    );
    // The last of 86 characters carries 2 bits of the signature and 4
    // unused ones, which must be zero.
    const URL_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = sig.as_bytes()[85];
    let index = URL_ALPHABET
        .iter()
        .position(|c| *c == last)
        .expect("base64url");
    assert_eq!(index & 0x0f, 0, "a valid signature's unused bits are zero");
    let trailing = format!("{}{}", &sig[..85], URL_ALPHABET[index | 1] as char);
    fail(
        "sig-non-zero-trailing-bits",
        with_sig(&trailing),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "malformed",
    );
    fail(
        "sig-padded",
        with_sig(&format!("{sig}==")),
        &feed,
        &jid_item_id,
        false,
        NOW,
        "malformed",
    );
    let (chunk_id, chunk_xml) = deflated.expect("a deflated chunk");
    let payload = chunk_xml
        .split_once("<signed")
        .and_then(|(_, rest)| rest.split_once('>'))
        .and_then(|(_, rest)| rest.split_once('<'))
        .map(|(text, _)| text.to_owned())
        .expect("the deflated payload");
    assert!(payload.ends_with('='), "this payload has padding to remove");
    fail(
        "deflate-padding-missing",
        chunk_xml.replace(&payload, payload.trim_end_matches('=')),
        &feed,
        &chunk_id,
        false,
        NOW,
        "malformed",
    );
    let (first, rest) = payload.split_at(76);
    fail(
        "deflate-line-break-inside",
        chunk_xml.replace(&payload, &format!("{first}\n{rest}")),
        &feed,
        &chunk_id,
        false,
        NOW,
        "malformed",
    );
    // What verifies although it is written differently: white space at
    // the ends of `sig` and of a deflated payload, of any kind (§2).
    let accepted = vec![
        json!({"name": "sig-white-space-around", "feed": feed.to_string(), "item_id": jid_item_id, "now": NOW,
               "xml": with_sig(&format!("\n\t {sig} \u{3000}\r\n"))}),
        json!({"name": "deflate-white-space-around", "feed": feed.to_string(), "item_id": chunk_id, "now": NOW,
               "xml": chunk_xml.replace(&payload, &format!("\n  {payload}\n\u{a0}"))}),
    ];
    files.insert(
        "failures.json",
        json!({
            "description": "Items every verifier must reject (cases), with the expected reason label, and items written differently that must verify (accepted: white space at the ends of sig and of a deflated payload, spec §2). Key: keys[0], pinned for issuer a.example.",
            "issuer_domain": "a.example",
            "public_key": key.public_key().to_string(),
            "skew_secs": 300,
            "cases": failures,
            "accepted": accepted,
        }),
    );

    files.insert("aggregation.json", aggregation_cases(&key));
    files
}

/// Signs arbitrary JSON text (already canonical) into an item, for cases
/// the typed API refuses to build.
fn signed_raw(key: &SecretKey, feed: &FeedAddress, item_id: &str, json_text: &str) -> String {
    let sig = key.sign(&corvid_protocol::item::signing_input(
        feed,
        item_id,
        json_text.as_bytes(),
    ));
    format!(
        "<report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'><signed xmlns='urn:x-corvid:1' encoding='json' sig='{}'>{}</signed></report>",
        corvid_protocol::keys::signature_to_text(&sig),
        json_text.replace('&', "&amp;").replace('<', "&lt;")
    )
}

fn aggregation_cases(_key: &SecretKey) -> Value {
    let spammer = SubjectKey::for_jid("bot@spam.example")
        .expect("jid")
        .to_string();
    let domain = "domain:spam.example";
    let c = |source: &str,
             kind: &str,
             weight: f64,
             mode: &str,
             subject: &str,
             confidence: u8,
             age_days: u64,
             record: &str| {
        json!({"source": source, "kind": kind, "weight": weight, "mode": mode, "subject": subject, "confidence": confidence, "age_days": age_days, "record": record})
    };
    json!({
        "description": "Aggregation with the default policy (jid/domain/ip: flag 0.3, block 0.7; half-lives jid 14d, domain 30d, ip 7d, digest 3d; quorum 2; RTBL cap 0.5). Scores rounded to 3 decimals.",
        "now": NOW,
        "cases": [
            {"name": "one-peer-flags", "lookup": {"jid": "bot@spam.example"}, "contributions": [c("b.example", "peer", 1.0, "enforce", &spammer, 90, 0, "report")], "expect": {"action": "flag", "score": "0.900"}},
            {"name": "two-peers-block", "lookup": {"jid": "bot@spam.example"}, "contributions": [c("b.example", "peer", 1.0, "enforce", &spammer, 90, 0, "report"), c("c.example", "peer", 0.5, "enforce", &spammer, 80, 0, "report")], "expect": {"action": "block", "score": "0.940"}},
            {"name": "local-report-needs-no-quorum", "lookup": {"jid": "bot@spam.example"}, "contributions": [c("local", "local", 1.0, "enforce", &spammer, 80, 0, "report")], "expect": {"action": "block", "score": "0.800"}},
            {"name": "observe-mode-not-counted", "lookup": {"jid": "bot@spam.example"}, "contributions": [c("b.example", "peer", 1.0, "observe", &spammer, 90, 0, "report")], "expect": {"action": "allow", "score": "0.000"}},
            {"name": "decay-halves-per-half-life", "lookup": {"jid": "bot@spam.example"}, "contributions": [c("b.example", "peer", 1.0, "enforce", &spammer, 80, 14, "report")], "expect": {"action": "flag", "score": "0.400"}},
            {"name": "retraction-removes-issuer", "lookup": {"jid": "bot@spam.example"}, "contributions": [c("b.example", "peer", 1.0, "enforce", &spammer, 90, 1, "report"), c("b.example", "peer", 1.0, "enforce", &spammer, 90, 0, "retraction"), c("c.example", "peer", 1.0, "enforce", &spammer, 90, 0, "report")], "expect": {"action": "flag", "score": "0.900"}},
            {"name": "jid-lookup-matches-domain", "lookup": {"jid": "new-bot@spam.example"}, "contributions": [c("b.example", "peer", 1.0, "enforce", domain, 90, 0, "report"), c("c.example", "peer", 1.0, "enforce", domain, 90, 0, "report")], "expect": {"action": "block", "score": "0.990"}},
            {"name": "rtbl-capped-and-no-quorum", "lookup": {"jid": "bot@spam.example"}, "contributions": [c("rtbl:xmpp:xmppbl.org?;node=muc_bans_sha256", "rtbl", 1.0, "enforce", &spammer, 100, 0, "report"), c("b.example", "peer", 1.0, "enforce", &spammer, 90, 0, "report")], "expect": {"action": "flag", "score": "0.950"}},
            {"name": "adopted-rtbl-blocks-alone", "lookup": {"jid": "bot@spam.example"}, "contributions": [{"alone": true, "source": "rtbl:xmpp:xmppbl.org?;node=muc_bans_sha256", "kind": "rtbl", "weight": 0.3, "mode": "enforce", "subject": &spammer, "confidence": 100, "age_days": 0, "record": "report"}], "expect": {"action": "block", "score": "1.000"}},
            {"name": "adopted-peer-blocks-alone", "lookup": {"jid": "bot@spam.example"}, "contributions": [{"alone": true, "source": "b.example", "kind": "peer", "weight": 0.5, "mode": "enforce", "subject": &spammer, "confidence": 80, "age_days": 0, "record": "report"}], "expect": {"action": "block", "score": "0.800"}},
            {"name": "local-allow-beats-federation", "lookup": {"jid": "bot@spam.example"}, "allow": [spammer], "contributions": [c("b.example", "peer", 1.0, "enforce", &spammer, 90, 0, "report"), c("c.example", "peer", 1.0, "enforce", &spammer, 90, 0, "report")], "expect": {"action": "allow", "score": "0.990"}},
            {"name": "exact-allow-beats-domain-deny", "lookup": {"jid": "bot@spam.example"}, "allow": [spammer], "deny": [domain], "contributions": [], "expect": {"action": "allow", "score": "0.000"}},
            {"name": "domain-deny-beats-federation", "lookup": {"jid": "friend@spam.example"}, "deny": [domain], "contributions": [], "expect": {"action": "block", "score": "0.000"}},
            {"name": "canary-never-blocked", "lookup": {"domain": "spam.example"}, "canaries": [domain], "contributions": [c("b.example", "peer", 1.0, "enforce", domain, 90, 0, "report"), c("c.example", "peer", 1.0, "enforce", domain, 90, 0, "report")], "expect": {"action": "flag", "score": "0.990", "canary_reporters": ["b.example", "c.example"]}},
        ],
    })
}

fn read(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected an integer, got {v}"))
}

#[test]
fn vectors_are_current() {
    let generated = generate();
    if std::env::var_os("CORVID_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(dir()).expect("mkdir");
        for (name, value) in &generated {
            let text = serde_json::to_string_pretty(value).expect("json") + "\n";
            std::fs::write(dir().join(name), text).expect("write");
        }
    }
    for (name, value) in &generated {
        assert_eq!(
            &read(name),
            value,
            "{name} differs from what this implementation generates; CORVID_WRITE_VECTORS=1 rewrites it"
        );
    }
}

#[test]
fn keys_vectors() {
    for k in read("keys.json")["keys"].as_array().expect("keys") {
        let key = SecretKey::from_key_file(s(&k["secret_text"])).expect("secret");
        let public: PublicKey = s(&k["public_key"]).parse().expect("public");
        assert_eq!(key.public_key(), public);
        assert_eq!(public.fingerprint().to_string(), s(&k["fingerprint"]));
        assert_eq!(public.key_id().to_string(), s(&k["key_id"]));
    }
}

#[test]
fn canonical_json_vectors() {
    for case in read("canonical-json.json")["cases"]
        .as_array()
        .expect("cases")
    {
        let got = CanonicalJson::from_bytes(s(&case["input"]).as_bytes());
        let label = got.as_ref().err().map(|e| match e {
            corvid_protocol::canonical::CanonicalError::DuplicateKey { .. } => "duplicate-key",
            corvid_protocol::canonical::CanonicalError::Number { .. } => "number",
            corvid_protocol::canonical::CanonicalError::NotAnObject => "not-an-object",
            corvid_protocol::canonical::CanonicalError::NotCanonical => "non-canonical",
            _ => "other",
        });
        assert_eq!(label, case["error"].as_str(), "{case}");
    }
}

#[test]
fn an_idn_service_signs_in_one_form() {
    let v = read("items.json");
    let case = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|c| c["name"] == "idn-service")
        .expect("idn-service vector");
    assert_eq!(s(&case["feed"]), "xmpp:pubsub.bücher.example?;node=corvid");
    let item = SignedItem::from_xml(s(&case["xml"])).expect("item");
    for spelling in [
        "xmpp:pubsub.xn--bcher-kva.example?;node=corvid",
        "xmpp:pubsub.Bücher.example?;node=corvid",
        "xmpp:PUBSUB.XN--BCHER-KVA.EXAMPLE.?;node=corvid",
    ] {
        let feed: FeedAddress = spelling.parse().expect("feed");
        assert_eq!(feed.service, "pubsub.bücher.example", "{spelling}");
        verify_signed(&item, &feed, s(&case["item_id"]), &ring(&v), NOW, 300)
            .unwrap_or_else(|e| panic!("{spelling}: {e}"));
    }
    let ascii: FeedAddress = "xmpp:pubsub.xn--bcher-kva.example?;node=corvid"
        .parse()
        .expect("feed");
    assert_eq!(ascii.service_a_label(), "pubsub.xn--bcher-kva.example");
}

#[test]
fn subject_vectors() {
    let v = read("subjects.json");
    for case in v["jids"].as_array().expect("jids") {
        assert_eq!(
            SubjectKey::for_jid(s(&case["input"]))
                .expect("jid")
                .to_string(),
            s(&case["key"]),
            "{}",
            case["description"]
        );
    }
    for case in v["invalid_jids"].as_array().expect("invalid jids") {
        assert!(
            SubjectKey::for_jid(s(&case["input"])).is_err(),
            "{}",
            case["description"]
        );
    }
    for case in v["domains"].as_array().expect("domains") {
        let key =
            SubjectKey::for_domain(s(&case["input"]), case["subdomains"] == true).expect("domain");
        assert_eq!(key.to_string(), s(&case["key"]), "{}", case["description"]);
        assert_eq!(s(&case["key"]).parse::<SubjectKey>(), Ok(key));
    }
    for case in v["invalid_domains"].as_array().expect("invalid domains") {
        match corvid_protocol::subject::normalize_domain(s(&case["input"])) {
            Err(corvid_protocol::subject::SubjectError::Domain { rule, .. }) => {
                assert_eq!(rule.label(), s(&case["rule"]), "{}", case["description"]);
            }
            other => panic!("{}: {other:?}", case["description"]),
        }
    }
    for case in v["domain_lookups"].as_array().expect("lookups") {
        let keys: Vec<String> = domain_lookup_keys(s(&case["domain"]))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(json!(keys), case["keys"]);
    }
    for bad in v["invalid"].as_array().expect("invalid") {
        assert!(s(bad).parse::<SubjectKey>().is_err(), "{bad}");
    }
}

#[test]
fn ip_token_vectors() {
    let v = read("ip-tokens.json");
    let secret = FederationSecret::new(
        SecretId::new(s(&v["secret_id"])).expect("id"),
        hex::decode(s(&v["secret_hex"])).expect("hex"),
        u(&v["epoch_secs"]),
    )
    .expect("secret");
    let epoch = secret.epoch_of(u(&v["now"]));
    assert_eq!(epoch, u(&v["epoch"]));
    assert_eq!(hex::encode(secret.epoch_key(epoch)), s(&v["epoch_key_hex"]));
    for case in v["cases"].as_array().expect("cases") {
        let addr = s(&case["address"]).parse().expect("ip");
        let p = IpPrefix::new(addr, u8::try_from(u(&case["prefix_len"])).expect("len"))
            .expect("prefix");
        assert_eq!(p.addr().to_string(), s(&case["network"]));
        assert_eq!(secret.token(&p, epoch).to_string(), s(&case["key"]));
        // A lookup of the address finds this epoch's and the previous epoch's token.
        let lookups = secret.lookup_tokens(addr, u(&v["now"]), corvid_protocol::ns::MAX_TTL_SECS);
        assert!(lookups.iter().any(|k| k.as_str() == s(&case["key"])));
        assert!(
            lookups
                .iter()
                .any(|k| k.as_str() == s(&case["key_previous_epoch"]))
        );
    }
}

#[test]
fn digest_vectors() {
    let v = read("digests.json");
    let cases = v["cases"].as_array().expect("cases");
    for case in cases {
        assert_eq!(normalize_body(s(&case["body"])), s(&case["normalized"]));
        assert_eq!(
            body_digest(s(&case["body"]))
                .map(|k| k.to_string())
                .as_deref(),
            case["subject"].as_str()
        );
    }
    assert_eq!(
        cases[0]["subject"], cases[1]["subject"],
        "variations of one spam share a digest"
    );
}

fn ring(v: &Value) -> KeyRing {
    KeyRing::pinned(
        s(&v["issuer_domain"]),
        s(&v["public_key"]).parse().expect("key"),
    )
}

#[test]
fn item_vectors_verify_and_round_trip() {
    let v = read("items.json");
    let ring = ring(&v);
    for case in v["items"].as_array().expect("items") {
        let feed: FeedAddress = s(&case["feed"]).parse().expect("feed");
        let item = SignedItem::from_xml(s(&case["xml"]))
            .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        assert_eq!(item.json().as_str(), s(&case["json"]));
        assert_eq!(
            corvid_protocol::keys::signature_to_text(item.signature()),
            s(&case["signature"])
        );
        assert_eq!(
            item.to_xml(),
            s(&case["xml"]),
            "{} re-encodes identically",
            case["name"]
        );
        let verified = verify_signed(&item, &feed, s(&case["item_id"]), &ring, u(&v["now"]), 300)
            .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        assert_eq!(verified.issuer.domain, "a.example");
    }
}

#[test]
fn failure_vectors_are_rejected_with_their_reason() {
    let v = read("failures.json");
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= 8);
    for case in cases {
        let mut ring = ring(&v);
        if case["key_revoked"] == true {
            ring.revoked.push(ring.keys[0].fingerprint());
        }
        let feed: FeedAddress = s(&case["feed"]).parse().expect("feed");
        let result = SignedItem::from_xml(s(&case["xml"])).and_then(|item| {
            verify_signed(
                &item,
                &feed,
                s(&case["item_id"]),
                &ring,
                u(&case["now"]),
                u(&v["skew_secs"]),
            )
        });
        let err = result.expect_err(s(&case["name"]));
        assert_eq!(
            err.reason_label(),
            s(&case["error"]),
            "{}: {err}",
            case["name"]
        );
    }
    // Written differently, and still valid.
    let accepted = v["accepted"].as_array().expect("accepted");
    assert!(accepted.len() >= 2);
    for case in accepted {
        let feed: FeedAddress = s(&case["feed"]).parse().expect("feed");
        let item = SignedItem::from_xml(s(&case["xml"]))
            .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        verify_signed(
            &item,
            &feed,
            s(&case["item_id"]),
            &ring(&v),
            u(&case["now"]),
            300,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
    }
}

#[test]
fn feed_vector_rebuilds_state() {
    let v = read("feed.json");
    let ring = ring(&v);
    let feed: FeedAddress = s(&v["feed"]).parse().expect("feed");
    let now = u(&v["now"]);
    let items: BTreeMap<String, SignedItem> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                s(&i["item_id"]).to_owned(),
                SignedItem::from_xml(s(&i["xml"])).expect("xml"),
            )
        })
        .collect();
    let mut reader = FeedReader::new();
    let head = verify_signed(
        &items[feed::HEAD_ITEM],
        &feed,
        feed::HEAD_ITEM,
        &ring,
        now,
        300,
    )
    .expect("head");
    let Body::Head {
        generation, chunks, ..
    } = head.body
    else {
        panic!("not a head")
    };
    for chunk in reader.accept_head(generation, chunks) {
        let item = &items[&chunk.item];
        let Body::Snapshot { records, .. } =
            verify_signed(item, &feed, &chunk.item, &ring, now, 300)
                .expect("chunk")
                .body
        else {
            panic!("not a chunk")
        };
        reader
            .accept_chunk(&chunk.node, &chunk.item, item, records)
            .expect("listed");
    }
    for (item_id, item) in items
        .iter()
        .filter(|(id, _)| id.starts_with(feed::DELTA_PREFIX))
    {
        let Body::Delta { record } = verify_signed(item, &feed, item_id, &ring, now, 300)
            .expect("delta")
            .body
        else {
            panic!("not a delta")
        };
        reader.accept_delta(record);
    }
    let state = reader.finish().expect("complete");
    let got: BTreeMap<String, Value> = state
        .iter()
        .map(|(k, r)| (k.to_string(), json!({"type": match r { Record::Report(_) => "report", Record::Retraction(_) => "retraction" }, "id": r.id().to_string()})))
        .collect();
    assert_eq!(json!(got), v["expected_state"]);
}

#[test]
fn aggregation_vectors() {
    let v = read("aggregation.json");
    let now = u(&v["now"]);
    let policy = Policy::default();
    for case in v["cases"].as_array().expect("cases") {
        let mut lookup = Lookup::default();
        let look = &case["lookup"];
        if let Some(j) = look["jid"].as_str() {
            lookup.exact.push(SubjectKey::for_jid(j).expect("jid"));
            let domain = j.split('@').nth(1).expect("domain");
            lookup.covering = domain_lookup_keys(domain);
        } else {
            let keys = domain_lookup_keys(s(&look["domain"]));
            lookup.exact.push(keys[0].clone());
            lookup.covering = keys[1..].to_vec();
        }
        let set = |name: &str| -> BTreeSet<SubjectKey> {
            case[name]
                .as_array()
                .map(|a| a.iter().map(|k| s(k).parse().expect("key")).collect())
                .unwrap_or_default()
        };
        lookup.allowed = set("allow");
        lookup.denied = set("deny");
        lookup.canaries = set("canaries");
        for (i, c) in case["contributions"]
            .as_array()
            .expect("contributions")
            .iter()
            .enumerate()
        {
            let subject: SubjectKey = s(&c["subject"]).parse().expect("subject");
            let issued_at = now - u(&c["age_days"]) * DAY;
            let n = u8::try_from(i).expect("small");
            let record = if c["record"] == "report" {
                let mut r = report(n, subject, Category::Spam, None);
                r.issued_at = issued_at;
                r.id = ReportId::new(issued_at * 1000, [n; 10]);
                r.confidence = u8::try_from(u(&c["confidence"])).expect("pct");
                Record::Report(r)
            } else {
                Record::Retraction(Retraction {
                    id: ReportId::new(issued_at * 1000 + 1, [n; 10]),
                    subject,
                    retracts: id(0),
                    reason: RetractionReason::Resolved,
                    issued_at,
                    expires_at: now + DAY,
                })
            };
            lookup.contributions.push(Contribution {
                source: s(&c["source"]).into(),
                kind: serde_json::from_value::<SourceKind>(c["kind"].clone()).expect("kind"),
                weight: c["weight"].as_f64().expect("weight"),
                alone: c["alone"].as_bool().unwrap_or(false),
                mode: serde_json::from_value::<Mode>(c["mode"].clone()).expect("mode"),
                confirmed: true,
                record,
            });
        }
        let verdict = aggregate::decide(&lookup, &policy, now);
        let expect = &case["expect"];
        assert_eq!(
            verdict.action.to_string(),
            s(&expect["action"]),
            "{}: {verdict:#?}",
            case["name"]
        );
        assert_eq!(
            format!("{:.3}", verdict.score),
            s(&expect["score"]),
            "{}",
            case["name"]
        );
        if let Some(reporters) = expect.get("canary_reporters") {
            assert_eq!(json!(verdict.canary_reporters), *reporters);
        }
    }
}

#[test]
fn spec_examples_match_vectors() {
    // Every fenced block in the spec tagged `vector:FILE#NAME.FIELD` must
    // equal that field of that vector, so the document cannot drift.
    let spec = std::fs::read_to_string(dir().join("../corvid.md")).expect("spec/corvid.md");
    let mut checked = 0;
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        let Some(tag) = line
            .trim_start_matches('`')
            .split_whitespace()
            .find_map(|w| w.strip_prefix("vector:"))
        else {
            continue;
        };
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let (file, rest) = tag.split_once('#').expect("vector:FILE#NAME.FIELD");
        let (name, field) = rest.rsplit_once('.').expect("NAME.FIELD");
        let v = read(file);
        let list = v["items"]
            .as_array()
            .or(v["cases"].as_array())
            .expect("items or cases");
        let entry = list
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no vector {name} in {file}"));
        let want = match &entry[field] {
            Value::String(text) => text.clone(),
            other => serde_json::to_string_pretty(other).expect("json"),
        };
        assert_eq!(
            block.join("\n").trim(),
            want.trim(),
            "spec example {tag} differs from the vector"
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "the spec shows vector examples ({checked} found)"
    );
}

#[test]
fn feed_item_ids_match_the_element_payloads() {
    // Every published item of a packed feed verifies at its own id, and
    // moving it to another id breaks it.
    let key = seed(SEED_HEX);
    let mut writer = FeedWriter::new(feed_a(), issuer(&key));
    let records = (0..500u32).map(|i| {
        Record::Report(report(
            (i % 200) as u8,
            SubjectKey::for_jid(&format!("bot{i}@spam.example")).expect("jid"),
            Category::Spam,
            None,
        ))
    });
    let ops = writer.replace_all(&key, records, NOW).expect("fits");
    let ring = KeyRing::pinned("a.example", key.public_key());
    for op in &ops {
        if let FeedOp::Publish { item_id, item, .. } = op {
            verify_item(&item.to_element(), &feed_a(), item_id, &ring, NOW, 300).expect("verifies");
            assert!(verify_item(&item.to_element(), &feed_a(), "s/999", &ring, NOW, 300).is_err());
        }
    }
}
