//! `corvid doctor`: corvidd's live checks of the XMPP link (its component,
//! and a ping of every peer's feed service through it), and the Prosody
//! settings the link needs, read from Prosody's config files.
//!
//! Prosody's config is Lua; it is read here as text, for plain
//! assignments (`unlimited_jids = { … }`, `modules_enabled = { … }`) and
//! `Component "…"` lines: what a config builds with Lua code is not seen,
//! and the checks say so rather than guess.

use std::path::{Path, PathBuf};

use anyhow::Result;
use corvid_api::health::{Check, Health};
use serde_json::json;

use crate::api::Node;

/// The config file and the files it includes (`Include "conf.d/*.cfg.lua"`),
/// as (path, text); an unreadable main file is an error.
fn read_config(main: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let text = std::fs::read_to_string(main)?;
    let mut out = vec![(main.to_owned(), text.clone())];
    let base = main.parent().unwrap_or(Path::new("/"));
    for line in uncommented(&text).lines() {
        let Some(rest) = line.trim().strip_prefix("Include") else {
            continue;
        };
        let Some(pattern) = quoted(rest).into_iter().next() else {
            continue;
        };
        let pattern = base.join(pattern);
        let (dir, file) = (
            pattern.parent().unwrap_or(base).to_owned(),
            pattern
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let (prefix, suffix) = file.split_once('*').unwrap_or((file.as_str(), ""));
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    if file.contains('*') {
                        n.starts_with(prefix) && n.ends_with(suffix)
                    } else {
                        n == file
                    }
                })
            })
            .collect();
        names.sort();
        for n in names {
            if let Ok(t) = std::fs::read_to_string(&n) {
                out.push((n, t));
            }
        }
    }
    Ok(out)
}

/// The text without Lua comments (`--` to the end of the line, outside
/// strings; block comments `--[[ … ]]` too).
fn uncommented(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '-' && chars.peek() == Some(&'-') => {
                chars.next();
                let block = chars.peek() == Some(&'[') && {
                    let rest: String = chars.clone().take(2).collect();
                    rest == "[["
                };
                if block {
                    let mut prev = ' ';
                    for n in chars.by_ref() {
                        if prev == ']' && n == ']' {
                            break;
                        }
                        if n == '\n' {
                            out.push('\n');
                        }
                        prev = n;
                    }
                } else {
                    for n in chars.by_ref() {
                        if n == '\n' {
                            out.push('\n');
                            break;
                        }
                    }
                }
            }
            None => out.push(c),
        }
    }
    out
}

/// The quoted strings in `text`, in order.
fn quoted(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' {
            let s: String = chars.by_ref().take_while(|&n| n != c).collect();
            out.push(s);
        }
    }
    out
}

/// A config split into its global part and its sections, each a
/// `VirtualHost "…"` or `Component "…"` with its text.
struct Sections {
    global: String,
    sections: Vec<(String, String, String)>,
}

fn sections(files: &[(PathBuf, String)]) -> Sections {
    let mut global = String::new();
    let mut sections: Vec<(String, String, String)> = Vec::new();
    for (_, text) in files {
        // Each file starts in the global section again (Prosody's Include
        // does not, but Debian's conf.d files each begin with their own
        // VirtualHost or Component line).
        let mut current: Option<usize> = None;
        for line in uncommented(text).lines() {
            let t = line.trim_start();
            let kind = ["VirtualHost", "Component"]
                .into_iter()
                .find(|k| t.starts_with(k));
            if let Some(kind) = kind
                && let Some(name) = quoted(&t[kind.len()..]).into_iter().next()
            {
                sections.push((kind.to_owned(), name.to_lowercase(), String::new()));
                current = Some(sections.len() - 1);
                continue;
            }
            match current {
                Some(i) => {
                    sections[i].2.push_str(line);
                    sections[i].2.push('\n');
                }
                None => {
                    global.push_str(line);
                    global.push('\n');
                }
            }
        }
    }
    Sections { global, sections }
}

/// The strings of a list setting (`name = { "a", "b" }`, possibly over
/// several lines; `name:append{…}` too), all occurrences in `text`;
/// `None` when it is not set there.
/// What follows each `name =` (or `name:append`) in `text`, in order.
fn assignments<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let mut rest = text;
    std::iter::from_fn(move || {
        while let Some(i) = rest.find(name) {
            let before = rest[..i].chars().last();
            let after = &rest[i + name.len()..];
            rest = after;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let t = after.trim_start();
            if let Some(v) = t.strip_prefix('=').or_else(|| t.strip_prefix(":append")) {
                return Some(v.trim_start());
            }
        }
        None
    })
}

