//! corvidd's configuration file (TOML).
//!
//! Every key is documented here and in `node/corvidd.example.toml`, which
//! the tests load. Unknown keys are errors. [`Config::load`] reads and
//! checks the file; [`Config::problems`] lists every problem with a hint,
//! for `corvidd check-config`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use corvid_protocol::aggregate::{Mode, Policy, Thresholds};
use corvid_protocol::item::FeedAddress;
use corvid_protocol::keys::PublicKey;
use corvid_protocol::subject::SubjectKind;
use serde::Deserialize;

/// The storage engines `storage_engine` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageEngine {
    /// redb: one file, `corvid.redb` in `data_dir` (the default).
    #[default]
    Redb,
    /// sled 0.34, corvid 0.1's engine: the directory `sled` in `data_dir`.
    Sled,
}

/// An unknown `storage_engine`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownEngine(pub String);

impl std::fmt::Display for UnknownEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown storage_engine {:?}; expected \"redb\" or \"sled\"",
            self.0
        )
    }
}

impl std::error::Error for UnknownEngine {}

impl std::str::FromStr for StorageEngine {
    type Err = UnknownEngine;
    fn from_str(s: &str) -> Result<Self, UnknownEngine> {
        match s {
            "redb" => Ok(Self::Redb),
            "sled" => Ok(Self::Sled),
            other => Err(UnknownEngine(other.to_owned())),
        }
    }
}

impl<'de> Deserialize<'de> for StorageEngine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where corvidd keeps its database. Created if missing.
    pub data_dir: PathBuf,
    /// The storage engine: `redb` (the default; `corvid.redb` in
    /// `data_dir`) or `sled` (corvid 0.1's engine; `sled/` in `data_dir`).
    #[serde(default)]
    pub storage_engine: StorageEngine,
    /// The XMPP account corvidd logs in with.
    pub xmpp: XmppConfig,
    /// This node's own feed.
    pub feed: FeedConfig,
    /// The XMPP server corvidd runs beside.
    pub server: ServerConfig,
    /// Signing key and federation secrets.
    pub keys: KeysConfig,
    /// Trusted peers' feeds.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
    /// Unsigned xmppbl.org-style RTBL nodes.
    #[serde(default, rename = "rtbl")]
    pub rtbls: Vec<RtblConfig>,
    /// Aggregation and local lists.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// The hook API.
    pub api: ApiConfig,
    /// Federation directory (membership cards).
    #[serde(default)]
    pub directory: Option<DirectoryConfig>,
    /// corvidd as an external component (XEP-0114) of its XMPP server: the
    /// PubSub service of its block lists.
    #[serde(default)]
    pub component: Option<ComponentConfig>,
}

/// corvidd as an external component (XEP-0114): `Component
/// "corvid.example.org"` with a `component_secret` in Prosody (ejabberd:
/// a listener with `module: ejabberd_service`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The component's domain, e.g. `corvid.example.org`.
    pub jid: String,
    /// File holding the `component_secret` (mode 0600 or stricter).
    pub secret_file: PathBuf,
    /// `IP:PORT` of the server's component port (loopback: the component
    /// protocol is plaintext). Default `127.0.0.1:5347`.
    #[serde(default = "default_component_server")]
    pub server: String,
    /// The block lists served, from this server's `block` verdicts on JIDs
    /// and domains: any of `muc_bans_sha256`, `spam_source_jids_sha256`,
    /// `spam_source_domains` (default: all three).
    #[serde(default = "default_lists")]
    pub lists: Vec<String>,
    /// JIDs that always receive the lists' changes, whether or not they
    /// subscribed (e.g. `rooms.example.org` for Prosody's mod_muc_rtbl, the
    /// VirtualHost for mod_anti_spam, `example.org/rtbl-corvid` for
    /// ejabberd's mod_muc_rtbl, which takes notifications at its host's
    /// `rtbl-*` resources). Others are remembered when they subscribe or
    /// fetch a list.
    #[serde(default)]
    pub list_consumers: Vec<String>,
    /// How many consumers are remembered at most (default 1,000); beyond
    /// that requests are still answered but nobody new is remembered.
    #[serde(default = "default_max_consumers")]
    pub max_consumers: usize,
    /// Requests one remote domain may make per second (default 20).
    #[serde(default = "default_requests_per_domain")]
    pub requests_per_domain_per_sec: u32,
}

