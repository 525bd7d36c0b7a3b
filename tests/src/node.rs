//! Real `corvidd` processes with generated keys, tokens and configs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use corvid_protocol::keys::{PublicKey, SecretKey, Signer};
use serde_json::{Value, json};

use crate::http::{Response, enc, request};
use crate::prosody::{Prosody, password};
use crate::{wait_for, write_private};

static CORVIDD_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Tells the harness where the corvidd binary is (integration tests pass
/// `env!("CARGO_BIN_EXE_corvidd-under-test")`, which only they can see).
pub fn set_corvidd_bin(path: &str) {
    let _ = CORVIDD_BIN.set(PathBuf::from(path));
}

fn corvidd_bin() -> &'static Path {
    CORVIDD_BIN
        .get()
        .map(PathBuf::as_path)
        .expect("call corvid_tests::node::set_corvidd_bin first")
}

/// The fixed federation secret of test federations (hex).
pub const FED_SECRET_HEX: &str = "7465737420666564657261746564207365637265742c20333220627974657321";

/// Who a node is.
#[derive(Debug)]
pub struct Identity {
    /// Server domain.
    pub domain: String,
    /// Signing key.
    pub key: SecretKey,
}

impl Identity {
    /// A deterministic identity per domain.
    pub fn new(domain: &str) -> Self {
        use std::hash::{Hash as _, Hasher as _};
        let mut seed = [0u8; 32];
        for (i, chunk) in seed.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (domain, i).hash(&mut h);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        Self {
            domain: domain.into(),
            key: SecretKey::from_seed(seed),
        }
    }

    /// Public key.
    pub fn public(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Feed address.
    pub fn feed(&self) -> String {
        format!("xmpp:pubsub.{}?;node=corvid", self.domain)
    }

    /// A `[[peer]]` block trusting this identity.
    pub fn peer_block(&self, weight: f64, mode: &str) -> String {
        format!(
            "\n[[peer]]\ndomain = \"{}\"\nfeed = \"{}\"\nkey = \"{}\"\nweight = {weight}\nmode = \"{mode}\"\n",
            self.domain,
            self.feed(),
            self.public()
        )
    }
}

/// A running corvidd.
#[derive(Debug)]
pub struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    /// API address.
    pub api: String,
    /// Read token.
    pub read: String,
    /// Write token.
    pub write: String,
    /// Domain.
    pub domain: String,
}

impl Node {
    /// Writes keys, tokens and config; starts corvidd against `prosody`.
    /// `extra` is appended to the config (peers, policy).
    ///
    /// # Panics
    /// When corvidd does not become ready.
    pub fn start(prosody: &Prosody, id: &Identity, extra: &str) -> Self {
        Self::start_with_data(prosody, id, extra, None)
    }

    /// As [`Node::start`], with the database in `data_dir` (kept by the caller).
    ///
    /// # Panics
    /// When corvidd does not become ready.
    pub fn start_with_data(
        prosody: &Prosody,
        id: &Identity,
        extra: &str,
        data_dir: Option<&Path>,
    ) -> Self {
        Self::start_at(&prosody.c2s_addr(), id, extra, data_dir)
    }