fn list_setting(text: &str, name: &str) -> Option<Vec<String>> {
    let mut found: Option<Vec<String>> = None;
    for t in assignments(text, name) {
        let Some(t) = t.strip_prefix('{') else {
            continue;
        };
        let Some(end) = t.find('}') else { continue };
        found.get_or_insert_with(Vec::new).extend(quoted(&t[..end]));
    }
    found
}

/// Prosody's settings for the link, from its config files: the component
/// is declared, and when `mod_limits` throttles s2s streams, the component
/// host loads it too and `unlimited_jids` lists every peer's component.
pub fn prosody_checks(
    files: &[(PathBuf, String)],
    component: &str,
    peer_services: &[(String, String)],
) -> Vec<Check> {
    let config = sections(files);
    let mut checks = Vec::new();
    let Some((_, _, section)) = config
        .sections
        .iter()
        .find(|(k, n, _)| k == "Component" && *n == component.to_lowercase())
    else {
        checks.push(Check::fail(
            "prosody.component",
            format!("no Component \"{component}\" in Prosody's config"),
            format!("add the Component lines that `corvid init` prints for {component}, then `prosodyctl reload`"),
        ));
        return checks;
    };
    if list_setting(section, "component_secret").is_none() && !section.contains("component_secret")
    {
        checks.push(Check::fail(
            "prosody.component",
            format!("Component \"{component}\" has no component_secret"),
            "set component_secret to the content of [component].secret_file",
        ));
    } else {
        checks.push(Check::ok(
            "prosody.component",
            format!("Component \"{component}\" is declared with a secret"),
        ));
    }
    let global_modules = list_setting(&config.global, "modules_enabled").unwrap_or_default();
    let disabled = list_setting(&config.global, "modules_disabled").unwrap_or_default();
    let limits =
        global_modules.iter().any(|m| m == "limits") && !disabled.iter().any(|m| m == "limits");
    if !limits {
        checks.push(Check::ok(
            "prosody.limits",
            "mod_limits is not enabled globally: nothing throttles the peers' streams",
        ));
        return checks;
    }
    let on_component = list_setting(section, "modules_enabled")
        .unwrap_or_default()
        .iter()
        .any(|m| m == "limits");
    if on_component {
        checks.push(Check::ok(
            "prosody.limits",
            format!(
                "mod_limits is loaded on {component}, so unlimited_jids applies to its streams"
            ),
        ));
    } else {
        checks.push(Check::fail(
            "prosody.limits",
            format!("mod_limits throttles s2s streams (30 kB/s by default), and unlimited_jids only applies on hosts that load it; {component} does not"),
            format!("add modules_enabled = {{ \"limits\" }} under Component \"{component}\", then restart Prosody"),
        ));
    }
    let unlimited: Vec<String> = list_setting(&config.global, "unlimited_jids")
        .unwrap_or_default()
        .into_iter()
        .map(|j| j.to_lowercase())
        .collect();
    for (domain, service) in peer_services {
        let name = format!("prosody.unlimited.{domain}");
        if unlimited.contains(&service.to_lowercase()) {
            checks.push(Check::ok(name, format!("{service} is in unlimited_jids")));
        } else {
            checks.push(Check::warn(
                name,
                format!("{service} is not in unlimited_jids: its feed reaches this server at mod_limits' s2s rate (30 kB/s by default; a 100k-record backfill takes minutes instead of seconds)"),
                format!("add \"{service}\" to unlimited_jids in Prosody's global section, then `prosodyctl reload`"),
            ));
        }
    }
    checks
}

/// The value of the last `name = "…"` in `text`.
fn string_setting(text: &str, name: &str) -> Option<String> {
    assignments(text, name)
        .filter_map(|t| {
            quoted(t.lines().next().unwrap_or_default())
                .into_iter()
                .next()
        })
        .last()
}