fn default_component_server() -> String {
    "127.0.0.1:5347".into()
}
/// The block lists a component serves by default.
pub const LIST_NODES: [&str; 3] = [
    "muc_bans_sha256",
    "spam_source_jids_sha256",
    "spam_source_domains",
];
fn default_lists() -> Vec<String> {
    LIST_NODES.iter().map(|s| (*s).to_owned()).collect()
}
fn default_max_consumers() -> usize {
    1000
}
fn default_requests_per_domain() -> u32 {
    20
}

/// The XMPP account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmppConfig {
    /// Bare JID of corvidd's account, e.g. `corvidd@example.org`.
    pub jid: String,
    /// File holding the account's password (mode 0600 or stricter).
    pub password_file: PathBuf,
    /// `host:port` of the server, skipping SRV lookups (e.g. `127.0.0.1:5222`).
    #[serde(default)]
    pub server: Option<String>,
    /// `starttls` (default) or `plaintext`. Plaintext is only allowed with a
    /// loopback `server`, for tests and same-host setups.
    #[serde(default)]
    pub tls: TlsMode,
    /// Seconds to wait for a login before reporting failure (default 30).
    #[serde(default = "default_login_timeout")]
    pub login_timeout_secs: u64,
    /// Seconds to wait for any IQ reply (default 30).
    #[serde(default = "default_iq_timeout")]
    pub iq_timeout_secs: u64,
}

/// How the XMPP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS, certificate checked against the system roots (or `SSL_CERT_FILE`).
    #[default]
    Starttls,
    /// No TLS. Loopback only.
    Plaintext,
}

fn default_login_timeout() -> u64 {
    30
}
fn default_iq_timeout() -> u64 {
    30
}

/// This node's feed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// PubSub service JID, e.g. `pubsub.example.org`. corvidd's account
    /// must be an admin of that component to create the node.
    pub service: String,
    /// Node name (default `corvid`).
    #[serde(default = "default_node")]
    pub node: String,
    /// `open` (anyone may read; default) or `whitelist` (only affiliated JIDs).
    #[serde(default)]
    pub access_model: AccessModel,
    /// `max_items` to configure; at least 256, never below what the layout needs.
    #[serde(default = "default_max_items")]
    pub max_items: u32,
}

fn default_node() -> String {
    "corvid".into()
}
fn default_max_items() -> u32 {
    corvid_protocol::feed::NODE_MAX_ITEMS as u32
}

/// Node access model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessModel {
    /// Anyone may subscribe and read.
    #[default]
    Open,
    /// Only JIDs on the node's whitelist.
    Whitelist,
}

impl AccessModel {
    /// The pubsub#access_model value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Whitelist => "whitelist",
        }
    }
}

/// The XMPP server corvidd serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The server's main domain: the issuer of this node's reports.
    pub domain: String,
    /// Every VirtualHost (and component) it serves. All are canaries:
    /// never blocked, and a peer reporting one is put in observe mode.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// The ed25519 signing key file (`corvid keygen`), mode 0600.
    pub signing_key_file: PathBuf,
    /// Federation secrets for IP tokens; a node may belong to several.
    #[serde(default, rename = "federation")]
    pub federations: Vec<FederationSecretConfig>,
}

/// One federation secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSecretConfig {
    /// The secret's id, 1–32 of `[a-z0-9-]`, shared by all members.
    pub id: String,
    /// File holding the secret as hex (at least 32 bytes), mode 0600.
    pub secret_file: PathBuf,
    /// Epoch length in days (default 30); must match the federation's.
    #[serde(default = "default_epoch_days")]
    pub epoch_days: u64,
    /// Tokenize new IP reports with this secret (exactly one secret should).
    #[serde(default = "yes")]
    pub issue: bool,
}

