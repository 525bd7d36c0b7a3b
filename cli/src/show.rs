//! Text output for read commands (`--json` prints the API's JSON instead).

use std::fmt::Write as _;

use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn ago(t: &Value) -> String {
    match t.as_u64() {
        None => "never".into(),
        Some(t) => {
            let d = corvid_api::now().saturating_sub(t);
            if d < 120 {
                format!("{d}s ago")
            } else if d < 7200 {
                format!("{}m ago", d / 60)
            } else if d < 172_800 {
                format!("{}h ago", d / 3600)
            } else {
                format!("{}d ago", d / 86_400)
            }
        }
    }
}

/// An age in seconds as `ago` prints one.
fn ago_secs(d: &Value) -> String {
    match d.as_u64() {
        None => "never".into(),
        Some(d) => ago(&Value::from(corvid_api::now().saturating_sub(d))),
    }
}

fn age(secs: u64) -> String {
    if secs < 3600 {
        format!("{}m", secs / 60)
    } else if secs < 172_800 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}d", secs / 86_400)
    }
}

/// `corvid verdict`.
pub fn verdicts(v: &Value) -> String {
    let mut out = String::new();
    for item in v.as_array().into_iter().flatten() {
        if let Some(error) = item["error"].as_str() {
            let _ = writeln!(out, "{:<40} error: {error}", s(&item["subject"]));
            continue;
        }
        let _ = writeln!(
            out,
            "{:<40} {:<6} {:.3}",
            s(&item["subject"]),
            s(&item["action"]),
            item["score"].as_f64().unwrap_or(0.0)
        );
    }
    out
}

/// `corvid why`.
pub fn why(subject: &str, v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{subject}: {} (score {:.3})",
        s(&v["action"]),
        v["score"].as_f64().unwrap_or(0.0)
    );
    for r in v["reasons"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  because: {}", reason(r));
    }
    let signals = &v["local_signals"];
    if signals.is_object() {
        let _ = writeln!(
            out,
            "  local users: {} released messages from it out of their spam folders in the last 30 days{} (each lowers its score by a quarter); {} deleted some{}",
            s(&signals["releases"]),
            signals["last_release"]
                .as_u64()
                .map(|t| format!(", the last {}", crate::edit::date(t)))
                .unwrap_or_default(),
            s(&signals["deletions"]),
            signals["last_deletion"]
                .as_u64()
                .map(|t| format!(", the last {}", crate::edit::date(t)))
                .unwrap_or_default(),
        );
    }
    let list = v["contributions"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        let _ = writeln!(out, "  no live reports");
        return out;
    }
    let _ = writeln!(
        out,
        "  {:<22} {:<7} {:<17} {:>6} {:>5} {:>6} {:>9} {:<8} {:<10} STATUS",
        "ISSUER", "KIND", "CATEGORY", "WEIGHT", "AGE", "DECAY", "EFFECTIVE", "MODE", "EXPIRES"
    );
    for c in list {
        let _ = writeln!(
            out,
            "  {:<22} {:<7} {:<17} {:>6.2} {:>5} {:>6.3} {:>9.3} {:<8} {:<10} {}{}",
            s(&c["source"]),
            s(&c["kind"]),
            s(&c["category"]),
            c["weight"].as_f64().unwrap_or(0.0),
            age(c["age_secs"].as_u64().unwrap_or(0)),
            c["decay"].as_f64().unwrap_or(0.0),
            c["effective"].as_f64().unwrap_or(0.0),
            s(&c["mode"]),
            crate::edit::date(c["expires_at"].as_u64().unwrap_or(0)),
            s(&c["status"]),
            if c["counted"] == false {
                " (not counted)"
            } else {
                ""
            },
        );
    }
    out
}

fn reason(r: &Value) -> String {
    match r["rule"].as_str().unwrap_or("") {
        "score" => format!(
            "score {} from {} issuer(s) on {} gives {}",
            s(&r["score"]),
            s(&r["issuers"]),
            s(&r["subject"]),
            s(&r["action"])
        ),
        "quorum-not-met" => format!(
            "block held back: {} of {} issuers needed",
            s(&r["issuers"]),
            s(&r["quorum"])
        ),
        "local-allow" => format!(
            "on the local allow list ({})",
            s(r.get("subject").or(r.get("entry")).unwrap_or(&Value::Null))
        ),
        "local-deny" => format!(
            "on the local deny list ({})",
            s(r.get("subject").or(r.get("entry")).unwrap_or(&Value::Null))
        ),
        "digest-never-blocks" => "a content digest alone never blocks".into(),
        "canary" => format!("{} is a canary and is never blocked", s(&r["subject"])),
        "abuse-contact-missing" => {
            "block held back: no report says the domain's abuse contact was tried".into()
        }
        "released" => format!(
            "lowered: local users released messages from {} out of their spam folders",
            s(&r["subject"])
        ),
        "peer-cap" => "block held back: a peer it needs has caused its most new blocks for the hour (max_new_blocks_per_hour); it blocks once the hour has room".into(),
        other => format!("{other}: {r}"),
    }
}

