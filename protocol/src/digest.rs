//! Content digests of message bodies (spec §10).
//!
//! The body is normalized so that the same spam sent with small variations
//! gets one digest, then hashed:
//!
//! 1. Unicode NFKC;
//! 2. full case folding, then NFKC again (NFKC_Casefold-like);
//! 3. every URL (with a `scheme://`, or a bare `host.tld` with an optional
//!    port, path, query or fragment) is replaced by its host, `xn--` labels
//!    decoded, without a leading `www.`, by the rule of spec §10.1;
//! 4. every run of numeric characters becomes a single `#`;
//! 5. runs of white space become one space, leading and trailing space is removed;
//! 6. a result shorter than [`MIN_NORMALIZED_CHARS`] characters gets no digest;
//! 7. the digest is lowercase hex SHA-256 of the UTF-8 result.
//!
//! Every step is one pass over the text: a body is attacker-controlled and
//! every stranger's message is digested, so the cost must be linear in its
//! length (spec §10.1 is written so that it can be).
//!
//! A digest alone never yields `block` (see [`crate::aggregate`]).

use sha2::{Digest as _, Sha256};
use unicode_normalization::UnicodeNormalization as _;

use crate::subject::SubjectKey;

/// Bodies whose normalized form is shorter than this get no digest: short
/// messages ("hi", "ok") collide across innocent users.
pub const MIN_NORMALIZED_CHARS: usize = 24;

/// Normalizes a message body as the spec describes.
pub fn normalize_body(body: &str) -> String {
    // NFKC is the identity on ASCII, and full case folding maps only A-Z there.
    let folded: String = if body.is_ascii() {
        body.to_ascii_lowercase()
    } else {
        fold(body)
    };
    let hosts = urls_to_hosts(&folded);
    let mut masked = String::with_capacity(hosts.len());
    let mut in_digits = false;
    for c in hosts.chars() {
        if c.is_numeric() {
            if !in_digits {
                masked.push('#');
            }
            in_digits = true;
        } else {
            masked.push(c);
            in_digits = false;
        }
    }
    let mut out = String::with_capacity(masked.len());
    for word in masked.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// NFKC, skipping the work when a quick check shows the text is already in
/// that form (as most text is).
fn nfkc(text: &str) -> std::borrow::Cow<'_, str> {
    if unicode_normalization::is_nfkc_quick(text.chars())
        == unicode_normalization::IsNormalized::Yes
    {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(text.nfkc().collect())
    }
}

/// A character of a host label (§10.1): ASCII letters, digits and `-`, and
/// any non-ASCII letter, number or combining mark.
fn is_label(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || c == '-'
        || (!c.is_ascii()
            && (c.is_alphanumeric() || unicode_normalization::char::is_combining_mark(c)))
}

/// Where every URL ends at the latest.
fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, '<' | '>' | '"')
}

fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// Characters that, before a host, mean it is inside something else (an
/// email address, a path, a query, a port, another word).
const INSIDE: &[char] = &[
    '.', '@', '/', ':', '_', '%', '&', '=', '?', '#', '+', '~', '$', '\\',
];

/// A longer run of labels is not a host name (DNS names have at most 253
/// characters).
const MAX_HOST_CHARS: usize = 253;

/// Trailing characters a URL does not end with.
const TRAILING: &[char] = &['.', ',', ':', ';', '!', '?', '\''];

/// Replaces every URL by its host, in one pass (§10.1).
fn urls_to_hosts(text: &str) -> String {
    // Any URL has a dot in its host or a `://`.
    if !text.contains('.') && !text.contains("://") {
        return text.to_owned();
    }
    let cs: Vec<char> = text.chars().collect();
    let label: Vec<bool> = cs.iter().map(|c| is_label(*c)).collect();
    let text = Text {
        cs: &cs,
        label: &label,
    };
    let mut out = String::with_capacity(text.cs.len());
    let mut i = 0;
    while i < cs.len() {
        match url_at(&text, i) {
            Some((end, host)) => {
                match host {
                    Some(h) => out.push_str(&h),
                    None => out.extend(&cs[i..end]),
                }
                i = end;
            }
            None => {
                out.push(cs[i]);
                i += 1;
            }
        }
    }
    out
}

/// The text's characters, and which of them are label characters.
struct Text<'a> {
    cs: &'a [char],
    label: &'a [bool],
}

