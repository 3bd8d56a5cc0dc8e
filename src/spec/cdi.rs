//! CDI devices (Container Device Interface): `ContainerConfig.CDI_devices` and the
//! `cdi.k8s.io/*` annotations name devices as `vendor.com/class=name`; the CDI spec files of
//! `runtime.cdi_spec_dirs` (JSON or YAML) say what injecting each one edits in the OCI spec:
//! env, device nodes, mounts, hooks, additional groups.
//!
//! A reader of its own rather than the `container-device-interface` crate: that crate builds
//! on another major version of `oci-spec` than ferrio's (two copies of the OCI types, converted
//! through JSON), pulls a JSON-schema validator and an argument parser into the daemon, and
//! returns `anyhow` errors where the request needs a typed InvalidArgument naming the device.
//! The part ferrio needs (the spec file format and the edits) is small.
//!
//! Files are taken in directory order, by name within a directory; a device of a later file
//! replaces the same device of an earlier one (a later directory has the higher priority, as
//! the CDI spec says). A file that does not parse or validate is logged and skipped. An edit
//! ferrio cannot apply (`intelRdt`, `netDevices`) refuses the request rather than start the
//! container without it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::runtime::{
    Hook, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, Mount,
    MountBuilder, Spec,
};
use serde::Deserialize;

use super::hooks::{add_hook, Stage};
use super::security::linux_of;
use super::watched::Watched;
use super::{HostFiles, Input, SpecError};

/// The annotation prefix kubelet (and device plugins) name CDI devices under; the value is a
/// comma-separated list of qualified names.
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// The request field errors name.
const FIELD: &str = "CDI_devices";

/// What injecting a device (or any device of a spec file) edits.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerEdits {
    pub env: Vec<String>,
    pub device_nodes: Vec<DeviceNode>,
    pub hooks: Vec<CdiHook>,
    pub mounts: Vec<CdiMount>,
    #[serde(rename = "additionalGIDs", alias = "additionalGids")]
    pub additional_gids: Vec<u32>,
    pub intel_rdt: Option<serde_json::Value>,
    pub net_devices: Vec<serde_json::Value>,
}

/// A device node to create in the container.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceNode {
    /// Where the container sees it.
    pub path: String,
    /// The host's node; empty = `path`.
    pub host_path: String,
    /// `c`, `b`, `u` or `p`; empty = the host node's.
    #[serde(rename = "type")]
    pub typ: String,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub file_mode: Option<u32>,
    /// Cgroup access, `rwm` by default.
    pub permissions: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A hook to run at an OCI stage.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CdiHook {
    pub hook_name: String,
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<i64>,
}

/// A mount to add.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CdiMount {
    pub host_path: String,
    pub container_path: String,
    pub options: Vec<String>,
    #[serde(rename = "type")]
    pub typ: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    cdi_version: String,
    kind: String,
    #[serde(default)]
    devices: Vec<DeviceFile>,
    #[serde(default)]
    container_edits: ContainerEdits,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceFile {
    name: String,
    #[serde(default)]
    container_edits: ContainerEdits,
}

/// One device of the registry.
#[derive(Debug, Clone)]
pub struct CdiDevice {
    /// The spec file it comes from: its spec-level edits apply once per container.
    pub spec_file: PathBuf,
    pub spec_edits: Arc<ContainerEdits>,
    pub edits: ContainerEdits,
}

/// Every device of the CDI spec files, by qualified name.
#[derive(Debug, Default)]
pub struct CdiRegistry {
    pub devices: BTreeMap<String, CdiDevice>,
}

fn valid_kind(kind: &str) -> bool {
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    let ok = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    ok(vendor, &['.', '-', '_']) && ok(class, &['-', '_'])
}

fn valid_device_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
}

/// Parses one CDI spec file (`yaml`: YAML, else JSON) into its qualified devices.
pub fn parse_spec(file: &Path, text: &str, yaml: bool) -> Result<Vec<(String, CdiDevice)>, String> {
    let f: SpecFile = if yaml {
        serde_yaml::from_str(text).map_err(|e| e.to_string())?
    } else {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    };
    if f.cdi_version.is_empty() {
        return Err("cdiVersion missing".into());
    }
    if !valid_kind(&f.kind) {
        return Err(format!("kind {:?} is not vendor.com/class", f.kind));
    }
    if f.devices.is_empty() {
        return Err("no devices".into());
    }
    let spec_edits = Arc::new(f.container_edits);
    let mut out = Vec::new();
    for d in f.devices {
        if !valid_device_name(&d.name) {
            return Err(format!("device name {:?} is invalid", d.name));
        }
        out.push((
            format!("{}={}", f.kind, d.name),
            CdiDevice {
                spec_file: file.to_path_buf(),
                spec_edits: spec_edits.clone(),
                edits: d.container_edits,
            },
        ));
    }
    Ok(out)
}

