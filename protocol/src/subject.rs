//! Subjects and their normalization (spec §"Subjects").
//!
//! Every subject key is text with a kind prefix:
//!
//! | kind    | key                                          |
//! |---------|----------------------------------------------|
//! | JID     | `jid:` + lowercase hex SHA-256 of the prepared bare JID (the xmppbl.org RTBL hash) |
//! | domain  | `domain:` + nameprep'd U-label domain; `domain:*.` + domain also covers subdomains |
//! | IP      | `ip:` + secret id `:` epoch `:` prefix class `:` 32 hex digits (see [`crate::iptoken`]) |
//! | digest  | `digest:` + lowercase hex SHA-256 of a normalized body (see [`crate::digest`]) |

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Why a subject could not be read or normalized.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SubjectError {
    /// The key has no known kind prefix.
    #[error("unknown subject kind in {key:?}; expected jid:, domain:, ip: or digest:")]
    UnknownKind {
        /// The offending key.
        key: String,
    },
    /// Not a valid JID.
    #[error("invalid jid {input:?}: {reason}")]
    Jid {
        /// What was given.
        input: String,
        /// Why it failed.
        reason: String,
    },
    /// Not a valid domain.
    #[error("invalid domain {input:?}: {reason}")]
    Domain {
        /// What was given.
        input: String,
        /// The rule of spec §8.3 that rejects it.
        rule: DomainRule,
        /// Why it failed.
        reason: String,
    },
    /// A hash is not 64 lowercase hex digits.
    #[error("expected 64 lowercase hex digits in {key:?}")]
    Hash {
        /// The offending key.
        key: String,
    },
    /// A domain in a received key is not in its normalized form.
    #[error("domain {key:?} is not normalized (expected {expected:?})")]
    NotNormalized {
        /// The received key.
        key: String,
        /// The normalized form.
        expected: String,
    },
    /// A malformed IP token key or address.
    #[error("invalid ip subject {input:?}: {reason}")]
    Ip {
        /// What was given.
        input: String,
        /// Why it failed.
        reason: String,
    },
}

/// The rule of spec §8.3 that rejects a domain; [`DomainRule::label`] is
/// its name in the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DomainRule {
    /// Step 2: empty, or not a bare domain (`@`, `/`).
    NotADomain,
    /// Step 2: an IP literal.
    IpLiteral,
    /// Step 3: nameprep fails (prohibited or unassigned code point, bidi).
    Nameprep,
    /// Steps 4 and 6: a character that is not allowed (`*`, U+3002, ASCII
    /// other than letters, digits, `-` and `_`).
    Character,
    /// Step 5: an `xn--` label that is not a canonical A-label.
    ALabel,
    /// Step 6: one label only.
    SingleLabel,
    /// Step 6: an empty label, or one starting or ending with `-`.
    Shape,
    /// Step 6: a label over 63 or a name over 253 octets.
    Length,
    /// Step 6: the last label is all digits.
    NumericTld,
}

impl DomainRule {
    /// The rule's name in `subjects.json`.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotADomain => "not-a-domain",
            Self::IpLiteral => "ip-literal",
            Self::Nameprep => "nameprep",
            Self::Character => "character",
            Self::ALabel => "a-label",
            Self::SingleLabel => "single-label",
            Self::Shape => "label-shape",
            Self::Length => "length",
            Self::NumericTld => "numeric-tld",
        }
    }
}

/// The kind of a subject, for per-kind policy (thresholds, half-lives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectKind {
    /// A bare JID (hashed).
    Jid,
    /// A server domain.
    Domain,
    /// An anonymized IP prefix.
    Ip,
    /// A content digest.
    Digest,
}

impl SubjectKind {
    /// The kind's prefix without the colon.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jid => "jid",
            Self::Domain => "domain",
            Self::Ip => "ip",
            Self::Digest => "digest",
        }
    }
}

impl fmt::Display for SubjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated subject key. Construct it with the `for_*` helpers from raw
/// local input, or parse it (strictly) from a peer's record.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectKey(String);

impl SubjectKey {
    /// The key for a JID: the SHA-256 of its prepared bare form.
    ///
    /// # Errors
    /// [`SubjectError::Jid`] when the input is not a JID.
    pub fn for_jid(input: &str) -> Result<Self, SubjectError> {
        Ok(Self::for_prepared_jid(&prepare_bare_jid(input)?))
    }

    /// The key for a bare JID that [`prepare_bare_jid`] already prepared
    /// (a lookup prepares it once for the key and the domain).
    pub fn for_prepared_jid(prepared_bare: &str) -> Self {
        Self(format!("jid:{}", jid_hash(prepared_bare)))
    }