impl Text<'_> {
    fn is_label(&self, i: usize) -> bool {
        self.label.get(i).copied().unwrap_or(false)
    }
}

/// The URL starting at `i`, if one does: its end and its host (`None`
/// when it has none, so that its text is kept).
///
/// Linear overall: a start is tried only at a boundary (the character
/// before it is not part of a scheme or host), and every scan from a
/// boundary stops at the first character that is not a scheme or host
/// character, so each character is scanned from at most one boundary.
fn url_at(t: &Text<'_>, i: usize) -> Option<(usize, Option<String>)> {
    let cs = t.cs;
    let prev = i.checked_sub(1).map(|p| (cs[p], t.label[p]));
    if !t.label[i] {
        return None;
    }
    if prev.is_none_or(|(p, label)| !label && !is_scheme_char(p)) && cs[i].is_ascii_alphabetic() {
        let mut j = i + 1;
        while j < cs.len() && is_scheme_char(cs[j]) {
            j += 1;
        }
        if cs.get(j..j + 3) == Some(&[':', '/', '/']) {
            let rest = j + 3;
            let end = trim_end(cs, rest, delimited_end(cs, rest));
            return Some((end, scheme_host(&cs[rest..end])));
        }
    }
    if prev.is_some_and(|(p, label)| label || INSIDE.contains(&p)) {
        return None;
    }
    let (host_end, labels) = host_run(t, i);
    if labels < 2
        || host_end - i > MAX_HOST_CHARS
        || !(tld_ok(&cs[i..host_end]) || dotted_quad(&cs[i..host_end]))
    {
        return None;
    }
    let mut end = host_end;
    match cs.get(end) {
        Some('@') => return None,
        Some(':') if cs.get(end + 1).is_some_and(char::is_ascii_digit) => {
            end += 1;
            while cs.get(end).is_some_and(char::is_ascii_digit) {
                end += 1;
            }
        }
        _ => {}
    }
    if matches!(cs.get(end), Some('/' | '?' | '#')) {
        end = trim_end(cs, host_end, delimited_end(cs, end)).max(end);
    }
    let host: String = cs[i..host_end].iter().collect();
    Some((end, Some(display_host(&host))))
}

/// The end of the labels from `i` (single dots between labels, a dot not
/// followed by a label is not part of it) and how many there are.
fn host_run(t: &Text<'_>, i: usize) -> (usize, usize) {
    let mut end = i;
    let mut labels = 0;
    loop {
        let start = end;
        while t.is_label(end) {
            end += 1;
        }
        if end == start {
            break;
        }
        labels += 1;
        if t.cs.get(end) == Some(&'.') && t.is_label(end + 1) {
            end += 1;
        } else {
            break;
        }
    }
    (end, labels)
}

/// The last label starts with two letters.
fn tld_ok(host: &[char]) -> bool {
    let last = host.rsplit(|c| *c == '.').next().unwrap_or_default();
    last.len() >= 2 && last[0].is_alphabetic() && last[1].is_alphabetic()
}

/// Four labels of one to three ASCII digits, each at most 255.
fn dotted_quad(host: &[char]) -> bool {
    if host.len() > 15 {
        return false;
    }
    let parts: Vec<&[char]> = host.split(|c| *c == '.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            (1..=3).contains(&p.len())
                && p.iter().all(char::is_ascii_digit)
                && p.iter()
                    .fold(0u32, |n, c| n * 10 + (*c as u32 - '0' as u32))
                    <= 255
        })
}

fn delimited_end(cs: &[char], from: usize) -> usize {
    cs[from..]
        .iter()
        .position(|c| is_delimiter(*c))
        .map_or(cs.len(), |p| from + p)
}

/// Drops trailing punctuation, and closing brackets that have no opening
/// one in `cs[start..end]`, from the end of a URL; never before `start`.
fn trim_end(cs: &[char], start: usize, mut end: usize) -> usize {
    let pairs = [('(', ')'), ('[', ']'), ('{', '}')];
    let mut open = [0usize; 3];
    let mut close = [0usize; 3];
    for c in &cs[start..end] {
        for (k, (o, cl)) in pairs.iter().enumerate() {
            if c == o {
                open[k] += 1;
            } else if c == cl {
                close[k] += 1;
            }
        }
    }
    while end > start {
        let c = cs[end - 1];
        if TRAILING.contains(&c) {
            end -= 1;
            continue;
        }
        match pairs.iter().position(|(_, cl)| *cl == c) {
            Some(k) if close[k] > open[k] => {
                close[k] -= 1;
                end -= 1;
            }
            _ => break,
        }
    }
    end
}