/// Reads the spec files (in [`super::watched::files_in`] order); a later device replaces an
/// earlier one of the same name; invalid files are logged and skipped.
pub fn load_registry(files: &[PathBuf]) -> CdiRegistry {
    let mut reg = CdiRegistry::default();
    for file in files {
        let yaml = file.extension().is_some_and(|x| x == "yaml" || x == "yml");
        let parsed = std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_spec(file, &text, yaml));
        match parsed {
            Ok(devices) => reg.devices.extend(devices),
            Err(reason) => {
                tracing::warn!(file = %file.display(), %reason, "skipping invalid CDI spec file")
            }
        }
    }
    reg
}

/// The CDI spec files of the configured directories, read again when they change.
pub struct CdiSpecDirs(Watched<CdiRegistry>);

impl Default for CdiSpecDirs {
    fn default() -> Self {
        CdiSpecDirs(Watched::new(&[".json", ".yaml", ".yml"]))
    }
}

impl CdiSpecDirs {
    /// The current devices of `dirs`.
    pub fn registry(&self, dirs: &[PathBuf]) -> Arc<CdiRegistry> {
        self.0.get(dirs, load_registry)
    }
}

/// The CDI devices a container asks for.
#[derive(Debug, Clone, Default)]
pub struct CdiInput<'a> {
    /// Qualified names, each once, in request order (the field first, then the annotations).
    pub devices: Vec<String>,
    /// The devices known on this node; `None` = none.
    pub registry: Option<&'a CdiRegistry>,
}

/// The qualified names of `field` and of the `cdi.k8s.io/*` annotations, each once.
pub fn requested_devices<'a>(
    field: impl IntoIterator<Item = &'a str>,
    annotations: &std::collections::HashMap<String, String>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |name: &str| {
        let name = name.trim();
        if !name.is_empty() && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    };
    field.into_iter().for_each(&mut push);
    let mut keys: Vec<&String> = annotations
        .keys()
        .filter(|k| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    for k in keys {
        annotations[k].split(',').for_each(&mut push);
    }
    out
}

/// Step: the edits of each requested device (and once those of its spec file).
pub fn cdi_devices(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    inject(
        spec,
        &input.cdi.devices,
        input.cdi.registry,
        input.host.files,
    )
}

/// The edits of each of `devices` (and once those of its spec file), as found in `registry`; device
/// nodes the specs do not fully describe are read through `files`. Shared by the CDI step and the
/// devices NRI plugins ask for.
pub fn inject(
    spec: &mut Spec,
    devices: &[String],
    registry: Option<&CdiRegistry>,
    files: &dyn HostFiles,
) -> Result<(), SpecError> {
    if devices.is_empty() {
        return Ok(());
    }
    let mut applied_specs: HashSet<&Path> = HashSet::new();
    for name in devices {
        let Some(dev) = registry.and_then(|r| r.devices.get(name)) else {
            return Err(SpecError::invalid(
                FIELD,
                format!("unknown CDI device {name:?}"),
            ));
        };
        if applied_specs.insert(&dev.spec_file) {
            apply(spec, files, &dev.spec_edits, name)?;
        }
        apply(spec, files, &dev.edits, name)?;
    }
    Ok(())
}

