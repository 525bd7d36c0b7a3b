//! Recommended aggregation (spec §"Aggregation"): pure maths from verified
//! records, per-source trust, local policy and `now` to a verdict.
//!
//! - Per issuer only the newest record counts; a tombstone or an expired
//!   report counts nothing.
//! - A report's effective weight is `trust × confidence/100 × 2^(−age/half_life)`
//!   (unsigned RTBL sources capped at [`Policy::rtbl_max_weight`]).
//! - Enforcing contributions combine noisy-OR: `score = 1 − Π(1 − wᵢ)`.
//!   Observe-mode contributions are shown, never counted.
//! - `block` needs the block threshold *and* a quorum of distinct enforcing
//!   signed issuers (the local server's own report satisfies it alone); a
//!   digest alone never blocks; canaries are never blocked.
//! - Local lists win, in this order: exact allow, exact deny, domain allow,
//!   domain deny, then the federation verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::record::{Category, Record, ReportId};
use crate::subject::{SubjectKey, SubjectKind};
use crate::time::UnixTime;

/// What the hook should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through.
    Allow,
    /// Let it through but mark it (moderation queue, captcha, rate limit).
    Flag,
    /// Refuse it.
    Block,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Flag => "flag",
            Self::Block => "block",
        })
    }
}

/// Whether a source's reports count or are only shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Reports count toward verdicts.
    #[default]
    Enforce,
    /// Reports are shown in explanations but never counted.
    Observe,
}

/// Where a contribution came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// This server's own report.
    Local,
    /// A trusted peer's signed feed.
    Peer,
    /// An unsigned xmppbl.org-style RTBL node.
    Rtbl,
    /// A local import (not published unless asked).
    Import,
}

/// One source's record about one subject, with the trust it gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// A stable id of the source (issuer domain, or `rtbl:` + feed).
    pub source: String,
    /// Kind of source.
    pub kind: SourceKind,
    /// Trust weight in `[0, 1]`.
    pub weight: f64,
    /// The operator adopted this source (`block_alone`): its reports count
    /// as the local server's own (full weight, no RTBL cap, no quorum).
    pub alone: bool,
    /// Enforce or observe.
    pub mode: Mode,
    /// False while the source's item is missing and in its grace period.
    pub confirmed: bool,
    /// The record.
    pub record: Record,
}

/// Thresholds for one subject kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Score at or above which the verdict is at least `flag`.
    pub flag: f64,
    /// Score at or above which (with quorum) the verdict is `block`.
    pub block: f64,
    /// Half-life of a report's weight, in seconds.
    pub half_life_secs: u64,
}

/// Local aggregation policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Thresholds and half-lives per subject kind.
    pub thresholds: BTreeMap<SubjectKind, Thresholds>,
    /// Distinct enforcing signed issuers needed for `block`.
    pub quorum: usize,
    /// Largest weight an unsigned RTBL source may have.
    pub rtbl_max_weight: f64,
    /// Block a domain only if some counted report says its abuse contact
    /// was notified.
    pub require_abuse_contact: bool,
}

impl Default for Policy {
    fn default() -> Self {
        let day: u64 = 24 * 3600;
        let t = |flag, block, days: u64| Thresholds {
            flag,
            block,
            half_life_secs: days * day,
        };
        Self {
            thresholds: BTreeMap::from([
                (SubjectKind::Jid, t(0.3, 0.7, 14)),
                (SubjectKind::Domain, t(0.3, 0.7, 30)),
                (SubjectKind::Ip, t(0.3, 0.7, 7)),
                (SubjectKind::Digest, t(0.3, 0.7, 3)),
            ]),
            quorum: 2,
            rtbl_max_weight: 0.5,
            require_abuse_contact: false,
        }
    }
}

impl Policy {
    /// The thresholds for a kind of subject (the defaults when unset).
    pub fn thresholds(&self, kind: SubjectKind) -> Thresholds {
        self.thresholds.get(&kind).copied().unwrap_or(Thresholds {
            flag: 0.3,
            block: 0.7,
            half_life_secs: 14 * 24 * 3600,
        })
    }
}

/// One contribution as scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    /// The subject this contribution is about (the exact or a covering domain).
    pub subject: SubjectKey,
    /// Source id.
    pub source: String,
    /// Source kind.
    pub kind: SourceKind,
    /// Source mode.
    pub mode: Mode,
    /// Report id.
    pub report_id: ReportId,
    /// Category.
    pub category: Category,
    /// Confidence 1–100.
    pub confidence: u8,
    /// Trust weight used (after the RTBL cap).
    pub weight: f64,
    /// Age in seconds.
    pub age_secs: u64,
    /// Decay factor in `(0, 1]`.
    pub decay: f64,
    /// `weight × confidence/100 × decay`.
    pub effective: f64,
    /// Counted in the score (enforcing source).
    pub counted: bool,
    /// Confirmed by the source's current feed.
    pub confirmed: bool,
    /// Expiry.
    pub expires_at: UnixTime,
    /// Domain reports: abuse contact notified at.
    pub abuse_contacted_at: Option<UnixTime>,
}

