//! Steps alone, on a fake host: no root, no /proc, no /dev.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType, Spec};

use crate::oci::host::HostFeatures;
use crate::spec::devices::{DeviceRequest, DevicesInput};
use crate::spec::mounts::{MountRequest, Propagation};
use crate::spec::user::{resolve_user, UserRequest};
use crate::spec::*;
use crate::spec::{cdi, hooks};

/// A host whose files are given: bind sources live under `/fake`, devices are made up.
#[derive(Default)]
struct FakeHost {
    mountinfo: String,
    files: HashMap<String, String>,
}

fn null_at(path: &Path) -> LinuxDevice {
    LinuxDeviceBuilder::default()
        .path(path.to_path_buf())
        .typ(LinuxDeviceType::C)
        .major(1i64)
        .minor(3i64)
        .build()
        .unwrap()
}

impl HostFiles for FakeHost {
    fn mountinfo(&self) -> String {
        self.mountinfo.clone()
    }
    fn bind_source(&self, host_path: &Path) -> Result<PathBuf, SpecError> {
        Ok(Path::new("/fake").join(host_path.strip_prefix("/").unwrap_or(host_path)))
    }
    fn devices_at(
        &self,
        host_path: &Path,
        container_path: &Path,
    ) -> Result<Vec<LinuxDevice>, String> {
        if host_path == Path::new("/dev/null") {
            Ok(vec![null_at(container_path)])
        } else {
            Err(format!("{} is not a device", host_path.display()))
        }
    }
    fn host_devices(&self) -> Vec<LinuxDevice> {
        vec![null_at(Path::new("/dev/null"))]
    }
    fn read_in_root(&self, _root: &Path, path: &str) -> Result<String, SpecError> {
        Ok(self.files.get(path).cloned().unwrap_or_default())
    }
    fn read_seccomp_profile(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .get(path.to_str().unwrap_or(""))
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

fn input<'a>(features: &'a HostFeatures, files: &'a FakeHost) -> Input<'a> {
    Input {
        host: HostView { features, files },
        rootfs: "/rootfs".into(),
        readonly_rootfs: false,
        cgroups_path: "/ferrio/c".into(),
        hostname: String::new(),
        process: ProcessInput::default(),
        security: SecurityInput::default(),
        mounts: MountsInput::default(),
        devices: DevicesInput::default(),
        namespaces: NamespacesInput::default(),
        resources: None,
        sysctls: HashMap::new(),
        annotations: AnnotationsInput::default(),
        cdi: CdiInput::default(),
        hooks: &[],
    }
}

fn run(step: Step, input: &Input) -> Result<Spec, SpecError> {
    build(&[("under test", step)], input)
}

#[test]
fn step_lists_are_named_once_and_end_with_annotations() {
    for steps in [POD_STEPS, CONTAINER_STEPS] {
        let mut names: Vec<&str> = steps.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.last(), Some(&"annotations"));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), steps.len());
    }
}

#[test]
fn the_base_spec_carries_nothing_of_oci_specs_defaults() {
    let features = HostFeatures::default();
    let files = FakeHost::default();
    let s = build(&[], &input(&features, &files)).unwrap();
    assert!(s.hostname().is_none());
    assert_eq!(s.mounts().as_deref(), Some(&[][..]));
    let l = s.linux().as_ref().unwrap();
    assert!(l.masked_paths().is_none() && l.readonly_paths().is_none());
    assert!(l.namespaces().is_none());
    assert_eq!(l.cgroups_path().as_deref(), Some(Path::new("/ferrio/c")));
}

#[test]
fn mounts_use_the_hosts_bind_source_and_mount_table() {
    let features = HostFeatures::default();
    let files = FakeHost {
        mountinfo: "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n".into(),
        ..Default::default()
    };
    let mut i = input(&features, &files);
    i.mounts.mounts = vec![MountRequest {
        container_path: "/data".into(),
        host_path: "/srv/data".into(),
        readonly: true,
        ..Default::default()
    }];
    let s = run(mounts::mounts, &i).unwrap();
    let m = s.mounts().as_ref().unwrap().last().unwrap();
    assert_eq!(m.source().as_deref(), Some(Path::new("/fake/srv/data")));
    assert!(m.options().as_ref().unwrap().contains(&"ro".to_string()));
    // The fake's / is private: nothing can propagate out of it.
    i.mounts.mounts[0].propagation = Propagation::Bidirectional;
    i.mounts.mounts[0].readonly = false;
    assert!(matches!(
        run(mounts::mounts, &i),
        Err(SpecError::Invalid { .. })
    ));
}