/// The host of the part of a `scheme://` URL after `//`, or `None` when it
/// has none.
fn scheme_host(rest: &[char]) -> Option<String> {
    let authority_end = rest
        .iter()
        .position(|c| matches!(c, '/' | '?' | '#'))
        .unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let after_user = authority
        .iter()
        .rposition(|c| *c == '@')
        .map_or(authority, |at| &authority[at + 1..]);
    let host = if after_user.first() == Some(&'[') {
        let close = after_user
            .iter()
            .position(|c| *c == ']')
            .map_or(after_user.len(), |p| p + 1);
        &after_user[..close]
    } else {
        let colon = after_user
            .iter()
            .position(|c| *c == ':')
            .unwrap_or(after_user.len());
        &after_user[..colon]
    };
    let mut host: String = host.iter().collect();
    while host.ends_with('.') {
        host.pop();
    }
    (!host.is_empty()).then(|| display_host(&host))
}

/// A host as the digest shows it: `xn--` labels of at most 63 bytes that
/// decode as Punycode are decoded, and one leading `www.` label is dropped.
fn display_host(host: &str) -> String {
    let mut out = String::with_capacity(host.len());
    for (n, label) in host.split('.').enumerate() {
        if n > 0 {
            out.push('.');
        }
        let decoded = label
            .strip_prefix("xn--")
            .filter(|_| label.len() <= 63)
            .and_then(idna::punycode::decode_to_string);
        out.push_str(decoded.as_deref().unwrap_or(label));
    }
    match out.strip_prefix("www.") {
        Some(rest) if !rest.is_empty() => rest.to_owned(),
        _ => out,
    }
}

/// The digest subject for a body, or `None` when the body is too short.
pub fn body_digest(body: &str) -> Option<SubjectKey> {
    let normalized = normalize_body(body);
    if normalized.chars().count() < MIN_NORMALIZED_CHARS {
        return None;
    }
    let hex = hex::encode(Sha256::digest(normalized.as_bytes()));
    SubjectKey::for_digest_hex(&hex).ok()
}

/// What a consumer needs to compute digests without a Unicode library
/// (mod_corvid does, in Prosody's Lua): per-character facts from the same
/// Unicode tables this crate uses, for every non-ASCII code point (ASCII's
/// rules are fixed by §10 and carried by every implementation).
///
/// Steps 1–2 (NFKC, case fold, NFKC) act on most characters one at a time:
/// a character is *context-free* when the first character of its
/// compatibility decomposition, and of the decomposition of the case fold
/// of each character it normalizes to, is a starter (combining class 0)
/// that never combines with a character before it (NFC quick check
/// `Yes`). Then nothing reorders or composes across the boundary before
/// it, and a text made only of such characters normalizes to the
/// concatenation of what each one alone normalizes to ([`Self::map`], the
/// character itself when absent). A text holding any other character
/// ([`Self::context`]) needs the whole algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharTables {
    /// Context-free non-ASCII characters that steps 1–2 change, and what
    /// they become.
    pub map: Vec<(char, String)>,
    /// Non-ASCII characters that are not context-free (inclusive ranges).
    pub context: Vec<(u32, u32)>,
    /// Non-ASCII label characters of §10.1: Alphabetic, Numeric or a
    /// combining mark.
    pub label: Vec<(u32, u32)>,
    /// Non-ASCII Alphabetic characters (the two a host's last label starts
    /// with).
    pub alphabetic: Vec<(u32, u32)>,
    /// Non-ASCII numeric characters (general categories Nd, Nl and No).
    pub numeric: Vec<(u32, u32)>,
    /// Non-ASCII White_Space characters.
    pub space: Vec<(u32, u32)>,
    /// For the characters that are not context-free, the whole algorithm:
    /// full compatibility decompositions (Hangul syllables excepted: they
    /// decompose by the algorithm of Unicode's chapter 3.12)...
    pub decompose: Vec<(char, Vec<char>)>,
    /// ... the canonical combining classes that are not 0 (inclusive
    /// ranges with their class) ...
    pub combining_class: Vec<(u32, u32, u8)>,
    /// ... the primary composites, as (first, second, composite), Hangul
    /// excepted ...
    pub compose: Vec<(char, char, char)>,
    /// ... and full default case folding where it changes a character.
    pub case_fold: Vec<(char, String)>,
}

