//! A real ejabberd (24.12, from bookworm-backports, installed by
//! `scripts/install-ejabberd.sh`), started privately on loopback: `erl`
//! run directly as a child (what `ejabberdctl foreground` runs, without
//! its `su`), no epmd, its distribution port on the same address, with a
//! component listener for corvidd and `mod_muc_rtbl` reading corvidd's
//! `muc_bans_sha256`. See tests/EJABBERD-NOTES.md.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;
use crate::prosody::password;

/// A running ejabberd.
#[derive(Debug)]
pub struct Ejabberd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    ip: String,
    node: String,
    dist_port: u16,
    /// c2s port (plaintext on loopback).
    pub c2s_port: u16,
    /// Component (XEP-0114) port.
    pub component_port: u16,
}

/// ejabberd's library directory, when it is installed.
pub fn lib_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .flat_map(|arch| {
            std::fs::read_dir(arch.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ejabberd-24.12"))
                && p.join("ebin/mod_muc_rtbl.beam").exists()
        })
        .collect();
    dirs.sort();
    dirs.pop()
}

impl Ejabberd {
    /// Starts `host` on `ip` with the component `component` (password
    /// `secret`), a MUC service `conference.{host}` whose `mod_muc_rtbl`
    /// reads `muc_bans_sha256` from the component, and the given accounts
    /// (password as [`password`]).
    ///
    /// # Panics
    /// If ejabberd is not installed or does not start within 30 s.
    pub fn start(ip: &str, host: &str, component: &str, secret: &str, accounts: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("corvid-ejabberd-")
            .tempdir()
            .expect("tempdir");
        let (c2s_port, component_port, dist_port) = (free_port(), free_port(), free_port());
        let config = format!(
            "hosts:\n  - {host}\nloglevel: info\nlog_rotate_count: 0\nauth_method: [internal]\nauth_password_format: plain\n\
             s2s_access: none\n\
             listen:\n  -\n    port: {c2s_port}\n    ip: \"{ip}\"\n    module: ejabberd_c2s\n    starttls: false\n    max_stanza_size: 262144\n\
             \x20 -\n    port: {component_port}\n    ip: \"{ip}\"\n    module: ejabberd_service\n    hosts:\n      {component}:\n        password: \"{secret}\"\n\
             acl:\n  local:\n    user_regexp: \"\"\n\
             access_rules:\n  local:\n    allow: local\n  c2s:\n    allow: all\n  muc_create:\n    allow: local\n\
             api_permissions:\n  \"console commands\":\n    from: ejabberd_ctl\n    who: all\n    what: \"*\"\n\
             modules:\n  mod_admin_extra: {{}}\n  mod_disco: {{}}\n  mod_muc:\n    hosts:\n      - conference.{host}\n    access_create: muc_create\n\
             \x20 mod_muc_rtbl:\n    rtbl_server: {component}\n    rtbl_node: muc_bans_sha256\n"
        );
        std::fs::write(dir.path().join("ejabberd.yml"), config).expect("config");
        std::fs::write(dir.path().join("inetrc"), "{lookup,[\"file\"]}.\n").expect("inetrc");
        std::fs::create_dir_all(dir.path().join("spool")).expect("spool");
        std::fs::create_dir_all(dir.path().join("logs")).expect("logs");
        let mut e = Self {
            node: format!("corvid-ej-{c2s_port}@{ip}"),
            dir,
            child: None,
            ip: ip.to_owned(),
            dist_port,
            c2s_port,
            component_port,
        };
        e.launch();
        for a in accounts {
            let (user, h) = a.split_once('@').expect("user@host");
            e.ctl(&["register", user, h, &password(user, h)]);
        }
        e
    }

    fn erl(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("/usr/bin/erl");
        c.current_dir(d.join("spool"))
            .env("EJABBERD_CONFIG_PATH", d.join("ejabberd.yml"))
            .env("EJABBERD_LOG_PATH", d.join("logs/ejabberd.log"))
            .env(
                "ERL_LIBS",
                lib_dir()
                    .and_then(|l| l.parent().map(PathBuf::from))
                    .unwrap_or_default(),
            )
            .env("ERL_INETRC", d.join("inetrc"))
            .env("ERL_CRASH_DUMP_BYTES", "0")
            .env("HOME", d)
            .arg("-setcookie")
            .arg("corvid-test-cookie")
            .arg("-erl_epmd_port")
            .arg(self.dist_port.to_string())
            .arg("-start_epmd")
            .arg("false");
        c
    }

    fn launch(&mut self) {
        assert!(
            lib_dir().is_some(),
            "ejabberd 24.12 is not installed (scripts/install-ejabberd.sh)"
        );
        let ip_tuple = format!("{{{}}}", self.ip.replace('.', ","));
        let mut c = self.erl();
        c.arg("-name")
            .arg(&self.node)
            .arg("-kernel")
            .arg("inet_dist_use_interface")
            .arg(&ip_tuple)
            .arg("-mnesia")
            .arg("dir")
            .arg(format!("\"{}\"", self.dir.path().join("spool").display()))
            .arg("-ejabberd")
            .arg("log_rotate_count")
            .arg("0")
            .arg("-s")
            .arg("ejabberd")
            .arg("-noshell")
            .arg("-noinput")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(c.spawn().expect("start erl"));
        let start = Instant::now();
        for port in [self.c2s_port, self.component_port] {
            while std::net::TcpStream::connect((self.ip.as_str(), port)).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "ejabberd did not open port {port} within 30 s; log: {}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Runs an `ejabberdctl` command against the running node (without
    /// `ejabberdctl`, which insists on root and `su`).
    ///
    /// # Panics
    /// If it fails.
    pub fn ctl(&self, args: &[&str]) {
        let mut c = self.erl();
        let out = c
            .arg("-name")
            .arg(format!("ctl-{}@{}", free_port(), self.ip))
            .arg("-hidden")
            .arg("-noinput")
            .arg("-dist_listen")
            .arg("false")
            .arg("-eval")
            .arg(format!("net_kernel:connect_node('{}')", self.node))
            .arg("-s")
            .arg("ejabberd_ctl")
            .arg("-extra")
            .arg(&self.node)
            .args(args)
            .output()
            .expect("erl ctl");
        assert!(
            out.status.success(),
            "ejabberdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The c2s address.
    pub fn c2s_addr(&self) -> String {
        format!("{}:{}", self.ip, self.c2s_port)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/ejabberd.log")).unwrap_or_default()
    }

    /// Stops it (SIGTERM) and waits for the exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::terminate(child, Duration::from_secs(10));
        }
    }

    /// Stops and starts it again on the same spool and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        self.stop();
    }
}
