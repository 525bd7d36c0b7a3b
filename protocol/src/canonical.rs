//! Canonical JSON (spec §"Canonical signing").
//!
//! The signed form of every Corvid object is canonical JSON: an object at the
//! top, keys sorted by their UTF-8 bytes, no insignificant whitespace, no
//! floating-point numbers, integers within ±(2^53 − 1), no duplicate keys,
//! strings escaped exactly as [`encode`] does. A received document is
//! accepted only when it *is* its own canonical encoding; the signature is
//! then checked over the bytes as received, never over a re-serialised value.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Largest integer magnitude allowed in signed data (interoperable with
/// IEEE doubles, so JavaScript verifiers read the same number).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why a document is not canonical JSON.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CanonicalError {
    /// Not JSON at all, or a structural violation found while parsing.
    #[error("invalid json: {reason}")]
    Syntax {
        /// The parser's description.
        reason: String,
    },
    /// The same key appears twice in one object.
    #[error("duplicate key {key:?}")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// A number with a fraction or exponent, or one out of the safe range.
    #[error("number not allowed in signed data: {number}")]
    Number {
        /// The offending number as text.
        number: String,
    },
    /// The top-level value is not an object.
    #[error("top-level value must be an object")]
    NotAnObject,
    /// Valid JSON whose bytes differ from the canonical encoding.
    #[error("json is not in canonical form (sorted keys, no whitespace)")]
    NotCanonical,
    /// The document parsed but does not fit the expected schema.
    #[error("schema: {reason}")]
    Schema {
        /// What did not fit.
        reason: String,
    },
}

/// A JSON object known to be in canonical form, with its exact bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct CanonicalJson {
    bytes: Vec<u8>,
}

impl fmt::Debug for CanonicalJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CanonicalJson")
            .field(&String::from_utf8_lossy(&self.bytes))
            .finish()
    }
}

impl CanonicalJson {
    /// Accepts received bytes only if they are canonical JSON.
    ///
    /// # Errors
    /// Any [`CanonicalError`]: syntax, duplicate keys, floats, non-object
    /// top level, or bytes that differ from the canonical encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CanonicalError> {
        // Fast path: one allocation-free pass that accepts exactly the
        // canonical encoding. Anything it refuses goes through the full
        // parser below, which says precisely what is wrong.
        if std::str::from_utf8(bytes).is_ok() && validate::is_canonical(bytes) {
            return Ok(Self {
                bytes: bytes.to_vec(),
            });
        }
        let StrictValue(value) = serde_json::from_slice(bytes).map_err(|e| {
            let reason = e.to_string();
            if let Some(key) = reason.strip_prefix(DUPLICATE_MARK) {
                let key = key.split(DUPLICATE_END).next().unwrap_or_default();
                CanonicalError::DuplicateKey {
                    key: key.to_owned(),
                }
            } else if let Some(number) = reason.strip_prefix(NUMBER_MARK) {
                let number = number.split(DUPLICATE_END).next().unwrap_or_default();
                CanonicalError::Number {
                    number: number.to_owned(),
                }
            } else {
                CanonicalError::Syntax { reason }
            }
        })?;
        if !value.is_object() {
            return Err(CanonicalError::NotAnObject);
        }
        let canonical = encode(&value)?;
        if canonical != bytes {
            return Err(CanonicalError::NotCanonical);
        }
        Ok(Self { bytes: canonical })
    }

    /// Encodes a value canonically.
    ///
    /// # Errors
    /// [`CanonicalError::Number`] for floats or unsafe integers,
    /// [`CanonicalError::NotAnObject`] for a non-object.
    pub fn from_value(value: Value) -> Result<Self, CanonicalError> {
        if !value.is_object() {
            return Err(CanonicalError::NotAnObject);
        }
        let bytes = encode(&value)?;
        Ok(Self { bytes })
    }

    /// Serialises a Rust value and encodes it canonically.
    ///
    /// # Errors
    /// As [`CanonicalJson::from_value`], plus serialisation failures.
    pub fn from_serialize<T: serde::Serialize>(value: &T) -> Result<Self, CanonicalError> {
        let value = serde_json::to_value(value).map_err(|e| CanonicalError::Schema {
            reason: e.to_string(),
        })?;
        Self::from_value(value)
    }

    /// The canonical bytes (identical to the received bytes when parsed).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes as text (canonical JSON is always UTF-8).
    pub fn as_str(&self) -> &str {
        // Invariant: produced by `encode` (always UTF-8) or checked equal to it.
        std::str::from_utf8(&self.bytes).unwrap_or_default()
    }

    /// The document as a JSON value.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    /// Reads the document into a typed value; unknown fields are ignored
    /// (forward compatibility within a major version).
    ///
    /// # Errors
    /// [`CanonicalError::Schema`] when fields are missing or mistyped.
    pub fn to_typed<T: DeserializeOwned>(&self) -> Result<T, CanonicalError> {
        // From the bytes, not the `Value`: it is faster, and the bytes are
        // known to be exactly the canonical document.
        serde_json::from_slice(&self.bytes).map_err(|e| CanonicalError::Schema {
            reason: e.to_string(),
        })
    }
}

