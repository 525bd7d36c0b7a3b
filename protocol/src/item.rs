//! Signed feed items: the envelope, its binding to a feed, and its XML form
//! (spec §"Item format" and §"Canonical signing").
//!
//! ```xml
//! <report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'>
//!   <signed xmlns='urn:x-corvid:1' encoding='json' sig='BASE64URL'>{canonical JSON}</signed>
//! </report>
//! ```
//!
//! The signature covers
//! `"corvid-item-v1" 0x00 service 0x00 node 0x00 item_id 0x00 json`,
//! binding the object to the feed and the item it was published as, so a
//! replay onto another feed or another item fails.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::Signature;
use minidom::Element;
use serde::{Deserialize, Serialize};

use crate::canonical::{CanonicalError, CanonicalJson};
use crate::card::MembershipCard;
use crate::keys::{self, Fingerprint, KeyError, KeyId, PublicKey, Signer};
use crate::ns;
use crate::record::{Issuer, KeyRevocation, KeyRotation, Record, RecordError};
use crate::time::UnixTime;

/// A PubSub feed: service JID and node, written `xmpp:SERVICE?;node=NODE`
/// (the XEP-0060 URI form).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedAddress {
    /// The PubSub service's JID (bare, normalized).
    pub service: String,
    /// The node name.
    pub node: String,
}

/// A feed address could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid feed address {input:?}: {reason} (expected xmpp:pubsub.example.org?;node=corvid)")]
pub struct FeedAddressError {
    input: String,
    reason: String,
}

impl FeedAddress {
    /// A feed from its parts; the service JID is prepared.
    ///
    /// # Errors
    /// When the service is not a bare JID or the node is empty or has a NUL.
    pub fn new(service: &str, node: &str) -> Result<Self, FeedAddressError> {
        let err = |reason: &str| FeedAddressError {
            input: format!("{service} {node}"),
            reason: reason.into(),
        };
        let service = normalize_service(service).map_err(|e| err(&e.to_string()))?;
        if node.is_empty() || node.contains('\0') || node.len() > 256 {
            return Err(err("node name must be 1-256 bytes without NUL"));
        }
        Ok(Self {
            service,
            node: node.to_owned(),
        })
    }

    /// The service's JID with its domain in A-labels, the form some servers
    /// use on the wire for an IDN service (equal to `service` for ASCII).
    pub fn service_a_label(&self) -> String {
        match self.service.rsplit_once('@') {
            Some((node, domain)) => format!(
                "{node}@{}",
                crate::subject::domain_a_label(domain).unwrap_or_else(|| domain.to_owned())
            ),
            None => crate::subject::domain_a_label(&self.service)
                .unwrap_or_else(|| self.service.clone()),
        }
    }
}

/// The one form of a PubSub service's JID in a feed address and in the
/// signing input (spec §6.2): the localpart, if any, nodeprep'd; the domain
/// normalized as a domain subject's (§8.3), so `pubsub.xn--bcher-kva.example`
/// and `pubsub.Bücher.example` are one service and sign alike.
///
/// # Errors
/// When the JID has a resource, an invalid localpart or domain.
pub fn normalize_service(service: &str) -> Result<String, crate::subject::SubjectError> {
    let trimmed = service.trim();
    if trimmed.contains('/') {
        return Err(crate::subject::SubjectError::Jid {
            input: service.into(),
            reason: "a PubSub service is a bare JID (no resource)".into(),
        });
    }
    if trimmed.contains('@') {
        crate::subject::prepare_bare_jid(trimmed)
    } else {
        crate::subject::normalize_domain(trimmed)
    }
}

impl fmt::Display for FeedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "xmpp:{}?;node={}", self.service, self.node)
    }
}

impl FromStr for FeedAddress {
    type Err = FeedAddressError;
    fn from_str(s: &str) -> Result<Self, FeedAddressError> {
        let err = |reason: &str| FeedAddressError {
            input: s.into(),
            reason: reason.into(),
        };
        let rest = s
            .trim()
            .strip_prefix("xmpp:")
            .ok_or_else(|| err("missing xmpp: scheme"))?;
        let (service, query) = rest
            .split_once("?;")
            .ok_or_else(|| err("missing ?;node="))?;
        let node = query
            .split(';')
            .find_map(|kv| kv.strip_prefix("node="))
            .ok_or_else(|| err("missing node="))?;
        Self::new(service, node).map_err(|e| err(&e.reason))
    }
}

