//! Steps alone, on a fake host: no root, no /proc, no /dev.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType, Spec};

use crate::oci::host::HostFeatures;
use crate::spec::devices::{DeviceRequest, DevicesInput};
use crate::spec::mounts::{MountRequest, Propagation};
use crate::spec::user::{resolve_user, UserRequest};
use crate::spec::*;

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
