//! Offline commands: keygen, init, check-config.

use std::io::IsTerminal as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use corvid_protocol::keys::{SecretKey, Signer};

/// `--server` as check-config takes it: an IP address and a port.
fn ip_port(text: &str) -> Result<String, String> {
    text.parse::<std::net::SocketAddr>()
        .map(|_| text.to_owned())
        .map_err(|_| format!("{text:?} is not IP:PORT (e.g. 127.0.0.1:5222; a name such as localhost is not taken)"))
}

/// Creates a key file; refuses to overwrite without `force`.
pub fn keygen(out: &Path, force: bool) -> Result<u8> {
    if out.exists() && !force {
        bail!(
            "{} already exists; refusing to overwrite a signing key (use --force to replace it; peers pinned the old one)",
            out.display()
        );
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let key = SecretKey::from_seed(seed);
    write_private(out, &key.to_key_file(), force)?;
    let public = key.public_key();
    outln!("wrote {} (mode 0600)", out.display());
    outln!("public key:  {public}");
    outln!("fingerprint: {}", public.fingerprint());
    outln!("Give peers the public key; they confirm the fingerprint with you out of band.");
    Ok(0)
}

fn write_private(path: &Path, text: &str, replace: bool) -> Result<()> {
    if replace {
        let _ = std::fs::remove_file(path);
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// `corvid init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Your server's main domain (asked for on a terminal if missing).
    #[arg(long)]
    domain: Option<String>,
    /// Other VirtualHosts and components this server serves.
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Where to write the config.
    #[arg(long, default_value = "corvidd.toml")]
    out: PathBuf,
    /// Directory for the key, password, secret and token files named in the config.
    #[arg(long, default_value = "/etc/corvid")]
    secrets_dir: PathBuf,
    /// corvidd's database directory.
    #[arg(long, default_value = "/var/lib/corvid")]
    data_dir: PathBuf,
    /// The XMPP server's c2s address, IP:PORT (skips SRV lookups; a
    /// plaintext link needs a loopback address).
    #[arg(long, default_value = "127.0.0.1:5222", value_parser = ip_port)]
    server: String,
    /// Where the hook API listens.
    #[arg(long, default_value = "127.0.0.1:7780")]
    listen: String,
    /// Also create random API token files in the secrets directory (0600).
    #[arg(long)]
    tokens: bool,
    /// Overwrite an existing config.
    #[arg(long)]
    force: bool,
    /// Adopt xmppbl.org's lists as your own (`block_alone`): for a server
    /// that enforced them with mod_anti_spam or mod_muc_rtbl, so that every
    /// block it had stays a block. Without it they are written commented out.
    #[arg(long)]
    adopt_xmppbl: bool,
}

/// What a Prosody operator must set for corvidd (also in the README).
pub fn prosody_settings(domain: &str, secret: Option<&str>) -> String {
    format!(
        r#"-- prosody.cfg.lua: what corvidd needs
-- 1. An account (prosodyctl asks for the password; keep it off the command line):
--      prosodyctl adduser corvidd@{domain}
-- 2. Exempt it from mod_limits' rate limits (global section):
unlimited_jids = {{ "corvidd@{domain}" }}
-- 3. A PubSub component where corvidd may create its node (admin of this component only):
Component "pubsub.{domain}" "pubsub"
    admins = {{ "corvidd@{domain}" }}
    pubsub_max_items = 256 -- at least 256: a full node silently drops its oldest item
-- Keep the default PubSub storage, not memory: Prosody 0.12's memory storage returns wrong
-- items after an in-place replacement, which this feed's head is.
-- 4. Enforcement (hooks/prosody/README.md): copy mod_corvid.lua,
--    corvid_keys.lib.lua and corvid_digest.lib.lua into a plugin
--    directory, then (global section):
plugin_paths = {{ "/usr/local/lib/corvid/prosody" }}
modules_enabled = {{ --[[ … ]] "corvid" }}
corvid_api_url = "http://127.0.0.1:7780"
corvid_api_token_file = "/etc/prosody/corvid-read.token" -- a copy of corvidd's read token, readable by prosody
corvid_mode = "observe" -- "enforce" once `corvid status` shows what it would refuse
-- 5. corvidd's component: the PubSub service of the block lists that the standard
--    modules read (global section; the component protocol is plaintext, so loopback):
component_ports = {{ 5347 }}
component_interfaces = {{ "127.0.0.1" }}
Component "corvid.{domain}"
    component_secret = "{secret}"
    -- mod_limits here too: its unlimited_jids only applies on hosts that load it
    modules_enabled = {{ "limits" }}
--    and list each trusted peer's component in unlimited_jids (global section),
--    e.g. unlimited_jids = {{ "corvidd@{domain}", "corvid.peer.example" }}:
--    Debian's mod_limits throttles its s2s stream to 30 kB/s otherwise.
--    Other servers reach it over s2s: give corvid.{domain} a DNS record and
--    a certificate, as for any component. Your feed is then
--    xmpp:corvid.{domain}?;node=corvid (peers with the component follow that).
-- 6. Optional, servers without mod_corvid: the standard modules read the lists.
--    Prosody 13 with prosody-modules (global section):
--      modules_enabled = {{ --[[ … ]] "anti_spam" }}
--      anti_spam_services = {{ "corvid.{domain}" }}
--    A MUC service (0.12 and 13, prosody-modules):
--      Component "conference.{domain}" "muc"
--          modules_enabled = {{ "muc_rtbl" }}
--          muc_rtbl_jid = "corvid.{domain}"
--    and list each such host in corvidd's [component] list_consumers.
"#,
        secret = secret.unwrap_or("the content of corvidd's component.secret"),
    )
}

/// The xmppbl.org lists, adopted (`block_alone`) or commented out.
fn xmppbl_lines(adopt: bool) -> String {
    let mut out = String::from(
        "# xmppbl.org's lists. Adopted (block_alone = true), their entries block\n\
         # alone, as with mod_anti_spam or mod_muc_rtbl; otherwise they count as\n\
         # low-trust sources (weight at most 0.5, never part of a quorum).\n",
    );
    for node in ["muc_bans_sha256", "spam_source_domains"] {
        let block =
            format!("[[rtbl]]\nservice = \"xmppbl.org\"\nnode = \"{node}\"\nblock_alone = true\n");
        if adopt {
            out.push_str(&block);
        } else {
            out.extend(block.lines().map(|l| format!("# {l}\n")));
        }
    }
    out
}

/// Writes a commented config.
pub fn init(a: &InitArgs) -> Result<u8> {
    if a.out.exists() && !a.force {
        bail!("{} exists; use --force to overwrite it", a.out.display());
    }
    let domain = match &a.domain {
        Some(d) => d.clone(),
        None if std::io::stdin().is_terminal() => {
            eprint!("Your XMPP server's main domain: ");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim().to_owned()
        }
        None => {
            return Err(crate::usage(
                "--domain is required when stdin is not a terminal".into(),
            ));
        }
    };
    let domain = corvid_protocol::subject::normalize_domain(&domain)
        .map_err(|e| crate::usage(format!("--domain: {e}")))?;
    let mut hosts = vec![domain.clone()];
    hosts.extend(a.hosts.iter().cloned());
    let s = |f: &str| a.secrets_dir.join(f).display().to_string();
    let hosts_toml: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    let text = format!(
        r#"# corvidd configuration for {domain}, written by `corvid init`.
# Check it with `corvid check-config {out}`; every key is documented in
# node/corvidd.example.toml. Unknown keys are errors.
#
{prosody}
data_dir = "{data}"

[xmpp]
# corvidd's own account on your server.
jid = "corvidd@{domain}"
# Put the account's password in this file (chmod 600).
password_file = "{pw}"
server = "{server}"
# STARTTLS, checked against the system roots. "plaintext" only on loopback.
tls = "starttls"

[feed]
# Your PubSub component; corvidd creates and configures node "corvid" there.
service = "pubsub.{domain}"
node = "corvid"
access_model = "open"

[server]
domain = "{domain}"
# Every VirtualHost and component: never blocked (canaries).
hosts = [{hosts}]

[keys]
# Create it with: corvid keygen --out {key}
signing_key_file = "{key}"

# The federation's shared secret for IP tokens (hex), from its coordinator:
# [[keys.federation]]
# id = "federation-2026"
# secret_file = "{secrets}/federation.secret"

# Peers: add them with `corvid peer add DOMAIN --feed ... --key ...`
# or `corvid peer add DOMAIN --from-directory` once you joined a directory.

{rtbls}

[policy]
quorum = 2
default_ttl_days = 30

[api]
listen = "{listen}"
read_token_file = "{read}"
write_token_file = "{write}"

[component]
# corvidd as a component of your server (Prosody: the Component lines above):
# it serves muc_bans_sha256, spam_source_jids_sha256 and spam_source_domains
# from your block verdicts, for mod_anti_spam, mod_muc_rtbl and ejabberd.
jid = "corvid.{domain}"
secret_file = "{component_secret}"
server = "127.0.0.1:5347"
# Your own hosts that read the lists (their start-up fetch can come before
# corvidd connects): the VirtualHost for mod_anti_spam, the MUC service for
# mod_muc_rtbl. Other servers are remembered when they fetch or subscribe.
list_consumers = ["{domain}"]

# To appear in a federation directory:
# [directory]
# node = "xmpp:pubsub.example.net?;node=corvid-directory"
# abuse = ["mailto:abuse@{domain}"]
# listing_policy = "We list subjects after two independent reports."
# delisting_policy = "Write to abuse@{domain}; we answer within two days."
"#,
        out = a.out.display(),
        prosody = prosody_settings(&domain, None)
            .lines()
            .map(|l| format!("# {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        data = a.data_dir.display(),
        pw = s("xmpp-password"),
        server = a.server,
        hosts = hosts_toml.join(", "),
        key = s("signing.key"),
        secrets = a.secrets_dir.display(),
        listen = a.listen,
        read = s("read.token"),
        write = s("write.token"),
        rtbls = xmppbl_lines(a.adopt_xmppbl),
        component_secret = s("component.secret"),
    );
    std::fs::write(&a.out, text).with_context(|| format!("cannot write {}", a.out.display()))?;
    outln!("wrote {}", a.out.display());
    if a.tokens {
        std::fs::create_dir_all(&a.secrets_dir)?;
        for name in ["read.token", "write.token", "component.secret"] {
            let p = a.secrets_dir.join(name);
            if !p.exists() {
                let mut t = [0u8; 24];
                getrandom::fill(&mut t).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let token: String = t.iter().map(|b| format!("{b:02x}")).collect();
                write_private(&p, &format!("{token}\n"), false)?;
                outln!("wrote {} (mode 0600)", p.display());
            }
        }
    }
    // The steps left, in order; done ones are not repeated.
    let mut next = String::from("\nNext (as the user corvidd runs as, e.g. `sudo -u corvid …`):\n");
    if !a.secrets_dir.join("signing.key").exists() {
        next.push_str(&format!("  corvid keygen --out {}\n", s("signing.key")));
    }
    if !a.secrets_dir.join("xmpp-password").exists() {
        next.push_str(&format!(
            "  put corvidd's XMPP password in {0}, readable by corvidd alone:\n    (umask 077; cat > {0})   # type it, then Ctrl-D\n",
            s("xmpp-password")
        ));
    }
    next.push_str(&format!(
        "  corvid check-config {}\n  set up Prosody:\n",
        a.out.display()
    ));
    outln!("{next}");
    let secret = std::fs::read_to_string(a.secrets_dir.join("component.secret")).ok();
    out!(
        "{}",
        prosody_settings(&domain, secret.as_deref().map(str::trim))
    );
    Ok(0)
}

/// Lists every problem in a config.
pub fn check_config(file: &Path, json_out: bool) -> Result<u8> {
    let config =
        corvid_api::config::Config::parse_file(file).map_err(|e| crate::usage(format!("{e:#}")))?;
    let problems = config.problems();
    if json_out {
        let list: Vec<serde_json::Value> = problems
            .iter()
            .map(|p| serde_json::json!({"key": p.key, "message": p.message, "hint": p.hint}))
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "file": file.display().to_string(),
                "ok": problems.is_empty(),
                "problems": list,
            }))
            .unwrap_or_default()
        );
        return Ok(if problems.is_empty() { 0 } else { 2 });
    }
    if problems.is_empty() {
        outln!("{}: ok", file.display());
        return Ok(0);
    }
    for p in &problems {
        outln!("{p}");
    }
    outln!("{} problem(s) in {}", problems.len(), file.display());
    Ok(2)
}
