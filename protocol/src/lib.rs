//! Corvid's wire protocol, without IO.
//!
//! This crate is *sans-IO*: it holds the types peers exchange, the canonical
//! JSON and signing rules, subject normalization, IP tokens, content digests,
//! the PubSub feed layout and the aggregation maths — and nothing that reads a
//! socket, a file or the clock. Time comes in as an argument (`now`, Unix
//! seconds), randomness as bytes, and keys through the [`keys::Signer`] trait.
//! The node (`corvidd`) and the CLI drive it; another implementation can be
//! written from `spec/corvid.md` and checked against `spec/test-vectors/`.
//!
//! Everything a peer sends is untrusted: the decoders in [`item`] and
//! [`canonical`] turn bytes into typed values or a typed error and never
//! panic on input.
#![deny(missing_docs)]

pub mod aggregate;
pub mod canonical;
pub mod card;
pub mod digest;
pub mod feed;
pub mod iptoken;
pub mod item;
pub mod keys;
pub mod ns;
pub mod record;
pub mod subject;
pub mod time;

pub use aggregate::{Action, Verdict};
pub use canonical::CanonicalJson;
pub use keys::{Fingerprint, KeyId, PublicKey, SecretKey, Signer};
pub use record::{Category, Evidence, Issuer, Record, Report, ReportId, Retraction};
pub use subject::SubjectKey;
