//! The NRI step: the adjustment node plugins agreed on (folded by `crate::nri::adjust`) applied to a
//! container's OCI spec: annotations, env, args, mounts, hooks, rlimits, devices, Linux resources, cgroups
//! path, OOM score, sysctls, the seccomp policy, and CDI devices (resolved through the CDI step's reader).
//! Unlike the other steps it runs after [`super::build`]: plugins answer about the spec the other steps
//! produced. The spec is edited as its JSON document, with the OCI field names, so the step stays independent
//! of the spec library's builder API. A key, destination or path prefixed with `-` removes.

use super::SpecError;
use crate::nri::api;
use oci_spec::runtime::Spec;
use serde_json::{json, Map, Value};

fn removal(key: &str) -> Option<&str> {
    key.strip_prefix('-')
}

/// The object at `path` in `doc`, created (as empty objects) where missing.
fn object<'a>(doc: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut cur = doc;
    for key in path {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = cur
            .as_object_mut()
            .expect("made an object above")
            .entry(key.to_string())
            .or_insert_with(|| json!({}));
    }
    if !cur.is_object() {
        *cur = json!({});
    }
    cur.as_object_mut().expect("made an object above")
}

fn array<'a>(parent: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let v = parent.entry(key.to_string()).or_insert_with(|| json!([]));
    if !v.is_array() {
        *v = json!([]);
    }
    v.as_array_mut().expect("made an array above")
}

/// Where the CDI devices NRI plugins ask for are resolved: the node's CDI specs (as CRI's are) and its
/// device nodes.
#[derive(Clone, Copy)]
pub struct NriCdi<'a> {
    pub registry: Option<&'a super::CdiRegistry>,
    pub files: &'a dyn super::HostFiles,
}

/// Apply `adjust` to `spec`; its CDI devices are resolved through `cdi`, after the other edits (as NRI's
/// runtimes inject them). `owner_of_cdi` names the plugin that asked for a CDI device, for the error.
pub fn nri_adjustments(
    spec: &Spec,
    adjust: &api::ContainerAdjustment,
    cdi: NriCdi<'_>,
    owner_of_cdi: impl Fn(&str) -> String,
) -> Result<Spec, SpecError> {
    let cdi_devices: Vec<String> = adjust.cdi_devices.iter().map(|d| d.name.clone()).collect();
    if let Some(unknown) = cdi_devices
        .iter()
        .find(|d| !cdi.registry.is_some_and(|r| r.devices.contains_key(*d)))
    {
        return Err(SpecError::invalid(
            "nri cdi_devices",
            format!(
                "plugin {:?} asked for CDI device {unknown:?}, which no CDI spec of this node defines",
                owner_of_cdi(unknown),
            ),
        ));
    }
    let mut doc = serde_json::to_value(spec).map_err(|e| SpecError::Build(e.to_string()))?;
    annotations(&mut doc, &adjust.annotations);
    env(&mut doc, &adjust.env);
    if !adjust.args.is_empty() {
        object(&mut doc, &["process"]).insert("args".into(), json!(adjust.args));
    }
    mounts(&mut doc, &adjust.mounts);
    if let Some(h) = &adjust.hooks {
        hooks(&mut doc, h);
    }
    rlimits(&mut doc, &adjust.rlimits);
    if let Some(linux) = &adjust.linux {
        devices(&mut doc, &linux.devices);
        if let Some(r) = &linux.resources {
            resources(object(&mut doc, &["linux", "resources"]), r);
        }
        if !linux.cgroups_path.is_empty() {
            object(&mut doc, &["linux"]).insert("cgroupsPath".into(), json!(linux.cgroups_path));
        }
        if let Some(oom) = &linux.oom_score_adj {
            object(&mut doc, &["process"]).insert("oomScoreAdj".into(), json!(oom.value));
        }
        if !linux.sysctl.is_empty() {
            let sysctl = object(&mut doc, &["linux", "sysctl"]);
            for (k, v) in &linux.sysctl {
                match removal(k) {
                    Some(k) => {
                        sysctl.remove(k);
                    }
                    None => {
                        sysctl.insert(k.clone(), json!(v));
                    }
                }
            }
        }
        if let Some(s) = &linux.seccomp_policy {
            object(&mut doc, &["linux"]).insert("seccomp".into(), seccomp(s));
        }
    }
    let mut spec: Spec = serde_json::from_value(doc)
        .map_err(|e| SpecError::Build(format!("the spec NRI plugins adjusted: {e}")))?;
    super::cdi::inject(&mut spec, &cdi_devices, cdi.registry, cdi.files)?;
    Ok(spec)
}

