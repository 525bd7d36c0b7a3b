//! The example config loads, every table rejects unknown keys, and the
//! checks that protect operators fire.

use std::path::{Path, PathBuf};

use corvid_node::config::Config;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corvidd.example.toml")
}

#[test]
fn the_example_parses_and_only_file_checks_fail() {
    let config = Config::parse_file(&example()).expect("example parses");
    assert_eq!(config.peers.len(), 1);
    assert_eq!(config.rtbls.len(), 1);
    let problems = config.problems();
    // The example points at /etc/corvid files that do not exist here; every
    // other check passes.
    assert!(
        problems.iter().all(|p| p.message.contains("missing")),
        "{problems:#?}"
    );
    assert!(problems.iter().all(|p| !p.hint.is_empty()));
}

#[test]
fn unknown_keys_are_rejected_in_every_table() {
    let text = std::fs::read_to_string(example()).expect("example");
    let tables: Vec<usize> = text.match_indices("\n[").map(|(i, _)| i + 1).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    // Top level, then after each table header.
    let mut positions = vec![0];
    for t in tables {
        let end = text[t..].find('\n').map_or(text.len(), |e| t + e + 1);
        positions.push(end);
    }
    for pos in positions {
        let mut bad = text.clone();
        bad.insert_str(pos, "surprise_key = 1\n");
        std::fs::write(&path, &bad).expect("write");
        let err = Config::parse_file(&path).expect_err("unknown key must fail");
        assert!(format!("{err:#}").contains("surprise_key"), "{err:#}");
    }
}

#[test]
fn world_readable_secrets_and_public_api_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for f in ["pw", "key", "read", "write"] {
        std::fs::write(d.join(f), "x").expect("write");
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    std::fs::set_permissions(d.join("key"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = r#"
data_dir = "data"
[xmpp]
jid = "corvidd@example.org"
password_file = "pw"
server = "192.0.2.1:5222"
tls = "plaintext"
[feed]
service = "pubsub.example.org"
[server]
domain = "example.org"
[keys]
signing_key_file = "key"
[api]
listen = "0.0.0.0:7780"
read_token_file = "read"
write_token_file = "write"
"#;
    std::fs::write(d.join("c.toml"), text).expect("write");
    let config = Config::parse_file(&d.join("c.toml")).expect("parses");
    let problems = config.problems();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"keys.signing_key_file"), "{problems:#?}");
    assert!(keys.contains(&"api.listen"), "{problems:#?}");
    assert!(
        keys.contains(&"xmpp.tls"),
        "plaintext off loopback: {problems:#?}"
    );
    assert!(Config::load(&d.join("c.toml")).is_err());
}
