//! Seccomp: the RuntimeDefault allowlist (its syscall table is data, `seccomp_default.json`,
//! widened by the process's capabilities), Localhost profiles in docker's or OCI's format, and
//! the step that puts the filter in the spec.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder, Spec,
};

use super::security::linux_of;
use super::{HostFiles, Input, SpecError};
use crate::oci::host::HostFeatures;

/// The seccomp profile a request asks for, from the typed field or the deprecated string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompRequest {
    RuntimeDefault,
    Unconfined,
    Localhost(PathBuf),
}

/// Step: the seccomp filter a non-privileged process asks for.
pub fn seccomp(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    let sec = &input.security;
    if sec.privileged {
        return Ok(());
    }
    if let Some(sc) = seccomp_profile(
        sec.seccomp.as_ref(),
        input.host.features,
        input.host.files,
        &sec.capabilities.caps,
    )? {
        linux_of(spec).set_seccomp(Some(sc));
    }
    Ok(())
}

/// Turns a seccomp request into the spec's filter; `caps` are the process's capabilities,
/// which unlock the syscalls they govern in the default profile.
pub fn seccomp_profile(
    req: Option<&SeccompRequest>,
    host: &HostFeatures,
    files: &dyn HostFiles,
    caps: &[String],
) -> Result<Option<LinuxSeccomp>, SpecError> {
    match req {
        None | Some(SeccompRequest::Unconfined) => Ok(None),
        // Without kernel support the default profile cannot apply; running unconfined is
        // what CRI-O does on such hosts.
        Some(SeccompRequest::RuntimeDefault) if !host.seccomp => Ok(None),
        Some(SeccompRequest::RuntimeDefault) => default_seccomp_profile(caps).map(Some),
        Some(SeccompRequest::Localhost(path)) => {
            if !host.seccomp {
                return Err(SpecError::invalid(
                    "seccomp",
                    "seccomp is not supported by this kernel",
                ));
            }
            load_seccomp_file(files, path).map(Some)
        }
    }
}

/// Reads a seccomp profile in docker's format (`archMap`, `names`, `includes`...) or OCI's.
pub fn load_seccomp_file(files: &dyn HostFiles, path: &Path) -> Result<LinuxSeccomp, SpecError> {
    if !path.is_absolute() {
        return Err(SpecError::invalid(
            "seccomp.localhost_ref",
            format!("{} is not an absolute path", path.display()),
        ));
    }
    let text = files.read_seccomp_profile(path).map_err(|e| {
        SpecError::invalid(
            "seccomp.localhost_ref",
            format!("reading {}: {e}", path.display()),
        )
    })?;
    parse_seccomp_json(&text).map_err(|reason| {
        SpecError::invalid(
            "seccomp.localhost_ref",
            format!("{}: {reason}", path.display()),
        )
    })
}

pub fn parse_seccomp_json(text: &str) -> Result<LinuxSeccomp, String> {
    use serde_json::{json, Map, Value};
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("not a json object")?;
    let mut out = Map::new();
    out.insert(
        "defaultAction".into(),
        obj.get("defaultAction")
            .cloned()
            .ok_or("defaultAction missing")?,
    );
    if let Some(r) = obj.get("defaultErrnoRet") {
        out.insert("defaultErrnoRet".into(), r.clone());
    }
    let mut arches: Vec<Value> = Vec::new();
    if let Some(a) = obj.get("architectures").and_then(Value::as_array) {
        arches.extend(a.iter().cloned());
    }
    if let Some(map) = obj.get("archMap").and_then(Value::as_array) {
        // docker's format lists arches with their sub-architectures.
        for entry in map {
            if let Some(a) = entry.get("architecture") {
                arches.push(a.clone());
            }
            if let Some(subs) = entry.get("subArchitectures").and_then(Value::as_array) {
                arches.extend(subs.iter().cloned());
            }
        }
    }
    if !arches.is_empty() {
        out.insert("architectures".into(), Value::Array(arches));
    }
    if let Some(f) = obj.get("flags") {
        out.insert("flags".into(), f.clone());
    }
    let mut syscalls = Vec::new();
    for s in obj
        .get("syscalls")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let mut names: Vec<Value> = s
            .get("names")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(n) = s.get("name") {
            names.push(n.clone());
        }
        if names.is_empty() {
            continue;
        }
        let mut call =
            json!({ "names": names, "action": s.get("action").cloned().unwrap_or(Value::Null) });
        for key in ["errnoRet", "args"] {
            if let Some(x) = s.get(key) {
                if !x.is_null() {
                    call[key] = x.clone();
                }
            }
        }
        syscalls.push(call);
    }
    out.insert("syscalls".into(), Value::Array(syscalls));
    serde_json::from_value(Value::Object(out)).map_err(|e| e.to_string())
}