fn apply(
    spec: &mut Spec,
    files: &dyn HostFiles,
    e: &ContainerEdits,
    device: &str,
) -> Result<(), SpecError> {
    let refuse = |what: &str| {
        SpecError::invalid(
            FIELD,
            format!("CDI device {device:?}: {what} edits are not supported"),
        )
    };
    if e.intel_rdt.is_some() {
        return Err(refuse("intelRdt"));
    }
    if !e.net_devices.is_empty() {
        return Err(refuse("netDevices"));
    }
    if let Some(process) = spec.process_mut() {
        if !e.env.is_empty() {
            let mut env = process.env().clone().unwrap_or_default();
            for kv in &e.env {
                let key = kv.split('=').next().unwrap_or_default();
                env.retain(|x| x.split('=').next() != Some(key));
                env.push(kv.clone());
            }
            process.set_env(Some(env));
        }
        let gids: Vec<u32> = e
            .additional_gids
            .iter()
            .copied()
            .filter(|&g| g != 0)
            .collect();
        if !gids.is_empty() {
            let user = process.user_mut();
            let mut all = user.additional_gids().clone().unwrap_or_default();
            for g in gids {
                if !all.contains(&g) {
                    all.push(g);
                }
            }
            user.set_additional_gids(Some(all));
        }
    }
    for node in &e.device_nodes {
        let dev = device_node(files, node, device)?;
        let access = if node.permissions.is_empty() {
            "rwm"
        } else {
            node.permissions.as_str()
        };
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(SpecError::invalid(
                FIELD,
                format!("CDI device {device:?}: bad permissions {access:?}"),
            ));
        }
        let rule = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(dev.typ())
            .major(dev.major())
            .minor(dev.minor())
            .access(access)
            .build()?;
        let linux = linux_of(spec);
        let mut devices = linux.devices().clone().unwrap_or_default();
        devices.retain(|d| d.path() != dev.path());
        devices.push(dev);
        linux.set_devices(Some(devices));
        let resources = linux.resources_mut().get_or_insert_with(Default::default);
        let mut rules = resources.devices().clone().unwrap_or_default();
        rules.push(rule);
        resources.set_devices(Some(rules));
    }
    if !e.mounts.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for m in &e.mounts {
            let mount = cdi_mount(m, device)?;
            mounts.retain(|x| x.destination() != mount.destination());
            mounts.push(mount);
        }
        spec.set_mounts(Some(mounts));
    }
    if !e.hooks.is_empty() {
        let mut hooks = spec.hooks().clone().unwrap_or_default();
        for h in &e.hooks {
            let (stage, hook) = cdi_hook(h, device)?;
            add_hook(&mut hooks, stage, hook);
        }
        spec.set_hooks(Some(hooks));
    }
    Ok(())
}

/// The OCI device of a CDI device node: what the node gives, the rest from the host's node.
fn device_node(
    files: &dyn HostFiles,
    n: &DeviceNode,
    device: &str,
) -> Result<LinuxDevice, SpecError> {
    let bad = |why: String| SpecError::invalid(FIELD, format!("CDI device {device:?}: {why}"));
    if !n.path.starts_with('/') {
        return Err(bad(format!(
            "device node path {:?} is not absolute",
            n.path
        )));
    }
    let host_path = if n.host_path.is_empty() {
        &n.path
    } else {
        &n.host_path
    };
    let typ = match n.typ.as_str() {
        "" => None,
        "c" => Some(LinuxDeviceType::C),
        "b" => Some(LinuxDeviceType::B),
        "u" => Some(LinuxDeviceType::U),
        "p" => Some(LinuxDeviceType::P),
        other => return Err(bad(format!("device node type {other:?}"))),
    };
    let mut dev = match (typ, n.major, n.minor) {
        // Fully described: the host's node is not needed (a fifo has no numbers).
        (Some(t @ LinuxDeviceType::P), _, _) => LinuxDeviceBuilder::default()
            .path(PathBuf::from(&n.path))
            .typ(t)
            .build()?,
        (Some(t), Some(major), Some(minor)) => LinuxDeviceBuilder::default()
            .path(PathBuf::from(&n.path))
            .typ(t)
            .major(major)
            .minor(minor)
            .build()?,
        _ => files
            .devices_at(Path::new(host_path), Path::new(&n.path))
            .map_err(bad)?
            .into_iter()
            .next()
            .ok_or_else(|| bad(format!("{host_path} is not a device node")))?,
    };
    if let Some(mode) = n.file_mode {
        dev.set_file_mode(Some(mode));
    }
    if let Some(uid) = n.uid {
        dev.set_uid(Some(uid));
    }
    if let Some(gid) = n.gid {
        dev.set_gid(Some(gid));
    }
    Ok(dev)
}

fn cdi_mount(m: &CdiMount, device: &str) -> Result<Mount, SpecError> {
    if !m.container_path.starts_with('/') || m.host_path.is_empty() {
        return Err(SpecError::invalid(
            FIELD,
            format!(
                "CDI device {device:?}: a mount needs a host path and an absolute container path"
            ),
        ));
    }
    let typ = if m.typ.is_empty() { "bind" } else { &m.typ };
    let mut options = m.options.clone();
    if typ == "bind" && !options.iter().any(|o| o == "bind" || o == "rbind") {
        options.push("rbind".into());
    }
    Ok(MountBuilder::default()
        .destination(PathBuf::from(&m.container_path))
        .source(PathBuf::from(&m.host_path))
        .typ(typ)
        .options(options)
        .build()?)
}

