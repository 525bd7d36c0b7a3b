//! Snapshot tests of `corvid`'s help, output and errors (trycmd), and a
//! check that every `corvid` command the README shows still parses.

#[test]
fn cli_snapshots() {
    trycmd::TestCases::new().case("tests/cmd/*.toml");
}