impl Serialize for FeedAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FeedAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The bytes a signature covers.
pub fn signing_input(feed: &FeedAddress, item_id: &str, json: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(32 + feed.service.len() + feed.node.len() + item_id.len() + json.len());
    out.extend_from_slice(b"corvid-item-v1\0");
    out.extend_from_slice(feed.service.as_bytes());
    out.push(0);
    out.extend_from_slice(feed.node.as_bytes());
    out.push(0);
    out.extend_from_slice(item_id.as_bytes());
    out.push(0);
    out.extend_from_slice(json);
    out
}

/// A reference from a head item to one snapshot chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The node holding the chunk (the feed's node, or an overflow node).
    pub node: String,
    /// The chunk's item id.
    pub item: String,
    /// Lowest subject key the chunk may hold (chunks cover sorted ranges).
    pub from: String,
    /// Number of records in the chunk.
    pub records: u64,
    /// Lowercase hex SHA-256 of the chunk's canonical JSON.
    pub sha256: String,
}

/// What a signed object says, by its `type` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Body {
    /// One record, published under the item id of its subject.
    Delta {
        /// The report or retraction.
        record: Record,
    },
    /// Part of a snapshot: many records in one signed object.
    Snapshot {
        /// The snapshot generation this chunk was written in.
        generation: u64,
        /// The records, sorted by subject.
        records: Vec<Record>,
    },
    /// The index of the current snapshot.
    Head {
        /// The generation (increases with every compaction).
        generation: u64,
        /// When the head was written.
        issued_at: UnixTime,
        /// The chunks, in subject order.
        chunks: Vec<ChunkRef>,
    },
    /// A key rotation.
    KeyRotation(KeyRotation),
    /// A key revocation.
    KeyRevocation(KeyRevocation),
    /// A federation membership card.
    Card(MembershipCard),
    /// The state of a feed served as a log (layout 2, spec §4.6): its
    /// newest record's id and how many records it holds, so that a follower
    /// knows whether it missed something.
    Checkpoint {
        /// The id of the newest record in the log (absent while empty).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<crate::record::ReportId>,
        /// Records in the log (reports and retractions; expired ones are
        /// dropped).
        records: u64,
        /// How many of `records` are served to federation members only
        /// (records about IP tokens): a non-member holds `records` minus
        /// these.
        #[serde(default, skip_serializing_if = "is_zero")]
        members_only: u64,
        /// The item ids of the key records (rotations, revocations) the
        /// feed node serves.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        keys: Vec<String>,
        /// When it was signed.
        issued_at: UnixTime,
    },
}

impl Body {
    fn reason(&self) -> &'static str {
        match self {
            Self::Delta {
                record: Record::Report(r),
            } => r.category.xep0377_reason(),
            _ => ns::REASON_SPAM,
        }
    }
}

/// The signed object: version, issuer and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol major version.
    pub corvid: u64,
    /// Who signed.
    pub issuer: Issuer,
    /// What it says.
    #[serde(flatten)]
    pub body: Body,
}

/// How the JSON travels inside `<signed/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The canonical JSON as XML text.
    Json,
    /// Raw DEFLATE (RFC 1951) of the canonical JSON, base64 (standard, padded).
    Deflate,
}

