//! XML namespaces and other protocol-wide constants (spec §"Item format").

/// XEP-0377 spam reporting: the outer element of every feed item, so that
/// RTBL-aware software recognises a Corvid item as a report.
pub const REPORTING: &str = "urn:xmpp:reporting:1";

/// XEP-0377 reason for spam.
pub const REASON_SPAM: &str = "urn:xmpp:reporting:spam";

/// XEP-0377 reason for abuse.
pub const REASON_ABUSE: &str = "urn:xmpp:reporting:abuse";

/// Corvid's own namespace for the signed envelope inside the report.
///
/// A private, unregistered URN: `urn:xmpp:` names are assigned by the XSF
/// and Corvid does not claim one.
pub const CORVID: &str = "urn:x-corvid:1";

/// The protocol major version carried in every signed object.
pub const PROTOCOL_MAJOR: u64 = 1;

/// Largest accepted feed item payload, in bytes (spec §"Feed layout").
pub const MAX_ITEM_BYTES: usize = 64 * 1024;

/// Largest accepted decompressed snapshot body, in bytes.
pub const MAX_INFLATED_BYTES: usize = 4 * 1024 * 1024;

/// Longest lifetime a report may claim: 90 days (no eternal entries).
pub const MAX_TTL_SECS: u64 = 90 * 24 * 3600;