fn annotations(doc: &mut Value, annotations: &std::collections::HashMap<String, String>) {
    if annotations.is_empty() {
        return;
    }
    let map = object(doc, &["annotations"]);
    let mut keys: Vec<_> = annotations.keys().collect();
    // Removals first, so a removal and a new value of one key in one answer ends with the value.
    keys.sort_by_key(|k| (removal(k).is_none(), k.to_string()));
    for k in keys {
        match removal(k) {
            Some(k) => {
                map.remove(k);
            }
            None => {
                map.insert(k.clone(), json!(annotations[k]));
            }
        }
    }
}

fn env(doc: &mut Value, env: &[api::KeyValue]) {
    if env.is_empty() {
        return;
    }
    let list = array(object(doc, &["process"]), "env");
    for kv in env {
        let key = removal(&kv.key).unwrap_or(&kv.key);
        let prefix = format!("{key}=");
        list.retain(|e| {
            !e.as_str()
                .is_some_and(|s| s.starts_with(&prefix) || s == key)
        });
        if removal(&kv.key).is_none() {
            list.push(json!(format!("{}={}", kv.key, kv.value)));
        }
    }
}

fn mounts(doc: &mut Value, mounts: &[api::Mount]) {
    if mounts.is_empty() {
        return;
    }
    let list = array(doc.as_object_mut().expect("a spec is an object"), "mounts");
    for m in mounts {
        let dest = removal(&m.destination).unwrap_or(&m.destination);
        list.retain(|e| e.get("destination").and_then(Value::as_str) != Some(dest));
        if removal(&m.destination).is_none() {
            list.push(json!({
                "destination": m.destination,
                "type": m.r#type,
                "source": m.source,
                "options": m.options,
            }));
        }
    }
}

fn hook_json(h: &api::Hook) -> Value {
    let mut v = json!({ "path": h.path });
    if !h.args.is_empty() {
        v["args"] = json!(h.args);
    }
    if !h.env.is_empty() {
        v["env"] = json!(h.env);
    }
    if let Some(t) = &h.timeout {
        v["timeout"] = json!(t.value);
    }
    v
}

fn hooks(doc: &mut Value, hooks: &api::Hooks) {
    for (name, list) in [
        ("prestart", &hooks.prestart),
        ("createRuntime", &hooks.create_runtime),
        ("createContainer", &hooks.create_container),
        ("startContainer", &hooks.start_container),
        ("poststart", &hooks.poststart),
        ("poststop", &hooks.poststop),
    ] {
        if list.is_empty() {
            continue;
        }
        let target = array(object(doc, &["hooks"]), name);
        target.extend(list.iter().map(hook_json));
    }
}

