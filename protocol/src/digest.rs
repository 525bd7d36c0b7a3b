//! Content digests of message bodies (spec §"Content digests").
//!
//! The body is normalized so that the same spam sent with small variations
//! gets one digest, then hashed:
//!
//! 1. Unicode NFKC;
//! 2. full case folding, then NFKC again (NFKC_Casefold-like);
//! 3. every URL (with a scheme, or a bare `host.tld/...`) is replaced by its
//!    host in U-label form, without a leading `www.`;
//! 4. every run of numeric characters becomes a single `#`;
//! 5. runs of white space become one space, leading and trailing space is removed;
//! 6. a result shorter than [`MIN_NORMALIZED_CHARS`] characters gets no digest;
//! 7. the digest is lowercase hex SHA-256 of the UTF-8 result.
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
    let nfkc: String = body.nfkc().collect();
    let folded: String = caseless::default_case_fold_str(&nfkc).nfkc().collect();
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
    masked.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn urls_to_hosts(text: &str) -> String {
    let mut finder = linkify::LinkFinder::new();
    finder
        .kinds(&[linkify::LinkKind::Url])
        .url_must_have_scheme(false);
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for link in finder.links(text) {
        out.push_str(&text[last..link.start()]);
        out.push_str(&url_host(link.as_str()));
        last = link.end();
    }
    out.push_str(&text[last..]);
    out
}

/// The host of a URL, or the URL itself when no host can be found.
fn url_host(link: &str) -> String {
    let with_scheme = if link.contains("://") {
        link.to_owned()
    } else {
        format!("http://{link}")
    };
    match url::Url::parse(&with_scheme) {
        Ok(u) => match u.host_str() {
            Some(h) => {
                // url gives A-labels; show the same U-label form subjects use.
                let (unicode, _) = idna::domain_to_unicode(h);
                // `www.` is noise that spammers vary; drop it.
                unicode
                    .strip_prefix("www.")
                    .map(str::to_owned)
                    .unwrap_or(unicode)
            }
            None => link.to_owned(),
        },
        Err(_) => link.to_owned(),
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
}
