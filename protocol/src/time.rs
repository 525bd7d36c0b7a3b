//! Time as the protocol sees it: whole Unix seconds passed in by the caller.

/// Seconds since the Unix epoch, UTC. The protocol never reads a clock.
pub type UnixTime = u64;