/// Steps 1–2 of §10 on a text.
fn fold(text: &str) -> String {
    let folded = caseless::default_case_fold_str(&nfkc(text));
    nfkc(&folded).into_owned()
}

/// The first character of `text`'s compatibility decomposition is a
/// starter that nothing before it combines with.
fn starts_free(text: &str) -> bool {
    text.nfkd().next().is_none_or(|f| {
        unicode_normalization::char::canonical_combining_class(f) == 0
            && unicode_normalization::is_nfc_quick(std::iter::once(f))
                == unicode_normalization::IsNormalized::Yes
    })
}

fn context_free(c: char) -> bool {
    let s = c.to_string();
    starts_free(&s)
        && nfkc(&s)
            .chars()
            .all(|y| starts_free(&caseless::default_case_fold_str(&y.to_string())))
}

/// Adds `cp` to a list of ranges built in increasing order.
fn push_range(ranges: &mut Vec<(u32, u32)>, cp: u32) {
    match ranges.last_mut() {
        Some((_, hi)) if *hi + 1 == cp => *hi = cp,
        _ => ranges.push((cp, cp)),
    }
}

/// Computes the [`CharTables`] (a few hundred milliseconds: every code
/// point is normalized once; callers keep the result).
pub fn char_tables() -> CharTables {
    let mut t = CharTables {
        map: Vec::new(),
        context: Vec::new(),
        label: Vec::new(),
        alphabetic: Vec::new(),
        numeric: Vec::new(),
        space: Vec::new(),
        decompose: Vec::new(),
        combining_class: Vec::new(),
        compose: Vec::new(),
        case_fold: Vec::new(),
    };
    for c in (0..=0x10_FFFF).filter_map(char::from_u32) {
        let cp = u32::from(c);
        let hangul = (0xAC00..=0xD7A3).contains(&cp);
        if !hangul {
            let mut d = Vec::new();
            unicode_normalization::char::decompose_compatible(c, |x| d.push(x));
            if d.len() != 1 || d[0] != c {
                t.decompose.push((c, d));
            }
            // A primary composite: what its canonical decomposition but the
            // last character composes to, and that last character, compose
            // back to it.
            let nfd: Vec<char> = c.to_string().nfd().collect();
            if let [prefix @ .., last] = &nfd[..]
                && !prefix.is_empty()
            {
                let head: Vec<char> = prefix.iter().collect::<String>().nfc().collect();
                if let [first] = head[..]
                    && unicode_normalization::char::compose(first, *last) == Some(c)
                {
                    t.compose.push((first, *last, c));
                }
            }
        }
        let class = unicode_normalization::char::canonical_combining_class(c);
        if class != 0 {
            match t.combining_class.last_mut() {
                Some((_, hi, k)) if *hi + 1 == cp && *k == class => *hi = cp,
                _ => t.combining_class.push((cp, cp, class)),
            }
        }
        let folded = caseless::default_case_fold_str(&c.to_string());
        if folded.chars().ne(std::iter::once(c)) {
            t.case_fold.push((c, folded));
        }
        // ASCII's rules are fixed by §10: the rest is about the others.
        if cp < 0x80 {
            continue;
        }
        if context_free(c) {
            let folded = fold(&c.to_string());
            if folded.chars().ne(std::iter::once(c)) {
                t.map.push((c, folded));
            }
        } else {
            push_range(&mut t.context, cp);
        }
        if is_label(c) {
            push_range(&mut t.label, cp);
        }
        if c.is_alphabetic() {
            push_range(&mut t.alphabetic, cp);
        }
        if c.is_numeric() {
            push_range(&mut t.numeric, cp);
        }
        if c.is_whitespace() {
            push_range(&mut t.space, cp);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variations_share_one_digest() {
        let a = body_digest(
            "Cheap Bitcoin! Visit https://scam.example/ref?id=123 now, offer 42 ends soon",
        );
        let b = body_digest(
            "cheap  BITCOIN! visit http://SCAM.example/other/path now, offer 7 ends soon ",
        );
        assert!(a.is_some());
        assert_eq!(a, b);
    }

    #[test]
    fn normalization_steps() {
        assert_eq!(
            normalize_body("\u{FF33}\u{FF34}RASSE 123 ab"),
            "strasse # ab"
        );
        assert_eq!(
            normalize_body("Straße\tgo www.Example.COM/x?y=1"),
            "strasse go example.com"
        );
        assert_eq!(body_digest("hi there"), None);
    }

    /// The inputs that took quadratic time under the old URL finder (spec
    /// issue, point 13), at 128 KiB: the result is the piece's own
    /// normalization repeated (they hold no URL). Their time is measured in
    /// the protocol bench, not here.
    #[test]
    fn hostile_repetitions_normalize_piecewise() {
        for (piece, normalized) in [
            ("::ffff:1.2.3.4", "::ffff:#.#.#.#"),
            ("a:b.c", "a:b.c"),
            ("x@y.example:", "x@y.example:"),
        ] {
            let n = 128 * 1024 / piece.len();
            assert_eq!(
                normalize_body(&piece.repeat(n)),
                normalized.repeat(n),
                "{piece:?} repeated"
            );
        }
        // One host longer than a DNS name is not a URL.
        let long = "a.".repeat(64 * 1024) + "ab";
        assert_eq!(normalize_body(&long), long);
    }

    /// A text of context-free characters folds to what its characters
    /// fold to, one by one (checked on random texts from every block).
    #[test]
    fn context_free_characters_fold_one_by_one() {
        let t = char_tables();
        let map: std::collections::HashMap<char, &str> =
            t.map.iter().map(|(c, s)| (*c, s.as_str())).collect();
        let context = |c: char| {
            let cp = u32::from(c);
            t.context.iter().any(|(lo, hi)| (*lo..=*hi).contains(&cp))
        };
        // The characters around which composition and case folding happen.
        let mut pool: Vec<char> = "aAeEiIoOuUnNcCsSzZ ßẞİıΣσςᾼ\u{0345}ǅĳﬀＡａ①½²\u{1100}\u{1161}\u{11A8}가각\u{0B47}\u{0B3E}\u{0300}\u{0301}\u{0327}\u{05B0}\u{093C}\u{3099}か\u{FF76}\u{FF9E}"
            .chars()
            .collect();
        pool.extend((0x80..0x3400).step_by(7).filter_map(char::from_u32));
        pool.extend((0xA000..0x1_0000).step_by(13).filter_map(char::from_u32));
        pool.extend((0x1_0000..0x2_0000).step_by(97).filter_map(char::from_u32));
        let pool: Vec<char> = pool.into_iter().filter(|c| !context(*c)).collect();
        assert!(pool.len() > 3000, "{}", pool.len());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let len = 1 + (x % 6) as usize;
            let mut text = String::new();
            let mut expected = String::new();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let c = pool[(x % pool.len() as u64) as usize];
                text.push(c);
                if c.is_ascii() {
                    expected.push(c.to_ascii_lowercase());
                } else {
                    expected.push_str(map.get(&c).copied().unwrap_or(&c.to_string()));
                }
            }
            assert_eq!(fold(&text), expected, "{text:?}");
        }
        assert!((0..0x80u8).all(|b| context_free(char::from(b))));
        assert!(t.compose.len() > 900, "{}", t.compose.len());
        // Characters that change their neighbours are not context-free.
        for c in [
            '\u{0301}', '\u{1161}', '\u{11A8}', '\u{0B3E}', '\u{3099}', '\u{FF9E}', 'ͅ',
        ] {
            assert!(context(c), "{c:?}");
        }
        assert_eq!(map.get(&'ß'), Some(&"ss"));
        assert_eq!(map.get(&'Ａ'), Some(&"a"));
        assert_eq!(map.get(&'①'), Some(&"1"));
    }

    #[test]
    fn urls_end_where_a_reader_sees_them_end() {
        for (body, normalized) in [
            ("(see https://scam.example/x)", "(see scam.example)"),
            ("https://a.example/wiki/Foo_(bar).", "a.example."),
            (
                "mail first.last@scam.example",
                "mail first.last@scam.example",
            ),
            ("xmpp:bot@scam.example?join", "xmpp:bot@scam.example?join"),
            ("at scam.example:8080/x?y", "at scam.example"),
            ("xn--bcher-kva.example/a", "bücher.example"),
            ("https://user@www.scam.example:1/", "scam.example"),
            ("file:///etc/passwd", "file:///etc/passwd"),
        ] {
            assert_eq!(normalize_body(body), normalized, "{body:?}");
        }
    }
}