    /// The key for a domain (or, with `subdomains`, the domain and all below it).
    ///
    /// # Errors
    /// [`SubjectError::Domain`] when the input is not a domain.
    pub fn for_domain(input: &str, subdomains: bool) -> Result<Self, SubjectError> {
        let domain = normalize_domain(input)?;
        if subdomains && !domain.contains('.') {
            return Err(SubjectError::Domain {
                input: input.into(),
                rule: DomainRule::SingleLabel,
                reason: "a subdomain report needs at least two labels".into(),
            });
        }
        Ok(Self(if subdomains {
            format!("domain:*.{domain}")
        } else {
            format!("domain:{domain}")
        }))
    }

    /// The key for a content digest given as 64 hex digits.
    ///
    /// # Errors
    /// [`SubjectError::Hash`] unless it is 64 hex digits.
    pub fn for_digest_hex(hex_digest: &str) -> Result<Self, SubjectError> {
        let lower = hex_digest.to_ascii_lowercase();
        if is_hex64(&lower) {
            Ok(Self(format!("digest:{lower}")))
        } else {
            Err(SubjectError::Hash {
                key: hex_digest.into(),
            })
        }
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject's kind.
    pub fn kind(&self) -> SubjectKind {
        match self.0.split_once(':').map(|(k, _)| k) {
            Some("jid") => SubjectKind::Jid,
            Some("domain") => SubjectKind::Domain,
            Some("ip") => SubjectKind::Ip,
            _ => SubjectKind::Digest,
        }
    }

    /// For a domain key, the domain and whether it covers subdomains.
    pub fn domain(&self) -> Option<(&str, bool)> {
        let rest = self.0.strip_prefix("domain:")?;
        Some(match rest.strip_prefix("*.") {
            Some(d) => (d, true),
            None => (rest, false),
        })
    }

    /// Wraps a key produced by this crate's own constructors (IP tokens).
    pub(crate) fn from_trusted(key: String) -> Self {
        Self(key)
    }
}

impl fmt::Display for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubjectKey({})", self.0)
    }
}

impl FromStr for SubjectKey {
    type Err = SubjectError;

    /// Strict parse of a key as found in a record: it must already be in
    /// normalized form.
    fn from_str(key: &str) -> Result<Self, SubjectError> {
        let (kind, body) = key
            .split_once(':')
            .ok_or_else(|| SubjectError::UnknownKind { key: key.into() })?;
        match kind {
            "jid" | "digest" => {
                if is_hex64(body) {
                    Ok(Self(key.to_owned()))
                } else {
                    Err(SubjectError::Hash { key: key.into() })
                }
            }
            "domain" => {
                let (domain, subdomains) = match body.strip_prefix("*.") {
                    Some(d) => (d, true),
                    None => (body, false),
                };
                let normalized = Self::for_domain(domain, subdomains)?;
                if normalized.0 == key {
                    Ok(normalized)
                } else {
                    Err(SubjectError::NotNormalized {
                        key: key.into(),
                        expected: normalized.0,
                    })
                }
            }
            "ip" => crate::iptoken::parse_token_key(key).map(|_| Self(key.to_owned())),
            _ => Err(SubjectError::UnknownKind { key: key.into() }),
        }
    }
}

impl Serialize for SubjectKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SubjectKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lowercase hex SHA-256 of a prepared bare JID: the xmppbl.org RTBL item id.
pub fn jid_hash(prepared_bare: &str) -> String {
    hex::encode(Sha256::digest(prepared_bare.as_bytes()))
}

/// The longest localpart, in bytes after nodeprep (RFC 7622 §3.3).
pub const MAX_LOCALPART_BYTES: usize = 1023;

/// Prepares a JID as Prosody does before a module sees it (spec §8.2) and
/// returns its bare form: the localpart nodeprep'd, the domain normalized
/// by [`normalize_domain`], the resource dropped.
///
/// # Errors
/// [`SubjectError::Jid`] when the input is not a JID or has no localpart.
pub fn prepare_bare_jid(input: &str) -> Result<String, SubjectError> {
    let err = |reason: String| SubjectError::Jid {
        input: input.into(),
        reason,
    };
    let trimmed = input.trim();
    // RFC 7622 §3.1: the resource starts at the first `/`, the localpart
    // ends at the first `@` before it.
    let bare = trimmed.split_once('/').map_or(trimmed, |(bare, _)| bare);
    let (node, domain) = bare
        .split_once('@')
        .ok_or_else(|| err("a JID subject needs a localpart; report a domain instead".into()))?;
    if node.is_empty() {
        return Err(err("empty localpart".into()));
    }
    let node = stringprep::nodeprep(node).map_err(|e| err(format!("nodeprep: {e}")))?;
    if node.len() > MAX_LOCALPART_BYTES {
        return Err(err(format!(
            "localpart longer than {MAX_LOCALPART_BYTES} bytes"
        )));
    }
    let domain = normalize_domain(domain).map_err(|e| err(e.to_string()))?;
    Ok(format!("{node}@{domain}"))
}