/// Why an item was rejected. Every variant maps to a metrics reason.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ItemError {
    /// Payload beyond [`ns::MAX_ITEM_BYTES`].
    #[error("item is {size} bytes, over the {max}-byte limit")]
    Oversized {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not the expected XML structure.
    #[error("malformed item: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The JSON inside is not canonical.
    #[error("non-canonical json: {0}")]
    Canonical(#[from] CanonicalError),
    /// A major version this verifier does not know.
    #[error("unsupported protocol major version {0}")]
    UnsupportedVersion(u64),
    /// Signed with a key this verifier does not trust for the feed.
    #[error("signed with unknown key {key_id}")]
    UnknownKey {
        /// The key id in the issuer.
        key_id: KeyId,
    },
    /// Signed with a revoked key.
    #[error("signed with revoked key {key_id}")]
    RevokedKey {
        /// The revoked key's id.
        key_id: KeyId,
    },
    /// The issuer domain is not the one pinned for this feed.
    #[error("issuer domain {got:?} is not the feed's issuer {expected:?}")]
    WrongIssuer {
        /// Expected domain.
        expected: String,
        /// Claimed domain.
        got: String,
    },
    /// The signature does not verify over this feed and item.
    #[error("bad signature (tampered, or replayed from another feed or item)")]
    BadSignature,
    /// The item id does not match the body (e.g. a delta under another subject's id).
    #[error("item id {item_id:?} does not match its content (expected {expected:?})")]
    ItemIdMismatch {
        /// The item id.
        item_id: String,
        /// What the content implies.
        expected: String,
    },
    /// A record failed its checks.
    #[error("record: {0}")]
    Record(#[from] RecordError),
    /// A key text inside the item is malformed.
    #[error("key: {0}")]
    Key(#[from] KeyError),
}

impl ItemError {
    /// A short, stable label for metrics and counters.
    pub fn reason_label(&self) -> &'static str {
        match self {
            Self::Oversized { .. } => "oversized",
            Self::Malformed { .. } => "malformed",
            Self::Canonical(CanonicalError::DuplicateKey { .. }) => "duplicate-key",
            Self::Canonical(CanonicalError::Schema { .. }) => "schema",
            Self::Canonical(_) => "non-canonical",
            Self::UnsupportedVersion(_) => "unsupported-version",
            Self::UnknownKey { .. } => "unknown-key",
            Self::RevokedKey { .. } => "revoked-key",
            Self::WrongIssuer { .. } => "wrong-issuer",
            Self::BadSignature => "bad-signature",
            Self::ItemIdMismatch { .. } => "item-id-mismatch",
            Self::Record(RecordError::Expired { .. }) => "expired",
            Self::Record(RecordError::FromTheFuture { .. }) => "clock-skew",
            Self::Record(_) => "invalid-record",
            Self::Key(_) => "bad-key",
        }
    }
}

/// An attribute name known valid at compile time.
fn attr_name(name: &'static str) -> minidom::rxml::NcName {
    match minidom::rxml::NcName::try_from(name) {
        Ok(n) => n,
        Err(_) => unreachable!("static attribute names are valid NCNames"),
    }
}

fn malformed(reason: impl Into<String>) -> ItemError {
    ItemError::Malformed {
        reason: reason.into(),
    }
}

/// A signed item as received or produced: canonical JSON plus signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedItem {
    json: CanonicalJson,
    signature: Signature,
    encoding: Encoding,
    /// The text inside `<signed/>`: JSON, or base64 of its deflated form.
    payload: String,
}

/// Raw bytes below this size are sent as plain JSON; larger ones deflated.
const DEFLATE_ABOVE: usize = 2048;

impl SignedItem {
    /// Signs an envelope for one feed item.
    ///
    /// # Errors
    /// [`ItemError::Canonical`] if the body holds unencodable values, or
    /// [`ItemError::Oversized`] if the encoded item exceeds the limit.
    pub fn sign(
        signer: &dyn Signer,
        envelope: &Envelope,
        feed: &FeedAddress,
        item_id: &str,
    ) -> Result<Self, ItemError> {
        let json = CanonicalJson::from_serialize(envelope)?;
        let signature = signer.sign(&signing_input(feed, item_id, json.as_bytes()));
        let encoding = if json.as_bytes().len() > DEFLATE_ABOVE {
            Encoding::Deflate
        } else {
            Encoding::Json
        };
        let payload = match encoding {
            Encoding::Json => json.as_str().to_owned(),
            Encoding::Deflate => {
                STANDARD.encode(miniz_oxide::deflate::compress_to_vec(json.as_bytes(), 9))
            }
        };
        let item = Self {
            json,
            signature,
            encoding,
            payload,
        };
        let size = item.payload_len();
        if size > ns::MAX_ITEM_BYTES {
            return Err(ItemError::Oversized {
                size,
                max: ns::MAX_ITEM_BYTES,
            });
        }
        Ok(item)
    }

    /// The canonical JSON.
    pub fn json(&self) -> &CanonicalJson {
        &self.json
    }

    /// The signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Lowercase hex SHA-256 of the canonical JSON (what a head refers to).
    pub fn sha256(&self) -> String {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(self.json.as_bytes()))
    }

    /// Bytes of the `<signed/>` text as sent (what the size limit applies to).
    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    /// The item payload: `<report xmlns='urn:xmpp:reporting:1'>` around `<signed/>`.
    pub fn to_element(&self) -> Element {
        let reason = self
            .json
            .to_typed::<Envelope>()
            .map(|e| e.body.reason())
            .unwrap_or(ns::REASON_SPAM);
        let signed = Element::builder("signed", ns::CORVID)
            .attr(
                attr_name("encoding"),
                if self.encoding == Encoding::Json {
                    "json"
                } else {
                    "deflate"
                },
            )
            .attr(attr_name("sig"), keys::signature_to_text(&self.signature))
            .append(self.payload.clone())
            .build();
        Element::builder("report", ns::REPORTING)
            .attr(attr_name("reason"), reason)
            .append(signed)
            .build()
    }

    /// Serialises the payload to XML text.
    pub fn to_xml(&self) -> String {
        String::from(&self.to_element())
    }

    /// Parses XML text (as in a test vector or a raw stanza child).
    ///
    /// # Errors
    /// [`ItemError::Oversized`] or [`ItemError::Malformed`], then as [`SignedItem::from_element`].
    pub fn from_xml(xml: &str) -> Result<Self, ItemError> {
        if xml.len() > ns::MAX_ITEM_BYTES + 1024 {
            return Err(ItemError::Oversized {
                size: xml.len(),
                max: ns::MAX_ITEM_BYTES,
            });
        }
        let element: Element = xml
            .parse()
            .map_err(|e: minidom::Error| malformed(e.to_string()))?;
        Self::from_element(&element)
    }

    /// Reads a received payload. Does not verify the signature.
    ///
    /// # Errors
    /// [`ItemError::Malformed`], [`ItemError::Oversized`] or [`ItemError::Canonical`].
    pub fn from_element(element: &Element) -> Result<Self, ItemError> {
        if !element.is("report", ns::REPORTING) {
            return Err(malformed(
                "payload is not <report xmlns='urn:xmpp:reporting:1'/>",
            ));
        }
        let signed = element
            .get_child("signed", ns::CORVID)
            .ok_or_else(|| malformed("no <signed xmlns='urn:x-corvid:1'/> child"))?;
        let sig = signed
            .attr("sig")
            .ok_or_else(|| malformed("<signed/> has no sig"))?;
        let signature =
            keys::signature_from_text(sig).map_err(|e| malformed(format!("sig: {e}")))?;
        let text = signed.text();
        if text.len() > ns::MAX_ITEM_BYTES {
            return Err(ItemError::Oversized {
                size: text.len(),
                max: ns::MAX_ITEM_BYTES,
            });
        }
        let (encoding, bytes) = match signed.attr("encoding").unwrap_or("json") {
            "json" => (Encoding::Json, text.clone().into_bytes()),
            "deflate" => {
                let packed = STANDARD
                    .decode(text.trim())
                    .map_err(|e| malformed(format!("base64: {e}")))?;
                let bytes = miniz_oxide::inflate::decompress_to_vec_with_limit(
                    &packed,
                    ns::MAX_INFLATED_BYTES,
                )
                .map_err(|e| match e.status {
                    miniz_oxide::inflate::TINFLStatus::HasMoreOutput => ItemError::Oversized {
                        size: ns::MAX_INFLATED_BYTES + 1,
                        max: ns::MAX_INFLATED_BYTES,
                    },
                    _ => malformed("deflate stream is corrupt"),
                })?;
                (Encoding::Deflate, bytes)
            }
            other => return Err(malformed(format!("unknown encoding {other:?}"))),
        };
        let json = CanonicalJson::from_bytes(&bytes)?;
        Ok(Self {
            json,
            signature,
            encoding,
            payload: text,
        })
    }

    /// Verifies the signature for this feed and item against a key ring,
    /// and reads the envelope. Content checks are [`verify_item`]'s.
    ///
    /// # Errors
    /// Version, key, issuer and signature errors.
    pub fn open(
        &self,
        feed: &FeedAddress,
        item_id: &str,
        keys: &KeyRing,
    ) -> Result<Envelope, ItemError> {
        // Step 9 (§6.5): the whole envelope fits the version-1 schema,
        // before the signature, so that the label never depends on it. A
        // document that does not fit but whose `corvid` and `issuer` can be
        // read (`VersionProbe`) is of another version.
        let envelope: Envelope =
            self.json
                .to_typed()
                .map_err(|err| match self.json.to_typed::<VersionProbe>() {
                    Ok(probe) if probe.corvid != ns::PROTOCOL_MAJOR => {
                        ItemError::UnsupportedVersion(probe.corvid)
                    }
                    _ => ItemError::from(err),
                })?;
        if envelope.corvid != ns::PROTOCOL_MAJOR {
            return Err(ItemError::UnsupportedVersion(envelope.corvid));
        }
        if envelope.issuer.domain != keys.domain {
            return Err(ItemError::WrongIssuer {
                expected: keys.domain.clone(),
                got: envelope.issuer.domain,
            });
        }
        // A revocation is signed by the key it revokes, so it must stay
        // readable after the revocation took effect.
        let key = if matches!(envelope.body, Body::KeyRevocation(_)) {
            keys.lookup_including_revoked(&envelope.issuer.key)?
        } else {
            keys.lookup(&envelope.issuer.key)?
        };
        key.verify_strict(
            &signing_input(feed, item_id, self.json.as_bytes()),
            &self.signature,
        )
        .map_err(|_| ItemError::BadSignature)?;
        // Key records must be signed by the key they are about.
        let signer_ok = match &envelope.body {
            Body::KeyRotation(r) => r.old.key_id() == envelope.issuer.key,
            Body::KeyRevocation(r) => r.key.key_id() == envelope.issuer.key,
            _ => true,
        };
        if !signer_ok {
            return Err(ItemError::Malformed {
                reason: "a key record must be signed by the key it is about".into(),
            });
        }
        Ok(envelope)
    }
}

