//! Reports, retractions and key records (spec §"Records").
//!
//! These are the typed forms of the JSON objects inside a signed item. They
//! are read from a [`crate::CanonicalJson`] (unknown fields ignored, so a
//! minor version may add fields) and checked by [`Report::validate`] and
//! friends before anything downstream sees them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::keys::{KeyId, PublicKey};
use crate::ns;
use crate::subject::{SubjectKey, SubjectKind};
use crate::time::UnixTime;

/// A time-sortable report id: a ULID (48-bit millisecond time + 80 random
/// bits, Crockford base32).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReportId(ulid::Ulid);

impl ReportId {
    /// Builds an id from the issuing time and 80 random bits supplied by
    /// the caller (the protocol crate neither reads clocks nor draws random).
    pub fn new(now_ms: u64, random: [u8; 10]) -> Self {
        let mut r = [0u8; 16];
        r[6..].copy_from_slice(&random);
        Self(ulid::Ulid::from_parts(now_ms, u128::from_be_bytes(r)))
    }

    /// Milliseconds since the epoch encoded in the id.
    pub fn timestamp_ms(&self) -> u64 {
        self.0.timestamp_ms()
    }

    /// The id's 16 bytes (big-endian: time first), for compact storage.
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0.to_bytes()
    }

    /// The id from the 16 bytes of [`ReportId::to_bytes`].
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(ulid::Ulid::from_bytes(bytes))
    }
}

impl fmt::Display for ReportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for ReportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReportId({})", self.0)
    }
}

/// A report id is not a 26-character ULID.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid report id {0:?}: expected a 26-character ULID")]
pub struct ReportIdError(String);

impl FromStr for ReportId {
    type Err = ReportIdError;
    fn from_str(s: &str) -> Result<Self, ReportIdError> {
        let id = ulid::Ulid::from_string(s).map_err(|_| ReportIdError(s.into()))?;
        // Canonical text only: lowercase or ambiguous letters would give one
        // id two spellings.
        if id.to_string() != s {
            return Err(ReportIdError(s.into()));
        }
        Ok(Self(id))
    }
}

impl Serialize for ReportId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ReportId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Who signed: the server domain and the id of the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Issuer {
    /// The issuing server's domain (normalized).
    pub domain: String,
    /// The signing key's id.
    pub key: KeyId,
}

/// What kind of abuse a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Unsolicited bulk messages.
    Spam,
    /// Harassment and other abuse.
    Abuse,
    /// Credential phishing.
    Phishing,
    /// Malware distribution.
    Malware,
    /// Accounts registered in bulk.
    BulkRegistration,
    /// Spam in group chats.
    MucSpam,
    /// An abandoned server with open registration used as a relay.
    OpenRelay,
    /// A Tor exit node.
    TorExit,
    /// An open proxy.
    OpenProxy,
}

impl Category {
    /// Every category, for help texts and tests.
    pub const ALL: [Self; 9] = [
        Self::Spam,
        Self::Abuse,
        Self::Phishing,
        Self::Malware,
        Self::BulkRegistration,
        Self::MucSpam,
        Self::OpenRelay,
        Self::TorExit,
        Self::OpenProxy,
    ];

    /// The XEP-0377 reason this category maps to.
    pub fn xep0377_reason(self) -> &'static str {
        match self {
            Self::Abuse | Self::Phishing | Self::Malware => ns::REASON_ABUSE,
            _ => ns::REASON_SPAM,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spam => "spam",
            Self::Abuse => "abuse",
            Self::Phishing => "phishing",
            Self::Malware => "malware",
            Self::BulkRegistration => "bulk-registration",
            Self::MucSpam => "muc-spam",
            Self::OpenRelay => "open-relay",
            Self::TorExit => "tor-exit",
            Self::OpenProxy => "open-proxy",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown category {s:?}; one of: {}",
                    Self::ALL.map(Self::as_str).join(", ")
                )
            })
    }
}

/// What the issuer saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// How many incidents.
    pub count: u64,
    /// First incident.
    pub first_seen: UnixTime,
    /// Latest incident.
    pub last_seen: UnixTime,
    /// A short free-text note (no message text unless the operator chose to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Domain reports: when the domain's abuse contact was notified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abuse_contacted_at: Option<UnixTime>,
    /// A sample message, only when the operator explicitly includes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_text: Option<String>,
}

/// Longest note or message text, in characters.
pub const MAX_NOTE_CHARS: usize = 1000;

/// A signed statement that a subject is abusive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Time-sortable id.
    pub id: ReportId,
    /// What the report is about.
    pub subject: SubjectKey,
    /// Kind of abuse.
    pub category: Category,
    /// 1–100: how sure the issuer is.
    #[serde(deserialize_with = "confidence_field")]
    pub confidence: u8,
    /// When it was issued.
    pub issued_at: UnixTime,
    /// When it stops counting. Mandatory.
    pub expires_at: UnixTime,
    /// What was seen.
    pub evidence: Evidence,
}

/// `confidence` as the schema reads it, any non-negative integer (§5.3):
/// outside 1–100 it is a record error (`invalid-record`, §5.4) however far
/// outside, so a value beyond a byte is kept as 0, which validation rejects.
fn confidence_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let v = u64::deserialize(d)?;
    Ok(u8::try_from(v).unwrap_or(0))
}

/// Why a retraction withdraws a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetractionReason {
    /// The report was wrong.
    FalsePositive,
    /// The problem was fixed.
    Resolved,
}

impl FromStr for RetractionReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "false-positive" => Ok(Self::FalsePositive),
            "resolved" => Ok(Self::Resolved),
            _ => Err(format!(
                "unknown reason {s:?}; one of: false-positive, resolved"
            )),
        }
    }
}