/// The default profile's syscall table, kept as data: `allowed` to everyone (docker's list, in
/// spirit: whatever a normal program needs; nothing that reaches outside the container's
/// namespaces), `byCapability` only to holders of that capability, `byArchitecture` only on
/// that architecture (Rust's `std::env::consts::ARCH` names).
const DEFAULT_TABLE_JSON: &str = include_str!("seccomp_default.json");

/// [`DEFAULT_TABLE_JSON`] decoded.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DefaultTable {
    allowed: Vec<String>,
    by_capability: BTreeMap<String, Vec<String>>,
    by_architecture: BTreeMap<String, Vec<String>>,
}

fn default_table() -> Result<&'static DefaultTable, SpecError> {
    static TABLE: LazyLock<Result<DefaultTable, String>> =
        LazyLock::new(|| serde_json::from_str(DEFAULT_TABLE_JSON).map_err(|e| e.to_string()));
    TABLE
        .as_ref()
        .map_err(|e| SpecError::Build(format!("seccomp_default.json: {e}")))
}

/// Namespace flags of clone(2) (CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET):
/// without CAP_SYS_ADMIN a container may clone but not make namespaces.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn allow(names: Vec<String>) -> Result<LinuxSyscall, SpecError> {
    Ok(LinuxSyscallBuilder::default()
        .names(names)
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()?)
}

/// The RuntimeDefault profile: an allowlist, everything else fails with EPERM.
pub fn default_seccomp_profile(caps: &[String]) -> Result<LinuxSeccomp, SpecError> {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let table = default_table()?;
    let mut syscalls = vec![allow(table.allowed.clone())?];
    let mut extra: BTreeSet<&str> = BTreeSet::new();
    for (cap, names) in &table.by_capability {
        if has(cap) {
            extra.extend(names.iter().map(String::as_str));
        }
    }
    if let Some(names) = table.by_architecture.get(std::env::consts::ARCH) {
        extra.extend(names.iter().map(String::as_str));
    }
    // Execution domains that do not change the kernel's behaviour in a dangerous way.
    for persona in [0x0u64, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["personality".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(persona)
                    .op(LinuxSeccompOperator::ScmpCmpEq)
                    .build()?])
                .build()?,
        );
    }
    if !has("CAP_SYS_ADMIN") {
        // clone without namespace flags; clone3 hides its flags in memory, so answer ENOSYS
        // and let libc fall back to clone.
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(CLONE_NAMESPACE_FLAGS)
                    .value_two(0u64)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()?])
                .build()?,
        );
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()?,
        );
    }
    if !extra.is_empty() {
        syscalls.push(allow(extra.into_iter().map(String::from).collect())?);
    }
    let architectures = match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "s390x" => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
        "powerpc64" => vec![Arch::ScmpArchPpc64le],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        _ => vec![Arch::ScmpArchNative],
    };
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(architectures)
        .syscalls(syscalls)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_decodes_and_names_each_syscall_once_per_list() {
        let table = default_table().unwrap();
        assert!(table.allowed.len() > 300);
        let unique: BTreeSet<&String> = table.allowed.iter().collect();
        assert_eq!(unique.len(), table.allowed.len(), "a syscall allowed twice");
        for (cap, names) in &table.by_capability {
            assert!(cap.starts_with("CAP_"), "{cap}");
            for n in names {
                assert!(
                    !table.allowed.contains(n),
                    "{n} is allowed to everyone and to {cap}"
                );
            }
        }
        assert!(table.by_capability["CAP_SYS_ADMIN"].contains(&"mount".to_string()));
        assert!(table.by_architecture["x86_64"].contains(&"arch_prctl".to_string()));
    }

    #[test]
    fn default_profile_adds_architecture_syscalls() {
        let profile = default_seccomp_profile(&[]).unwrap();
        let names: Vec<String> = profile
            .syscalls()
            .clone()
            .unwrap()
            .iter()
            .flat_map(|c| c.names().clone())
            .collect();
        if std::env::consts::ARCH == "x86_64" {
            assert!(names.contains(&"arch_prctl".to_string()));
        }
        assert!(!names.contains(&"mount".to_string()));
    }
}