/// What §6.5 step 9 calls an envelope whose `corvid` and `issuer` "can
/// still be read": `corvid` a non-negative integer, `issuer` an object whose
/// `domain` and `key` are strings (their contents unchecked); everything
/// else ignored.
#[derive(Deserialize)]
struct VersionProbe {
    corvid: u64,
    #[allow(dead_code)]
    issuer: IssuerProbe,
}

#[derive(Deserialize)]
struct IssuerProbe {
    #[allow(dead_code)]
    domain: String,
    #[allow(dead_code)]
    key: String,
}

/// The keys a receiver accepts for one issuer: pinned and confirmed ones,
/// minus revoked ones.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    /// The issuer's domain, as pinned in config.
    pub domain: String,
    /// Accepted keys.
    pub keys: Vec<PublicKey>,
    /// Fingerprints of revoked keys.
    pub revoked: Vec<Fingerprint>,
}

impl KeyRing {
    /// A ring with one pinned key.
    pub fn pinned(domain: &str, key: PublicKey) -> Self {
        Self {
            domain: domain.to_owned(),
            keys: vec![key],
            revoked: Vec::new(),
        }
    }

    /// Finds an accepted key by id, revoked or not.
    ///
    /// # Errors
    /// [`ItemError::UnknownKey`].
    pub fn lookup_including_revoked(&self, key_id: &KeyId) -> Result<&PublicKey, ItemError> {
        self.keys
            .iter()
            .find(|k| k.key_id_matches(key_id))
            .ok_or_else(|| ItemError::UnknownKey {
                key_id: key_id.clone(),
            })
    }

