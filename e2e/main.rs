//! End-to-end tests: a real ferrio daemon on a temp root and socket, driven over CRI with real
//! runc, CNI plugins and a loopback registry (`hack/test-registry.sh`; `make test` sets it up).
//! Modules stay in rustfmt's order (alphabetical), or `cargo fmt --check` fails CI.

mod conformance;
mod container_spec;
mod containers;
mod crun;
mod faults;
mod harness;
mod harness_check;
mod lifecycle;
mod nri;
mod nri_plugin;
mod observability;
mod recovery;
mod reload;
mod sandbox;
mod security;
mod userns;
