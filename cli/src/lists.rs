//! `corvid import` and `corvid export`: the JabberSPAM blacklist, xmppbl.org
//! RTBL item lists, CSV, JSON and a self-contained HTML "shame list".

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::api::Node;

/// Input formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InFormat {
    /// One domain a line (JabberSPAM blacklist.txt); `#` comments.
    Blacklist,
    /// xmppbl.org-style item ids: SHA-256 hashes of JIDs, or domains, one a line (or `<item id='…'/>` XML).
    Rtbl,
    /// CSV: subject,category[,note] with an optional header.
    Csv,
}

/// `corvid import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The file ("-" for stdin).
    file: PathBuf,
    /// Its format.
    #[arg(long, value_enum)]
    format: InFormat,
    /// A name for the source (default: the file's stem).
    #[arg(long)]
    name: Option<String>,
    /// Category for entries that do not carry one.
    #[arg(long, default_value = "spam")]
    category: String,
    /// Publish entries as this server's own signed reports (otherwise a local source only).
    #[arg(long)]
    publish: bool,
}

/// `(subject, category, note)`.
pub type Entry = (String, String, Option<String>);
/// `(line, text, reason)`.
pub type Skipped = (usize, String, String);

/// Parses a list into `(subject, category, note)` entries and skipped lines.
pub fn parse(format: InFormat, text: &str, default_category: &str) -> (Vec<Entry>, Vec<Skipped>) {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        match format {
            InFormat::Blacklist => {
                let mut words = line.split_whitespace();
                let domain = words.next().unwrap_or_default();
                match corvid_protocol::subject::normalize_domain(domain) {
                    _ if words.next().is_some() => {
                        skipped.push((n + 1, line.to_owned(), "expected one domain a line".into()))
                    }
                    Ok(d) if d.contains('.') => {
                        entries.push((d, default_category.to_owned(), None))
                    }
                    Ok(_) => skipped.push((
                        n + 1,
                        line.to_owned(),
                        "not a fully qualified domain".into(),
                    )),
                    Err(e) => skipped.push((n + 1, line.to_owned(), e.to_string())),
                }
            }
            InFormat::Rtbl => {
                let id = line
                    .split("id='")
                    .nth(1)
                    .or_else(|| line.split("id=\"").nth(1))
                    .and_then(|r| r.split(['\'', '"']).next())
                    .unwrap_or(line);
                if line.starts_with('<') && !line.contains("id=") {
                    continue; // XML around the items
                }
                if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    entries.push((
                        format!("jid:{}", id.to_ascii_lowercase()),
                        default_category.to_owned(),
                        None,
                    ));
                } else if let Ok(d) = corvid_protocol::subject::normalize_domain(id) {
                    entries.push((d, default_category.to_owned(), None));
                } else {
                    skipped.push((
                        n + 1,
                        line.to_owned(),
                        "neither a SHA-256 hash nor a domain".into(),
                    ));
                }
            }
            InFormat::Csv => {
                let cols: Vec<&str> = line.split(',').map(str::trim).collect();
                if n == 0
                    && cols
                        .first()
                        .is_some_and(|c| c.eq_ignore_ascii_case("subject"))
                {
                    continue;
                }
                let category = cols
                    .get(1)
                    .filter(|c| !c.is_empty())
                    .map_or(default_category, |c| c);
                entries.push((
                    cols[0].to_owned(),
                    category.to_owned(),
                    cols.get(2).map(|s| (*s).to_owned()),
                ));
            }
        }
    }
    (entries, skipped)
}

