//! Integration tests against real Prosody servers and real corvidd
//! processes, all on loopback.

mod api;
mod durability;
mod federation;
mod hostile;
mod keys;
mod layouts;
mod lists;
mod log;
mod module;
mod scale;
mod wave;

/// Points the harness at the freshly built daemon.
pub fn init() {
    corvid_tests::node::set_corvidd_bin(env!("CARGO_BIN_EXE_corvidd-under-test"));
}
