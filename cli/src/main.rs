//! corvid: the operator's tool for a Corvid node.
//!
//! It edits corvidd's config (keeping comments), talks to the local
//! corvidd's API (address and tokens read from that same config), and
//! works offline for `keygen`, `init` and `check-config`.

use corvid_api::client as api;

/// Exit code when the reader of the output went away: what a shell reports
/// for a program stopped by SIGPIPE (128 + 13).
const EXIT_CLOSED_PIPE: i32 = 141;

/// Writes to standard output; a reader that closed the pipe
/// (`corvid peer list | head -1`) ends the command quietly, with
/// [`EXIT_CLOSED_PIPE`], instead of a panic.
fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_CLOSED_PIPE);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `print!` through [`emit`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::emit(format_args!($($arg)*)) };
}

/// `println!` through [`emit`].
macro_rules! outln {
    () => { $crate::emit(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::emit(format_args!("{}\n", format_args!($($arg)*))) };
}

mod doctor;
mod edit;
mod lists;
mod setup;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::api::{Failure, Node, enc};

const EXIT_CODES: &str = "Exit codes: 0 success; 1 failure; 2 bad usage or config problems; \
3 corvidd not reachable; 4 no such subject or peer; 5 `status` found a failing check.";

#[derive(Parser, Debug)]
#[command(name = "corvid", version, about = "Operate a Corvid node: report spammers, check verdicts, manage peers", after_help = EXIT_CODES)]
struct Cli {
    /// corvidd's config file (the API address and tokens are read from it).
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "CORVID_CONFIG",
        default_value = "/etc/corvid/corvidd.toml"
    )]
    config: PathBuf,
    /// Print JSON instead of text (read commands).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a signing key (mode 0600) and print its public key and fingerprint.
    Keygen {
        /// Where to write the key.
        #[arg(long, default_value = "signing.key")]
        out: PathBuf,
        /// Overwrite an existing key file (the old key is lost).
        #[arg(long)]
        force: bool,
    },
    /// Write a commented corvidd config for joining a federation.
    Init(setup::InitArgs),
    /// Check a corvidd config file and list every problem with a hint.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Report a subject: a JID, a domain (*.domain for subdomains), ip:ADDR[/LEN], or digest: (body from --body-file or stdin).
    Report(ReportArgs),
    /// Withdraw this server's report about a subject.
    Retract {
        /// The subject, as reported.
        subject: String,
        /// Why: false-positive or resolved.
        #[arg(long, default_value = "false-positive")]
        reason: String,
    },
    /// Show the action and score for subjects.
    Verdict {
        /// JIDs, domains, ip:ADDR, ip:ADDR/LEN, digest:HEX or subject keys.
        #[arg(required_unless_present = "body_file")]
        subjects: Vec<String>,
        /// Also the verdict of a message body's content digest (spec §10),
        /// computed here from the file; the text goes nowhere.
        #[arg(long, value_name = "FILE")]
        body_file: Option<PathBuf>,
    },
    /// Explain a verdict: every contributing report with issuer, weight, age, decay, mode, expiry and status.
    Why {
        /// The subject.
        subject: String,
    },
    /// Manage peers (edits the config and has corvidd reload it).
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Import a list as a local source (published under this server's key only with --publish).
    Import(lists::ImportArgs),
    /// Export verdicts, including the public shame list of blocked domains.
    Export(lists::ExportArgs),
    /// Health, peers, freshness, counts and warnings.
    Status,
    /// Checks the XMPP link now: the component, a ping of every peer's feed service over s2s (which also proves they reach this server back), and Prosody's settings for it (the Component, mod_limits on it, unlimited_jids for each peer's component).
    Doctor {
        /// Prosody's config file (its Include'd files are read too).
        #[arg(long, default_value = "/etc/prosody/prosody.cfg.lua")]
        prosody_config: PathBuf,
    },
    /// The federation directory.
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Rotate or revoke this server's signing key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The emergency brake: `on` makes every XMPP server running mod_corvid observe (nothing refused) within a second; `off` releases it.
    Brake {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Why (shown in `corvid status`).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Switch to a new key (from `corvid keygen`): publishes a rotation signed by the old key, rewrites the feed, and updates the config.
    Rotate {
        /// The new key file.
        #[arg(long)]
        to: PathBuf,
    },
    /// Publish a revocation of the current key: every report it signed stops counting at peers. Then generate a new key and give peers its fingerprint.
    Revoke {
        /// Why (shown to peers).
        #[arg(long)]
        reason: Option<String>,
        /// Do it without asking (scripts).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Parser, Debug)]
struct ReportArgs {
    /// The subject.
    subject: String,
    /// spam, abuse, phishing, malware, bulk-registration, muc-spam, open-relay, tor-exit or open-proxy.
    #[arg(long)]
    category: String,
    /// How sure you are, 1-100.
    #[arg(long, default_value_t = 80)]
    confidence: u8,
    /// Lifetime: 30d, 12h, 90m or seconds (default from the config, at most 90d).
    #[arg(long)]
    ttl: Option<String>,
    /// A short note for other operators (no message text unless you mean it).
    #[arg(long)]
    note: Option<String>,
    /// Incidents seen.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Domain reports: you notified the domain's abuse contact (Unix time, or "now").
    #[arg(long)]
    abuse_contacted: Option<String>,
    /// For digest: subjects, the message body file ("-" for stdin).
    #[arg(long)]
    body_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum PeerCommand {
    /// Trust a peer's feed.
    Add {
        /// The peer's server domain.
        domain: String,
        /// Its feed, xmpp:pubsub.DOMAIN?;node=corvid.
        #[arg(long, required_unless_present = "from_directory")]
        feed: Option<String>,
        /// Its public key (ed25519:...), checked out of band.
        #[arg(long, required_unless_present = "from_directory")]
        key: Option<String>,
        /// Take feed and key from the member's verified directory card.
        #[arg(long)]
        from_directory: bool,
        /// Trust weight 0.0-1.0.
        #[arg(long, default_value_t = 1.0)]
        weight: f64,
        /// enforce or observe.
        #[arg(long, default_value = "enforce")]
        mode: String,
        /// Confirm the fingerprint without asking (scripts).
        #[arg(long)]
        yes: bool,
    },
    /// List peers with sync state, counts, rejections and pending rotations.
    List,
    /// Stop trusting a peer.
    Remove {
        /// Domain.
        domain: String,
    },
    /// Change a peer's weight.
    SetWeight {
        /// Domain.
        domain: String,
        /// 0.0-1.0.
        weight: f64,
    },
    /// Show a peer's reports without counting them.
    Observe {
        /// Domain.
        domain: String,
    },
    /// Count a peer's reports again (also lifts a canary suspension).
    Enforce {
        /// Domain.
        domain: String,
    },
    /// Accept a peer's pending key rotation.
    ConfirmRotation {
        /// Domain.
        domain: String,
    },
}

#[derive(Subcommand, Debug)]
enum FederationCommand {
    /// Publish this server's signed membership card on the directory.
    Announce,
    /// List the directory's members: signature, domain verification, peer status.
    Members,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e.downcast_ref::<Failure>().map_or(1, |f| f.code);
            eprintln!("error: {e:#}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

/// An error that is the caller's to fix (exit 2).
fn usage(message: String) -> anyhow::Error {
    anyhow::anyhow!(Failure {
        code: api::EXIT_USAGE,
        message
    })
}

fn node(cli: &Cli) -> Result<Node> {
    Node::from_config(&cli.config)
}

fn print(cli: &Cli, v: &Value, text: impl FnOnce(&Value) -> String) {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        out!("{}", text(v));
    }
}

fn run(cli: &Cli) -> Result<u8> {
    // --json is for commands that print something to read; the others
    // refuse it rather than ignore it.
    let text_only = matches!(
        &cli.command,
        Command::Keygen { .. }
            | Command::Init(_)
            | Command::Export(_)
            | Command::Peer(
                PeerCommand::Add { .. }
                    | PeerCommand::Remove { .. }
                    | PeerCommand::SetWeight { .. }
                    | PeerCommand::Observe { .. }
                    | PeerCommand::Enforce { .. }
                    | PeerCommand::ConfirmRotation { .. }
            )
    );
    if cli.json && text_only {
        return Err(usage(
            "--json is for the commands that read (status, verdict, why, peer list, check-config, …); this one changes something and prints text".into(),
        ));
    }
    match &cli.command {
        Command::Keygen { out, force } => setup::keygen(out, *force),
        Command::Init(args) => setup::init(args),
        Command::CheckConfig { file } => setup::check_config(file, cli.json),
        Command::Report(args) => report(cli, args),
        Command::Retract { subject, reason } => {
            let v = node(cli)?
                .delete(&format!(
                    "/v1/reports/{}?reason={}",
                    enc(subject),
                    enc(reason)
                ))?
                .ok()?;
            print(cli, &v, |v| {
                format!(
                    "retracted {} (tombstone {}); peers drop this server's contribution\n",
                    v["subject"].as_str().unwrap_or(""),
                    v["tombstone"].as_str().unwrap_or("")
                )
            });
            Ok(0)
        }
        Command::Verdict {
            subjects,
            body_file,
        } => {
            let mut subjects = subjects.clone();
            if let Some(path) = body_file {
                let body = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                match corvid_protocol::digest::body_digest(&body) {
                    Some(key) => subjects.push(key.to_string()),
                    None => bail!(
                        "{} is too short for a content digest (spec §10: fewer than {} characters once normalized)",
                        path.display(),
                        corvid_protocol::digest::MIN_NORMALIZED_CHARS
                    ),
                }
            }
            let n = node(cli)?;
            // One bad subject is reported beside the others' verdicts; it
            // does not hide them.
            let mut all = Vec::new();
            let mut bad = 0;
            for s in &subjects {
                let reply = n.get(&format!("/v1/verdict?subject={}", enc(s)))?;
                let mut v = if reply.status == 400 {
                    bad += 1;
                    json!({"error": reply.json["error"].as_str().unwrap_or("not a subject")})
                } else {
                    reply.ok()?
                };
                v["subject"] = json!(s);
                all.push(v);
            }
            print(cli, &json!(all), show::verdicts);
            Ok(if bad > 0 { 2 } else { 0 })
        }
        Command::Why { subject } => {
            let v = node(cli)?
                .get(&format!("/v1/explain?subject={}", enc(subject)))?
                .ok()?;
            print(cli, &v, |v| show::why(subject, v));
            Ok(0)
        }
        Command::Peer(p) => peer(cli, p),
        Command::Import(args) => lists::import(cli.json, &node(cli)?, args),
        Command::Export(args) => lists::export(&node(cli)?, args),
        Command::Status => {
            let n = node(cli)?;
            let health = n.get("/healthz")?.json;
            let mut v = n.get("/v1/status")?.ok()?;
            v["health"] = health;
            print(cli, &v, show::status);
            // A failing check fails the command, so that scripts and
            // monitoring see what the operator would read.
            Ok(if v["worst"].as_str() == Some("fail") {
                corvid_api::health::EXIT_UNHEALTHY
            } else {
                0
            })
        }
        Command::Doctor { prosody_config } => doctor::run(&node(cli)?, prosody_config, cli.json),
        Command::Federation(FederationCommand::Announce) => {
            let v = node(cli)?
                .post("/v1/federation/announce", &json!({}))?
                .ok()?;
            print(cli, &v, |v| {
                format!(
                    "announced {} with key {}\n",
                    v["announced"]["domain"].as_str().unwrap_or(""),
                    v["announced"]["key"].as_str().unwrap_or("")
                )
            });
            Ok(0)
        }
        Command::Brake { state, reason } => {
            let on = state == "on";
            let v = node(cli)?
                .post("/v1/admin/brake", &json!({"on": on, "reason": reason}))?
                .ok()?;
            print(cli, &v, |_| {
                if on {
                    "emergency brake on: servers running mod_corvid observe and refuse nothing until `corvid brake off`\n".into()
                } else {
                    "emergency brake off: servers enforce again where configured\n".into()
                }
            });
            Ok(0)
        }
        Command::Key(KeyCommand::Rotate { to }) => {
            let abs = std::fs::canonicalize(to).map_err(|e| {
                usage(format!(
                    "cannot find the new key {} ({e}): make it first with `corvid keygen --out {}`",
                    to.display(),
                    to.display()
                ))
            })?;
            let v = node(cli)?
                .post(
                    "/v1/keys/rotate",
                    &json!({"new_key_file": abs.display().to_string()}),
                )?
                .ok()?;
            let mut doc = edit::load(&cli.config)?;
            doc["keys"]["signing_key_file"] = toml_edit::value(abs.display().to_string());
            edit::save(&cli.config, &doc)?;
            print(cli, &v, |v| {
                format!(
                    "rotated to {}
fingerprint {}
The rotation is published (signed by the old key); peers that accept rotations follow at once, others run `corvid peer confirm-rotation`. The config now names the new key.
",
                    v["new_key"].as_str().unwrap_or(""),
                    v["fingerprint"].as_str().unwrap_or("")
                )
            });
            Ok(0)
        }
        Command::Key(KeyCommand::Revoke { reason, yes }) => {
            if !*yes {
                confirm(
                    "Revoke this server's signing key? Every report it signed stops counting at every peer.\n",
                )?;
            }
            let v = node(cli)?
                .post("/v1/keys/revoke", &json!({"reason": reason}))?
                .ok()?;
            print(cli, &v, |v| {
                format!(
                    "revoked {}
Next: `corvid keygen --out NEW.key`, point keys.signing_key_file at it, restart corvidd, and give peers the new fingerprint (a revoked key cannot vouch for its successor).
",
                    v["revoked_key"].as_str().unwrap_or("")
                )
            });
            Ok(0)
        }
        Command::Federation(FederationCommand::Members) => {
            let v = node(cli)?.get("/v1/federation/members")?.ok()?;
            print(cli, &v, show::members);
            Ok(0)
        }
    }
}

/// Parses 30d, 12h, 90m, 45s or plain seconds.
fn parse_ttl(text: &str) -> Result<u64> {
    let (num, unit) = text.trim().split_at(
        text.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.trim().len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| usage(format!("--ttl {text:?}: expected e.g. 30d, 12h, 90m")))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(usage(format!("--ttl {text:?}: unit must be s, m, h or d"))),
    };
    Ok(n * mult)
}

fn report(cli: &Cli, a: &ReportArgs) -> Result<u8> {
    let subject = if let Some(rest) = a.subject.strip_prefix("digest:")
        && (rest.is_empty() || rest == "-")
    {
        let body = match a.body_file.as_deref() {
            Some(p) if p != std::path::Path::new("-") => std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?,
            _ => std::io::read_to_string(std::io::stdin())
                .context("reading the message body from stdin")?,
        };
        match corvid_protocol::digest::body_digest(&body) {
            Some(k) => k.to_string(),
            None => bail!(
                "the body is too short for a digest (fewer than {} characters after normalization)",
                corvid_protocol::digest::MIN_NORMALIZED_CHARS
            ),
        }
    } else {
        a.subject.clone()
    };
    let abuse = match a.abuse_contacted.as_deref() {
        None => None,
        Some("now") => Some(corvid_api::now()),
        Some(t) => Some(
            t.parse::<u64>()
                .context("--abuse-contacted takes a Unix time or \"now\"")?,
        ),
    };
    let body = json!({
        "subject": subject,
        "category": a.category,
        "confidence": a.confidence,
        "ttl_secs": a.ttl.as_deref().map(parse_ttl).transpose()?,
        "note": a.note,
        "count": a.count,
        "abuse_contacted_at": abuse,
    });
    let v = node(cli)?.post("/v1/reports", &body)?.ok()?;
    print(cli, &v, |v| {
        format!(
            "{}\nreport stored durably; it is being published to this server's feed.\nsubject {} expires {}\n",
            v["id"].as_str().unwrap_or(""),
            v["subject"].as_str().unwrap_or(""),
            edit::date(v["expires_at"].as_u64().unwrap_or(0))
        )
    });
    Ok(0)
}

/// Has corvidd reload the config just saved; the exit code. A corvidd that
/// is not running reads the file when it starts (0, as when peers are added
/// before the first start); a running one that refuses the file (a typo, a
/// bad value) did not apply the change: that is a failure (2 for config
/// problems), not a success.
fn reload(cli: &Cli) -> Result<u8> {
    let saved = cli.config.display();
    let node = match Node::from_config(&cli.config) {
        Ok(n) => n,
        Err(e) => {
            eprintln!(
                "saved {saved}, but the file now has a problem ({e:#}): run `corvid check-config {saved}`"
            );
            return Ok(2);
        }
    };
    match node.post("/v1/admin/reload", &json!({})) {
        Err(e)
            if e.downcast_ref::<Failure>()
                .is_some_and(|f| f.code == api::EXIT_UNREACHABLE) =>
        {
            eprintln!("saved {saved}; corvidd is not running: it reads the file when it starts");
            Ok(0)
        }
        Err(e) => Err(e),
        Ok(reply) if (200..300).contains(&reply.status) => {
            let restart: Vec<&str> = reply.json["restart_needed"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if restart.is_empty() {
                eprintln!("saved {saved}; corvidd reloaded it");
            } else {
                eprintln!(
                    "saved {saved}; corvidd reloaded it, but these changes apply only after `systemctl restart corvidd`: {}",
                    restart.join(", ")
                );
            }
            Ok(0)
        }
        Ok(reply) => {
            let why = reply.json["error"]
                .as_str()
                .map_or_else(|| reply.json.to_string(), str::to_owned);
            eprintln!(
                "saved {saved}, but corvidd refused to reload it and keeps running on the previous settings: {why}\n  fix the file (`corvid check-config {saved}`), then `systemctl reload corvidd`"
            );
            Ok(if reply.status == 400 { 2 } else { 1 })
        }
    }
}

fn peer(cli: &Cli, p: &PeerCommand) -> Result<u8> {
    let path = &cli.config;
    match p {
        PeerCommand::List => {
            let v = node(cli)?.get("/v1/peers")?.ok()?;
            print(cli, &v, show::peers);
            return Ok(0);
        }
        PeerCommand::Add {
            domain,
            feed,
            key,
            from_directory,
            weight,
            mode,
            yes,
        } => {
            // As issuers write it: `Peer.Test` is `peer.test`.
            let domain = &edit::normalize_domain(domain)?;
            let (feed, key) = if *from_directory {
                from_directory_card(cli, domain)?
            } else {
                (
                    feed.clone().unwrap_or_default(),
                    key.clone().unwrap_or_default(),
                )
            };
            let public: corvid_protocol::keys::PublicKey =
                key.parse().with_context(|| format!("--key {key:?}"))?;
            feed.parse::<corvid_protocol::item::FeedAddress>()?;
            if !(0.0..=1.0).contains(weight) {
                return Err(usage("--weight must be between 0.0 and 1.0".into()));
            }
            if mode != "enforce" && mode != "observe" {
                return Err(usage("--mode is enforce or observe".into()));
            }
            if !*yes {
                confirm(&format!(
                    "Trust {domain}? Compare this fingerprint with the one its operator gives you out of band:\n  {}\n",
                    public.fingerprint()
                ))?;
            }
            let mut doc = edit::load(path)?;
            edit::add_peer(&mut doc, domain, &feed, &key, *weight, mode)?;
            edit::save(path, &doc)?;
            outln!(
                "{domain} added ({mode}, weight {weight}, key {})",
                public.fingerprint()
            );
            outln!(
                "In Prosody's global section, so that Debian's mod_limits does not throttle its feed to 30 kB/s:\n    {}\nthen `prosodyctl reload`; `corvid doctor` checks it.",
                edit::unlimited_jids_line(&doc)
            );
        }
        PeerCommand::Remove { domain } => {
            let mut doc = edit::load(path)?;
            edit::remove_peer(&mut doc, domain).map_err(|e| {
                anyhow::anyhow!(Failure {
                    code: api::EXIT_NOT_FOUND,
                    message: e.to_string()
                })
            })?;
            edit::save(path, &doc)?;
            outln!("{domain} removed; its reports stop counting");
        }
        PeerCommand::SetWeight { domain, weight } => {
            if !(0.0..=1.0).contains(weight) {
                return Err(usage("weight must be between 0.0 and 1.0".into()));
            }
            let mut doc = edit::load(path)?;
            edit::peer_mut(&mut doc, domain)?.insert("weight", toml_edit::value(*weight));
            edit::save(path, &doc)?;
            outln!("{domain}: weight {weight}");
        }
        PeerCommand::Observe { domain } | PeerCommand::Enforce { domain } => {
            let mode = if matches!(p, PeerCommand::Observe { .. }) {
                "observe"
            } else {
                "enforce"
            };
            let mut doc = edit::load(path)?;
            edit::peer_mut(&mut doc, domain)?.insert("mode", toml_edit::value(mode));
            edit::save(path, &doc)?;
            if mode == "enforce"
                && let Ok(n) = node(cli)
            {
                let _ = n.post(&format!("/v1/peers/{}/enforce", enc(domain)), &json!({}));
            }
            outln!("{domain}: {mode}");
        }
        PeerCommand::ConfirmRotation { domain } => {
            let v = node(cli)?
                .post(
                    &format!("/v1/peers/{}/confirm-rotation", enc(domain)),
                    &json!({}),
                )?
                .ok()?;
            let key = v["accepted_key"].as_str().unwrap_or_default().to_owned();
            let mut doc = edit::load(path)?;
            edit::peer_mut(&mut doc, domain)?.insert("key", toml_edit::value(&key));
            edit::save(path, &doc)?;
            outln!("{domain}: now pinned to {key}");
        }
    }
    reload(cli)
}

fn from_directory_card(cli: &Cli, domain: &str) -> Result<(String, String)> {
    let v = node(cli)?.get("/v1/federation/members")?.ok()?;
    let members = v["members"].as_array().cloned().unwrap_or_default();
    let m = members
        .iter()
        .find(|m| m["card"]["domain"] == domain)
        .ok_or_else(|| {
            anyhow::anyhow!(Failure {
                code: api::EXIT_NOT_FOUND,
                message: format!(
                    "{domain} has no card in the directory (see `corvid federation members`)"
                )
            })
        })?;
    if m["signature_ok"] != true {
        bail!(
            "{domain}'s card does not verify: {}",
            m["signature_error"].as_str().unwrap_or("unknown")
        );
    }
    if m["domain_verified"] != true {
        bail!(
            "{domain}'s card is not domain-verified ({}); pin its key by hand only after checking it out of band",
            m["domain_error"].as_str().unwrap_or("unknown")
        );
    }
    Ok((
        m["card"]["feed"].as_str().unwrap_or_default().to_owned(),
        m["card"]["key"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn confirm(prompt: &str) -> Result<()> {
    use std::io::{BufRead as _, IsTerminal as _};
    if !std::io::stdin().is_terminal() {
        bail!(
            "{prompt}Not asking on a non-interactive stdin: pass --yes once you have compared the fingerprint"
        );
    }
    // (out! flushes.)
    out!("{prompt}Type yes to trust it: ");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "yes" {
        bail!("not confirmed; nothing changed");
    }
    Ok(())
}

#[cfg(test)]
mod readme {
    use clap::Parser as _;

    /// Splits a shell line into words, honouring single and double quotes.
    fn words(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut quote = None;
        let mut any = false;
        for c in line.chars() {
            match (quote, c) {
                (None, '\'' | '"') => {
                    quote = Some(c);
                    any = true;
                }
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => {
                    if any || !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                    any = false;
                }
                (_, c) => cur.push(c),
            }
        }
        if any || !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    #[test]
    fn every_corvid_command_in_the_readme_parses() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let mut in_sh = false;
        let mut checked = 0;
        for line in readme.lines() {
            let t = line.trim();
            if t.starts_with("```") {
                in_sh = t == "```sh";
                continue;
            }
            let Some(cmd) = t
                .strip_prefix("sudo -u corvid ")
                .or_else(|| t.strip_prefix("sudo "))
                .or(Some(t))
                .filter(|c| in_sh && c.starts_with("corvid "))
            else {
                continue;
            };
            let args = words(cmd);
            if let Err(e) = super::Cli::try_parse_from(&args) {
                panic!("README command does not parse: {cmd}\n{e}");
            }
            checked += 1;
        }
        assert!(
            checked >= 15,
            "only {checked} corvid commands found in the README"
        );
    }
}
