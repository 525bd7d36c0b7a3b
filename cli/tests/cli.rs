//! Snapshot tests of `corvid`'s help, output and errors (trycmd), and a
//! check that every `corvid` command the README shows still parses.

#[test]
fn cli_snapshots() {
    trycmd::TestCases::new().case("tests/cmd/*.toml");
}

/// A reader that closes the pipe (`corvid … | head -1`) stops the command
/// with 141, as SIGPIPE would, and no panic message.
#[test]
fn a_closed_pipe_ends_the_output_without_a_panic() {
    use std::process::{Command, Stdio};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cmd/peers");
    let mut child = Command::new(env!("CARGO_BIN_EXE_corvid"))
        .args(["check-config", "corvidd.toml"])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("corvid");
    // The reader goes away before reading anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}
