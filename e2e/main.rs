//! End-to-end tests: a real ferrio daemon on a temp root and socket, driven over CRI with real
//! runc, CNI plugins and a loopback registry (`hack/test-registry.sh`; `make test` sets it up).

mod harness;
mod harness_check;
mod lifecycle;
mod sandbox;
mod observability;
mod recovery;
mod containers;
mod container_spec;