fn rlimits(doc: &mut Value, rlimits: &[api::PosixRlimit]) {
    if rlimits.is_empty() {
        return;
    }
    let list = array(object(doc, &["process"]), "rlimits");
    for l in rlimits {
        list.retain(|e| e.get("type").and_then(Value::as_str) != Some(l.r#type.as_str()));
        list.push(json!({ "type": l.r#type, "hard": l.hard, "soft": l.soft }));
    }
}

fn devices(doc: &mut Value, devices: &[api::LinuxDevice]) {
    for d in devices {
        let path = removal(&d.path).unwrap_or(&d.path).to_string();
        let list = array(object(doc, &["linux"]), "devices");
        list.retain(|e| e.get("path").and_then(Value::as_str) != Some(path.as_str()));
        if removal(&d.path).is_some() {
            continue;
        }
        let mut dev =
            json!({ "path": d.path, "type": d.r#type, "major": d.major, "minor": d.minor });
        if let Some(m) = &d.file_mode {
            dev["fileMode"] = json!(m.value);
        }
        if let Some(u) = &d.uid {
            dev["uid"] = json!(u.value);
        }
        if let Some(g) = &d.gid {
            dev["gid"] = json!(g.value);
        }
        list.push(dev);
        // The device node alone is not enough: the device cgroup must let the container use it.
        array(object(doc, &["linux", "resources"]), "devices").push(json!({
            "allow": true, "type": d.r#type, "major": d.major, "minor": d.minor, "access": "rwm",
        }));
    }
}

fn resources(res: &mut Map<String, Value>, r: &api::LinuxResources) {
    if let Some(m) = &r.memory {
        let mem = res.entry("memory").or_insert_with(|| json!({}));
        let mut set = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                mem[k] = v;
            }
        };
        set("limit", m.limit.map(|v| json!(v.value)));
        set("reservation", m.reservation.map(|v| json!(v.value)));
        set("swap", m.swap.map(|v| json!(v.value)));
        set("kernel", m.kernel.map(|v| json!(v.value)));
        set("kernelTCP", m.kernel_tcp.map(|v| json!(v.value)));
        set("swappiness", m.swappiness.map(|v| json!(v.value)));
        set(
            "disableOOMKiller",
            m.disable_oom_killer.map(|v| json!(v.value)),
        );
        set("useHierarchy", m.use_hierarchy.map(|v| json!(v.value)));
    }
    if let Some(c) = &r.cpu {
        let cpu = res.entry("cpu").or_insert_with(|| json!({}));
        let mut set = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                cpu[k] = v;
            }
        };
        set("shares", c.shares.map(|v| json!(v.value)));
        set("quota", c.quota.map(|v| json!(v.value)));
        set("period", c.period.map(|v| json!(v.value)));
        set(
            "realtimeRuntime",
            c.realtime_runtime.map(|v| json!(v.value)),
        );
        set("realtimePeriod", c.realtime_period.map(|v| json!(v.value)));
        set("cpus", (!c.cpus.is_empty()).then(|| json!(c.cpus)));
        set("mems", (!c.mems.is_empty()).then(|| json!(c.mems)));
    }
    if !r.hugepage_limits.is_empty() {
        let list = array(res, "hugepageLimits");
        for l in &r.hugepage_limits {
            list.retain(|e| {
                e.get("pageSize").and_then(Value::as_str) != Some(l.page_size.as_str())
            });
            list.push(json!({ "pageSize": l.page_size, "limit": l.limit }));
        }
    }
    if !r.unified.is_empty() {
        let unified = res.entry("unified").or_insert_with(|| json!({}));
        for (k, v) in &r.unified {
            unified[k] = json!(v);
        }
    }
    if let Some(p) = &r.pids {
        res.insert("pids".into(), json!({ "limit": p.limit }));
    }
    for d in &r.devices {
        let mut rule = json!({ "allow": d.allow, "access": d.access });
        if !d.r#type.is_empty() {
            rule["type"] = json!(d.r#type);
        }
        if let Some(m) = &d.major {
            rule["major"] = json!(m.value);
        }
        if let Some(m) = &d.minor {
            rule["minor"] = json!(m.value);
        }
        array(res, "devices").push(rule);
    }
}

fn seccomp(s: &api::LinuxSeccomp) -> Value {
    let mut v = json!({ "defaultAction": s.default_action });
    if let Some(e) = &s.default_errno {
        v["defaultErrnoRet"] = json!(e.value);
    }
    if !s.architectures.is_empty() {
        v["architectures"] = json!(s.architectures);
    }
    if !s.flags.is_empty() {
        v["flags"] = json!(s.flags);
    }
    if !s.listener_path.is_empty() {
        v["listenerPath"] = json!(s.listener_path);
    }
    if !s.listener_metadata.is_empty() {
        v["listenerMetadata"] = json!(s.listener_metadata);
    }
    let syscalls: Vec<Value> = s
        .syscalls
        .iter()
        .map(|sc| {
            let mut c = json!({ "names": sc.names, "action": sc.action });
            if let Some(e) = &sc.errno_ret {
                c["errnoRet"] = json!(e.value);
            }
            if !sc.args.is_empty() {
                c["args"] = json!(sc
                    .args
                    .iter()
                    .map(|a| json!({ "index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op }))
                    .collect::<Vec<_>>());
            }
            c
        })
        .collect();
    if !syscalls.is_empty() {
        v["syscalls"] = json!(syscalls);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Spec {
        let doc = json!({
            "ociVersion": "1.0.2",
            "process": { "cwd": "/", "args": ["sh"], "env": ["PATH=/bin", "A=0"], "user": {"uid": 0, "gid": 0} },
            "root": { "path": "rootfs" },
            "mounts": [{ "destination": "/proc", "type": "proc", "source": "proc" }],
            "annotations": { "keep": "1", "drop": "2" },
            "linux": { "resources": {} }
        });
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn env_annotations_mounts_and_resources_reach_the_spec() {
        let adjust = api::ContainerAdjustment {
            annotations: [
                ("new".to_string(), "v".to_string()),
                ("-drop".to_string(), String::new()),
            ]
            .into(),
            env: vec![
                api::KeyValue {
                    key: "A".into(),
                    value: "1".into(),
                },
                api::KeyValue {
                    key: "B".into(),
                    value: "2".into(),
                },
            ],
            mounts: vec![api::Mount {
                destination: "/data".into(),
                r#type: "bind".into(),
                source: "/srv".into(),
                options: vec!["rbind".into(), "ro".into()],
            }],
            linux: Some(api::LinuxContainerAdjustment {
                resources: Some(api::LinuxResources {
                    memory: Some(api::LinuxMemory {
                        limit: Some(api::OptionalInt64 { value: 1 << 20 }),
                        ..Default::default()
                    }),
                    pids: Some(api::LinuxPids { limit: 42 }),
                    ..Default::default()
                }),
                oom_score_adj: Some(api::OptionalInt { value: 500 }),
                ..Default::default()
            }),
            rlimits: vec![api::PosixRlimit {
                r#type: "RLIMIT_NOFILE".into(),
                hard: 64,
                soft: 32,
            }],
            ..Default::default()
        };
        let spec = nri_adjustments(&base(), &adjust, no_cdi(), |_| String::new()).unwrap();
        let doc = serde_json::to_value(&spec).unwrap();
        assert_eq!(doc["process"]["env"], json!(["PATH=/bin", "A=1", "B=2"]));
        assert_eq!(doc["annotations"], json!({ "keep": "1", "new": "v" }));
        assert_eq!(doc["mounts"][1]["destination"], "/data");
        assert_eq!(doc["linux"]["resources"]["memory"]["limit"], 1 << 20);
        assert_eq!(doc["linux"]["resources"]["pids"]["limit"], 42);
        assert_eq!(doc["process"]["oomScoreAdj"], 500);
        assert_eq!(doc["process"]["rlimits"][0]["soft"], 32);
    }

    #[test]
    fn hooks_and_devices_are_added() {
        let adjust = api::ContainerAdjustment {
            hooks: Some(api::Hooks {
                poststart: vec![api::Hook {
                    path: "/bin/true".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            linux: Some(api::LinuxContainerAdjustment {
                devices: vec![api::LinuxDevice {
                    path: "/dev/xyz".into(),
                    r#type: "c".into(),
                    major: 1,
                    minor: 3,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = nri_adjustments(&base(), &adjust, no_cdi(), |_| String::new()).unwrap();
        let doc = serde_json::to_value(&spec).unwrap();
        assert_eq!(doc["hooks"]["poststart"][0]["path"], "/bin/true");
        assert_eq!(doc["linux"]["devices"][0]["path"], "/dev/xyz");
        assert_eq!(doc["linux"]["resources"]["devices"][0]["access"], "rwm");
    }

    fn no_cdi() -> NriCdi<'static> {
        NriCdi {
            registry: None,
            files: &crate::spec::LiveHost,
        }
    }

    #[test]
    fn unknown_cdi_devices_are_refused_naming_the_plugin() {
        let adjust = api::ContainerAdjustment {
            cdi_devices: vec![api::CdiDevice {
                name: "vendor.com/gpu=0".into(),
            }],
            ..Default::default()
        };
        let err = nri_adjustments(&base(), &adjust, no_cdi(), |_| "10-gpu".into()).unwrap_err();
        assert!(err.to_string().contains("\"10-gpu\""), "{err}");
        assert!(err.to_string().contains("vendor.com/gpu=0"), "{err}");
    }

    #[test]
    fn cdi_devices_a_plugin_asks_for_are_injected_from_the_node_specs() {
        let text = r#"{
            "cdiVersion": "0.6.0",
            "kind": "vendor.com/gpu",
            "containerEdits": { "env": ["GPU_VENDOR=1"] },
            "devices": [{
                "name": "0",
                "containerEdits": {
                    "env": ["GPU=0"],
                    "deviceNodes": [{ "path": "/dev/gpu0", "type": "c", "major": 195, "minor": 0 }]
                }
            }]
        }"#;
        let registry = crate::spec::CdiRegistry {
            devices: crate::spec::cdi::parse_spec(
                std::path::Path::new("/cdi/gpu.json"),
                text,
                false,
            )
            .unwrap()
            .into_iter()
            .collect(),
        };
        let adjust = api::ContainerAdjustment {
            cdi_devices: vec![api::CdiDevice {
                name: "vendor.com/gpu=0".into(),
            }],
            ..Default::default()
        };
        let cdi = NriCdi {
            registry: Some(&registry),
            files: &crate::spec::LiveHost,
        };
        let spec = nri_adjustments(&base(), &adjust, cdi, |_| "10-gpu".into()).unwrap();
        let doc = serde_json::to_value(&spec).unwrap();
        let env = doc["process"]["env"].as_array().unwrap();
        assert!(env.contains(&json!("GPU=0")), "{env:?}");
        assert!(env.contains(&json!("GPU_VENDOR=1")), "{env:?}");
        assert_eq!(doc["linux"]["devices"][0]["path"], "/dev/gpu0");
        assert_eq!(doc["linux"]["devices"][0]["major"], 195);
        let rules = doc["linux"]["resources"]["devices"].as_array().unwrap();
        assert!(
            rules
                .iter()
                .any(|r| r["major"] == 195 && r["allow"] == true && r["access"] == "rwm"),
            "{rules:?}"
        );
    }
}
