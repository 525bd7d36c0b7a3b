//! Keys, fingerprints and key ids (spec §"Keys").
//!
//! Text forms carry a type prefix so a value pasted into the wrong field is
//! caught: a public key is `ed25519:` + unpadded base64url of its 32 bytes; a
//! fingerprint is `sha256:` + lowercase hex of SHA-256 over those bytes; a key
//! id is the first 16 hex digits of the fingerprint; a secret key file line is
//! `corvid-secret-ed25519:` + unpadded base64url of the 32-byte seed.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Text prefix of a public key.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";
/// Text prefix of a fingerprint.
pub const FINGERPRINT_PREFIX: &str = "sha256:";
/// Text prefix of a secret key.
pub const SECRET_KEY_PREFIX: &str = "corvid-secret-ed25519:";

/// Why a key text could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The text does not start with the expected type prefix.
    #[error("expected a value starting with {expected:?}")]
    Prefix {
        /// The prefix that was expected.
        expected: &'static str,
    },
    /// The body is not unpadded base64url of the right length.
    #[error("bad key encoding: {reason}")]
    Encoding {
        /// What was wrong.
        reason: String,
    },
    /// The bytes are not a valid ed25519 point.
    #[error("not a valid ed25519 public key")]
    InvalidPoint,
    /// A key id must be 16 lowercase hex digits.
    #[error("a key id is 16 lowercase hex digits")]
    KeyId,
}

fn decode_32(body: &str) -> Result<[u8; 32], KeyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(body.trim())
        .map_err(|e| KeyError::Encoding {
            reason: e.to_string(),
        })?;
    bytes.try_into().map_err(|b: Vec<u8>| KeyError::Encoding {
        reason: format!("expected 32 bytes, got {}", b.len()),
    })
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Wraps a dalek verifying key.
    pub fn from_verifying_key(key: VerifyingKey) -> Self {
        Self(key)
    }

    /// The dalek key, for verification.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// The raw 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// SHA-256 over the raw key.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The short id carried in each signed object's issuer.
    pub fn key_id(&self) -> KeyId {
        self.fingerprint().key_id()
    }

    /// Whether `id` is this key's id (without allocating).
    pub fn key_id_matches(&self, id: &KeyId) -> bool {
        let fp = Sha256::digest(self.0.as_bytes());
        let mut buf = [0u8; 16];
        hex::encode_to_slice(&fp[..8], &mut buf).is_ok() && buf == id.0.as_bytes()
    }

    /// Checks a signature with ed25519's strict rules (no small-order keys,
    /// canonical `S`), which every Corvid verifier must use.
    ///
    /// # Errors
    /// When the signature does not verify.
    pub fn verify_strict(
        &self,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureInvalid> {
        self.0
            .verify_strict(message, signature)
            .map_err(|_| SignatureInvalid)
    }
}

/// A signature failed strict verification.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("signature does not verify")]
pub struct SignatureInvalid;

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PUBLIC_KEY_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.0.as_bytes())
        )
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let body = s
            .trim()
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or(KeyError::Prefix {
                expected: PUBLIC_KEY_PREFIX,
            })?;
        let bytes = decode_32(body)?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| KeyError::InvalidPoint)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// SHA-256 of a public key: what operators compare out of band.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The key id: the first 8 bytes as hex.
    pub fn key_id(&self) -> KeyId {
        KeyId(hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{FINGERPRINT_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let body = s
            .trim()
            .strip_prefix(FINGERPRINT_PREFIX)
            .ok_or(KeyError::Prefix {
                expected: FINGERPRINT_PREFIX,
            })?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(body, &mut out).map_err(|e| KeyError::Encoding {
            reason: e.to_string(),
        })?;
        Ok(Self(out))
    }
}

/// The short key id in an issuer: 16 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct KeyId(String);

impl KeyId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

impl FromStr for KeyId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        if s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(KeyError::KeyId)
        }
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Something that signs: the node's key, or a hardware token one day.
pub trait Signer {
    /// The public half.
    fn public_key(&self) -> PublicKey;
    /// Signs a message.
    fn sign(&self, message: &[u8]) -> Signature;
}

/// An ed25519 signing key held in memory.
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "SecretKey(public: {})", self.public_key())
    }
}

impl SecretKey {
    /// Builds a key from a 32-byte seed (from a CSPRNG, or a test vector).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The secret in its file form. Handle with care.
    pub fn to_secret_text(&self) -> String {
        format!(
            "{SECRET_KEY_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.0.to_bytes())
        )
    }

    /// Reads a key file: comment lines (`#`) and blank lines are skipped, the
    /// first other line must be the secret in text form.
    ///
    /// # Errors
    /// [`KeyError`] when no secret line is found or it is malformed.
    pub fn from_key_file(text: &str) -> Result<Self, KeyError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or(KeyError::Prefix {
                expected: SECRET_KEY_PREFIX,
            })?;
        let body = line
            .strip_prefix(SECRET_KEY_PREFIX)
            .ok_or(KeyError::Prefix {
                expected: SECRET_KEY_PREFIX,
            })?;
        Ok(Self::from_seed(decode_32(body)?))
    }

    /// A key file: a header with the public key and fingerprint, then the secret.
    pub fn to_key_file(&self) -> String {
        let public = self.public_key();
        format!(
            "# Corvid signing key. Keep this file private (mode 0600).\n# public-key: {public}\n# fingerprint: {}\n{}\n",
            public.fingerprint(),
            self.to_secret_text()
        )
    }
}

impl Signer for SecretKey {
    fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
    fn sign(&self, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer as _;
        self.0.sign(message)
    }
}

/// Encodes a signature as unpadded base64url.
pub fn signature_to_text(sig: &Signature) -> String {
    URL_SAFE_NO_PAD.encode(sig.to_bytes())
}

/// Decodes an unpadded base64url signature.
///
/// # Errors
/// [`KeyError::Encoding`] if it is not 64 bytes of base64url.
pub fn signature_from_text(text: &str) -> Result<Signature, KeyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|e| KeyError::Encoding {
            reason: e.to_string(),
        })?;
    let bytes: [u8; 64] = bytes.try_into().map_err(|b: Vec<u8>| KeyError::Encoding {
        reason: format!("expected 64 bytes, got {}", b.len()),
    })?;
    Ok(Signature::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        let key = SecretKey::from_seed([7; 32]);
        let public = key.public_key();
        let text = public.to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.parse::<PublicKey>(), Ok(public));
        let fp = public.fingerprint();
        assert_eq!(fp.to_string().parse::<Fingerprint>(), Ok(fp));
        assert_eq!(public.key_id().as_str().len(), 16);
        let file = key.to_key_file();
        assert!(file.contains(&text));
        let again = SecretKey::from_key_file(&file).expect("reads its own file");
        assert_eq!(again.public_key(), public);
    }

    #[test]
    fn wrong_prefixes_are_caught() {
        let public = SecretKey::from_seed([7; 32]).public_key();
        let fp = public.fingerprint().to_string();
        assert_eq!(
            fp.parse::<PublicKey>(),
            Err(KeyError::Prefix {
                expected: PUBLIC_KEY_PREFIX
            })
        );
        assert!("ed25519:AAAA".parse::<PublicKey>().is_err());
        assert!("0123456789ABCDEF".parse::<KeyId>().is_err());
    }
}
