//! Federation membership cards (spec §"Federation directory").
//!
//! A member publishes a signed card on the federation's directory node and
//! the same card on its own feed (item `card`); a reader that finds the same
//! key on the member's own domain over s2s calls the card domain-verified.
//! A card makes a member visible, never trusted.

use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;
use crate::time::UnixTime;

/// What a member says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipCard {
    /// The member's server domain.
    pub domain: String,
    /// Every VirtualHost it serves (its canaries, for others too).
    pub hosts: Vec<String>,
    /// Its feed, `xmpp:service?;node=name`.
    pub feed: String,
    /// Its signing key.
    pub key: PublicKey,
    /// XEP-0157 `abuse-addresses` (mailto:, xmpp: URIs).
    pub abuse: Vec<String>,
    /// How it decides to list a subject.
    pub listing_policy: String,
    /// How to get delisted.
    pub delisting_policy: String,
    /// When the card was written.
    pub issued_at: UnixTime,
}