/// mod_corvid's lines in Prosody's config: loaded, and pointed at this
/// corvidd's API on loopback (`api_port`, when it listens on TCP).
pub fn module_checks(files: &[(PathBuf, String)], api_port: Option<u16>) -> Vec<Check> {
    let config = sections(files);
    let loaded = std::iter::once(&config.global)
        .chain(config.sections.iter().map(|(_, _, text)| text))
        .any(|text| {
            list_setting(text, "modules_enabled")
                .unwrap_or_default()
                .iter()
                .any(|m| m == "corvid")
        });
    if !loaded {
        return vec![Check::warn(
            "prosody.mod_corvid",
            "mod_corvid is not in modules_enabled: Prosody does not act on Corvid's verdicts itself",
            "load it as hooks/prosody/README.md says (corvid init prints the lines), or let mod_anti_spam and mod_muc_rtbl read the block lists",
        )];
    }
    let all: String = files.iter().map(|(_, t)| uncommented(t)).collect();
    let url = string_setting(&all, "corvid_api_url")
        .unwrap_or_else(|| "http://127.0.0.1:7780".to_owned());
    let authority = url
        .strip_prefix("http://")
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.trim_matches(['[', ']']).to_owned(), p.parse::<u16>().ok()),
        None => (authority.clone(), Some(80)),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mut checks = Vec::new();
    if !loopback {
        checks.push(Check::fail(
            "prosody.mod_corvid",
            format!("corvid_api_url is {url}: not loopback; the token (and raw IPs, later) must not leave this host"),
            "set corvid_api_url = \"http://127.0.0.1:PORT\" with the port of corvidd's [api] listen",
        ));
    } else if let (Some(want), Some(got)) = (api_port, port)
        && want != got
    {
        checks.push(Check::fail(
            "prosody.mod_corvid",
            format!("corvid_api_url is {url}, but corvidd listens on port {want}"),
            format!("set corvid_api_url = \"http://127.0.0.1:{want}\", then prosodyctl reload"),
        ));
    } else {
        let mode = string_setting(&all, "corvid_mode").unwrap_or_else(|| "observe".to_owned());
        checks.push(Check::ok(
            "prosody.mod_corvid",
            format!("loaded, reading {url}, mode {mode}"),
        ));
    }
    checks
}

/// `corvid doctor`.
pub fn run(node: &Node, prosody_config: &Path, json_out: bool) -> Result<u8> {
    let live = node.post("/v1/doctor", &json!({}))?.ok()?;
    let mut health: Health =
        serde_json::from_value(json!({ "checks": live["checks"] })).unwrap_or_default();
    let status = node.get("/v1/status")?.ok()?;
    let component = status["component"]["jid"].as_str().map(str::to_owned);
    let services: Vec<(String, String)> = status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let domain = p["domain"].as_str()?.to_owned();
            let feed = p["feed"].as_str()?;
            let service = feed.strip_prefix("xmpp:")?.split('?').next()?.to_owned();
            Some((domain, service))
        })
        .collect();
    if let Some(component) = component {
        match read_config(prosody_config) {
            Ok(files) => {
                for c in prosody_checks(&files, &component, &services) {
                    health.push(c);
                }
                let port = match node.listen() {
                    corvid_api::config::Listen::Tcp(addr) => Some(addr.port()),
                    corvid_api::config::Listen::Unix(_) => None,
                };
                for c in module_checks(&files, port) {
                    health.push(c);
                }
            }
            Err(e) => health.push(Check::warn(
                "prosody.config",
                format!("cannot read {}: {e}", prosody_config.display()),
                "run `sudo corvid doctor` (Prosody's config is readable by root and the prosody group), or pass --prosody-config",
            )),
        }
    }
    if json_out {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "checks": health.checks, "worst": health.worst() })
            )
            .unwrap_or_default()
        );
    } else {
        out!("{}", health.render());
    }
    Ok(health.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = r#"
-- Prosody's config (Debian's defaults, abridged)
admins = { }
modules_enabled = {
    "roster"; "saslauth"; "tls"; "dialback"; "disco";
    "limits"; -- Enable bandwidth limiting for XMPP connections
    -- "unlimited";
}
limits = {
    c2s = { rate = "10kb/s"; };
    s2sin = { rate = "30kb/s"; };
}
unlimited_jids = { "corvidd@example.org",
    "corvid.jabber.example.net" } -- "corvid.commented.example"
