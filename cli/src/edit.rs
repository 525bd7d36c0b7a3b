//! Editing corvidd's config file in place, keeping comments and layout
//! (toml_edit), then asking the running node to reload it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use corvid_api::config::same_domain;
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

/// Loads the config as an editable document.
///
/// # Errors
/// IO or TOML errors.
pub fn load(path: &Path) -> Result<DocumentMut> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.parse::<DocumentMut>()
        .with_context(|| format!("{} is not valid TOML", path.display()))
}

/// Writes it back atomically, keeping the file's permissions.
///
/// # Errors
/// IO errors.
pub fn save(path: &Path, doc: &DocumentMut) -> Result<()> {
    let tmp = path.with_extension("toml.corvid-tmp");
    std::fs::write(&tmp, doc.to_string())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions())?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn peers(doc: &mut DocumentMut) -> Result<&mut ArrayOfTables> {
    if doc.get("peer").is_none() {
        doc.insert("peer", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    doc.get_mut("peer")
        .and_then(Item::as_array_of_tables_mut)
        .context("`peer` in the config is not a [[peer]] list")
}

/// Finds a peer's table by domain.
///
/// # Errors
/// When the peer is not in the config.
pub fn peer_mut<'a>(doc: &'a mut DocumentMut, domain: &str) -> Result<&'a mut Table> {
    let list = peers(doc)?;
    for t in list.iter_mut() {
        if t.get("domain")
            .and_then(Item::as_str)
            .is_some_and(|d| same_domain(d, domain))
        {
            return Ok(t);
        }
    }
    Err(anyhow::anyhow!(corvid_api::client::Failure {
        code: corvid_api::client::EXIT_NOT_FOUND,
        message: format!("{domain} is not a peer in this config (see `corvid peer list`)"),
    }))
}

/// A domain as issuers write it (spec §8.3): `Peer.Test` is `peer.test`.
///
/// # Errors
/// When it is not a domain.
pub fn normalize_domain(domain: &str) -> Result<String> {
    corvid_protocol::subject::normalize_domain(domain)
        .map_err(|e| anyhow::anyhow!("{domain:?} is not a domain: {e}"))
}

/// Whether `domain` is this server's own domain or one of its hosts
/// (`[server]`).
fn own_domain(doc: &DocumentMut, domain: &str) -> bool {
    let server = doc.get("server");
    let main = server.and_then(|s| s.get("domain")).and_then(Item::as_str);
    let hosts = server
        .and_then(|s| s.get("hosts"))
        .and_then(Item::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
        .unwrap_or_default();
    main.into_iter()
        .chain(hosts)
        .any(|own| same_domain(own, domain))
}

/// Adds a peer.
///
/// # Errors
/// When it is already there.
pub fn add_peer(
    doc: &mut DocumentMut,
    domain: &str,
    feed: &str,
    key: &str,
    weight: f64,
    mode: &str,
) -> Result<()> {
    let domain = &normalize_domain(domain)?;
    if own_domain(doc, domain) {
        bail!(
            "{domain} is this server's own domain (or one of its hosts): a server cannot be its own peer"
        );
    }
    let list = peers(doc)?;
    if list.iter().any(|t| {
        t.get("domain")
            .and_then(Item::as_str)
            .is_some_and(|d| same_domain(d, domain))
    }) {
        bail!("{domain} is already a peer; use `corvid peer set-weight` or remove it first");
    }
    let mut t = Table::new();
    t.decor_mut()
        .set_prefix(format!("\n# Added by `corvid peer add` on {}.\n", today()));
    t.insert("domain", value(domain));
    t.insert("feed", value(feed));
    t.insert("key", value(key));
    t.insert("weight", value(weight));
    t.insert("mode", value(mode));
    list.push(t);
    Ok(())
}

/// Removes a peer.
///
/// # Errors
/// When it is not there.
pub fn remove_peer(doc: &mut DocumentMut, domain: &str) -> Result<()> {
    let list = peers(doc)?;
    let before = list.len();
    list.retain(|t| {
        !t.get("domain")
            .and_then(Item::as_str)
            .is_some_and(|d| same_domain(d, domain))
    });
    if list.len() == before {
        bail!("{domain} is not a peer in this config (see `corvid peer list`)");
    }
    Ok(())
}

fn today() -> String {
    date(corvid_api::now())
}

/// The civil date (UTC) of a Unix time.
pub fn date(unix: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(unix).unwrap_or(i64::MAX), 0)
        .map_or_else(|| unix.to_string(), |d| d.format("%Y-%m-%d").to_string())
}

/// Prosody's `unlimited_jids` line for this config: corvidd's account (when
/// it has one) and every peer's feed service (Debian's `mod_limits`
/// throttles each peer's s2s stream to 30 kB/s unless its JID is listed).
pub fn unlimited_jids_line(doc: &DocumentMut) -> String {
    let mut jids: Vec<String> = doc
        .get("xmpp")
        .and_then(|x| x.get("jid"))
        .and_then(Item::as_str)
        .map(str::to_owned)
        .into_iter()
        .collect();
    if let Some(list) = doc.get("peer").and_then(Item::as_array_of_tables) {
        for t in list {
            let service = t
                .get("feed")
                .and_then(Item::as_str)
                .and_then(|f| f.parse::<corvid_protocol::item::FeedAddress>().ok())
                .map(|f| f.service);
            if let Some(s) = service
                && !jids.contains(&s)
            {
                jids.push(s);
            }
        }
    }
    let quoted: Vec<String> = jids.iter().map(|j| format!("\"{j}\"")).collect();
    format!("unlimited_jids = {{ {} }}", quoted.join(", "))
}