/// The score of one subject from its contributions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubjectScore {
    /// The subject.
    pub subject: SubjectKey,
    /// Noisy-OR of counted contributions.
    pub score: f64,
    /// Distinct enforcing signed issuers counted.
    pub issuers: usize,
    /// Whether this server's own report counts.
    pub local: bool,
    /// Whether a counted domain report carries `abuse_contacted_at`.
    pub abuse_contacted: bool,
    /// Every live contribution, newest per source.
    pub scored: Vec<Scored>,
}

/// Scores one subject. Only the newest record per source counts.
pub fn score_subject(
    subject: &SubjectKey,
    contributions: &[Contribution],
    policy: &Policy,
    now: UnixTime,
) -> SubjectScore {
    let mut newest: BTreeMap<&str, &Contribution> = BTreeMap::new();
    for c in contributions
        .iter()
        .filter(|c| c.record.subject() == subject)
    {
        match newest.get(c.source.as_str()) {
            Some(old) if !c.record.supersedes(&old.record) => {}
            _ => {
                newest.insert(&c.source, c);
            }
        }
    }
    let half_life = policy.thresholds(subject.kind()).half_life_secs.max(1) as f64;
    let mut scored = Vec::new();
    let mut keep = 1.0f64;
    let mut issuers = BTreeSet::new();
    let mut local = false;
    let mut abuse_contacted = false;
    for c in newest.values() {
        let Record::Report(report) = &c.record else {
            continue;
        };
        if report.expires_at <= now {
            continue;
        }
        let weight = match c.kind {
            _ if c.alone => 1.0,
            SourceKind::Rtbl => c.weight.clamp(0.0, policy.rtbl_max_weight),
            _ => c.weight.clamp(0.0, 1.0),
        };
        let age_secs = now.saturating_sub(report.issued_at);
        let decay = (-(age_secs as f64) / half_life).exp2();
        let effective = weight * f64::from(report.confidence.min(100)) / 100.0 * decay;
        let counted = c.mode == Mode::Enforce && effective > 0.0;
        if counted {
            keep *= 1.0 - effective;
            match c.kind {
                _ if c.alone => local = true,
                SourceKind::Local => local = true,
                SourceKind::Peer => {
                    issuers.insert(c.source.as_str());
                }
                SourceKind::Rtbl | SourceKind::Import => {}
            }
            abuse_contacted |= report.evidence.abuse_contacted_at.is_some();
        }
        scored.push(Scored {
            subject: subject.clone(),
            source: c.source.clone(),
            kind: c.kind,
            mode: c.mode,
            report_id: report.id,
            category: report.category,
            confidence: report.confidence,
            weight,
            age_secs,
            decay,
            effective,
            counted,
            confirmed: c.confirmed,
            expires_at: report.expires_at,
            abuse_contacted_at: report.evidence.abuse_contacted_at,
        });
    }
    scored.sort_by(|a, b| {
        b.effective
            .total_cmp(&a.effective)
            .then_with(|| a.source.cmp(&b.source))
    });
    SubjectScore {
        subject: subject.clone(),
        score: 1.0 - keep,
        issuers: issuers.len(),
        local,
        abuse_contacted,
        scored,
    }
}

/// A score kept as its three-decimal text, written as a JSON number.
fn score_number<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    match text.parse::<f64>() {
        Ok(v) => s.serialize_f64(v),
        Err(_) => s.serialize_str(text),
    }
}

/// Why a verdict is what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum Reason {
    /// On the local allow list.
    LocalAllow {
        /// The matching list entry.
        subject: SubjectKey,
    },
    /// On the local deny list.
    LocalDeny {
        /// The matching list entry.
        subject: SubjectKey,
    },
    /// The federation score crossed a threshold.
    Score {
        /// The subject.
        subject: SubjectKey,
        /// Its score, to three decimals (written as a JSON number, as a
        /// verdict's own `score` is).
        #[serde(serialize_with = "score_number")]
        score: String,
        /// Distinct issuers.
        issuers: usize,
        /// The action for this subject.
        action: Action,
    },
    /// Block held back: not enough distinct issuers.
    QuorumNotMet {
        /// The subject.
        subject: SubjectKey,
        /// Issuers present.
        issuers: usize,
        /// Quorum required.
        quorum: usize,
    },
    /// Block held back: a digest alone never blocks.
    DigestNeverBlocks,
    /// Block held back: a canary is never blocked.
    Canary {
        /// The canary subject.
        subject: SubjectKey,
    },
    /// Block held back: no report says the domain's abuse contact was tried.
    AbuseContactMissing {
        /// The domain.
        subject: SubjectKey,
    },
    /// Block held back (local policy, not part of the shared aggregation):
    /// a peer whose report the block needs has caused its most new blocks
    /// for the hour.
    PeerCap {
        /// The subject.
        subject: SubjectKey,
    },
    /// Action lowered (local policy): local users released messages from
    /// this subject out of their spam folders.
    Released {
        /// The subject.
        subject: SubjectKey,
    },
}

