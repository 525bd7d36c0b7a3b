//! A real Prosody, started from a private config on loopback.
//!
//! Debian's defaults that matter are kept (mod_limits with its c2s and
//! s2s rates, `pubsub_max_items` 256, internal file storage, stanza size
//! limits); what corvidd needs is set the way the README tells operators
//! to: `unlimited_jids` for its account and its JID as admin of the PubSub
//! component only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for};

/// Options for one server.
#[derive(Debug, Clone)]
pub struct ProsodyOptions {
    /// Interface to listen on (127.0.0.1 unless testing s2s).
    pub interface: String,
    /// Keep PubSub items in memory (a restart loses them).
    pub memory_pubsub: bool,
    /// Listen for s2s on 5269 (for two servers on 127.0.0.2/.3).
    pub s2s: bool,
    /// Hosts file lines shared by federating servers.
    pub hosts_file: Option<PathBuf>,
    /// Which Prosody runs.
    pub version: Version,
    /// Modules enabled beyond the harness's own.
    pub modules: Vec<String>,
    /// Lines added to the global section (after the harness's own).
    pub global: String,
    /// Lines added at the end of the config (more components).
    pub tail: String,
    /// Debian's mod_limits rates (true unless a benchmark measures latency
    /// that the rate limit would hide).
    pub limits: bool,
    /// The release's community modules (prosody-modules: mod_anti_spam,
    /// mod_muc_rtbl) on the plugin path.
    pub community_modules: bool,
    /// s2s over TLS (required), with a self-signed certificate naming every
    /// host and its subdomains (authenticated by dialback, as between
    /// servers without a CA-signed certificate).
    pub s2s_tls: bool,
}

/// A Prosody release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Debian 12's package (0.12).
    Debian12,
    /// Prosody 13 from bookworm-backports, unpacked by scripts/test.sh
    /// into [`PROSODY13_ROOT`] (or `CORVID_PROSODY13_ROOT`).
    Backports13,
}

/// Where scripts/test.sh unpacks Prosody 13.
pub const PROSODY13_ROOT: &str = "/opt/corvid/prosody13";

impl Version {
    /// Both releases Corvid supports.
    pub const ALL: [Self; 2] = [Self::Debian12, Self::Backports13];

    fn root(self) -> Option<PathBuf> {
        match self {
            Self::Debian12 => None,
            Self::Backports13 => Some(PathBuf::from(
                std::env::var("CORVID_PROSODY13_ROOT").unwrap_or_else(|_| PROSODY13_ROOT.into()),
            )),
        }
    }

    /// The directory of Prosody's Lua sources (its `util` libraries).
    pub fn source_dir(self) -> PathBuf {
        match self.root() {
            None => PathBuf::from("/usr/lib/prosody"),
            Some(root) => root.join("usr/lib/prosody"),
        }
    }

    /// A command running `tool` (`prosody` or `prosodyctl`) of this release.
    pub fn command(self, tool: &str) -> Command {
        match self.root() {
            None => Command::new(tool),
            Some(root) => {
                let script = root.join("usr/bin").join(tool);
                assert!(
                    script.exists(),
                    "{} is missing: scripts/test.sh unpacks Prosody 13 from bookworm-backports there",
                    script.display()
                );
                let mut c = Command::new("lua5.4");
                c.arg(script);
                c
            }
        }
    }

    /// Where scripts/install-prosody13.sh unpacks the release's
    /// prosody-modules package (Debian 12's for 0.12, bookworm-backports'
    /// for 13).
    pub fn community_modules_dir(self) -> PathBuf {
        let root = std::env::var("CORVID_PROSODY_MODULES_ROOT")
            .unwrap_or_else(|_| "/opt/corvid/prosody-modules".into());
        let name = match self {
            Self::Debian12 => "debian12",
            Self::Backports13 => "backports13",
        };
        let dir = PathBuf::from(root)
            .join(name)
            .join("usr/lib/prosody/modules");
        assert!(
            dir.exists(),
            "{} is missing: scripts/install-prosody13.sh unpacks prosody-modules there",
            dir.display()
        );
        dir
    }

    /// Its name in test output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Debian12 => "Prosody 0.12",
            Self::Backports13 => "Prosody 13",
        }
    }
}

