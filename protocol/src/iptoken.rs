//! Anonymized IP tokens (spec §"IP tokens").
//!
//! A raw address never leaves a server. It is truncated to a prefix
//! ([`IpPrefix`]) and turned into a token under a key that changes every
//! epoch:
//!
//! ```text
//! epoch      = floor(unix_time / epoch_seconds)
//! epoch_key  = HKDF-SHA256(salt = "corvid-ip-epoch-v1", ikm = secret,
//!                          info = secret_id || 0x00 || epoch as u64 big-endian, L = 32)
//! token      = first 16 bytes of HMAC-SHA256(epoch_key,
//!                "corvid-ip-token-v1" || 0x00 || family (4 or 6) || prefix_len || network address bytes)
//! subject    = "ip:" secret_id ":" epoch ":" class ":" hex(token)
//! ```
//!
//! Anyone holding the secret can enumerate IPv4 (2^32 HMACs, minutes of CPU)
//! and so recover an address from a /32 token: tokens are personal data
//! shared only with federation members. See the spec's privacy section.

use std::fmt;
use std::net::IpAddr;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::subject::{IpPrefix, SubjectError, SubjectKey};
use crate::time::UnixTime;

/// Default epoch length: 30 days.
pub const DEFAULT_EPOCH_SECS: u64 = 30 * 24 * 3600;

/// A federation secret's id: 1–32 characters of `[a-z0-9-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretId(String);

impl SecretId {
    /// Validates an id.
    ///
    /// # Errors
    /// [`SubjectError::Ip`] if the id has other characters or a bad length.
    pub fn new(id: &str) -> Result<Self, SubjectError> {
        if (1..=32).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            Ok(Self(id.to_owned()))
        } else {
            Err(SubjectError::Ip {
                input: id.into(),
                reason: "secret id must be 1-32 of [a-z0-9-]".into(),
            })
        }
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret shared by the members of one federation.
#[derive(Clone)]
pub struct FederationSecret {
    id: SecretId,
    secret: Vec<u8>,
    epoch_secs: u64,
}

impl fmt::Debug for FederationSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederationSecret")
            .field("id", &self.id)
            .field("epoch_secs", &self.epoch_secs)
            .finish_non_exhaustive()
    }
}

impl FederationSecret {
    /// A secret of at least 32 bytes with its id and epoch length.
    ///
    /// # Errors
    /// [`SubjectError::Ip`] for a short secret or a zero epoch.
    pub fn new(id: SecretId, secret: Vec<u8>, epoch_secs: u64) -> Result<Self, SubjectError> {
        if secret.len() < 32 || epoch_secs == 0 {
            return Err(SubjectError::Ip {
                input: id.0,
                reason: "a federation secret needs at least 32 bytes and a non-zero epoch".into(),
            });
        }
        Ok(Self {
            id,
            secret,
            epoch_secs,
        })
    }

    /// The secret's id.
    pub fn id(&self) -> &SecretId {
        &self.id
    }

    /// The epoch length in seconds.
    pub fn epoch_secs(&self) -> u64 {
        self.epoch_secs
    }

    /// The epoch containing `now`.
    pub fn epoch_of(&self, now: UnixTime) -> u64 {
        now / self.epoch_secs
    }

    /// The per-epoch HMAC key.
    pub fn epoch_key(&self, epoch: u64) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(b"corvid-ip-epoch-v1"), &self.secret);
        let mut info = Vec::with_capacity(self.id.0.len() + 9);
        info.extend_from_slice(self.id.0.as_bytes());
        info.push(0);
        info.extend_from_slice(&epoch.to_be_bytes());
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        let _ = hk.expand(&info, &mut okm);
        okm
    }

    /// The token subject for one prefix in one epoch.
    pub fn token(&self, prefix: &IpPrefix, epoch: u64) -> SubjectKey {
        token_with_key(&self.id, &self.epoch_key(epoch), prefix, epoch)
    }

    /// Every token a lookup of `addr` must check at `now`: each tokenized
    /// prefix, in each epoch from the one `max_age` ago to the current one,
    /// so reports from earlier epochs keep matching until they expire.
    pub fn lookup_tokens(&self, addr: IpAddr, now: UnixTime, max_age: u64) -> Vec<SubjectKey> {
        let epochs = self.lookup_epochs(now, max_age);
        let prefixes = IpPrefix::all_for(addr);
        let mut out = Vec::with_capacity(
            prefixes.len() * usize::try_from(epochs.end() - epochs.start() + 1).unwrap_or(1),
        );
        for epoch in epochs {
            let key = self.epoch_key(epoch);
            out.extend(
                prefixes
                    .iter()
                    .map(|p| token_with_key(&self.id, &key, p, epoch)),
            );
        }
        out
    }

    /// Every token of one prefix a lookup must check at `now`: in each
    /// epoch from the one `max_age` ago to the current one (the exact
    /// subject a report about that prefix got, whenever it was issued).
    pub fn prefix_tokens(&self, prefix: &IpPrefix, now: UnixTime, max_age: u64) -> Vec<SubjectKey> {
        self.lookup_epochs(now, max_age)
            .map(|epoch| token_with_key(&self.id, &self.epoch_key(epoch), prefix, epoch))
            .collect()
    }

    /// The epochs a lookup at `now` checks: from the one `max_age` ago to
    /// the current one.
    fn lookup_epochs(&self, now: UnixTime, max_age: u64) -> std::ops::RangeInclusive<u64> {
        self.epoch_of(now.saturating_sub(max_age))..=self.epoch_of(now)
    }
}

