//! Compact binary forms of what the store keeps (schema 2). Corvid 0.1
//! kept JSON values and text keys, about 3 KB per contribution; these keep
//! a JID contribution in about 100 bytes of keys and values.
//!
//! - A subject: a JID or digest key is its kind byte and the 32 bytes of
//!   its hash; any other key is a 0 byte, its text and a 0 terminator, so
//!   every encoded subject ends where it says and prefix scans of one
//!   subject never reach another.
//! - A source (peer domain, RTBL, import) is a 4-byte id, interned by the
//!   store.
//! - Integers are LEB128 varints; text is a varint length and UTF-8.

use corvid_protocol::aggregate::Action;
use corvid_protocol::record::{
    Category, Evidence, Record, Report, ReportId, Retraction, RetractionReason,
};
use corvid_protocol::subject::SubjectKey;

use super::{Decision, LastAction, Origin, Stored};

/// A value or key that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

type R<T> = Result<T, DecodeError>;

const TEXT: u8 = 0;
const JID: u8 = 1;
const DIGEST: u8 = 4;

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Appends a subject key's binary form.
pub fn put_subject(out: &mut Vec<u8>, subject: &str) {
    let hashed = |prefix: &str, kind: u8, out: &mut Vec<u8>| -> bool {
        match subject.strip_prefix(prefix).and_then(hex32) {
            Some(h) => {
                out.push(kind);
                out.extend_from_slice(&h);
                true
            }
            None => false,
        }
    };
    if hashed("jid:", JID, out) || hashed("digest:", DIGEST, out) {
        return;
    }
    out.push(TEXT);
    out.extend_from_slice(subject.as_bytes());
    out.push(0);
}

/// A subject key's binary form.
pub fn subject(subject: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    put_subject(&mut out, subject);
    out
}

/// Reads a subject from the front of `bytes`: the text and the rest.
///
/// # Errors
/// Bytes that are not an encoded subject.
pub fn take_subject(bytes: &[u8]) -> R<(String, &[u8])> {
    let bad = || {
        DecodeError(format!(
            "bad subject bytes {:02x?}",
            &bytes[..bytes.len().min(40)]
        ))
    };
    let (&kind, rest) = bytes.split_first().ok_or_else(bad)?;
    match kind {
        JID | DIGEST => {
            if rest.len() < 32 {
                return Err(bad());
            }
            let prefix = if kind == JID { "jid:" } else { "digest:" };
            Ok((format!("{prefix}{}", hex::encode(&rest[..32])), &rest[32..]))
        }
        TEXT => {
            let end = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
            let text = std::str::from_utf8(&rest[..end]).map_err(|_| bad())?;
            Ok((text.to_owned(), &rest[end + 1..]))
        }
        _ => Err(bad()),
    }
}