/// What the README asks of a server whose corvidd runs as a component
/// `corvid.DOMAIN`: the component port on the server's loopback address,
/// the Component with its secret and mod_limits (whose `unlimited_jids`
/// applies only on hosts that load it), and `unlimited_jids` listing
/// corvidd's account and the trusted peers' components. Returns the lines
/// for [`ProsodyOptions::global`] and [`ProsodyOptions::tail`].
pub fn component_settings(
    ip: &str,
    domain: &str,
    port: u16,
    secret: &str,
    unlimited_components: &[&str],
) -> (String, String) {
    let unlimited: Vec<String> = std::iter::once(format!("corvidd@{domain}"))
        .chain(unlimited_components.iter().map(|c| (*c).to_owned()))
        .map(|j| format!("{j:?}"))
        .collect();
    (
        format!(
            "component_ports = {{ {port} }}\ncomponent_interfaces = {{ \"{ip}\" }}\nunlimited_jids = {{ {} }}\n",
            unlimited.join(", ")
        ),
        format!(
            "\nComponent \"corvid.{domain}\"\n    component_secret = \"{secret}\"\n    modules_enabled = {{ \"limits\" }}\n"
        ),
    )
}

/// A hosts file (`IP NAMES…` per line) for federating servers on loopback,
/// kept in the temp dir for the servers' lifetime (their configs name it).
pub fn hosts_file(lines: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("corvid-hosts-{}", free_port()));
    std::fs::write(&path, lines).expect("hosts");
    path
}

/// A server for `domain` on `ip` (s2s, names from `hosts`; over TLS when
/// `s2s_tls`) whose corvidd runs as its component, set up by
/// [`component_settings`].
#[allow(clippy::too_many_arguments)]
pub fn start_with_component(
    version: Version,
    ip: &str,
    domain: &str,
    hosts: &Path,
    port: u16,
    secret: &str,
    unlimited_components: &[&str],
    s2s_tls: bool,
) -> Prosody {
    let (global, tail) = component_settings(ip, domain, port, secret, unlimited_components);
    Prosody::start(
        &[domain],
        &[&format!("corvidd@{domain}")],
        ProsodyOptions {
            interface: ip.into(),
            s2s: true,
            hosts_file: Some(hosts.to_owned()),
            version,
            global,
            tail,
            s2s_tls,
            ..ProsodyOptions::default()
        },
    )
}

/// The directory of mod_corvid and its library, for `plugin_paths`.
pub fn module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hooks/prosody")
}

/// Runs a script of hooks/prosody/test with lua5.4 and the libraries of
/// one Prosody release (its first argument), then `args`.
pub fn run_lua_script(script: &str, version: Version, args: &[&Path]) -> std::process::Output {
    Command::new("lua5.4")
        .arg(module_dir().join("test").join(script))
        .arg(version.source_dir())
        .args(args)
        .output()
        .expect("lua5.4 (installed with prosody)")
}

impl Default for ProsodyOptions {
    fn default() -> Self {
        Self {
            interface: "127.0.0.1".into(),
            memory_pubsub: false,
            s2s: false,
            hosts_file: None,
            version: Version::Debian12,
            modules: Vec::new(),
            global: String::new(),
            tail: String::new(),
            limits: true,
            community_modules: false,
            s2s_tls: false,
        }
    }
}

/// A running Prosody.
#[derive(Debug)]
pub struct Prosody {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    /// c2s port.
    pub c2s_port: u16,
    /// Interface.
    pub interface: String,
    /// Hosts served.
    pub hosts: Vec<String>,
    /// Which Prosody.
    pub version: Version,
}

/// The password every test account gets for `user@host`.
pub fn password(user: &str, host: &str) -> String {
    format!("pw-{user}-{host}")
}