fn default_epoch_days() -> u64 {
    30
}
fn yes() -> bool {
    true
}

/// A trusted peer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's server domain (the issuer in its reports).
    pub domain: String,
    /// Its feed: `xmpp:pubsub.peer.example?;node=corvid`.
    pub feed: String,
    /// Its pinned public key: `ed25519:...`.
    pub key: String,
    /// Trust weight, 0.0–1.0 (default 1.0).
    #[serde(default = "one")]
    pub weight: f64,
    /// `enforce` (default) or `observe` (shown in explanations, never counted).
    #[serde(default)]
    pub mode: Mode,
    /// Accept the peer's key rotations without the operator (default false).
    #[serde(default)]
    pub accept_rotations: bool,
    /// Most reports stored from this peer (default 200000).
    #[serde(default = "default_max_reports")]
    pub max_reports: u64,
    /// Most new blocks this peer's reports may cause in an hour (default
    /// 1000; 0: no cap). A block it would cause beyond that is held at
    /// `flag` until the hour has room, and `status` warns: a peer that
    /// misbehaves or is compromised cannot block the world at once.
    #[serde(default = "default_max_new_blocks")]
    pub max_new_blocks_per_hour: u32,
    /// Adopt this peer's reports as your own: full weight, and `block`
    /// without waiting for a second peer (default false).
    #[serde(default)]
    pub block_alone: bool,
}

fn one() -> f64 {
    1.0
}
fn default_max_new_blocks() -> u32 {
    1000
}

fn default_max_reports() -> u64 {
    200_000
}

/// An unsigned RTBL source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtblConfig {
    /// PubSub service, e.g. `xmppbl.org`.
    pub service: String,
    /// Node: `muc_bans_sha256`, `spam_source_domains`, `spam_source_jids_sha256` or `spam_source_ips`.
    pub node: String,
    /// Weight, capped at the protocol's RTBL maximum (0.5; default 0.3).
    #[serde(default = "default_rtbl_weight")]
    pub weight: f64,
    /// Adopt this list as your own, as `mod_anti_spam` or `mod_muc_rtbl`
    /// did: its entries `block` alone (full weight, no quorum); the
    /// weight is then ignored (default false).
    #[serde(default)]
    pub block_alone: bool,
}

fn default_rtbl_weight() -> f64 {
    0.3
}

/// Thresholds for one subject kind.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindPolicy {
    /// Score from which the verdict is `flag`.
    pub flag: f64,
    /// Score from which (with quorum) the verdict is `block`.
    pub block: f64,
    /// Half-life of report weight, in days.
    pub half_life_days: f64,
}

/// Aggregation policy and local lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Distinct enforcing peers needed for `block` (default 2). This
    /// server's own reports block alone.
    pub quorum: usize,
    /// Largest accepted clock difference for a peer's issued_at (default 300 s).
    pub clock_skew_secs: u64,
    /// How long a peer's entries keep counting after they vanish from its
    /// feed without a signed retraction (default 86400 s).
    pub unconfirmed_grace_secs: u64,
    /// Default lifetime of this server's reports, in days (default 30, max 90).
    pub default_ttl_days: u64,
    /// Block a domain only when a report says its abuse contact was tried.
    pub require_abuse_contact: bool,
    /// Extra canaries: JIDs or domains never to block (own hosts are always canaries).
    pub canaries: Vec<String>,
    /// Local allow list: JIDs, domains (`*.example.org` for subdomains), `ip:ADDR[/LEN]`.
    pub allow: Vec<String>,
    /// Local deny list, same forms.
    pub deny: Vec<String>,
    /// Ingest rate limit per peer, items per second (default 2000).
    pub ingest_rate_per_sec: u32,
    /// Adopt imported lists (`corvid import`) as your own: their entries
    /// `block` alone (default false: they count with weight 0.8, never
    /// toward a quorum).
    pub imports_block_alone: bool,
    /// Per-kind thresholds and half-lives (defaults: flag 0.3, block 0.7;
    /// half-lives jid 14 d, domain 30 d, ip 7 d, digest 3 d).
    pub thresholds: BTreeMap<SubjectKind, KindPolicy>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            quorum: 2,
            clock_skew_secs: 300,
            unconfirmed_grace_secs: 86_400,
            default_ttl_days: 30,
            require_abuse_contact: false,
            canaries: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            ingest_rate_per_sec: 2000,
            imports_block_alone: false,
            thresholds: BTreeMap::new(),
        }
    }
}