#[test]
fn devices_come_from_the_host_view() {
    let features = HostFeatures::default();
    let files = FakeHost::default();
    let mut i = input(&features, &files);
    i.devices.devices = vec![DeviceRequest {
        container_path: "/dev/x".into(),
        host_path: "/dev/null".into(),
        permissions: String::new(),
    }];
    let s = run(devices::devices, &i).unwrap();
    let l = s.linux().as_ref().unwrap();
    assert_eq!(l.devices().as_ref().unwrap()[0].path(), Path::new("/dev/x"));
    let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
    assert!(!rules[0].allow() && rules[1].allow());
    assert_eq!(rules[1].access().as_deref(), Some("rwm"));

    i.devices.all_host = true;
    let s = run(devices::devices, &i).unwrap();
    let l = s.linux().as_ref().unwrap();
    assert_eq!(
        l.devices().as_ref().unwrap()[0].path(),
        Path::new("/dev/null")
    );
    let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow());

    i.devices.devices[0].host_path = "/etc/passwd".into();
    match run(devices::devices, &i) {
        Err(SpecError::Invalid { field, reason }) => {
            assert_eq!(field, "devices[0]");
            assert!(reason.contains("not a device"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn users_resolve_from_the_host_views_rootfs() {
    let files = FakeHost {
        files: [
            (
                "/etc/passwd".to_string(),
                "app:x:10:20::/home/app:/bin/sh\n".to_string(),
            ),
            ("/etc/group".to_string(), "extra:x:30:app\n".to_string()),
        ]
        .into(),
        ..Default::default()
    };
    let u = resolve_user(None, "app", Path::new("/rootfs"), &files).unwrap();
    assert_eq!(
        (u.uid, u.gid, u.additional_gids.clone()),
        (10, 20, vec![30])
    );
    assert_eq!(u.home.as_deref(), Some("/home/app"));
    let strict = UserRequest {
        run_as_user: Some(10),
        merge_image_groups: false,
        ..Default::default()
    };
    let u = resolve_user(Some(&strict), "", Path::new("/rootfs"), &files).unwrap();
    assert!(u.additional_gids.is_empty());
}

#[test]
fn process_clamps_oom_score_adj_to_the_hosts_floor() {
    let features = HostFeatures {
        min_oom_score_adj: 0,
        ..HostFeatures::default()
    };
    let files = FakeHost::default();
    let mut i = input(&features, &files);
    i.process.oom_score_adj = Some(-998);
    i.process.restrict_oom_score_adj = true;
    let s = run(process::process, &i).unwrap();
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.oom_score_adj(), Some(0));
    assert!(p.rlimits().is_none());
    i.process.restrict_oom_score_adj = false;
    let s = run(process::process, &i).unwrap();
    assert_eq!(s.process().as_ref().unwrap().oom_score_adj(), Some(-998));
}

#[test]
fn a_localhost_seccomp_profile_is_read_through_the_host_view() {
    let features = HostFeatures::default();
    let files = FakeHost {
        files: [(
            "/profiles/p.json".to_string(),
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[]}"#.to_string(),
        )]
        .into(),
        ..Default::default()
    };
    let mut i = input(&features, &files);
    i.security.seccomp = Some(seccomp::SeccompRequest::Localhost(
        "/profiles/p.json".into(),
    ));
    let s = run(seccomp::seccomp, &i).unwrap();
    assert!(s.linux().as_ref().unwrap().seccomp().is_some());
    i.security.seccomp = Some(seccomp::SeccompRequest::Localhost(
        "/profiles/none.json".into(),
    ));
    assert!(matches!(
        run(seccomp::seccomp, &i),
        Err(SpecError::Invalid { .. })
    ));
    // Privileged: no filter, and the profile is not even read.
    i.security.privileged = true;
    assert!(run(seccomp::seccomp, &i).is_ok());
}

#[test]
fn the_hostname_needs_a_uts_namespace_of_its_own() {
    let features = HostFeatures::default();
    let files = FakeHost::default();
    let mut i = input(&features, &files);
    i.hostname = "pod".into();
    assert!(run(namespaces::hostname, &i).unwrap().hostname().is_none());
    i.namespaces.uts = Some("/run/uts".into());
    assert_eq!(
        run(namespaces::hostname, &i).unwrap().hostname().as_deref(),
        Some("pod")
    );
}

#[test]
fn cdi_devices_apply_their_edits_once_per_spec_file() {
    let features = HostFeatures::default();
    let files = FakeHost::default();
    let yaml = r#"
cdiVersion: "0.6.0"
kind: example.com/dev
containerEdits:
  env: ["VENDOR=example"]
  additionalGIDs: [44]
devices:
  - name: a
    containerEdits:
      env: ["DEV=a"]
      deviceNodes: [{path: /dev/a, hostPath: /dev/null, permissions: rw}]
      mounts: [{hostPath: /opt/a, containerPath: /opt/a, options: [ro]}]
      hooks: [{hookName: createContainer, path: /bin/true}]
  - name: b
    containerEdits:
      env: ["DEV=b"]
      deviceNodes: [{path: /dev/b, type: c, major: 10, minor: 7}]
"#;
    let reg = CdiRegistry {
        devices: cdi::parse_spec(Path::new("/etc/cdi/dev.yaml"), yaml, true)
            .unwrap()
            .into_iter()
            .collect(),
    };
    let mut i = input(&features, &files);
    i.process.env = vec!["DEV=none".into(), "PATH=/bin".into()];
    i.cdi = CdiInput {
        devices: vec!["example.com/dev=a".into(), "example.com/dev=b".into()],
        registry: Some(&reg),
    };
    let steps: &[(&str, Step)] = &[
        ("process", process::process),
        ("devices", devices::devices),
        ("cdi devices", cdi::cdi_devices),
    ];
    let s = build(steps, &i).unwrap();
    let p = s.process().as_ref().unwrap();
    let env = p.env().clone().unwrap();
    assert!(env.contains(&"VENDOR=example".to_string()), "{env:?}");
    assert!(env.contains(&"DEV=b".to_string()), "{env:?}");
    assert!(
        !env.iter().any(|e| e == "DEV=none" || e == "DEV=a"),
        "{env:?}"
    );
    assert_eq!(env.iter().filter(|e| e.starts_with("VENDOR=")).count(), 1);
    assert!(p.user().additional_gids().as_ref().unwrap().contains(&44));
    let l = s.linux().as_ref().unwrap();
    let devs = l.devices().clone().unwrap();
    let a = devs
        .iter()
        .find(|d| d.path() == Path::new("/dev/a"))
        .unwrap();
    assert_eq!((a.major(), a.minor()), (1, 3));
    let b = devs
        .iter()
        .find(|d| d.path() == Path::new("/dev/b"))
        .unwrap();
    assert_eq!((b.major(), b.minor()), (10, 7));
    let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
    assert!(!rules[0].allow(), "deny-all first");
    assert!(rules.iter().any(|r| r.allow()
        && r.major() == Some(1)
        && r.minor() == Some(3)
        && r.access().as_deref() == Some("rw")));
    assert!(rules.iter().any(|r| r.allow() && r.major() == Some(10)));
    let m = s.mounts().clone().unwrap();
    let opt = m
        .iter()
        .find(|m| m.destination() == Path::new("/opt/a"))
        .unwrap();
    assert_eq!(opt.typ().as_deref(), Some("bind"));
    assert_eq!(opt.options().clone().unwrap(), ["ro", "rbind"]);
    let hooks = s.hooks().clone().unwrap();
    assert_eq!(hooks.create_container().as_ref().map(Vec::len), Some(1));

    // An unknown device is refused by name.
    i.cdi.devices.push("example.com/dev=nope".into());
    match build(steps, &i) {
        Err(SpecError::Invalid { field, reason }) => {
            assert_eq!(field, "CDI_devices");
            assert!(reason.contains("example.com/dev=nope"), "{reason}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn oci_hooks_are_added_when_their_conditions_hold() {
    let features = HostFeatures::default();
    let files = FakeHost::default();
    let parse = |when: &str, stage: &str| {
        hooks::parse_hook(
            Path::new("/hooks/h.json"),
            &format!(
                r#"{{"version":"1.0.0","hook":{{"path":"/bin/h","args":["h","{stage}"]}},"when":{when},"stages":["{stage}"]}}"#
            ),
            |_| true,
        )
        .unwrap()
    };
    let defs = vec![
        parse(r#"{"always":true}"#, "createRuntime"),
        parse(
            r#"{"annotations":{"^example\\.com/trace$":"^on$"}}"#,
            "poststop",
        ),
        parse(r#"{"commands":["^/bin/sleep$"]}"#, "startContainer"),
        parse(r#"{"hasBindMounts":true}"#, "prestart"),
        // ferrio's own annotations are there to match, too
        parse(
            r#"{"annotations":{"container-name$":"^app$"}}"#,
            "poststart",
        ),
    ];
    let mut i = input(&features, &files);
    i.hooks = &defs;
    i.process.args = vec!["/bin/sh".into()];
    i.annotations.request = [("example.com/trace".to_string(), "on".to_string())].into();
    i.annotations.container_name = Some("app".into());
    let steps: &[(&str, Step)] = &[
        ("process", process::process),
        ("oci hooks", hooks::oci_hooks),
    ];
    let s = build(steps, &i).unwrap();
    let h = s.hooks().clone().unwrap();
    assert_eq!(h.create_runtime().as_ref().map(Vec::len), Some(1));
    assert_eq!(h.poststop().as_ref().map(Vec::len), Some(1));
    assert_eq!(h.poststart().as_ref().map(Vec::len), Some(1));
    assert!(h.start_container().is_none(), "not /bin/sleep");
    #[allow(deprecated)]
    let prestart = h.prestart().clone();
    assert!(prestart.is_none(), "no volumes");
    // no hooks at all: the spec carries none
    i.hooks = &[];
    assert!(build(steps, &i).unwrap().hooks().is_none());
}