impl Prosody {
    /// Writes a config for `hosts` (each with a `pubsub.HOST` component whose
    /// admin is `corvidd@HOST`), registers `accounts` (`user@host`), starts.
    ///
    /// # Panics
    /// When Prosody cannot be started.
    pub fn start(hosts: &[&str], accounts: &[&str], options: ProsodyOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("corvid-prosody-")
            .tempdir()
            .expect("tempdir");
        let c2s_port = free_port();
        let config = dir.path().join("prosody.cfg.lua");
        let hosts_file = options.hosts_file.clone().unwrap_or_else(|| {
            let p = dir.path().join("hosts");
            let names: Vec<String> = hosts
                .iter()
                .flat_map(|h| [h.to_string(), format!("pubsub.{h}")])
                .collect();
            std::fs::write(&p, format!("{} {}\n", options.interface, names.join(" ")))
                .expect("hosts");
            p
        });
        std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.1\n").expect("resolv");
        std::fs::create_dir_all(dir.path().join("data")).expect("data");
        let unlimited: Vec<String> = accounts.iter().map(|a| format!("{a:?}")).collect();
        let mut text = format!(
            r#"-- Written by the Corvid test harness.
run_as_root = true
daemonize = false
data_path = "{data}"
pidfile = "{dir}/prosody.pid"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{dir}/prosody.log" }} }}
interfaces = {{ "{iface}" }}
local_interfaces = {{ "{iface}" }}
c2s_ports = {{ {c2s_port} }}
s2s_ports = {{ {s2s} }}
http_ports = {{}}
https_ports = {{}}
component_ports = {{}}
c2s_direct_tls_ports = {{}}
s2s_direct_tls_ports = {{}}
unbound = {{ resolvconf = "{dir}/resolv.conf"; hoststxt = "{hosts}" }}
network_settings = {{ nagle = false }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_require_encryption = {s2s_tls}
s2s_secure_auth = false
authentication = "internal_hashed"
modules_enabled = {{ "disco"; "roster"; "saslauth"; "dialback"; {limits}"pep"; "private"; "smacks"; "ping"; "time"; "uptime"; "version"{modules} }}
plugin_paths = {{ "{plugins}"{community} }}
-- Debian's default rate limits, kept so the limits in force are known.
limits = {{ c2s = {{ rate = "10kb/s" }}; s2sin = {{ rate = "30kb/s" }} }}
-- What the README asks operators to set for corvidd's account.
unlimited_jids = {{ {unlimited} }}
"#,
            data = dir.path().join("data").display(),
            dir = dir.path().display(),
            iface = options.interface,
            s2s = if options.s2s { "5269" } else { "" },
            hosts = hosts_file.display(),
            unlimited = unlimited.join(", "),
            modules = options
                .modules
                .iter()
                .chain(options.s2s_tls.then(|| "tls".to_owned()).iter())
                .map(|m| format!("; {m:?}"))
                .collect::<String>(),
            plugins = module_dir().display(),
            community = if options.community_modules {
                format!(
                    "; {:?}",
                    options
                        .version
                        .community_modules_dir()
                        .display()
                        .to_string()
                )
            } else {
                String::new()
            },
            limits = if options.limits { "\"limits\"; " } else { "" },
            s2s_tls = options.s2s_tls,
        );
        if options.s2s_tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let names: Vec<String> = hosts
                .iter()
                .flat_map(|h| [format!("DNS:{h}"), format!("DNS:*.{h}")])
                .collect();
            let status = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .args([
                    "-subj",
                    &format!("/CN={}", hosts.first().copied().unwrap_or("test")),
                ])
                .args(["-addext", &format!("subjectAltName={}", names.join(","))])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(status.success(), "openssl could not make a certificate");
            text.push_str(&format!(
                "ssl = {{ certificate = \"{}\"; key = \"{}\" }}\n",
                cert.display(),
                key.display()
            ));
        }
        text.push_str(&options.global);
        text.push('\n');
        if options.memory_pubsub {
            text.push_str("storage = { pubsub_data = \"memory\"; pubsub_nodes = \"memory\" }\n");
        }
        for h in hosts {
            text.push_str(&format!(
                "\nVirtualHost \"{h}\"\nComponent \"pubsub.{h}\" \"pubsub\"\n    admins = {{ \"corvidd@{h}\" }}\n"
            ));
        }
        text.push_str(&options.tail);
        std::fs::write(&config, text).expect("config");
        for account in accounts {
            let (user, host) = account.split_once('@').expect("user@host");
            let status = options
                .version
                .command("prosodyctl")
                .args([
                    "--config",
                    &config.to_string_lossy(),
                    "register",
                    user,
                    host,
                    &password(user, host),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("prosodyctl (is prosody installed? scripts/test.sh installs it)");
            assert!(status.success(), "prosodyctl register {account} failed");
        }
        let mut p = Self {
            dir,
            config,
            child: None,
            c2s_port,
            interface: options.interface,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            version: options.version,
        };
        p.launch();
        p
    }

    fn launch(&mut self) {
        let child = self
            .version
            .command("prosody")
            .args(["-F", "--config", &self.config.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.path().join("prosody.stderr")).expect("stderr file"),
            )
            .spawn()
            .expect("start prosody");
        self.child = Some(child);
        let addr = format!("{}:{}", self.interface, self.c2s_port);
        wait_for(
            Duration::from_secs(20),
            "prosody to accept connections",
            || std::net::TcpStream::connect(&addr).ok(),
        );
    }

    /// The server process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The c2s address for corvidd's `xmpp.server`.
    pub fn c2s_addr(&self) -> String {
        format!("{}:{}", self.interface, self.c2s_port)
    }

    /// The directory with config and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::terminate(child, Duration::from_secs(5));
        }
    }

    /// Stops and starts again on the same ports (memory storage loses items).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prosody.log")).unwrap_or_default()
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- prosody log ({}) last lines ----",
                self.dir.path().display()
            );
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