    /// As [`Node::start_with_data`], with its XMPP account `corvidd@DOMAIN`
    /// on the server at `c2s` (`ip:port`, plaintext), of any kind.
    ///
    /// # Panics
    /// When corvidd does not become ready.
    pub fn start_at(c2s: &str, id: &Identity, extra: &str, data_dir: Option<&Path>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("corvidd-{}-", id.domain))
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        write_private(&d.join("password"), &password("corvidd", &id.domain));
        write_private(&d.join("signing.key"), &id.key.to_key_file());
        write_private(&d.join("fed.secret"), FED_SECRET_HEX);
        let read = format!("read-{}", id.domain);
        let write = format!("write-{}", id.domain);
        write_private(&d.join("read.token"), &read);
        write_private(&d.join("write.token"), &write);
        let (policy_extra, api_extra, rest) = split_policy(extra);
        // `api.listen = "…"` in `extra` picks the address (a Prosody module
        // configured before corvidd starts needs to know it).
        let mut listen = "127.0.0.1:0".to_owned();
        let api_extra: String = api_extra
            .lines()
            .filter(|l| match l.trim().strip_prefix("listen") {
                Some(v) => {
                    listen = v
                        .trim_start()
                        .trim_start_matches('=')
                        .trim()
                        .trim_matches('"')
                        .to_owned();
                    false
                }
                None => true,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let data = data_dir.map_or_else(|| "data".to_owned(), |p| p.display().to_string());
        let config = format!(
            r#"data_dir = "{data}"

[xmpp]
jid = "corvidd@{domain}"
password_file = "password"
server = "{server}"
tls = "plaintext"
login_timeout_secs = 10
iq_timeout_secs = 20

[feed]
service = "pubsub.{domain}"
node = "corvid"

[server]
domain = "{domain}"
hosts = ["{domain}"]

[keys]
signing_key_file = "signing.key"

[[keys.federation]]
id = "test-fed"
secret_file = "fed.secret"

[policy]
{policy_extra}

[api]
listen = "{listen}"
read_token_file = "read.token"
write_token_file = "write.token"
{api_extra}
{rest}
"#,
            domain = id.domain,
            server = c2s,
        );
        let config_path = d.join("corvidd.toml");
        std::fs::write(&config_path, config).expect("config");
        let mut node = Self {
            dir,
            config: config_path,
            child: None,
            api: String::new(),
            read,
            write,
            domain: id.domain.clone(),
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        let d = self.dir.path();
        let ready = d.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("corvidd.log"))
            .expect("log file");
        let child = Command::new(corvidd_bin())
            .args([
                "--config",
                &self.config.to_string_lossy(),
                "--ready-file",
                &ready.to_string_lossy(),
            ])
            .env("RUST_LOG", "info,corvid_node=debug")
            .env("CORVIDD_RESYNC_SECS", "2")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start corvidd");
        self.child = Some(child);
        let line = wait_for(Duration::from_secs(30), "corvidd readiness file", || {
            std::fs::read_to_string(&ready)
                .ok()
                .filter(|s| s.ends_with('\n'))
        });
        let v: Value = serde_json::from_str(line.trim()).expect("ready line is JSON");
        self.api = v["api"].as_str().expect("api address").to_owned();
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The config file path.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again after a kill.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Sends SIGHUP (config reload).
    pub fn reload(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg("-HUP")
                .arg(c.id().to_string())
                .status();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        None
    }

    /// GET with the read token.
    pub fn get(&self, path: &str) -> Response {
        request(&self.api, "GET", path, Some(&self.read), None)
    }

    /// POST JSON with the write token.
    pub fn post(&self, path: &str, body: &Value) -> Response {
        request(&self.api, "POST", path, Some(&self.write), Some(body))
    }

    /// Submits a report; returns its id.
    pub fn report(&self, subject: &str, category: &str, confidence: u8) -> String {
        let r = self.post(
            "/v1/reports",
            &json!({"subject": subject, "category": category, "confidence": confidence}),
        );
        assert_eq!(r.status, 201, "report {subject}: {}", r.text);
        r.json["id"].as_str().expect("id").to_owned()
    }

    /// Retracts this node's report about a subject.
    pub fn retract(&self, subject: &str) -> Response {
        request(
            &self.api,
            "DELETE",
            &format!("/v1/reports/{}", enc(subject)),
            Some(&self.write),
            None,
        )
    }

    /// The verdict JSON for `jid=`, `domain=` ... (`kind`, `value`).
    pub fn verdict(&self, kind: &str, value: &str) -> Value {
        let r = self.get(&format!("/v1/verdict?{kind}={}", enc(value)));
        assert_eq!(r.status, 200, "verdict {kind}={value}: {}", r.text);
        r.json
    }

    /// Action only.
    pub fn action(&self, kind: &str, value: &str) -> String {
        self.verdict(kind, value)["action"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the action for a subject is `want`.
    pub fn wait_action(&self, kind: &str, value: &str, want: &str, timeout: Duration) {
        wait_for(
            timeout,
            &format!("{} to say {want} for {kind}={value}", self.domain),
            || (self.action(kind, value) == want).then_some(()),
        );
    }

    /// The decision stream's cursor at its end (where a measurement of
    /// new decisions starts).
    pub fn decisions_end(&self) -> u64 {
        let mut cursor = 0;
        loop {
            let r = self.get(&format!("/v1/decisions/stream?since={cursor}"));
            let empty = r.json["decisions"].as_array().is_none_or(Vec::is_empty);
            cursor = r.json["next"].as_u64().unwrap_or(cursor);
            if empty {
                return cursor;
            }
        }
    }

    /// Records stored from a peer, as `/v1/peers` shows them.
    pub fn peer_records(&self, domain: &str) -> u64 {
        self.peer(domain)["records"].as_u64().unwrap_or(0)
    }

    /// A peer's entry in `/v1/peers` (null when it is not configured).
    pub fn peer(&self, domain: &str) -> Value {
        find_peer(&self.get("/v1/peers").json, domain)
    }

    /// A peer's entry in `/v1/status`, and whether the status raises the
    /// check on its reads (`peer.DOMAIN.read`), from one request.
    pub fn peer_status(&self, domain: &str) -> (Value, bool) {
        let v = self.get("/v1/status").json;
        let name = format!("peer.{domain}.read");
        let check = v["checks"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == name.as_str()));
        (find_peer(&v, domain), check)
    }

    /// Waits until the node's component is connected.
    pub fn wait_component_online(&self, timeout: Duration) {
        wait_for(timeout, "the component to connect", || {
            (self.get("/v1/status").json["component"]["state"] == "online").then_some(())
        });
    }

    /// The metrics text.
    pub fn metrics(&self) -> String {
        self.get("/metrics").text
    }

    /// A counter's value summed over series whose labels contain all `parts`.
    pub fn counter(&self, name: &str, parts: &[&str]) -> u64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("corvidd.log")).unwrap_or_default()
    }
}

/// Config lines for a corvidd that runs as the component `corvid.DOMAIN`
/// (at `ip:port`, with the secret in `secret`) and follows `peer`'s feed
/// served by its component (layout 2), accepting its key rotations.
pub fn component_config(
    secret: &Path,
    ip: &str,
    port: u16,
    domain: &str,
    peer: &Identity,
) -> String {
    component_config_peers(secret, ip, port, domain, &[peer])
}

/// As [`component_config`], following each of `peers`.
pub fn component_config_peers(
    secret: &Path,
    ip: &str,
    port: u16,
    domain: &str,
    peers: &[&Identity],
) -> String {
    let mut out = String::new();
    for peer in peers {
        out.push_str(&format!(
            "\n[[peer]]\ndomain = \"{pd}\"\nfeed = \"xmpp:corvid.{pd}?;node=corvid\"\nkey = \"{key}\"\nweight = 1.0\nmode = \"enforce\"\naccept_rotations = true\nmax_reports = 2000000\n",
            pd = peer.domain,
            key = peer.public(),
        ));
    }
    out.push_str(&format!(
        "\n[component]\njid = \"corvid.{domain}\"\nsecret_file = \"{secret}\"\nserver = \"{ip}:{port}\"\n",
        secret = secret.display(),
    ));
    out
}

/// The entry of `domain` in a response's `peers` list.
fn find_peer(v: &Value, domain: &str) -> Value {
    v["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["domain"] == domain))
        .cloned()
        .unwrap_or_default()
}

/// Splits `extra` into lines for `[policy]` (prefixed `policy.`), for
/// `[api]` (prefixed `api.`) and the rest.
fn split_policy(extra: &str) -> (String, String, String) {
    let (mut policy, mut api, mut rest) = (String::new(), String::new(), String::new());
    for line in extra.lines() {
        let (target, text) = match (line.strip_prefix("policy."), line.strip_prefix("api.")) {
            (Some(p), _) => (&mut policy, p),
            (_, Some(a)) => (&mut api, a),
            _ => (&mut rest, line),
        };
        target.push_str(text);
        target.push('\n');
    }
    (policy, api, rest)
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "---- corvidd {} log ({}) last lines ----",
                self.domain,
                self.dir.path().display()
            );
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