/// A tombstone: withdraws one subject from one issuer's feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retraction {
    /// Its own id (newer than the report it withdraws).
    pub id: ReportId,
    /// The subject withdrawn.
    pub subject: SubjectKey,
    /// The withdrawn report's id.
    pub retracts: ReportId,
    /// Why.
    pub reason: RetractionReason,
    /// When it was issued.
    pub issued_at: UnixTime,
    /// The withdrawn report's expiry: the tombstone lives as long.
    pub expires_at: UnixTime,
}

/// One entry of a feed: a report or the tombstone that replaced one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Record {
    /// A report.
    Report(Report),
    /// A retraction.
    Retraction(Retraction),
}

/// Why a record is not acceptable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Expired at `now`.
    #[error("expired at {expires_at} (now {now})")]
    Expired {
        /// Expiry.
        expires_at: UnixTime,
        /// Time of the check.
        now: UnixTime,
    },
    /// Issued further in the future than the clock-skew bound allows.
    #[error("issued at {issued_at}, more than {skew}s ahead of now ({now})")]
    FromTheFuture {
        /// Issue time.
        issued_at: UnixTime,
        /// Time of the check.
        now: UnixTime,
        /// The allowed skew.
        skew: u64,
    },
    /// Lifetime beyond the protocol maximum, or expiry before issue.
    #[error("lifetime {issued_at}..{expires_at} is empty or longer than {max}s")]
    Lifetime {
        /// Issue time.
        issued_at: UnixTime,
        /// Expiry.
        expires_at: UnixTime,
        /// The maximum TTL.
        max: u64,
    },
    /// A field out of its range.
    #[error("field {field}: {reason}")]
    Field {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Record {
    /// The subject.
    pub fn subject(&self) -> &SubjectKey {
        match self {
            Self::Report(r) => &r.subject,
            Self::Retraction(r) => &r.subject,
        }
    }

    /// The record's own id.
    pub fn id(&self) -> ReportId {
        match self {
            Self::Report(r) => r.id,
            Self::Retraction(r) => r.id,
        }
    }

    /// When it was issued.
    pub fn issued_at(&self) -> UnixTime {
        match self {
            Self::Report(r) => r.issued_at,
            Self::Retraction(r) => r.issued_at,
        }
    }

    /// When it expires.
    pub fn expires_at(&self) -> UnixTime {
        match self {
            Self::Report(r) => r.expires_at,
            Self::Retraction(r) => r.expires_at,
        }
    }

    /// Ordering of records for the same issuer and subject: the newer
    /// `(issued_at, id)` replaces the older.
    pub fn supersedes(&self, other: &Record) -> bool {
        (self.issued_at(), self.id()) > (other.issued_at(), other.id())
    }

    /// Checks times and ranges at `now` with a clock-skew bound.
    ///
    /// # Errors
    /// The first [`RecordError`] found.
    pub fn validate(&self, now: UnixTime, skew: u64) -> Result<(), RecordError> {
        let (issued_at, expires_at) = (self.issued_at(), self.expires_at());
        if expires_at <= issued_at || expires_at - issued_at > ns::MAX_TTL_SECS {
            return Err(RecordError::Lifetime {
                issued_at,
                expires_at,
                max: ns::MAX_TTL_SECS,
            });
        }
        if issued_at > now.saturating_add(skew) {
            return Err(RecordError::FromTheFuture {
                issued_at,
                now,
                skew,
            });
        }
        if expires_at <= now {
            return Err(RecordError::Expired { expires_at, now });
        }
        match self {
            Self::Report(r) => r.validate_fields()?,
            Self::Retraction(r) if r.id <= r.retracts => {
                return Err(RecordError::Field {
                    field: "id",
                    reason: "a retraction's id must be newer than the report it retracts".into(),
                });
            }
            Self::Retraction(_) => {}
        }
        Ok(())
    }
}

impl Report {
    fn validate_fields(&self) -> Result<(), RecordError> {
        let field = |field: &'static str, reason: &str| RecordError::Field {
            field,
            reason: reason.into(),
        };
        if !(1..=100).contains(&self.confidence) {
            return Err(field("confidence", "must be 1-100"));
        }
        let e = &self.evidence;
        if e.count == 0 || e.first_seen > e.last_seen {
            return Err(field(
                "evidence",
                "count must be positive and first_seen <= last_seen",
            ));
        }
        for (name, text) in [
            ("evidence.note", &e.note),
            ("evidence.message_text", &e.message_text),
        ] {
            if text
                .as_ref()
                .is_some_and(|t| t.chars().count() > MAX_NOTE_CHARS)
            {
                return Err(field(name, "longer than 1000 characters"));
            }
        }
        if e.abuse_contacted_at.is_some() && self.subject.kind() != SubjectKind::Domain {
            return Err(field(
                "evidence.abuse_contacted_at",
                "only domain reports carry it",
            ));
        }
        // Evidence is what was seen before the report was issued.
        if e.last_seen > self.issued_at {
            return Err(field("evidence.last_seen", "after issued_at"));
        }
        if e.abuse_contacted_at.is_some_and(|t| t > self.issued_at) {
            return Err(field("evidence.abuse_contacted_at", "after issued_at"));
        }
        Ok(())
    }
}

/// A new key, announced under (and signed by) the old one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotation {
    /// The key being replaced (its key signs this record).
    pub old: PublicKey,
    /// The replacement.
    pub new: PublicKey,
    /// When.
    pub issued_at: UnixTime,
}

/// A key declared void: every report it signed stops counting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRevocation {
    /// The revoked key (which signs this record: whoever holds it may kill it).
    pub key: PublicKey,
    /// When.
    pub issued_at: UnixTime,
    /// Free text, e.g. "key compromised".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