/// A whole buffer that is one subject.
///
/// # Errors
/// Anything else.
pub fn only_subject(bytes: &[u8]) -> R<String> {
    match take_subject(bytes)? {
        (s, []) => Ok(s),
        (s, rest) => Err(DecodeError(format!(
            "{} trailing bytes after subject {s}",
            rest.len()
        ))),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, why: &str) -> DecodeError {
        DecodeError(format!("{}: {why}", self.what))
    }

    fn byte(&mut self) -> R<u8> {
        let (&b, rest) = self.b.split_first().ok_or_else(|| self.err("truncated"))?;
        self.b = rest;
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> R<&'a [u8]> {
        if self.b.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn varint(&mut self) -> R<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint too long"))
    }

    fn text(&mut self) -> R<String> {
        let n = usize::try_from(self.varint()?).map_err(|_| self.err("length"))?;
        let raw = self.bytes(n)?;
        String::from_utf8(raw.to_vec()).map_err(|_| self.err("text is not UTF-8"))
    }

    fn id(&mut self) -> R<ReportId> {
        let raw: [u8; 16] = self
            .bytes(16)?
            .try_into()
            .map_err(|_| self.err("report id"))?;
        Ok(ReportId::from_bytes(raw))
    }

    fn end(&self) -> R<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

const REPORT: u8 = 0;
const RETRACTION: u8 = 1;

fn category_byte(c: Category) -> u8 {
    Category::ALL.iter().position(|&x| x == c).unwrap_or(0) as u8
}

fn category_of(b: u8) -> Option<Category> {
    Category::ALL.get(usize::from(b)).copied()
}

fn put_record(out: &mut Vec<u8>, record: &Record) {
    match record {
        Record::Report(r) => {
            out.push(REPORT);
            out.extend_from_slice(&r.id.to_bytes());
            out.push(category_byte(r.category));
            out.push(r.confidence);
            put_varint(out, r.issued_at);
            put_varint(out, r.expires_at);
            let e = &r.evidence;
            put_varint(out, e.count);
            put_varint(out, e.first_seen);
            put_varint(out, e.last_seen);
            let flags = u8::from(e.note.is_some())
                | u8::from(e.abuse_contacted_at.is_some()) << 1
                | u8::from(e.message_text.is_some()) << 2;
            out.push(flags);
            if let Some(n) = &e.note {
                put_text(out, n);
            }
            if let Some(t) = e.abuse_contacted_at {
                put_varint(out, t);
            }
            if let Some(m) = &e.message_text {
                put_text(out, m);
            }
        }
        Record::Retraction(r) => {
            out.push(RETRACTION);
            out.extend_from_slice(&r.id.to_bytes());
            out.extend_from_slice(&r.retracts.to_bytes());
            out.push(match r.reason {
                RetractionReason::FalsePositive => 0,
                RetractionReason::Resolved => 1,
            });
            put_varint(out, r.issued_at);
            put_varint(out, r.expires_at);
        }
    }
}

fn read_record(r: &mut Reader<'_>, subject: &str) -> R<Record> {
    let subject: SubjectKey = subject
        .parse()
        .map_err(|e| r.err(&format!("stored subject {subject:?}: {e}")))?;
    match r.byte()? {
        REPORT => {
            let id = r.id()?;
            let category = category_of(r.byte()?).ok_or_else(|| r.err("category"))?;
            let confidence = r.byte()?;
            let issued_at = r.varint()?;
            let expires_at = r.varint()?;
            let count = r.varint()?;
            let first_seen = r.varint()?;
            let last_seen = r.varint()?;
            let flags = r.byte()?;
            let note = if flags & 1 != 0 {
                Some(r.text()?)
            } else {
                None
            };
            let abuse_contacted_at = if flags & 2 != 0 {
                Some(r.varint()?)
            } else {
                None
            };
            let message_text = if flags & 4 != 0 {
                Some(r.text()?)
            } else {
                None
            };
            Ok(Record::Report(Report {
                id,
                subject,
                category,
                confidence,
                issued_at,
                expires_at,
                evidence: Evidence {
                    count,
                    first_seen,
                    last_seen,
                    note,
                    abuse_contacted_at,
                    message_text,
                },
            }))
        }
        RETRACTION => {
            let id = r.id()?;
            let retracts = r.id()?;
            let reason = match r.byte()? {
                0 => RetractionReason::FalsePositive,
                1 => RetractionReason::Resolved,
                _ => return Err(r.err("retraction reason")),
            };
            Ok(Record::Retraction(Retraction {
                id,
                subject,
                retracts,
                reason,
                issued_at: r.varint()?,
                expires_at: r.varint()?,
            }))
        }
        _ => Err(r.err("record type")),
    }
}

/// A record without its subject (the key holds it).
pub fn record(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    put_record(&mut out, record);
    out
}

/// Decodes [`record`]'s bytes for `subject`.
///
/// # Errors
/// Bytes that are not a record.
pub fn decode_record(subject: &str, bytes: &[u8]) -> R<Record> {
    let mut r = Reader {
        b: bytes,
        what: "own record",
    };
    let out = read_record(&mut r, subject)?;
    r.end()?;
    Ok(out)
}

const KEY_NONE: u8 = 0;
const KEY_HEX8: u8 = 1;
const KEY_TEXT: u8 = 2;

/// A contribution without its subject and source (the key holds them).
pub fn stored(s: &Stored) -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    put_record(&mut out, &s.record);
    let mut raw = [0u8; 8];
    if s.key_id.is_empty() {
        out.push(KEY_NONE);
    } else if s.key_id.len() == 16
        && s.key_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && hex::decode_to_slice(&s.key_id, &mut raw).is_ok()
    {
        out.push(KEY_HEX8);
        out.extend_from_slice(&raw);
    } else {
        out.push(KEY_TEXT);
        put_text(&mut out, &s.key_id);
    }
    match s.missing_since {
        Some(t) => {
            out.push(1);
            put_varint(&mut out, t);
        }
        None => out.push(0),
    }
    put_varint(&mut out, s.seen_ms);
    out
}

