//! Turning what operators and hooks type into subject keys.
//!
//! The hook API and the CLI accept subjects in plain form: a JID
//! (`bot@spam.example`), a domain (`spam.example`, or `*.spam.example` for
//! it and its subdomains), `ip:ADDR[/LEN]` (tokenized here, never stored
//! raw), `digest:HEX` or a body to digest. Keys (`jid:…`, `domain:…`) are
//! accepted as they are.

use std::net::IpAddr;

use anyhow::{Result, anyhow, bail};
use corvid_protocol::subject::{IpPrefix, SubjectKey, normalize_domain};

/// A local list entry (allow, deny, canary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListEntry {
    /// A JID, domain or subdomain-scope key.
    Key(SubjectKey),
    /// A raw IP prefix: local lists match addresses directly.
    Ip(IpPrefixMatch),
}

/// A raw prefix for local matching (any length, unlike tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefixMatch {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl IpPrefixMatch {
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = corvid_protocol::subject::canonical_ip(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len.min(32)))
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len.min(128)))
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpPrefixMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ip:{}/{}", self.addr, self.len)
    }
}

/// Parses `ADDR[/LEN]` for local lists.
///
/// # Errors
/// When it is not an address or the length is too long.
pub fn parse_ip_match(text: &str) -> Result<IpPrefixMatch> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (
            a,
            Some(
                l.parse::<u8>()
                    .map_err(|_| anyhow!("bad prefix length in {text:?}"))?,
            ),
        ),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| anyhow!("{text:?} is not an IP address"))?;
    let addr = corvid_protocol::subject::canonical_ip(addr);
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    if len > max {
        bail!("prefix length {len} is too long for {addr}");
    }
    Ok(IpPrefixMatch { addr, len })
}

/// Parses an allow/deny/canary entry.
///
/// # Errors
/// When it is none of the accepted forms.
pub fn parse_list_entry(text: &str) -> Result<ListEntry> {
    let text = text.trim();
    if let Some(ip) = text.strip_prefix("ip:") {
        return Ok(ListEntry::Ip(parse_ip_match(ip)?));
    }
    Ok(ListEntry::Key(parse_subject(text)?))
}

/// Parses a JID, domain, `*.domain` or existing key into a key.
///
/// # Errors
/// When it is none of those.
pub fn parse_subject(text: &str) -> Result<SubjectKey> {
    let text = text.trim();
    for kind in ["jid:", "domain:", "ip:", "digest:"] {
        if text.starts_with(kind) && text.parse::<SubjectKey>().is_ok() {
            return text.parse().map_err(|e| anyhow!("{e}"));
        }
    }
    if let Some(hex) = text.strip_prefix("digest:") {
        return SubjectKey::for_digest_hex(hex).map_err(|e| anyhow!("{e}"));
    }
    if let Some(domain) = text.strip_prefix("*.") {
        return SubjectKey::for_domain(domain, true).map_err(|e| anyhow!("{e}"));
    }
    if text.contains('@') {
        return SubjectKey::for_jid(text).map_err(|e| anyhow!("{e}"));
    }
    SubjectKey::for_domain(text, false).map_err(|e| anyhow!("{e}"))
}

/// What a lookup asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// A JID: checks the JID, then its domain and parents.
    Jid {
        /// The JID's key.
        key: SubjectKey,
        /// Its normalized domain.
        domain: String,
    },
    /// A domain: checks it and parents' subdomain keys.
    Domain {
        /// Normalized domain.
        domain: String,
    },
    /// A raw address from the local server: tokenized, never stored.
    Ip(IpAddr),
    /// A tokenized prefix (`ip:192.0.2.0/24`): the exact subject a report
    /// about that prefix has.
    IpPrefix(IpPrefix),
    /// A digest.
    Digest(SubjectKey),
    /// A key given directly (from `why` on a listed key).
    Key(SubjectKey),
}

impl Query {
    /// The one subject a lookup names exactly (a JID's, a digest's, a
    /// given key); a domain or an address is a lookup of several.
    pub fn exact(&self) -> Option<&SubjectKey> {
        match self {
            Self::Jid { key, .. } | Self::Digest(key) | Self::Key(key) => Some(key),
            Self::Domain { .. } | Self::Ip(_) | Self::IpPrefix(_) => None,
        }
    }