impl PolicyConfig {
    /// The aggregation policy.
    pub fn aggregation(&self) -> Policy {
        let mut policy = Policy {
            quorum: self.quorum,
            require_abuse_contact: self.require_abuse_contact,
            ..Policy::default()
        };
        for (kind, k) in &self.thresholds {
            policy.thresholds.insert(
                *kind,
                Thresholds {
                    flag: k.flag,
                    block: k.block,
                    half_life_secs: (k.half_life_days * 86_400.0) as u64,
                },
            );
        }
        policy
    }
}

/// The hook API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `127.0.0.1:7780` (loopback TCP; port 0 picks one) or `unix:/run/corvid/api.sock`.
    pub listen: String,
    /// File with the token for reads (verdict, explain, stream, metrics).
    pub read_token_file: PathBuf,
    /// File with the token for writes (reports, retractions, admin).
    pub write_token_file: PathBuf,
    /// Requests per second allowed per token before 429 (default 20000; 0
    /// for no limit). The read and write tokens have a bucket each, so a
    /// busy CLI never throttles the hooks, and requests without a valid
    /// token never throttle either.
    #[serde(default = "default_rate")]
    pub rate_limit_per_sec: u32,
    /// Requests without a valid token answered per second before 429
    /// (default 100); each one's connection is closed.
    #[serde(default = "default_failed_auth_rate")]
    pub failed_auth_per_sec: u32,
    /// Largest request body in bytes (default 1 MiB).
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Most API connections open at once (default 512).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Of those, slots kept for connections that have sent a valid token
    /// (default 64): connections that have not are evicted, oldest first,
    /// when the rest are taken, so idle or half-sent connections from a
    /// neighbour cannot lock the hooks out.
    #[serde(default = "default_reserved_connections")]
    pub reserved_connections: usize,
    /// Seconds a client has to send a request's headers, and the longest a
    /// keep-alive connection stays idle between requests (default 10).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Seconds an authenticated request may take, body included (default 30).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
}

fn default_rate() -> u32 {
    20_000
}
fn default_body() -> usize {
    1 << 20
}
fn default_failed_auth_rate() -> u32 {
    100
}
fn default_max_connections() -> usize {
    512
}
fn default_reserved_connections() -> usize {
    64
}
fn default_header_timeout() -> u64 {
    10
}
fn default_request_timeout() -> u64 {
    30
}

/// Federation directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// The directory node: `xmpp:pubsub.fed.example?;node=corvid-directory`.
    pub node: String,
    /// This server's abuse contacts (XEP-0157), e.g. `mailto:abuse@example.org`.
    #[serde(default)]
    pub abuse: Vec<String>,
    /// How this server decides to list a subject.
    #[serde(default)]
    pub listing_policy: String,
    /// How to get delisted.
    #[serde(default)]
    pub delisting_policy: String,
}

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// Loopback TCP.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl ApiConfig {
    /// Parses `listen`.
    ///
    /// # Errors
    /// When it is neither a socket address nor `unix:PATH`.
    pub fn listen(&self) -> Result<Listen> {
        if let Some(path) = self.listen.strip_prefix("unix:") {
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        let addr: SocketAddr = self.listen.parse().with_context(|| {
            format!("api.listen {:?} is not ADDR:PORT or unix:PATH", self.listen)
        })?;
        Ok(Listen::Tcp(addr))
    }
}

/// A config file that parsed but has problems: corvidd exits with 2.
#[derive(Debug, thiserror::Error)]
#[error("{} has {} problem(s):\n{}", path.display(), problems.len(), problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigProblems {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, each with a hint.
    pub problems: Vec<Problem>,
}

