//! Env values that are not UTF-8: CRI carries env values as bytes, the OCI config as JSON
//! strings, which cannot hold them (crun refuses such a file, runc replaces the bytes with
//! U+FFFD). A container with such a value runs `ferrio-envexec` first: the step moves those
//! entries into one hex-encoded variable ([`codec::VAR`]), puts the helper in front of the
//! args and bind-mounts it read-only at [`CONTAINER_PATH`]; the helper restores the entries
//! byte for byte and execs the original args. Every other container is left as it is.
//!
//! The helper sits under `/dev` because the runtime mounts a fresh tmpfs there for every
//! container: the mountpoint is created in that tmpfs, never in the image's files, and a
//! read-only rootfs does not stand in the way.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{MountBuilder, Spec};

use super::security::strings;
use super::{Input, SpecError};

#[path = "../envexec/codec.rs"]
pub mod codec;

/// Where the helper appears inside the container.
pub const CONTAINER_PATH: &str = "/dev/.ferrio-envexec";

/// The helper's file name, next to the ferrio binary or in the package's libexec directory.
pub const BINARY_NAME: &str = "ferrio-envexec";

/// Where the packaged helper lives: run by containers only, so out of PATH.
pub const LIBEXEC_PATH: &str = "/usr/libexec/ferrio/ferrio-envexec";

/// The helper on this host: `configured` when set, else the one next to the running ferrio
/// binary (a build tree), else the packaged one; `None` when there is none.
pub fn find_helper(configured: &Path) -> Option<PathBuf> {
    if !configured.as_os_str().is_empty() {
        return configured.is_file().then(|| configured.to_path_buf());
    }
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(BINARY_NAME));
    beside
        .into_iter()
        .chain([PathBuf::from(LIBEXEC_PATH)])
        .find(|p| p.is_file())
}

/// Whether env values of a request need the helper.
pub fn needs_helper<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> bool {
    values.any(|v| std::str::from_utf8(v).is_err())
}

/// Step: for a process with env values that are not UTF-8 (`process.binary_env`), the
/// helper in front of the args, its variable in place of those entries, and its mount.
pub fn env_bytes(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    let binary = &input.process.binary_env;
    let Some((first_key, _)) = binary.first() else {
        return Ok(());
    };
    let Some(helper) = input.host.features.envexec.as_deref() else {
        return Err(SpecError::invalid(
            "envs",
            format!(
                "value of {first_key} is not valid UTF-8 and {BINARY_NAME} is not installed \
                 (runtime.envexec_path)"
            ),
        ));
    };
    if let Some(m) = input
        .mounts
        .mounts
        .iter()
        .find(|m| Path::new(&m.container_path) == Path::new("/dev"))
    {
        return Err(SpecError::invalid(
            "envs",
            format!(
                "value of {first_key} is not valid UTF-8, which needs {BINARY_NAME} on the \
                 runtime's /dev tmpfs, and the request mounts {} there",
                m.host_path
            ),
        ));
    }
    let entries: Vec<Vec<u8>> = binary
        .iter()
        .map(|(k, v)| [k.as_bytes(), b"=", v].concat())
        .collect();
    let carrier = format!("{}={}", codec::VAR, codec::encode(&entries));
    let process = spec.process_mut().get_or_insert_with(Default::default);
    let is_binary = |e: &str| {
        binary
            .iter()
            .any(|(k, _)| e.split_once('=').map(|(ek, _)| ek) == Some(k.as_str()))
    };
    let mut env: Vec<String> = Vec::new();
    let mut placed = false;
    for e in process.env().clone().unwrap_or_default() {
        if is_binary(&e) {
            if !placed {
                env.push(carrier.clone());
                placed = true;
            }
        } else {
            env.push(e);
        }
    }
    if !placed {
        env.push(carrier);
    }
    process.set_env(Some(env));
    let mut args = vec![CONTAINER_PATH.to_string()];
    args.extend(process.args().clone().unwrap_or_default());
    process.set_args(Some(args));
    let mount = MountBuilder::default()
        .destination(PathBuf::from(CONTAINER_PATH))
        .typ("bind")
        .source(helper.to_path_buf())
        .options(strings(&["bind", "rprivate", "ro", "nosuid", "nodev"]))
        .build()?;
    spec.mounts_mut().get_or_insert_with(Vec::new).push(mount);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let entries = vec![b"K=\xff\xfe".to_vec(), all, b"E=".to_vec()];
        let encoded = codec::encode(&entries);
        assert!(encoded.is_ascii(), "JSON carries it as it is");
        assert_eq!(codec::decode(encoded.as_bytes()), Some(entries));
        assert_eq!(codec::decode(b""), Some(Vec::new()));
    }

    #[test]
    fn codec_refuses_what_it_did_not_write() {
        for bad in [&b"4"[..], b"zz", b"4B", b"41:4", b"41 42"] {
            assert_eq!(
                codec::decode(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn needs_helper_only_for_bytes_that_are_not_utf8() {
        assert!(!needs_helper([&b"plain"[..], "é".as_bytes()].into_iter()));
        assert!(needs_helper([&b"plain"[..], b"\xff"].into_iter()));
    }

    #[test]
    fn a_configured_helper_that_is_missing_is_not_used() {
        assert_eq!(find_helper(Path::new("/nonexistent/ferrio-envexec")), None);
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("helper");
        std::fs::write(&helper, b"").unwrap();
        assert_eq!(find_helper(&helper), Some(helper));
    }
}