/// Decodes [`stored`]'s bytes for `subject`.
///
/// # Errors
/// Bytes that are not a contribution.
pub fn decode_stored(subject: &str, bytes: &[u8]) -> R<Stored> {
    let mut r = Reader {
        b: bytes,
        what: "contribution",
    };
    let record = read_record(&mut r, subject)?;
    let key_id = match r.byte()? {
        KEY_NONE => String::new(),
        KEY_HEX8 => hex::encode(r.bytes(8)?),
        KEY_TEXT => r.text()?,
        _ => return Err(r.err("key id")),
    };
    let missing_since = match r.byte()? {
        0 => None,
        1 => Some(r.varint()?),
        _ => return Err(r.err("missing flag")),
    };
    let seen_ms = r.varint()?;
    r.end()?;
    Ok(Stored {
        record,
        key_id,
        missing_since,
        seen_ms,
    })
}

/// An action's byte.
pub fn action_byte(a: Action) -> u8 {
    match a {
        Action::Allow => 0,
        Action::Flag => 1,
        Action::Block => 2,
    }
}

fn action_of(b: u8) -> Option<Action> {
    match b {
        0 => Some(Action::Allow),
        1 => Some(Action::Flag),
        2 => Some(Action::Block),
        _ => None,
    }
}

fn origin_of(b: u8) -> Option<Origin> {
    match b {
        0 => Some(Origin::Federation),
        1 => Some(Origin::LocalAllow),
        2 => Some(Origin::LocalDeny),
        _ => None,
    }
}

fn origin_byte(o: Origin) -> u8 {
    match o {
        Origin::Federation => 0,
        Origin::LocalAllow => 1,
        Origin::LocalDeny => 2,
    }
}

/// A decision without its sequence number (the key): the action in bits
/// 0-1 of its first byte, the previous action in bits 2-3, what decided it
/// in bits 4-5; bit 7 says that a category byte follows (decisions written
/// before categories were kept have none).
pub fn decision(d: &Decision) -> Vec<u8> {
    let mut out = Vec::with_capacity(56);
    // Bits 2-3: the previous action plus one (0: not recorded, as in
    // decisions written before it was).
    let previous = d.previous.map_or(0, |p| action_byte(p) + 1);
    let has_category = if d.category.is_some() { 0x80 } else { 0 };
    out.push(action_byte(d.action) | previous << 2 | origin_byte(d.origin) << 4 | has_category);
    if let Some(c) = d.category {
        out.push(category_byte(c));
    }
    out.extend_from_slice(&d.score.to_le_bytes());
    put_varint(&mut out, d.at);
    put_subject(&mut out, &d.subject);
    out
}

/// Decodes [`decision`]'s bytes.
///
/// # Errors
/// Bytes that are not a decision.
pub fn decode_decision(seq: u64, bytes: &[u8]) -> R<Decision> {
    let mut r = Reader {
        b: bytes,
        what: "decision",
    };
    let first = r.byte()?;
    let action = action_of(first & 0x03).ok_or_else(|| r.err("action"))?;
    let previous = match (first >> 2) & 0x03 {
        0 => None,
        p => Some(action_of(p - 1).ok_or_else(|| r.err("previous action"))?),
    };
    let origin = origin_of((first >> 4) & 0x03).ok_or_else(|| r.err("origin"))?;
    if first & 0x40 != 0 {
        return Err(r.err("flags"));
    }
    let category = if first & 0x80 != 0 {
        Some(category_of(r.byte()?).ok_or_else(|| r.err("category"))?)
    } else {
        None
    };
    let score = f64::from_le_bytes(r.bytes(8)?.try_into().map_err(|_| r.err("score"))?);
    let at = r.varint()?;
    let subject = only_subject(r.b)?;
    Ok(Decision {
        seq,
        subject,
        action,
        previous,
        origin,
        category,
        score,
        at,
    })
}

/// A subject's last recorded action: action, origin, the time it is due
/// for a recheck (0: none), a domain's percent and, when known, the
/// category behind it.
pub fn last_action(l: &LastAction) -> Vec<u8> {
    let mut out = vec![action_byte(l.action), origin_byte(l.origin)];
    put_varint(&mut out, l.due.unwrap_or(0));
    out.push(l.percent);
    if let Some(c) = l.category {
        out.push(category_byte(c));
    }
    out
}