fn token_with_key(id: &SecretId, key: &[u8; 32], prefix: &IpPrefix, epoch: u64) -> SubjectKey {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(b"corvid-ip-token-v1\0");
    match prefix.addr() {
        IpAddr::V4(v4) => {
            mac.update(&[4, prefix.len()]);
            mac.update(&v4.octets());
        }
        IpAddr::V6(v6) => {
            mac.update(&[6, prefix.len()]);
            mac.update(&v6.octets());
        }
    }
    let tag = mac.finalize().into_bytes();
    SubjectKey::from_trusted(format!(
        "ip:{}:{epoch}:{}:{}",
        id.0,
        prefix.class(),
        hex::encode(&tag[..16])
    ))
}

/// The parts of an IP token key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKeyParts {
    /// The federation secret it was made under.
    pub secret_id: SecretId,
    /// The epoch.
    pub epoch: u64,
    /// The prefix class (`v4-24`, ...).
    pub class: String,
}

/// Strictly parses `ip:<secret>:<epoch>:<class>:<32 hex>`.
///
/// # Errors
/// [`SubjectError::Ip`] describing the first malformed part.
pub fn parse_token_key(key: &str) -> Result<TokenKeyParts, SubjectError> {
    let err = |reason: &str| SubjectError::Ip {
        input: key.into(),
        reason: reason.into(),
    };
    let mut parts = key.split(':');
    if parts.next() != Some("ip") {
        return Err(err("missing ip: prefix"));
    }
    let secret_id = SecretId::new(parts.next().unwrap_or_default())?;
    let epoch_text = parts.next().unwrap_or_default();
    let epoch: u64 = epoch_text.parse().map_err(|_| err("bad epoch"))?;
    if epoch.to_string() != epoch_text {
        return Err(err("epoch must be a plain decimal"));
    }
    let class = parts.next().unwrap_or_default();
    if !["v4-32", "v4-24", "v6-128", "v6-64", "v6-48"].contains(&class) {
        return Err(err("unknown prefix class"));
    }
    let token = parts.next().unwrap_or_default();
    if token.len() != 32
        || !token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(err("token must be 32 lowercase hex digits"));
    }
    if parts.next().is_some() {
        return Err(err("trailing data"));
    }
    Ok(TokenKeyParts {
        secret_id,
        epoch,
        class: class.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> FederationSecret {
        FederationSecret::new(
            SecretId::new("test-fed").expect("id"),
            vec![42; 32],
            DEFAULT_EPOCH_SECS,
        )
        .expect("secret")
    }

    #[test]
    fn tokens_are_stable_prefix_wide_and_epoch_bound() {
        let s = secret();
        let a = IpPrefix::parse("192.0.2.1/24").expect("p");
        let b = IpPrefix::parse("192.0.2.200/24").expect("p");
        assert_eq!(s.token(&a, 5), s.token(&b, 5));
        assert_ne!(s.token(&a, 5), s.token(&a, 6));
        let key = s.token(&a, 5);
        assert_eq!(key.as_str().parse::<SubjectKey>(), Ok(key.clone()));
        assert_eq!(parse_token_key(key.as_str()).expect("parts").class, "v4-24");
    }

    #[test]
    fn lookups_reach_back_into_earlier_epochs() {
        let s = secret();
        let now = 100 * DEFAULT_EPOCH_SECS + 10;
        let addr: IpAddr = "192.0.2.9".parse().expect("ip");
        let reported = s.token(&IpPrefix::new(addr, 32).expect("p"), 98);
        let tokens = s.lookup_tokens(addr, now, 90 * 24 * 3600);
        assert!(tokens.contains(&reported));
        assert_eq!(tokens.len(), 4 * 2, "epochs 97..=100, two prefixes");
    }
}