    /// Finds an accepted, unrevoked key by id.
    ///
    /// # Errors
    /// [`ItemError::RevokedKey`] or [`ItemError::UnknownKey`].
    pub fn lookup(&self, key_id: &KeyId) -> Result<&PublicKey, ItemError> {
        let key = self.lookup_including_revoked(key_id)?;
        if self.revoked.contains(&key.fingerprint()) {
            return Err(ItemError::RevokedKey {
                key_id: key_id.clone(),
            });
        }
        Ok(key)
    }
}

/// An item that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedItem {
    /// The issuer.
    pub issuer: Issuer,
    /// What it says. Expired records in a snapshot are already dropped.
    pub body: Body,
    /// Records dropped from a snapshot because they had expired.
    pub expired_dropped: usize,
}

/// Checks the item id a body must be published under.
fn check_item_id(body: &Body, item_id: &str) -> Result<(), ItemError> {
    let expected = match body {
        Body::Delta { record } => crate::feed::delta_item_id(record.subject()),
        Body::Snapshot { .. } if item_id.starts_with(crate::feed::CHUNK_PREFIX) => return Ok(()),
        Body::Snapshot { .. } => format!("{}N", crate::feed::CHUNK_PREFIX),
        Body::Head { .. } => crate::feed::HEAD_ITEM.to_owned(),
        Body::Checkpoint { .. } => crate::feed::CHECKPOINT_ITEM.to_owned(),
        Body::KeyRotation(r) => crate::feed::rotation_item_id(&r.new),
        Body::KeyRevocation(r) => crate::feed::revocation_item_id(&r.key),
        Body::Card(card) if item_id == crate::feed::CARD_ITEM || item_id == card.domain => {
            return Ok(());
        }
        Body::Card(card) => card.domain.clone(),
    };
    if expected == item_id {
        Ok(())
    } else {
        Err(ItemError::ItemIdMismatch {
            item_id: item_id.into(),
            expected,
        })
    }
}