    /// A stable cache key. For an IP this is the address itself: it stays
    /// in memory only (never logged or stored).
    pub fn cache_key(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            // The common case borrows: no allocation on the lookup path.
            Self::Jid { key, .. } | Self::Digest(key) | Self::Key(key) => {
                Cow::Borrowed(key.as_str())
            }
            Self::Domain { domain } => Cow::Owned(format!("domain:{domain}")),
            Self::Ip(ip) => Cow::Owned(format!("rawip:{ip}")),
            Self::IpPrefix(p) => Cow::Owned(format!("rawprefix:{}/{}", p.addr(), p.len())),
        }
    }

    /// From API parameters.
    ///
    /// # Errors
    /// Bad values, or not exactly one parameter.
    pub fn from_params(
        jid: Option<&str>,
        domain: Option<&str>,
        ip: Option<&str>,
        digest: Option<&str>,
    ) -> Result<Self> {
        match (jid, domain, ip, digest) {
            (Some(j), None, None, None) => {
                let prepared =
                    corvid_protocol::subject::prepare_bare_jid(j).map_err(|e| anyhow!("{e}"))?;
                let domain = prepared
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_owned())
                    .unwrap_or_default();
                Ok(Self::Jid {
                    key: SubjectKey::for_prepared_jid(&prepared),
                    domain,
                })
            }
            (None, Some(d), None, None) => Ok(Self::Domain {
                domain: normalize_domain(d).map_err(|e| anyhow!("{e}"))?,
            }),
            (None, None, Some(i), None) => {
                let ip: IpAddr = i.trim().parse().map_err(|_| {
                    anyhow!("ip must be a plain address (no prefix) from the local server")
                })?;
                Ok(Self::Ip(corvid_protocol::subject::canonical_ip(ip)))
            }
            (None, None, None, Some(d)) => {
                let hex = d.strip_prefix("digest:").unwrap_or(d);
                Ok(Self::Digest(
                    SubjectKey::for_digest_hex(hex).map_err(|e| anyhow!("{e}"))?,
                ))
            }
            _ => bail!("give exactly one of jid, domain, ip or digest"),
        }
    }

    /// Parses CLI-style text: JID, domain, `ip:ADDR`, `digest:HEX` or a key.
    ///
    /// # Errors
    /// When it is none of those.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if let Some(ip) = text.strip_prefix("ip:") {
            if ip.parse::<IpAddr>().is_ok() {
                return Self::from_params(None, None, Some(ip), None);
            }
            // The prefixes a report may name (`report ip:ADDR/LEN`).
            if ip.contains('/') {
                return IpPrefix::parse(ip)
                    .map(Self::IpPrefix)
                    .map_err(|e| anyhow!("{text:?}: {e}"));
            }
            // An IP token key (`ip:v1:…`) is read as a key below.
            if text.parse::<SubjectKey>().is_err() {
                bail!("{text:?} is not an IP address, a prefix (ip:ADDR/LEN) or an IP token");
            }
        }
        if text.starts_with("digest:") {
            return Self::from_params(None, None, None, Some(text));
        }
        if let Ok(key) = text.parse::<SubjectKey>() {
            return Ok(Self::Key(key));
        }
        if text.contains('@') {
            return Self::from_params(Some(text), None, None, None);
        }
        Self::from_params(None, Some(text), None, None)
    }
}

/// A subject a report is about, as the API receives it.
#[derive(Debug, Clone)]
pub enum ReportSubject {
    /// Ready key (JID, domain, digest).
    Key(SubjectKey),
    /// A raw prefix to tokenize with the issuing federation secret.
    Ip(IpPrefix),
}

/// Parses a report subject: JID, domain, `*.domain`, `ip:ADDR[/LEN]`, `digest:HEX`.
///
/// # Errors
/// When it is none of those.
pub fn parse_report_subject(text: &str) -> Result<ReportSubject> {
    if let Some(ip) = text.trim().strip_prefix("ip:")
        && let Ok(prefix) = IpPrefix::parse(ip)
    {
        return Ok(ReportSubject::Ip(prefix));
    }
    if text.trim().starts_with("ip:") {
        let ip = text.trim().trim_start_matches("ip:");
        if ip
            .split('/')
            .next()
            .is_some_and(|a| a.parse::<IpAddr>().is_ok())
        {
            bail!("ip reports take a /32 or /24 (IPv4), /128, /64 or /48 (IPv6) prefix");
        }
    }
    parse_subject(text).map(ReportSubject::Key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_forms_become_keys() {
        assert!(
            parse_subject("bot@spam.example")
                .expect("jid")
                .as_str()
                .starts_with("jid:")
        );
        assert_eq!(
            parse_subject("*.spam.example").expect("wild").as_str(),
            "domain:*.spam.example"
        );
        assert_eq!(
            parse_subject("Spam.Example").expect("domain").as_str(),
            "domain:spam.example"
        );
        assert!(parse_subject("not a subject").is_err());
        let m = parse_ip_match("192.0.2.0/24").expect("prefix");
        assert!(m.contains("192.0.2.200".parse().expect("ip")));
        assert!(m.contains("::ffff:192.0.2.1".parse().expect("ip")));
        assert!(!m.contains("192.0.3.1".parse().expect("ip")));
        assert!(matches!(
            Query::parse("ip:2001:db8::1").expect("ip"),
            Query::Ip(_)
        ));
        assert!(matches!(
            parse_report_subject("ip:192.0.2.7/24").expect("ip"),
            ReportSubject::Ip(_)
        ));
        assert!(parse_report_subject("ip:192.0.2.7/16").is_err());
        // What `report` accepts, `verdict` takes: the prefix itself.
        assert!(matches!(
            Query::parse("ip:192.0.2.7/24").expect("prefix"),
            Query::IpPrefix(p) if p.len() == 24 && p.addr().to_string() == "192.0.2.0"
        ));
        let err = Query::parse("ip:999.1.1.1").expect_err("not an address");
        assert!(err.to_string().contains("not an IP address"), "{err}");
        assert!(Query::parse("ip:192.0.2.7/16").is_err());
    }
}