/// Encodes a JSON value canonically.
///
/// # Errors
/// [`CanonicalError::Number`] for a float or an integer beyond ±(2^53 − 1).
pub fn encode(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            check_number(n)?;
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sort explicitly: serde_json's map order depends on a cargo feature.
            let sorted: BTreeMap<&str, &Value> = map.iter().map(|(k, v)| (k.as_str(), v)).collect();
            out.push(b'{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn check_number(n: &serde_json::Number) -> Result<(), CanonicalError> {
    let safe = match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => u <= MAX_SAFE_INTEGER,
        (None, Some(i)) => i.unsigned_abs() <= MAX_SAFE_INTEGER,
        _ => false,
    };
    if safe {
        Ok(())
    } else {
        Err(CanonicalError::Number {
            number: n.to_string(),
        })
    }
}

/// Strings: `"` and `\` escaped, control characters as `\b \f \n \r \t` or
/// `\u00XX` (lowercase hex), everything else as raw UTF-8.
fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// An allocation-free check that bytes are exactly a canonical encoding.
mod validate {
    use super::MAX_SAFE_INTEGER;

    /// serde_json's default nesting limit; deeper documents are refused.
    const MAX_DEPTH: usize = 127;

    pub(super) fn is_canonical(bytes: &[u8]) -> bool {
        let mut p = Parser { b: bytes, i: 0 };
        p.b.first() == Some(&b'{') && p.value(0) && p.i == p.b.len()
    }

    struct Parser<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn eat(&mut self, c: u8) -> bool {
            if self.peek() == Some(c) {
                self.i += 1;
                true
            } else {
                false
            }
        }

        fn literal(&mut self, word: &[u8]) -> bool {
            if self.b[self.i..].starts_with(word) {
                self.i += word.len();
                true
            } else {
                false
            }
        }

        fn value(&mut self, depth: usize) -> bool {
            if depth > MAX_DEPTH {
                return false;
            }
            match self.peek() {
                Some(b'{') => self.object(depth + 1),
                Some(b'[') => self.array(depth + 1),
                Some(b'"') => self.string().is_some(),
                Some(b't') => self.literal(b"true"),
                Some(b'f') => self.literal(b"false"),
                Some(b'n') => self.literal(b"null"),
                Some(b'-' | b'0'..=b'9') => self.number(),
                _ => false,
            }
        }

        fn object(&mut self, depth: usize) -> bool {
            self.i += 1;
            if self.eat(b'}') {
                return true;
            }
            let mut previous: Option<(usize, usize)> = None;
            loop {
                let Some(key) = self.string() else {
                    return false;
                };
                // Keys strictly increasing by their bytes: sorted and unique.
                // Escaped bytes would compare differently from the decoded
                // key, so keys with escapes take the slow path.
                if self.b[key.0..key.1].contains(&b'\\') {
                    return false;
                }
                if let Some(prev) = previous
                    && self.b[prev.0..prev.1] >= self.b[key.0..key.1]
                {
                    return false;
                }
                previous = Some(key);
                if !self.eat(b':') || !self.value(depth) {
                    return false;
                }
                if self.eat(b'}') {
                    return true;
                }
                if !self.eat(b',') {
                    return false;
                }
            }
        }

        fn array(&mut self, depth: usize) -> bool {
            self.i += 1;
            if self.eat(b']') {
                return true;
            }
            loop {
                if !self.value(depth) {
                    return false;
                }
                if self.eat(b']') {
                    return true;
                }
                if !self.eat(b',') {
                    return false;
                }
            }
        }