/// A head or checkpoint issued after `now` plus the allowed skew is
/// `clock-skew`.
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn not_from_the_future(issued_at: UnixTime, now: UnixTime, skew: u64) -> Result<(), ItemError> {
    if issued_at > now.saturating_add(skew) {
        return Err(RecordError::FromTheFuture {
            issued_at,
            now,
            skew,
        }
        .into());
    }
    Ok(())
}

/// Full verification of a received payload: size, structure, canonical
/// JSON, version, key, signature binding to `feed` and `item_id`, item id,
/// record validity at `now` with clock-skew bound `skew`.
///
/// # Errors
/// The first [`ItemError`] found.
pub fn verify_item(
    element: &Element,
    feed: &FeedAddress,
    item_id: &str,
    keys: &KeyRing,
    now: UnixTime,
    skew: u64,
) -> Result<VerifiedItem, ItemError> {
    verify_signed(
        &SignedItem::from_element(element)?,
        feed,
        item_id,
        keys,
        now,
        skew,
    )
}

/// As [`verify_item`], for an already parsed item.
///
/// # Errors
/// The first [`ItemError`] found.
pub fn verify_signed(
    item: &SignedItem,
    feed: &FeedAddress,
    item_id: &str,
    keys: &KeyRing,
    now: UnixTime,
    skew: u64,
) -> Result<VerifiedItem, ItemError> {
    let envelope = item.open(feed, item_id, keys)?;
    check_item_id(&envelope.body, item_id)?;
    let mut expired_dropped = 0;
    let body = match envelope.body {
        Body::Delta { record } => {
            record.validate(now, skew)?;
            Body::Delta { record }
        }
        Body::Snapshot {
            generation,
            records,
        } => {
            let mut kept = Vec::with_capacity(records.len());
            for record in records {
                match record.validate(now, skew) {
                    Ok(()) => kept.push(record),
                    Err(RecordError::Expired { .. }) => expired_dropped += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            Body::Snapshot {
                generation,
                records: kept,
            }
        }
        Body::Head {
            generation,
            issued_at,
            chunks,
        } => {
            not_from_the_future(issued_at, now, skew)?;
            Body::Head {
                generation,
                issued_at,
                chunks,
            }
        }
        Body::Checkpoint {
            last,
            records,
            members_only,
            keys,
            issued_at,
        } => {
            not_from_the_future(issued_at, now, skew)?;
            if members_only > records {
                return Err(ItemError::Malformed {
                    reason: format!(
                        "checkpoint: members_only {members_only} exceeds records {records}"
                    ),
                });
            }
            Body::Checkpoint {
                last,
                records,
                members_only,
                keys,
                issued_at,
            }
        }
        other => other,
    };
    Ok(VerifiedItem {
        issuer: envelope.issuer,
        body,
        expired_dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_addresses_parse_and_print() {
        let f: FeedAddress = "xmpp:pubsub.a.test?;node=corvid".parse().expect("valid");
        assert_eq!(f.service, "pubsub.a.test");
        assert_eq!(f.node, "corvid");
        assert_eq!(f.to_string(), "xmpp:pubsub.a.test?;node=corvid");
        assert!("pubsub.a.test".parse::<FeedAddress>().is_err());
        assert!("xmpp:pubsub.a.test?;node=".parse::<FeedAddress>().is_err());
    }

    #[test]
    fn deflate_bombs_and_garbage_are_rejected() {
        let big = vec![b' '; 8 * 1024 * 1024];
        let packed = STANDARD.encode(miniz_oxide::deflate::compress_to_vec(&big, 9));
        let xml = format!(
            "<report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'><signed xmlns='urn:x-corvid:1' encoding='deflate' sig='{}'>{packed}</signed></report>",
            "A".repeat(86)
        );
        assert!(matches!(
            SignedItem::from_xml(&xml),
            Err(ItemError::Oversized { .. })
        ));
        for bad in [
            "",
            "<x/>",
            "<report xmlns='urn:xmpp:reporting:1'/>",
            "<report xmlns='urn:xmpp:reporting:1'><signed xmlns='urn:x-corvid:1' sig='zz'>{}</signed></report>",
        ] {
            assert!(SignedItem::from_xml(bad).is_err(), "{bad}");
        }
    }
}