/// Imports a list through the node.
pub fn import(json_out: bool, node: &Node, a: &ImportArgs) -> Result<u8> {
    let text = if a.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&a.file)
            .with_context(|| format!("cannot read {}", a.file.display()))?
    };
    let name = a.name.clone().unwrap_or_else(|| {
        a.file
            .file_stem()
            .map_or_else(|| "stdin".into(), |s| s.to_string_lossy().into_owned())
    });
    let (entries, mut skipped) = parse(a.format, &text, &a.category);
    let total = entries.len();
    let tty = std::io::stderr().is_terminal() && !json_out;
    let mut imported = 0;
    let mut node_skipped: Vec<Value> = Vec::new();
    for (i, batch) in entries.chunks(500).enumerate() {
        let body = json!({
            "name": name,
            "publish": a.publish,
            "entries": batch.iter().map(|(s, c, n)| json!({"subject": s, "category": c, "note": n})).collect::<Vec<_>>(),
        });
        let v = node.post("/v1/import", &body)?.ok()?;
        imported += v["imported"].as_u64().unwrap_or(0);
        node_skipped.extend(v["skipped"].as_array().cloned().unwrap_or_default());
        if tty {
            let done = ((i + 1) * 500).min(total);
            let width = 30;
            let filled = (done * width).checked_div(total).unwrap_or(width);
            eprint!(
                "\r[{}{}] {done}/{total}",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            let _ = std::io::stderr().flush();
        }
    }
    if tty {
        eprintln!();
    }
    for s in &node_skipped {
        skipped.push((
            0,
            s["subject"].as_str().unwrap_or_default().to_owned(),
            s["reason"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    let result = json!({
        "source": if a.publish { "own reports".to_owned() } else { format!("import:{name}") },
        "imported": imported,
        "skipped": skipped.iter().map(|(l, t, r)| json!({"line": l, "entry": t, "reason": r})).collect::<Vec<_>>(),
    });
    if json_out {
        outln!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        outln!(
            "imported {imported} of {} entries as {}",
            total + skipped.len() - node_skipped.len(),
            result["source"].as_str().unwrap_or("")
        );
        for (line, entry, reason) in &skipped {
            if *line > 0 {
                outln!("  skipped line {line}: {entry}: {reason}");
            } else {
                outln!("  skipped {entry}: {reason}");
            }
        }
        if !a.publish {
            outln!("(a local source: not published; use --publish to sign and share the entries)");
        }
    }
    Ok(0)
}

/// Output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutFormat {
    /// Blocked domains, one a line (A-labels), like JabberSPAM's blacklist.txt.
    Blacklist,
    /// RTBL item ids: hashes for JIDs, domains for domains.
    Rtbl,
    /// Everything, as JSON.
    Json,
    /// The public shame list as a self-contained HTML page.
    Html,
}

/// `corvid export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum)]
    format: OutFormat,
    /// Also include flagged subjects (default: blocked only).
    #[arg(long)]
    all: bool,
    /// Write here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the export.
pub fn render(format: OutFormat, v: &Value) -> Result<String> {
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    match format {
        OutFormat::Json => out = serde_json::to_string_pretty(v)? + "\n",
        OutFormat::Blacklist => {
            for e in &entries {
                if let Some(d) = e["domain"].as_str() {
                    let plain = d.trim_start_matches("*.");
                    let _ = writeln!(
                        out,
                        "{}",
                        corvid_protocol::subject::domain_a_label(plain)
                            .unwrap_or_else(|| plain.to_owned())
                    );
                }
            }
        }
        OutFormat::Rtbl => {
            for e in &entries {
                let subject = e["subject"].as_str().unwrap_or_default();
                if let Some(h) = subject.strip_prefix("jid:") {
                    let _ = writeln!(out, "{h}");
                } else if let Some(d) = e["domain"].as_str() {
                    let _ = writeln!(out, "{}", d.trim_start_matches("*."));
                }
            }
        }
        OutFormat::Html => {
            let server = html_escape(v["server"].as_str().unwrap_or_default());
            let _ = write!(
                out,
                "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Blocked servers - {server}</title>\n<style>body{{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}}table{{border-collapse:collapse;width:100%}}th,td{{text-align:left;padding:.4em .6em;border-bottom:1px solid #ddd}}th{{background:#f4f4f4}}.no{{color:#a00}}footer{{margin-top:2em;font-size:.9em;color:#555}}</style></head><body>\n<h1>Servers blocked by {server}</h1>\n<p>These domains are blocked for abuse, based on signed reports from {server} and the peers it trusts (Corvid). Generated {}.</p>\n<table><thead><tr><th>Domain</th><th>Category</th><th>Listed since</th><th>Evidence (incidents)</th><th>Abuse contact tried</th></tr></thead><tbody>\n",
                crate::edit::date(v["generated_at"].as_u64().unwrap_or(0))
            );
            let mut rows = 0;
            for e in &entries {
                let Some(d) = e["domain"].as_str() else {
                    continue;
                };
                rows += 1;
                let tried = e["abuse_contacted"] == true;
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                    html_escape(d),
                    html_escape(e["category"].as_str().unwrap_or("-")),
                    e["since"]
                        .as_u64()
                        .map_or_else(|| "-".into(), crate::edit::date),
                    e["evidence"].as_u64().unwrap_or(0),
                    if tried { "yes" } else { "no" },
                    if tried { "yes" } else { "no" }
                );
            }
            if rows == 0 {
                out.push_str("<tr><td colspan=\"5\">No domain is blocked.</td></tr>\n");
            }
            let contacts: Vec<String> = v["abuse_contacts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(html_escape)
                .collect();
            let _ = write!(
                out,
                "</tbody></table>\n<h2>Getting delisted</h2>\n<p>{}</p>\n<p>Contact: {}</p>\n<h2>How we list</h2>\n<p>{}</p>\n<footer>Published by {server} with Corvid.</footer>\n</body></html>\n",
                html_escape(
                    v["delisting_policy"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .unwrap_or("Contact the server's administrators.")
                ),
                if contacts.is_empty() {
                    "not configured".to_owned()
                } else {
                    contacts.join(", ")
                },
                html_escape(
                    v["listing_policy"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .unwrap_or("Signed reports from this server and the peers it trusts.")
                )
            );
        }
    }
    Ok(out)
}

/// Exports through the node.
pub fn export(node: &Node, a: &ExportArgs) -> Result<u8> {
    let v = node
        .get(if a.all {
            "/v1/export"
        } else {
            "/v1/export?action=block"
        })?
        .ok()?;
    let text = render(a.format, &v)?;
    match &a.out {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!("wrote {}", p.display());
        }
        None => out!("{text}"),
    }
    if v["entries"].as_array().is_none() {
        bail!("corvidd returned no entries");
    }
    Ok(0)
}