/// The verdict for a lookup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// What to do.
    pub action: Action,
    /// The highest score among the subjects looked at.
    pub score: f64,
    /// Why.
    pub reasons: Vec<Reason>,
    /// Every live contribution considered.
    pub contributions: Vec<Scored>,
    /// Sources that reported a canary (to be moved to observe mode).
    pub canary_reporters: Vec<String>,
}

/// Everything a lookup needs, gathered by the caller from its store.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    /// The exact subject(s): the JID, the domain, the IP tokens or the digest.
    pub exact: Vec<SubjectKey>,
    /// Covering domain subjects: the JID's domain, subdomain keys of parents.
    pub covering: Vec<SubjectKey>,
    /// Contributions for all of those subjects.
    pub contributions: Vec<Contribution>,
    /// Local allow-list entries among `exact`/`covering`.
    pub allowed: BTreeSet<SubjectKey>,
    /// Local deny-list entries among `exact`/`covering`.
    pub denied: BTreeSet<SubjectKey>,
    /// Canary subjects among `exact`/`covering`.
    pub canaries: BTreeSet<SubjectKey>,
}

/// The local list entry that decides a lookup, if any, by precedence: an
/// allow on the exact subject, a deny on it, an allow on a covering domain,
/// a deny on one.
pub fn local_rule(lookup: &Lookup) -> Option<(Action, Reason)> {
    let first_in = |set: &BTreeSet<SubjectKey>, level: &[SubjectKey]| {
        level.iter().find(|s| set.contains(*s)).cloned()
    };
    if let Some(subject) = first_in(&lookup.allowed, &lookup.exact) {
        return Some((Action::Allow, Reason::LocalAllow { subject }));
    }
    if let Some(subject) = first_in(&lookup.denied, &lookup.exact) {
        return Some((Action::Block, Reason::LocalDeny { subject }));
    }
    if let Some(subject) = first_in(&lookup.allowed, &lookup.covering) {
        return Some((Action::Allow, Reason::LocalAllow { subject }));
    }
    first_in(&lookup.denied, &lookup.covering)
        .map(|subject| (Action::Block, Reason::LocalDeny { subject }))
}

/// Decides a lookup: local lists by precedence, then the federation.
pub fn decide(lookup: &Lookup, policy: &Policy, now: UnixTime) -> Verdict {
    let scores: Vec<SubjectScore> = lookup
        .exact
        .iter()
        .chain(&lookup.covering)
        .map(|s| score_subject(s, &lookup.contributions, policy, now))
        .collect();
    let contributions: Vec<Scored> = scores
        .iter()
        .flat_map(|s| s.scored.iter().cloned())
        .collect();
    let score = scores.iter().map(|s| s.score).fold(0.0, f64::max);
    let canary_reporters: Vec<String> = {
        let set: BTreeSet<String> = contributions
            .iter()
            .filter(|c| lookup.canaries.contains(&c.subject) && c.kind == SourceKind::Peer)
            .map(|c| c.source.clone())
            .collect();
        set.into_iter().collect()
    };
    let verdict = |action, reasons| Verdict {
        action,
        score,
        reasons,
        contributions: contributions.clone(),
        canary_reporters: canary_reporters.clone(),
    };
    if let Some((action, reason)) = local_rule(lookup) {
        return verdict(action, vec![reason]);
    }
    let mut action = Action::Allow;
    let mut reasons = Vec::new();
    for s in &scores {
        let (a, mut why) = subject_action(s, lookup, policy);
        action = action.max(a);
        reasons.append(&mut why);
    }
    verdict(action, reasons)
}

/// The action one scored subject calls for on its own, and why; `lookup`
/// supplies only its canaries.
pub fn subject_action(s: &SubjectScore, lookup: &Lookup, policy: &Policy) -> (Action, Vec<Reason>) {
    let t = policy.thresholds(s.subject.kind());
    if s.score < t.flag || s.score <= 0.0 {
        return (Action::Allow, Vec::new());
    }
    let score_reason = |action| Reason::Score {
        subject: s.subject.clone(),
        score: format!("{:.3}", s.score),
        issuers: s.issuers + usize::from(s.local),
        action,
    };
    if s.score < t.block {
        return (Action::Flag, vec![score_reason(Action::Flag)]);
    }
    let hold = if lookup.canaries.contains(&s.subject) {
        Some(Reason::Canary {
            subject: s.subject.clone(),
        })
    } else if s.subject.kind() == SubjectKind::Digest {
        Some(Reason::DigestNeverBlocks)
    } else if !s.local && s.issuers < policy.quorum {
        Some(Reason::QuorumNotMet {
            subject: s.subject.clone(),
            issuers: s.issuers,
            quorum: policy.quorum,
        })
    } else if policy.require_abuse_contact
        && s.subject.kind() == SubjectKind::Domain
        && !s.abuse_contacted
        && !s.local
    {
        Some(Reason::AbuseContactMissing {
            subject: s.subject.clone(),
        })
    } else {
        None
    };
    match hold {
        Some(why) => (Action::Flag, vec![score_reason(Action::Flag), why]),
        None => (Action::Block, vec![score_reason(Action::Block)]),
    }
}