/// The longest domain, in octets of its A-label form (RFC 1035, without
/// the root dot).
pub const MAX_DOMAIN_OCTETS: usize = 253;
/// The longest label, in octets of its A-label form.
pub const MAX_LABEL_OCTETS: usize = 63;

/// Normalizes a domain as spec §8.3 states: the form Prosody's JID prep
/// (IDNA2003 nameprep) gives on the wire, with A-labels written as the
/// U-labels they stand for when nameprep keeps those unchanged. So
/// `xn--bcher-kva.example` and `Bücher.example` give `bücher.example`,
/// `faß.de` gives `fass.de` (as Prosody delivers it), and `xn--fa-hia.de`,
/// a different name, stays `xn--fa-hia.de`.
///
/// # Errors
/// [`SubjectError::Domain`] when the input is not a domain Corvid can name.
pub fn normalize_domain(input: &str) -> Result<String, SubjectError> {
    let err = |rule: DomainRule, reason: String| SubjectError::Domain {
        input: input.into(),
        rule,
        reason,
    };
    // Step 1: white space, one root dot.
    let trimmed = input.trim();
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    // Step 2: what is not a bare domain name.
    if trimmed.is_empty() {
        return Err(err(DomainRule::NotADomain, "empty".into()));
    }
    if trimmed.contains(['@', '/']) {
        return Err(err(
            DomainRule::NotADomain,
            "not a bare domain (it has @ or /)".into(),
        ));
    }
    if is_ip_literal(trimmed) {
        return Err(err(
            DomainRule::IpLiteral,
            "an IP address is not a domain subject; report it as ip: (a token, §9)".into(),
        ));
    }
    if trimmed.len() > 4 * MAX_DOMAIN_OCTETS {
        return Err(err(
            DomainRule::Length,
            format!("longer than {MAX_DOMAIN_OCTETS} octets"),
        ));
    }
    // Step 3: nameprep, as Prosody applies it to the whole name.
    let prepped = stringprep::nameprep(trimmed)
        .map_err(|e| err(DomainRule::Nameprep, format!("nameprep: {e}")))?;
    // Step 4: a wildcard only comes from the explicit `*.` syntax, never
    // from a character that nameprep maps to `*` (U+FF0A, U+FE61).
    if prepped.contains(['\u{3002}', '\u{FF61}']) {
        return Err(err(
            DomainRule::Character,
            "an ideographic full stop is not a label separator here; write `.`".into(),
        ));
    }
    if prepped.contains('*') {
        return Err(err(
            DomainRule::Character,
            "`*` is not a domain character (a report covering subdomains is written *.domain)"
                .into(),
        ));
    }
    // Step 5: A-labels that stand for nameprep-stable U-labels are decoded.
    let mut decoded = Vec::new();
    let mut changed = false;
    for label in prepped.split('.') {
        let u = match label.strip_prefix("xn--") {
            Some(code) => {
                Some(a_label_text(label, code).map_err(|r| err(DomainRule::ALabel, r.into()))?)
            }
            None => None,
        };
        match u {
            Some(u) if stringprep::nameprep(&u).is_ok_and(|p| p == u) => {
                decoded.push(std::borrow::Cow::Owned(u));
                changed = true;
            }
            _ => decoded.push(std::borrow::Cow::Borrowed(label)),
        }
    }
    let candidate = changed.then(|| decoded.join("."));
    // The decoded name must itself be what nameprep gives (its bidi rule
    // applies to the whole name); if not, the A-labels stay.
    let domain = match candidate {
        Some(c) if stringprep::nameprep(&c).is_ok_and(|p| p == c) => c,
        _ => prepped.into_owned(),
    };
    // Step 6: the shape of a host name.
    check_labels(&domain).map_err(|(rule, reason)| err(rule, reason))?;
    Ok(domain)
}

/// `Ok` for a dotted-quad IPv4 address or a bracketed IPv6 address.
fn is_ip_literal(s: &str) -> bool {
    s.parse::<std::net::Ipv4Addr>().is_ok()
        || s.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|r| r.parse::<std::net::Ipv6Addr>().is_ok())
}