/// `corvid peer list`.
pub fn peers(v: &Value) -> String {
    let mut out = String::new();
    let list = v["peers"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no peers configured; add one with `corvid peer add`\n".into();
    }
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:>6} {:>8} {:>7} {:<12} {:<12} ERRORS / REJECTED / PENDING",
        "PEER", "MODE", "WEIGHT", "RECORDS", "BACKLOG", "LAST SYNC", "NEWEST ITEM"
    );
    for p in list {
        let rejected: Vec<String> = p["rejected"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
            .unwrap_or_default();
        let mut notes = String::new();
        if let Some(e) = p["last_error"].as_str() {
            notes.push_str(&format!(
                "read failing ({}x, last {}): {e}; ",
                s(&p["failures"]),
                ago_secs(&p["last_error_age"])
            ));
        }
        if let Some(t) = p["reading_for"].as_u64() {
            notes.push_str(&format!("reading for {t}s; "));
        }
        notes.push_str(&rejected.join(" "));
        if let Some(k) = p["pending_rotation"].as_str() {
            notes.push_str(&format!(" rotation pending: {k}"));
        }
        let mode = s(&p["mode"]);
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:>6.2} {:>8} {:>7} {:<12} {:<12} {}",
            s(&p["domain"]),
            if mode.starts_with("observe (") {
                "SUSPEND"
            } else {
                &mode
            },
            p["weight"].as_f64().unwrap_or(0.0),
            s(&p["records"]),
            match p["backlog"].as_u64() {
                Some(n) => n.to_string(),
                None => "-".into(),
            },
            ago(&p["last_sync"]),
            ago_secs(&p["newest_item_age"]),
            notes.trim()
        );
    }
    out
}

/// `corvid status`.
pub fn status(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "corvidd for {} - {}",
        s(&v["domain"]),
        s(&v["health"]["status"])
    );
    let _ = writeln!(out, "  xmpp:        {}", s(&v["xmpp"]));
    let _ = writeln!(out, "  feed:        {}", s(&v["feed"]));
    let c = &v["component"];
    if c.is_object() {
        let _ = writeln!(
            out,
            "  component:   {} {}{}",
            s(&c["jid"]),
            s(&c["state"]),
            match c["list_consumers"].as_u64() {
                Some(n) => format!(", block lists read by {n}"),
                None => c["last_error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
            }
        );
    }
    let _ = writeln!(out, "  key:         {}", s(&v["fingerprint"]));
    let counts = &v["subjects_by_action"];
    let _ = writeln!(
        out,
        "  verdicts:    {} block, {} flag, {} allow (subjects with reports)",
        counts["block"].as_u64().unwrap_or(0),
        counts["flag"].as_u64().unwrap_or(0),
        counts["allow"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "  stored:      {} contributions, {} own reports waiting to publish",
        s(&v["stored_contributions"]),
        s(&v["own_reports_unpublished"])
    );
    let _ = writeln!(
        out,
        "  clock:       {}",
        match v["health"]["clock_offset_secs"].as_i64() {
            Some(o) => format!("{o:+} s against the XMPP server"),
            None => "not measured yet".into(),
        }
    );
    out.push_str(
        &peers(&serde_json::json!({"peers": v["peers"]}))
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>(),
    );
    match serde_json::from_value::<corvid_api::health::Health>(
        serde_json::json!({"checks": v["checks"]}),
    ) {
        Ok(health) if !health.checks.is_empty() => {
            out.push_str("checks:\n");
            for line in health.render().lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        _ => {
            // An older corvidd: plain warnings.
            let warnings = v["warnings"].as_array().cloned().unwrap_or_default();
            if warnings.is_empty() {
                let _ = writeln!(out, "no warnings");
            }
            for w in warnings {
                let _ = writeln!(out, "warning: {}", s(&w));
            }
        }
    }
    out
}

/// `corvid federation members`.
pub fn members(v: &Value) -> String {
    let mut out = String::new();
    let list = v["members"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "{:<24} {:<10} {:<16} {:<8} FINGERPRINT",
        "MEMBER", "SIGNATURE", "DOMAIN-VERIFIED", "PEER"
    );
    for m in list {
        let sig = if m["signature_ok"] == true {
            "ok".to_owned()
        } else {
            format!("BAD ({})", s(&m["signature_error"]))
        };
        let dv = if m["domain_verified"] == true {
            "yes".to_owned()
        } else {
            format!("no ({})", s(&m["domain_error"]))
        };
        let peer = match (m["peer"].as_bool(), m["peer_key_matches"].as_bool()) {
            _ if m["own"] == true => "(self)",
            (Some(true), Some(true)) => "yes",
            (Some(true), _) => "KEY DIFFERS",
            _ => "no",
        };
        let name = m["card"]["domain"]
            .as_str()
            .map_or_else(|| s(&m["item"]), str::to_owned);
        let _ = writeln!(
            out,
            "{name:<24} {sig:<10} {dv:<16} {peer:<8} {}",
            s(&m["fingerprint"])
        );
    }
    out
}