fn cdi_hook(h: &CdiHook, device: &str) -> Result<(Stage, Hook), SpecError> {
    let stage = match h.hook_name.as_str() {
        "prestart" => Stage::Prestart,
        "createRuntime" => Stage::CreateRuntime,
        "createContainer" => Stage::CreateContainer,
        "startContainer" => Stage::StartContainer,
        "poststart" => Stage::Poststart,
        "poststop" => Stage::Poststop,
        other => {
            return Err(SpecError::invalid(
                FIELD,
                format!("CDI device {device:?}: unknown hook stage {other:?}"),
            ))
        }
    };
    let cmd = super::hooks::HookCommand {
        path: PathBuf::from(&h.path),
        args: h.args.clone(),
        env: h.env.clone(),
        timeout: h.timeout,
    };
    Ok((stage, cmd.to_oci()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
cdiVersion: "0.6.0"
kind: example.com/gpu
containerEdits:
  env: ["GPU_VENDOR=example"]
devices:
  - name: gpu0
    containerEdits:
      env: ["GPU=0"]
      deviceNodes:
        - path: /dev/gpu0
          hostPath: /dev/null
          permissions: rw
      mounts:
        - hostPath: /opt/gpu/lib
          containerPath: /usr/lib/gpu
          options: [ro, nosuid, nodev, bind]
      hooks:
        - hookName: createContainer
          path: /usr/bin/gpu-hook
          args: [gpu-hook, setup]
      additionalGIDs: [44]
  - name: gpu1
    containerEdits:
      env: ["GPU=1"]
      deviceNodes:
        - path: /dev/gpu1
          type: c
          major: 195
          minor: 1
"#;

    #[test]
    fn parses_yaml_and_json_specs_and_refuses_bad_ones() {
        let devs = parse_spec(Path::new("/etc/cdi/gpu.yaml"), YAML, true).unwrap();
        let names: Vec<&str> = devs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["example.com/gpu=gpu0", "example.com/gpu=gpu1"]);
        let gpu0 = &devs[0].1;
        assert_eq!(gpu0.spec_edits.env, ["GPU_VENDOR=example"]);
        assert_eq!(gpu0.edits.device_nodes[0].host_path, "/dev/null");
        assert_eq!(gpu0.edits.additional_gids, [44]);
        assert_eq!(gpu0.edits.hooks[0].hook_name, "createContainer");

        let json = r#"{"cdiVersion":"0.5.0","kind":"vendor.io/net","devices":[{"name":"a","containerEdits":{"env":["A=1"]}}]}"#;
        let devs = parse_spec(Path::new("/var/run/cdi/net.json"), json, false).unwrap();
        assert_eq!(devs[0].0, "vendor.io/net=a");

        for (bad, why) in [
            (
                r#"{"cdiVersion":"0.5.0","kind":"nokind","devices":[{"name":"a"}]}"#,
                "kind",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"v.io/c","devices":[]}"#,
                "no devices",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"v.io/c","devices":[{"name":"a b"}]}"#,
                "invalid",
            ),
            (
                r#"{"kind":"v.io/c","devices":[{"name":"a"}]}"#,
                "cdiVersion",
            ),
        ] {
            let e = parse_spec(Path::new("/x.json"), bad, false).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn later_files_override_devices_and_bad_files_are_skipped() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let spec = |env: &str| {
            format!(
                r#"{{"cdiVersion":"0.6.0","kind":"v.io/c","devices":[{{"name":"d","containerEdits":{{"env":["{env}"]}}}}]}}"#
            )
        };
        std::fs::write(a.path().join("c.json"), spec("X=a")).unwrap();
        std::fs::write(b.path().join("c.json"), spec("X=b")).unwrap();
        std::fs::write(b.path().join("z.yaml"), "cdiVersion: [").unwrap();
        let dirs = CdiSpecDirs::default();
        let reg = dirs.registry(&[a.path().to_path_buf(), b.path().to_path_buf()]);
        assert_eq!(reg.devices.len(), 1);
        assert_eq!(reg.devices["v.io/c=d"].edits.env, ["X=b"]);
        // re-read when a file changes
        std::fs::write(b.path().join("c.json"), spec("X=changed")).unwrap();
        let reg = dirs.registry(&[a.path().to_path_buf(), b.path().to_path_buf()]);
        assert_eq!(reg.devices["v.io/c=d"].edits.env, ["X=changed"]);
    }

    #[test]
    fn requested_devices_come_from_the_field_and_the_annotations() {
        let ann = [
            ("cdi.k8s.io/b".to_string(), "v.io/c=x, v.io/c=y".to_string()),
            ("cdi.k8s.io/a".to_string(), "v.io/c=z".to_string()),
            ("other".to_string(), "v.io/c=ignored".to_string()),
        ]
        .into();
        assert_eq!(
            requested_devices(["v.io/c=y", "v.io/c=w"], &ann),
            ["v.io/c=y", "v.io/c=w", "v.io/c=z", "v.io/c=x"]
        );
    }
}
