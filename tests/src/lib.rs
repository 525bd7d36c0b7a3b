//! Test harness: real Prosody servers and real `corvidd` processes on
//! loopback, written into a temp dir, killed on drop, with their logs
//! printed when a test fails.

pub mod client;
pub mod ejabberd;
pub mod http;
pub mod node;
pub mod pair;
pub mod prosody;
pub mod writer;

use corvid_protocol::record::{Category, Evidence, Record, Report, ReportId};
use corvid_protocol::subject::SubjectKey;
use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it returns `Some`, or panics after `timeout`
/// with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops a server process: SIGTERM, then SIGKILL after `grace`.
pub fn terminate(mut child: std::process::Child, grace: Duration) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let start = Instant::now();
    while start.elapsed() < grace {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Writes a file with mode 0600.
pub fn write_private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).expect("write private file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// The benches' report number `i` about `bot{i}@spam.example`: see
/// [`numbered_report`].
pub fn bot_report(i: u64, now: u64) -> Record {
    numbered_report("bot", Category::Spam, i, now)
}

/// Report number `i` about `{local}{i}@spam.example` in `category`: issued
/// a minute before `now`, living 30 days, with an id unique for `i` below
/// 2^32.
pub fn numbered_report(local: &str, category: Category, i: u64, now: u64) -> Record {
    Record::Report(Report {
        id: ReportId::new(
            now * 1000 + i % 1000,
            [
                (i % 251) as u8,
                (i >> 8) as u8,
                (i >> 16) as u8,
                (i >> 24) as u8,
                0,
                0,
                0,
                0,
                0,
                1,
            ],
        ),
        subject: SubjectKey::for_jid(&format!("{local}{i}@spam.example")).expect("jid"),
        category,
        confidence: 80,
        issued_at: now - 60,
        expires_at: now + 30 * 86_400,
        evidence: Evidence {
            count: 1,
            first_seen: now - 60,
            last_seen: now - 60,
            note: None,
            abuse_contacted_at: None,
            message_text: None,
        },
    })
}