/// Decodes [`last_action`]'s bytes; one byte is the older form (an action
/// decided by the federation, no recheck).
///
/// # Errors
/// Bytes that are not a last action.
pub fn decode_last_action(bytes: &[u8]) -> R<LastAction> {
    let mut r = Reader {
        b: bytes,
        what: "last action",
    };
    let action = action_of(r.byte()?).ok_or_else(|| r.err("action"))?;
    if r.b.is_empty() {
        return Ok(LastAction {
            action,
            origin: Origin::Federation,
            due: None,
            percent: 0,
            category: None,
        });
    }
    let origin = origin_of(r.byte()?).ok_or_else(|| r.err("origin"))?;
    let due = r.varint()?;
    let percent = if r.b.is_empty() { 0 } else { r.byte()? };
    let category = if r.b.is_empty() {
        None
    } else {
        Some(category_of(r.byte()?).ok_or_else(|| r.err("category"))?)
    };
    Ok(LastAction {
        action,
        origin,
        due: (due != 0).then_some(due),
        percent,
        category,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_and_delimit_themselves() {
        let jid = format!("jid:{}", "ab".repeat(32));
        let digest = format!("digest:{}", "0f".repeat(32));
        for s in [
            jid.as_str(),
            digest.as_str(),
            "domain:example.org",
            "domain:*.example.org",
            "jid:NOTHEX",
            "ip:s1:20260101:v4-24:0123456789abcdef0123456789abcdef",
        ] {
            let mut b = subject(s);
            b.extend_from_slice(&[9, 9, 9, 9]);
            let (back, rest) = take_subject(&b).expect("decodes");
            assert_eq!(back, s);
            assert_eq!(rest, [9, 9, 9, 9]);
        }
        assert_eq!(subject(&jid).len(), 33);
        // A domain is never a prefix of a longer one's encoding.
        let a = subject("domain:a.example");
        let b = subject("domain:a.example.org");
        assert!(!b.starts_with(&a));
        // Uppercase hex keeps its text form, so it round-trips exactly.
        let upper = format!("jid:{}", "AB".repeat(32));
        assert_eq!(only_subject(&subject(&upper)).expect("text"), upper);
    }

    #[test]
    fn decisions_and_last_actions_keep_their_category() {
        use corvid_protocol::aggregate::Action;

        use crate::store::{Decision, LastAction, Origin};
        for category in [None, Some(Category::Spam), Some(Category::Phishing)] {
            let d = Decision {
                seq: 7,
                subject: "domain:example.org".into(),
                action: Action::Flag,
                previous: Some(Action::Allow),
                origin: Origin::Federation,
                category,
                score: 0.5,
                at: 1_700_000_000,
            };
            assert_eq!(decode_decision(7, &decision(&d)).expect("decodes"), d);
            let l = LastAction {
                action: Action::Block,
                origin: Origin::Federation,
                due: Some(1_700_000_100),
                percent: 93,
                category,
            };
            assert_eq!(decode_last_action(&last_action(&l)).expect("decodes"), l);
        }
        // A decision written before categories were kept reads back without one.
        let old = Decision {
            seq: 1,
            subject: "domain:example.org".into(),
            action: Action::Block,
            previous: None,
            origin: Origin::LocalDeny,
            category: None,
            score: 0.0,
            at: 5,
        };
        assert_eq!(decision(&old)[0] & 0xc0, 0);
        // An unknown category byte is an error.
        let mut bad = decision(&Decision {
            category: Some(Category::Spam),
            ..old.clone()
        });
        bad[1] = 200;
        assert!(decode_decision(1, &bad).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[][..], &[1, 2, 3], &[0, b'a'], &[7], &[0, 0xff, 0xfe, 0]] {
            assert!(take_subject(bytes).is_err(), "{bytes:?}");
        }
        let jid = format!("jid:{}", "ab".repeat(32));
        for bytes in [&[][..], &[0], &[0, 1, 2], &[1; 40], &[5; 3]] {
            assert!(decode_stored(&jid, bytes).is_err(), "{bytes:?}");
            assert!(decode_decision(1, bytes).is_err(), "{bytes:?}");
        }
    }
}
