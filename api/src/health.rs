//! Health checks: named, each with a severity and, when it is not ok, the
//! fix. corvidd computes them (`GET /v1/status` → `checks`); `corvid
//! status` and `corvid doctor` print them and take their exit code from
//! the worst one. Later checks are added here, not by rewriting output.

use serde::{Deserialize, Serialize};

/// How bad a check's finding is. Ordered: `Ok < Warn < Fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Working.
    Ok,
    /// Working, but degraded or about to fail.
    Warn,
    /// Not working.
    Fail,
}

impl Severity {
    /// The word printed for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// A stable name, e.g. `xmpp.link`, `peer.b.example.sync`, `store.disk`.
    pub name: String,
    /// How bad.
    pub severity: Severity,
    /// What was found, one line.
    pub message: String,
    /// What to do, when it is not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    /// A passing check.
    pub fn ok(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            severity: Severity::Ok,
            message: message.into(),
            fix: None,
        }
    }

    /// A warning with its fix.
    pub fn warn(
        name: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::not_ok(Severity::Warn, name.into(), message.into(), fix.into())
    }

    /// A failure with its fix.
    pub fn fail(
        name: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::not_ok(Severity::Fail, name.into(), message.into(), fix.into())
    }

    fn not_ok(severity: Severity, name: String, message: String, fix: String) -> Self {
        Self {
            name,
            severity,
            message,
            fix: Some(fix),
        }
    }
}

/// A list of checks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Every check, in the order they were made.
    pub checks: Vec<Check>,
}

impl Health {
    /// Adds a check.
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// The worst severity (`Ok` when there are no checks).
    pub fn worst(&self) -> Severity {
        self.checks
            .iter()
            .map(|c| c.severity)
            .max()
            .unwrap_or(Severity::Ok)
    }

    /// The CLI's exit code for it (the README's codes): 0 when nothing
    /// fails, [`EXIT_UNHEALTHY`] when a check fails. Warnings are printed
    /// but do not fail a script.
    pub fn exit_code(&self) -> u8 {
        if self.worst() == Severity::Fail {
            EXIT_UNHEALTHY
        } else {
            0
        }
    }

    /// The checks as lines: `ok    name: message`, with `fix:` lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{:<5} {}: {}\n",
                c.severity.as_str(),
                c.name,
                c.message
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("      fix: {fix}\n"));
            }
        }
        out
    }
}

/// Exit code of `status` and `doctor` when a check fails.
pub const EXIT_UNHEALTHY: u8 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_check_decides_and_fixes_are_printed() {
        let mut h = Health::default();
        assert_eq!(h.worst(), Severity::Ok);
        h.push(Check::ok("xmpp.link", "online"));
        h.push(Check::warn("store.disk", "12% free", "free some space"));
        assert_eq!((h.worst(), h.exit_code()), (Severity::Warn, 0));
        h.push(Check::fail(
            "peer.b.example.sync",
            "no item for 3 days",
            "check b.example",
        ));
        assert_eq!((h.worst(), h.exit_code()), (Severity::Fail, EXIT_UNHEALTHY));
        let text = h.render();
        assert!(
            text.contains(
                "FAIL  peer.b.example.sync: no item for 3 days\n      fix: check b.example"
            ),
            "{text}"
        );
        let json = serde_json::to_string(&h).expect("json");
        assert_eq!(serde_json::from_str::<Health>(&json).expect("back"), h);
    }
}