Include "conf.d/*.cfg.lua"
"#;

    fn files(component: &str) -> Vec<(PathBuf, String)> {
        vec![
            ("/etc/prosody/prosody.cfg.lua".into(), DEBIAN.into()),
            (
                "/etc/prosody/conf.d/example.org.cfg.lua".into(),
                format!(
                    "VirtualHost \"example.org\"\n{component}\nVirtualHost \"other.example\"\n    modules_enabled = {{ \"limits\" }}\n"
                ),
            ),
        ]
    }

    fn peers() -> Vec<(String, String)> {
        vec![
            (
                "jabber.example.net".into(),
                "corvid.jabber.example.net".into(),
            ),
            (
                "commented.example".into(),
                "corvid.commented.example".into(),
            ),
        ]
    }

    fn verdicts(checks: &[Check]) -> Vec<(String, &'static str)> {
        checks
            .iter()
            .map(|c| (c.name.clone(), c.severity.as_str()))
            .collect()
    }

    #[test]
    fn a_component_with_limits_and_one_peer_listed() {
        let checks = prosody_checks(
            &files(
                "Component \"corvid.example.org\"\n    component_secret = \"s\"\n    modules_enabled = { \"limits\" }",
            ),
            "corvid.example.org",
            &peers(),
        );
        assert_eq!(
            verdicts(&checks),
            vec![
                ("prosody.component".into(), "ok"),
                ("prosody.limits".into(), "ok"),
                ("prosody.unlimited.jabber.example.net".into(), "ok"),
                ("prosody.unlimited.commented.example".into(), "warn"),
            ]
        );
    }

    #[test]
    fn limits_missing_on_the_component_host_fails() {
        // A VirtualHost after it loads limits: that is not the component's.
        let checks = prosody_checks(
            &files("Component \"corvid.example.org\"\n    component_secret = \"s\""),
            "corvid.example.org",
            &peers(),
        );
        assert_eq!(verdicts(&checks)[1], ("prosody.limits".into(), "FAIL"));
    }

    #[test]
    fn no_component_fails_and_no_limits_needs_nothing() {
        let checks = prosody_checks(&files(""), "corvid.example.org", &peers());
        assert_eq!(
            verdicts(&checks),
            vec![("prosody.component".into(), "FAIL")]
        );
        let plain = vec![(
            PathBuf::from("/etc/prosody/prosody.cfg.lua"),
            "modules_enabled = { \"roster\" }\nComponent \"corvid.example.org\"\n  component_secret = \"x\"\n".to_owned(),
        )];
        let checks = prosody_checks(&plain, "corvid.example.org", &peers());
        assert_eq!(
            verdicts(&checks),
            vec![
                ("prosody.component".into(), "ok"),
                ("prosody.limits".into(), "ok")
            ]
        );
    }

    #[test]
    fn mod_corvid_is_found_and_its_url_checked() {
        let with = |lines: &str| {
            vec![(
                PathBuf::from("/etc/prosody/prosody.cfg.lua"),
                lines.to_owned(),
            )]
        };
        let verdict = |files: &[(PathBuf, String)]| {
            let c = &module_checks(files, Some(7780))[0];
            (c.severity, c.message.clone())
        };
        let (sev, msg) = verdict(&with("modules_enabled = { \"roster\" }\n"));
        assert_eq!(sev, corvid_api::health::Severity::Warn, "{msg}");
        let (sev, msg) = verdict(&with(
            "modules_enabled = { \"roster\"; \"corvid\" }\ncorvid_api_url = \"http://127.0.0.1:7780\"\ncorvid_mode = \"enforce\"\n",
        ));
        assert_eq!(sev, corvid_api::health::Severity::Ok, "{msg}");
        assert!(msg.contains("enforce"), "{msg}");
        let (sev, msg) = verdict(&with(
            "modules_enabled = { \"corvid\" }\ncorvid_api_url = \"http://127.0.0.1:9999\"\n",
        ));
        assert_eq!(sev, corvid_api::health::Severity::Fail, "{msg}");
        let (sev, msg) = verdict(&with(
            "modules_enabled = { \"corvid\" }\ncorvid_api_url = \"http://192.0.2.7:7780\"\n",
        ));
        assert_eq!(sev, corvid_api::health::Severity::Fail, "{msg}");
        // A commented-out line does not count; the default URL does.
        let (sev, _) = verdict(&with(
            "modules_enabled = { \"corvid\" }\n-- corvid_api_url = \"http://192.0.2.7:1\"\n",
        ));
        assert_eq!(sev, corvid_api::health::Severity::Ok);
    }

    #[test]
    fn includes_are_read_from_the_config_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("conf.d")).expect("conf.d");
        std::fs::write(dir.path().join("prosody.cfg.lua"), DEBIAN).expect("main");
        std::fs::write(
            dir.path().join("conf.d/corvid.cfg.lua"),
            "Component \"corvid.example.org\"\n  component_secret = \"x\"\n  modules_enabled = { \"limits\" }\n",
        )
        .expect("include");
        std::fs::write(dir.path().join("conf.d/ignored.txt"), "Component \"x\"").expect("other");
        let files = read_config(&dir.path().join("prosody.cfg.lua")).expect("read");
        assert_eq!(files.len(), 2);
        let checks = prosody_checks(&files, "corvid.example.org", &peers()[..1]);
        assert!(
            checks.iter().all(|c| c.severity.as_str() == "ok"),
            "{checks:?}"
        );
    }
}