/// One problem found by [`Config::problems`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Which setting.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub hint: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}\n  hint: {}", self.key, self.message, self.hint)
    }
}

impl Config {
    /// Reads and parses a config file, resolving relative paths against its directory.
    ///
    /// # Errors
    /// IO, TOML syntax, unknown keys.
    pub fn parse_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).with_context(|| format!("in config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        fix(&mut self.xmpp.password_file);
        fix(&mut self.keys.signing_key_file);
        for f in &mut self.keys.federations {
            fix(&mut f.secret_file);
        }
        fix(&mut self.api.read_token_file);
        fix(&mut self.api.write_token_file);
        if let Some(c) = &mut self.component {
            fix(&mut c.secret_file);
        }
    }

    /// Parses and checks; fails on the first problem list.
    ///
    /// # Errors
    /// Parse errors, or every problem [`Config::problems`] finds.
    pub fn load(path: &Path) -> Result<Self> {
        let config = Self::parse_file(path)?;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ConfigProblems {
                path: path.to_owned(),
                problems,
            }
            .into());
        }
        Ok(config)
    }

    /// Every problem, each with a hint.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut p = |key: &str, message: String, hint: &str| {
            out.push(Problem {
                key: key.into(),
                message,
                hint: hint.into(),
            });
        };
        match jid::BareJid::new(&self.xmpp.jid) {
            Ok(j) if j.node().is_some() => {}
            _ => p(
                "xmpp.jid",
                format!("{:?} is not a bare JID with a localpart", self.xmpp.jid),
                "use the account's JID, e.g. corvidd@example.org",
            ),
        }
        if self.xmpp.tls == TlsMode::Plaintext {
            let loopback = self
                .xmpp
                .server
                .as_deref()
                .and_then(|s| s.parse::<SocketAddr>().ok())
                .is_some_and(|a| a.ip().is_loopback());
            if !loopback {
                p(
                    "xmpp.tls",
                    "plaintext needs a loopback xmpp.server".into(),
                    "set xmpp.server = \"127.0.0.1:5222\" or use tls = \"starttls\"",
                );
            }
        }
        if let Some(server) = &self.xmpp.server
            && server.parse::<SocketAddr>().is_err()
        {
            p(
                "xmpp.server",
                format!("{server:?} is not IP:PORT"),
                "e.g. \"127.0.0.1:5222\"",
            );
        }
        if let Some(c) = &self.component {
            match jid::BareJid::new(&c.jid) {
                Ok(j) if j.node().is_none() && j.resource().is_none() => {}
                _ => p(
                    "component.jid",
                    format!("{:?} is not a domain JID", c.jid),
                    "the component's domain, e.g. corvid.example.org",
                ),
            }
            let loopback = c
                .server
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback());
            if !loopback {
                p(
                    "component.server",
                    format!("{:?} is not a loopback IP:PORT", c.server),
                    "the component protocol is plaintext: use the XMPP server's component port on loopback, e.g. \"127.0.0.1:5347\"",
                );
            }
            for l in &c.lists {
                if !LIST_NODES.contains(&l.as_str()) {
                    p(
                        "component.lists",
                        format!("{l:?} is not a list corvidd serves"),
                        "any of muc_bans_sha256, spam_source_jids_sha256, spam_source_domains",
                    );
                }
            }
            for j in &c.list_consumers {
                if jid::Jid::new(j).is_err() {
                    p(
                        "component.list_consumers",
                        format!("{j:?} is not a JID"),
                        "e.g. rooms.example.org (mod_muc_rtbl) or example.org (mod_anti_spam)",
                    );
                }
            }
        }
        if FeedAddress::new(&self.feed.service, &self.feed.node).is_err() {
            p(
                "feed",
                format!(
                    "service {:?} / node {:?} is not a valid feed",
                    self.feed.service, self.feed.node
                ),
                "service is a JID like pubsub.example.org, node a non-empty name",
            );
        }
        if (self.feed.max_items as usize) < corvid_protocol::feed::NODE_MAX_ITEMS {
            p(
                "feed.max_items",
                format!(
                    "{} is below the {} items the layout uses",
                    self.feed.max_items,
                    corvid_protocol::feed::NODE_MAX_ITEMS
                ),
                "a node at max_items silently drops its oldest item; use 256 or more",
            );
        }
        if corvid_protocol::subject::normalize_domain(&self.server.domain).is_err() {
            p(
                "server.domain",
                format!("{:?} is not a domain", self.server.domain),
                "the server's main domain, e.g. example.org",
            );
        }
        for h in &self.server.hosts {
            if corvid_protocol::subject::normalize_domain(h).is_err() {
                p(
                    "server.hosts",
                    format!("{h:?} is not a domain"),
                    "list each VirtualHost's domain",
                );
            }
        }
        for f in &self.keys.federations {
            if corvid_protocol::iptoken::SecretId::new(&f.id).is_err() {
                p(
                    "keys.federation.id",
                    format!("{:?} is not a valid secret id", f.id),
                    "1-32 characters of a-z, 0-9 and -",
                );
            }
            if f.epoch_days == 0 {
                p(
                    "keys.federation.epoch_days",
                    "must be at least 1".into(),
                    "use the federation's epoch length (30 by default)",
                );
            }
        }
        if self.keys.federations.iter().filter(|f| f.issue).count() > 1 {
            p(
                "keys.federation.issue",
                "more than one secret issues new IP tokens".into(),
                "set issue = false on all but the current secret",
            );
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let key = format!("peer[{i}] ({})", peer.domain);
            if peer.feed.parse::<FeedAddress>().is_err() {
                p(
                    &key,
                    format!("feed {:?} is not xmpp:SERVICE?;node=NODE", peer.feed),
                    "copy the feed address from the peer's membership card",
                );
            }
            if peer.key.parse::<PublicKey>().is_err() {
                p(
                    &key,
                    format!("key {:?} is not an ed25519: public key", peer.key),
                    "ask the peer for `corvid keygen`'s public key line and check its fingerprint out of band",
                );
            }
            if !(0.0..=1.0).contains(&peer.weight) {
                p(
                    &key,
                    format!("weight {} is outside 0.0-1.0", peer.weight),
                    "1.0 is full trust",
                );
            }
            // The pinned domain is compared exactly with the issuer of the
            // peer's items (spec §6.5 step 11), which issuers write
            // normalized: another spelling would reject every item.
            let normalized = corvid_protocol::subject::normalize_domain(&peer.domain);
            match &normalized {
                Err(e) => p(
                    &key,
                    format!("domain {:?} is not a domain: {e}", peer.domain),
                    "the peer's server domain, as in its JIDs",
                ),
                Ok(n) if *n != peer.domain => p(
                    &key,
                    format!(
                        "domain {:?} is not written as issuers write it",
                        peer.domain
                    ),
                    &format!("write domain = {n:?}"),
                ),
                Ok(_) => {}
            }
            let same = |d: &str| same_domain(d, &peer.domain);
            if self.peers.iter().filter(|q| same(&q.domain)).count() > 1 {
                p(&key, "listed twice".into(), "keep one [[peer]] per domain");
            }
            if same(&self.server.domain) || self.server.hosts.iter().any(|h| same(h)) {
                p(
                    &key,
                    "is this server's own domain or one of its hosts".into(),
                    "a server cannot be its own peer: remove this [[peer]]",
                );
            }
        }
        for r in &self.rtbls {
            if FeedAddress::new(&r.service, &r.node).is_err() {
                p(
                    "rtbl",
                    format!("{} / {} is not a valid node", r.service, r.node),
                    "e.g. service = \"xmppbl.org\", node = \"muc_bans_sha256\"",
                );
            }
            if !(0.0..=1.0).contains(&r.weight) {
                p(
                    "rtbl.weight",
                    format!("{} is outside 0.0-1.0", r.weight),
                    "unsigned sources count at most 0.5",
                );
            }
        }
        let pol = &self.policy;
        if pol.quorum == 0 {
            p(
                "policy.quorum",
                "must be at least 1".into(),
                "2 means two independent peers are needed to block",
            );
        }
        if pol.default_ttl_days == 0
            || pol.default_ttl_days * 86_400 > corvid_protocol::ns::MAX_TTL_SECS
        {
            p(
                "policy.default_ttl_days",
                format!("{} is outside 1-90", pol.default_ttl_days),
                "reports must expire within 90 days",
            );
        }
        for (kind, k) in &pol.thresholds {
            if !(0.0 < k.flag && k.flag <= k.block && k.block <= 1.0) || k.half_life_days <= 0.0 {
                p(
                    &format!("policy.thresholds.{kind}"),
                    "need 0 < flag <= block <= 1 and half_life_days > 0".into(),
                    "defaults: flag 0.3, block 0.7",
                );
            }
        }
        for (list, entries) in [
            ("policy.allow", &pol.allow),
            ("policy.deny", &pol.deny),
            ("policy.canaries", &pol.canaries),
        ] {
            for e in entries {
                if crate::subjects::parse_list_entry(e).is_err() {
                    p(
                        list,
                        format!("{e:?} is not a JID, domain, *.domain or ip:ADDR[/LEN]"),
                        "e.g. spam.example, *.spam.example, bot@spam.example, ip:192.0.2.0/24",
                    );
                }
            }
        }
        if let Err(e) = self.api.listen() {
            p(
                "api.listen",
                e.to_string(),
                "e.g. \"127.0.0.1:7780\" or \"unix:/run/corvid/api.sock\"",
            );
        } else if let Ok(Listen::Tcp(addr)) = self.api.listen()
            && !addr.ip().is_loopback()
        {
            p(
                "api.listen",
                format!("{addr} is not loopback and the API has no TLS"),
                "listen on 127.0.0.1 or a Unix socket, and put a TLS proxy in front if it must be remote",
            );
        }
        if self.api.reserved_connections >= self.api.max_connections {
            p(
                "api.reserved_connections",
                format!(
                    "{} leaves no slot for a new connection (api.max_connections is {})",
                    self.api.reserved_connections, self.api.max_connections
                ),
                "keep it well below max_connections, e.g. 64 of 512",
            );
        }
        for (key, secs) in [
            ("api.header_timeout_secs", self.api.header_timeout_secs),
            ("api.request_timeout_secs", self.api.request_timeout_secs),
        ] {
            if secs == 0 {
                p(key, "0 s would refuse every request".into(), "e.g. 10");
            }
        }
        for (key, path) in self.secret_files() {
            match check_private(path) {
                Ok(()) => {}
                Err(e) => p(
                    key,
                    e.to_string(),
                    "chmod 600 the file and make sure it exists",
                ),
            }
        }
        out
    }

    /// The files that must be private.
    pub fn secret_files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = vec![
            ("xmpp.password_file", self.xmpp.password_file.as_path()),
            (
                "keys.signing_key_file",
                self.keys.signing_key_file.as_path(),
            ),
            ("api.read_token_file", self.api.read_token_file.as_path()),
            ("api.write_token_file", self.api.write_token_file.as_path()),
        ];
        files.extend(
            self.keys
                .federations
                .iter()
                .map(|f| ("keys.federation.secret_file", f.secret_file.as_path())),
        );
        if let Some(c) = &self.component {
            files.push(("component.secret_file", c.secret_file.as_path()));
        }
        files
    }
}

/// Whether two spellings name one domain: equal, or equal once normalized
/// as issuers write domains (spec §8.3: `Peer.Test` is `peer.test`).
pub fn same_domain(a: &str, b: &str) -> bool {
    use corvid_protocol::subject::normalize_domain;
    a == b
        || matches!(
            (normalize_domain(a), normalize_domain(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Fails if the file is missing or readable by group or others.
///
/// # Errors
/// When the file cannot be read or its mode lets others read it.
pub fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("{} is missing", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} has mode {mode:o}: group or others may read it",
            path.display()
        );
    }
    Ok(())
}

/// Reads a one-line secret file (password, token), trimmed.
///
/// # Errors
/// IO errors or an empty file.
pub fn read_secret(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    if line.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(line.to_owned())
}