        /// A canonical string; returns the byte range of its contents.
        fn string(&mut self) -> Option<(usize, usize)> {
            if !self.eat(b'"') {
                return None;
            }
            let start = self.i;
            loop {
                let c = self.peek()?;
                self.i += 1;
                match c {
                    b'"' => return Some((start, self.i - 1)),
                    b'\\' => {
                        let e = self.peek()?;
                        self.i += 1;
                        match e {
                            b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                            b'u' => {
                                // Only \u00XX (lowercase) for controls without a short form.
                                let hex = self.b.get(self.i..self.i + 4)?;
                                self.i += 4;
                                let ok = hex[0] == b'0'
                                    && hex[1] == b'0'
                                    && (hex[2] == b'0' || hex[2] == b'1')
                                    && (hex[3].is_ascii_digit() || (b'a'..=b'f').contains(&hex[3]));
                                let code =
                                    u8::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16)
                                        .ok()?;
                                if !ok || matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                    return None;
                                }
                            }
                            _ => return None,
                        }
                    }
                    0..=0x1f => return None,
                    _ => {}
                }
            }
        }

        fn number(&mut self) -> bool {
            let negative = self.eat(b'-');
            let start = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            let digits = &self.b[start..self.i];
            if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') || digits.len() > 16 {
                return false;
            }
            if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
                return false;
            }
            let value: u64 = digits
                .iter()
                .fold(0, |acc, d| acc * 10 + u64::from(d - b'0'));
            // "-0" is not canonical: the encoder writes 0.
            value <= MAX_SAFE_INTEGER && !(negative && value == 0)
        }
    }
}

const DUPLICATE_MARK: &str = "corvid-duplicate-key:";
const NUMBER_MARK: &str = "corvid-bad-number:";
const DUPLICATE_END: &str = "\u{1f}";

/// A JSON value parsed strictly: duplicate keys and floats are errors.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        if v.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(E::custom(format!("{NUMBER_MARK}{v}{DUPLICATE_END}")));
        }
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        if v > MAX_SAFE_INTEGER {
            return Err(E::custom(format!("{NUMBER_MARK}{v}{DUPLICATE_END}")));
        }
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Err(E::custom(format!("{NUMBER_MARK}{v}{DUPLICATE_END}")))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "{DUPLICATE_MARK}{key}{DUPLICATE_END}"
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_canonical_and_keeps_bytes() {
        let doc = br#"{"a":[1,-2,"x\n"],"b":{"c":null,"d":true},"\u00e9":"\u00e9"}"#;
        // `\u00e9` escapes are not canonical: raw UTF-8 is.
        assert_eq!(
            CanonicalJson::from_bytes(doc),
            Err(CanonicalError::NotCanonical)
        );
        let doc = "{\"a\":[1,-2,\"x\\n\"],\"b\":{\"c\":null,\"d\":true},\"é\":\"é\"}";
        let parsed = CanonicalJson::from_bytes(doc.as_bytes()).expect("canonical");
        assert_eq!(parsed.as_bytes(), doc.as_bytes());
    }

    #[test]
    fn rejects_unsorted_whitespace_duplicates_and_floats() {
        assert_eq!(
            CanonicalJson::from_bytes(br#"{"b":1,"a":2}"#),
            Err(CanonicalError::NotCanonical)
        );
        assert_eq!(
            CanonicalJson::from_bytes(br#"{"a": 2}"#),
            Err(CanonicalError::NotCanonical)
        );
        assert_eq!(
            CanonicalJson::from_bytes(br#"{"a":1,"a":1}"#),
            Err(CanonicalError::DuplicateKey { key: "a".into() })
        );
        assert!(matches!(
            CanonicalJson::from_bytes(br#"{"a":1.0}"#),
            Err(CanonicalError::Number { .. })
        ));
        assert!(matches!(
            CanonicalJson::from_bytes(br#"{"a":1e3}"#),
            Err(CanonicalError::Number { .. })
        ));
        assert!(matches!(
            CanonicalJson::from_bytes(br#"{"a":9007199254740992}"#),
            Err(CanonicalError::Number { .. })
        ));
        assert_eq!(
            CanonicalJson::from_bytes(b"[1]"),
            Err(CanonicalError::NotAnObject)
        );
        assert!(matches!(
            CanonicalJson::from_bytes(b"{"),
            Err(CanonicalError::Syntax { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(CanonicalJson::from_bytes(deep.as_bytes()).is_err());
    }

    #[test]
    fn control_characters_are_escaped_lowercase() {
        let v = serde_json::json!({"k": "\u{1}\u{7f}"});
        let c = CanonicalJson::from_value(v).expect("encodes");
        assert_eq!(c.as_str(), "{\"k\":\"\\u0001\u{7f}\"}");
        assert_eq!(
            CanonicalJson::from_bytes(c.as_bytes()).expect("round trip"),
            c
        );
    }
}