/// The text an `xn--` label encodes, when it is a canonical A-label of
/// non-ASCII text.
fn a_label_text(label: &str, code: &str) -> Result<String, &'static str> {
    let text = idna::punycode::decode_to_string(code).ok_or("an xn-- label is not Punycode")?;
    if text.is_ascii() {
        return Err("an xn-- label must encode non-ASCII text");
    }
    if idna::punycode::encode_str(&text).as_deref() != Some(code) {
        return Err("an xn-- label is not in its canonical form");
    }
    if label.len() > MAX_LABEL_OCTETS {
        return Err("a label is longer than 63 octets");
    }
    Ok(text)
}

/// Step 6 of §8.3 on a normalized name.
fn check_labels(domain: &str) -> Result<(), (DomainRule, String)> {
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err((DomainRule::SingleLabel, "a domain subject needs at least two labels (a single-label name cannot be reached over s2s)".into()));
    }
    let mut octets = labels.len() - 1;
    for label in &labels {
        if label.is_empty() {
            return Err((DomainRule::Shape, "empty label".into()));
        }
        if let Some(c) = label.chars().find(|c| {
            c.is_ascii()
                && !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
        }) {
            return Err((
                DomainRule::Character,
                format!("{c:?} is not allowed in a domain"),
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err((
                DomainRule::Shape,
                format!("label {label:?} starts or ends with a hyphen"),
            ));
        }
        let len = label_a_form(label)
            .ok_or_else(|| {
                (
                    DomainRule::Length,
                    format!("label {label:?} cannot be written as an A-label"),
                )
            })?
            .len();
        if len > MAX_LABEL_OCTETS {
            return Err((
                DomainRule::Length,
                format!("label {label:?} is longer than {MAX_LABEL_OCTETS} octets as an A-label"),
            ));
        }
        octets += len;
    }
    if octets > MAX_DOMAIN_OCTETS {
        return Err((
            DomainRule::Length,
            format!("longer than {MAX_DOMAIN_OCTETS} octets as A-labels"),
        ));
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err((
            DomainRule::NumericTld,
            "the last label is all digits (an IP address is reported as ip:)".into(),
        ));
    }
    Ok(())
}

/// The A-label (punycode) form of a normalized domain, for display and for
/// interop with software that only knows ASCII.
pub fn domain_a_label(domain: &str) -> Option<String> {
    let labels: Option<Vec<_>> = domain.split('.').map(label_a_form).collect();
    Some(labels?.join("."))
}

/// One label as ASCII: itself, or `xn--` and its Punycode.
fn label_a_form(label: &str) -> Option<std::borrow::Cow<'_, str>> {
    if label.is_ascii() {
        Some(std::borrow::Cow::Borrowed(label))
    } else {
        Some(std::borrow::Cow::Owned(format!(
            "xn--{}",
            idna::punycode::encode_str(label)?
        )))
    }
}

/// All domain keys that cover `domain`: the exact key, then a subdomain key
/// for it and for each parent with at least two labels.
pub fn domain_lookup_keys(domain: &str) -> Vec<SubjectKey> {
    let mut keys = vec![SubjectKey(format!("domain:{domain}"))];
    let mut rest = domain;
    loop {
        if rest.contains('.') {
            keys.push(SubjectKey(format!("domain:*.{rest}")));
        }
        match rest.split_once('.') {
            Some((_, parent)) if parent.contains('.') => rest = parent,
            _ => break,
        }
    }
    keys
}

/// An IP address prefix, normalized: IPv4-mapped IPv6 counts as IPv4, host
/// bits beyond the prefix are zero, and only the lengths Corvid tokenizes
/// (/32 and /24 for IPv4; /128, /64 and /48 for IPv6) are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

/// Prefix lengths tokenized for IPv4 addresses.
pub const IPV4_PREFIXES: [u8; 2] = [32, 24];
/// Prefix lengths tokenized for IPv6 addresses.
pub const IPV6_PREFIXES: [u8; 3] = [128, 64, 48];

impl IpPrefix {
    /// Builds a prefix from an address and a length.
    ///
    /// # Errors
    /// [`SubjectError::Ip`] for a prefix length Corvid does not tokenize.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, SubjectError> {
        // An IPv4-mapped /128 or /120 means the IPv4 /32 or /24; a plain
        // IPv4 address takes IPv4 lengths only.
        let mapped = matches!(addr, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
        let addr = canonical_ip(addr);
        let allowed: &[u8] = match addr {
            IpAddr::V4(_) => &IPV4_PREFIXES,
            IpAddr::V6(_) => &IPV6_PREFIXES,
        };
        let len = if mapped && len >= 96 { len - 96 } else { len };
        if !allowed.contains(&len) {
            return Err(SubjectError::Ip {
                input: format!("{addr}/{len}"),
                reason: format!("prefix length must be one of {allowed:?}"),
            });
        }
        Ok(Self {
            addr: truncate(addr, len),
            len,
        })
    }

    /// Parses `ADDR` (a host prefix) or `ADDR/LEN`.
    ///
    /// # Errors
    /// [`SubjectError::Ip`] when it is not an address or the length is not allowed.
    pub fn parse(text: &str) -> Result<Self, SubjectError> {
        let err = |reason: &str| SubjectError::Ip {
            input: text.into(),
            reason: reason.into(),
        };
        let (addr, len) = match text.trim().split_once('/') {
            Some((a, l)) => (
                a,
                Some(l.parse::<u8>().map_err(|_| err("bad prefix length"))?),
            ),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let len = len.unwrap_or(match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        });
        Self::new(addr, len)
    }

    /// All tokenized prefixes containing an address, longest first.
    pub fn all_for(addr: IpAddr) -> Vec<Self> {
        let addr = canonical_ip(addr);
        let lens: &[u8] = match addr {
            IpAddr::V4(_) => &IPV4_PREFIXES,
            IpAddr::V6(_) => &IPV6_PREFIXES,
        };
        lens.iter()
            .map(|&len| Self {
                addr: truncate(addr, len),
                len,
            })
            .collect()
    }

    /// The truncated network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Always false: a prefix has a length (clippy wants the pair).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The prefix class used in token keys: `v4-32`, `v4-24`, `v6-128`, `v6-64`, `v6-48`.
    pub fn class(&self) -> String {
        match self.addr {
            IpAddr::V4(_) => format!("v4-{}", self.len),
            IpAddr::V6(_) => format!("v6-{}", self.len),
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are their IPv4 address.
pub fn canonical_ip(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn truncate(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((bits & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jid_hash_matches_the_rtbl_convention() {
        // From the xmppbl.org check: printf 'sales@stolen-cardz.example' | sha256sum
        let key = SubjectKey::for_jid("Sales@Stolen-Cardz.Example/phone").expect("valid");
        assert!(key.as_str().starts_with("jid:7583a9b3"), "{key}");
    }

    #[test]
    fn idn_a_label_and_u_label_give_one_key() {
        let u = SubjectKey::for_domain("Bücher.example.", false).expect("valid");
        let a = SubjectKey::for_domain("xn--bcher-kva.example", false).expect("valid");
        assert_eq!(u, a);
        assert_eq!(u.as_str(), "domain:bücher.example");
        assert_eq!(u.as_str().parse::<SubjectKey>(), Ok(u.clone()));
        assert!(
            "domain:xn--bcher-kva.example"
                .parse::<SubjectKey>()
                .is_err()
        );
        assert_eq!(
            domain_a_label("bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
    }

    #[test]
    fn domain_lookup_covers_parents_only_by_subdomain_keys() {
        let keys: Vec<String> = domain_lookup_keys("a.b.example.org")
            .iter()
            .map(|k| k.0.clone())
            .collect();
        assert_eq!(
            keys,
            [
                "domain:a.b.example.org",
                "domain:*.a.b.example.org",
                "domain:*.b.example.org",
                "domain:*.example.org"
            ]
        );
        assert!(SubjectKey::for_domain("org", true).is_err());
    }

    #[test]
    fn ip_prefixes_normalize() {
        let p = IpPrefix::parse("::ffff:192.0.2.77/120").expect("mapped /120 is v4 /24");
        assert_eq!(p.class(), "v4-24");
        assert_eq!(p.addr().to_string(), "192.0.2.0");
        assert!(IpPrefix::parse("192.0.2.1/16").is_err());
        let all = IpPrefix::all_for("2001:db8:1:2:3:4:5:6".parse().expect("ip"));
        assert_eq!(
            all.iter().map(IpPrefix::class).collect::<Vec<_>>(),
            ["v6-128", "v6-64", "v6-48"]
        );
        assert_eq!(all[2].addr().to_string(), "2001:db8:1::");
    }

    #[test]
    fn garbage_is_rejected_not_panicked_on() {
        for bad in [
            "",
            "jid:",
            "jid:XYZ",
            "domain:",
            "domain:a b",
            "ip:",
            "nope:x",
            "digest:00",
        ] {
            assert!(bad.parse::<SubjectKey>().is_err(), "{bad}");
        }
    }
}
