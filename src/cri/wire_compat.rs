//! Wire compatibility of `proto/cri/api.proto` with the CRI of Kubernetes 1.32 (the `k8s-cri` 0.11 crate,
//! whose schema is cri-api v0.32), and the encodings of the fields added since.
//!
//! Messages both schemas know are filled with non-default values in every field (checked, so a field
//! forgotten here fails the test), encoded with k8s-cri, decoded with ours, compared field by field,
//! re-encoded with ours and compared byte for byte and decoded back with k8s-cri. A field with a wrong number
//! reads back as its default and a wrong type as another value, so either fails the comparison. Maps hold
//! one entry each so that encodings are deterministic.
//!
//! The newer fields are checked against encodings written out by hand from the field numbers and types
//! of cri-api v0.36.

// The deprecated fields are part of the wire format and are filled like the others.
#![allow(deprecated)]

use super::v1 as new;
use k8s_cri::v1 as old;
use prost::Message;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

fn one(key: &str, value: &str) -> HashMap<String, String> {
    HashMap::from([(key.to_string(), value.to_string())])
}

/// Fails naming the first field of `v` that holds its default value: the sample must fill every field.
fn assert_filled(path: &str, v: &Value) {
    match v {
        Value::Null => panic!("{path} is not set"),
        Value::Bool(b) => assert!(*b, "{path} is false"),
        Value::Number(n) => assert!(n.as_f64() != Some(0.0), "{path} is 0"),
        Value::String(s) => assert!(!s.is_empty(), "{path} is empty"),
        Value::Array(a) => {
            assert!(!a.is_empty(), "{path} is empty");
            for (i, item) in a.iter().enumerate() {
                assert_filled(&format!("{path}[{i}]"), item);
            }
        }
        Value::Object(o) => {
            assert!(!o.is_empty(), "{path} is empty");
            for (k, item) in o {
                assert_filled(&format!("{path}.{k}"), item);
            }
        }
    }
}

/// Whether `v` is what an unset field of ours serializes as.
fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Every field of `theirs` is in `ours` with the same value; fields only ours knows are unset.
fn assert_same_fields(path: &str, theirs: &Value, ours: &Value) {
    match (theirs, ours) {
        (Value::Object(t), Value::Object(o)) => {
            for (k, tv) in t {
                let ov = o
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} missing in ours"));
                assert_same_fields(&format!("{path}.{k}"), tv, ov);
            }
            for (k, ov) in o {
                if !t.contains_key(k) {
                    assert!(is_default(ov), "{path}.{k} (new field) is set: {ov}");
                }
            }
        }
        (Value::Array(t), Value::Array(o)) => {
            assert_eq!(t.len(), o.len(), "{path}: lengths differ");
            for (i, (tv, ov)) in t.iter().zip(o).enumerate() {
                assert_same_fields(&format!("{path}[{i}]"), tv, ov);
            }
        }
        _ => assert_eq!(theirs, ours, "{path} differs"),
    }
}

/// k8s-cri -> bytes -> ours -> bytes -> k8s-cri, checking each step.
fn round_trip<O, N>(theirs: O)
where
    O: Message + Default + PartialEq + std::fmt::Debug + Serialize,
    N: Message + Default + Serialize,
{
    let name = std::any::type_name::<O>();
    let their_json = serde_json::to_value(&theirs).unwrap();
    assert_filled(name, &their_json);
    let bytes = theirs.encode_to_vec();
    let ours = N::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_same_fields(name, &their_json, &serde_json::to_value(&ours).unwrap());
    let again = ours.encode_to_vec();
    assert_eq!(again, bytes, "{name}: our encoding differs");
    assert_eq!(O::decode(again.as_slice()).unwrap(), theirs, "{name}");
}

fn image_spec(n: &str) -> old::ImageSpec {
    old::ImageSpec {
        image: format!("registry.example/{n}:1"),
        annotations: one("image.annotation", n),
        user_specified_image: format!("{n}:1"),
        runtime_handler: "crun".into(),
    }
}

fn resources(base: i64) -> old::LinuxContainerResources {
    old::LinuxContainerResources {
        cpu_period: base + 100_000,
        cpu_quota: base + 50_000,
        cpu_shares: base + 512,
        // Beyond 32 bits, so an int32 in our schema would show.
        memory_limit_in_bytes: base + (5 << 32),
        oom_score_adj: -(base + 998),
        cpuset_cpus: "0-3".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![old::HugepageLimit {
            page_size: "2MB".into(),
            limit: (base as u64) + (1 << 33),
        }],
        unified: one("memory.high", "1073741824"),
        memory_swap_limit_in_bytes: base + (6 << 32),
    }
}

fn id_map(base: u32) -> old::IdMapping {
    old::IdMapping {
        host_id: base + 100_000,
        container_id: base + 1,
        length: base + 65_536,
    }
}

fn namespaces() -> old::NamespaceOption {
    old::NamespaceOption {
        network: old::NamespaceMode::Node as i32,
        pid: old::NamespaceMode::Target as i32,
        ipc: old::NamespaceMode::Container as i32,
        target_id: "target-container".into(),
        userns_options: Some(old::UserNamespace {
            mode: old::NamespaceMode::Node as i32,
            uids: vec![id_map(1)],
            gids: vec![id_map(2)],
        }),
    }
}

fn selinux() -> old::SeLinuxOption {
    old::SeLinuxOption {
        user: "system_u".into(),
        role: "system_r".into(),
        r#type: "container_t".into(),
        level: "s0:c1,c2".into(),
    }
}

fn profile(name: &str) -> old::SecurityProfile {
    old::SecurityProfile {
        profile_type: old::security_profile::ProfileType::Localhost as i32,
        localhost_ref: name.into(),
    }
}

fn pod_config() -> old::PodSandboxConfig {
    old::PodSandboxConfig {
        metadata: Some(old::PodSandboxMetadata {
            name: "web".into(),
            uid: "0b4a1e8c".into(),
            namespace: "shop".into(),
            attempt: 3,
        }),
        hostname: "web-0".into(),
        log_directory: "/var/log/pods/shop_web_0b4a1e8c".into(),
        dns_config: Some(old::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["shop.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: vec![old::PortMapping {
            protocol: old::Protocol::Sctp as i32,
            container_port: 8080,
            host_port: 30080,
            host_ip: "192.0.2.1".into(),
        }],
        labels: one("app", "web"),
        annotations: one("kubernetes.io/config.seen", "now"),
        linux: Some(old::LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/burstable/pod0b4a1e8c".into(),
            security_context: Some(old::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                selinux_options: Some(selinux()),
                run_as_user: Some(old::Int64Value { value: 1000 }),
                run_as_group: Some(old::Int64Value { value: 3000 }),
                readonly_rootfs: true,
                supplemental_groups: vec![4000, 1 << 40],
                supplemental_groups_policy: old::SupplementalGroupsPolicy::Strict as i32,
                privileged: true,
                seccomp: Some(profile("profiles/pod.json")),
                apparmor: Some(profile("pod-apparmor")),
                seccomp_profile_path: "localhost/pod.json".into(),
            }),
            sysctls: one("net.ipv4.ip_unprivileged_port_start", "0"),
            overhead: Some(resources(1)),
            resources: Some(resources(2)),
        }),
        windows: Some(old::WindowsPodSandboxConfig {
            security_context: Some(old::WindowsSandboxSecurityContext {
                run_as_username: "ContainerUser".into(),
                credential_spec: "{}".into(),
                host_process: true,
                namespace_options: Some(old::WindowsNamespaceOption {
                    network: old::NamespaceMode::Node as i32,
                }),
            }),
        }),
    }
}

fn mount(n: u32) -> old::Mount {
    old::Mount {
        container_path: format!("/data/{n}"),
        host_path: format!("/srv/{n}"),
        readonly: true,
        selinux_relabel: true,
        propagation: old::MountPropagation::PropagationBidirectional as i32,
        uid_mappings: vec![id_map(n)],
        gid_mappings: vec![id_map(n + 1)],
        recursive_read_only: true,
        image: Some(image_spec("volume")),
    }
}

fn windows_resources() -> old::WindowsContainerResources {
    old::WindowsContainerResources {
        cpu_shares: 2,
        cpu_count: 4,
        cpu_maximum: 5000,
        memory_limit_in_bytes: 1 << 34,
        rootfs_size_in_bytes: 1 << 35,
        affinity_cpus: vec![old::WindowsCpuGroupAffinity {
            cpu_mask: u64::MAX - 1,
            cpu_group: 1,
        }],
    }
}

fn container_config() -> old::ContainerConfig {
    old::ContainerConfig {
        metadata: Some(old::ContainerMetadata {
            name: "app".into(),
            attempt: 2,
        }),
        image: Some(image_spec("app")),
        command: vec!["/bin/app".into()],
        args: vec!["--serve".into(), "--port=8080".into()],
        working_dir: "/srv".into(),
        envs: vec![old::KeyValue {
            key: "GREETING".into(),
            value: "grüße".into(),
        }],
        mounts: vec![mount(1), mount(2)],
        devices: vec![old::Device {
            container_path: "/dev/fuse".into(),
            host_path: "/dev/fuse".into(),
            permissions: "rwm".into(),
        }],
        labels: one("io.kubernetes.container.name", "app"),
        annotations: one("io.kubernetes.container.hash", "abc"),
        log_path: "app/2.log".into(),
        stdin: true,
        stdin_once: true,
        tty: true,
        linux: Some(old::LinuxContainerConfig {
            resources: Some(resources(3)),
            security_context: Some(old::LinuxContainerSecurityContext {
                capabilities: Some(old::Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["ALL".into()],
                    add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
                }),
                privileged: true,
                namespace_options: Some(namespaces()),
                selinux_options: Some(selinux()),
                run_as_user: Some(old::Int64Value { value: 1001 }),
                run_as_group: Some(old::Int64Value { value: 3001 }),
                run_as_username: "app".into(),
                readonly_rootfs: true,
                supplemental_groups: vec![4001],
                supplemental_groups_policy: old::SupplementalGroupsPolicy::Strict as i32,
                no_new_privs: true,
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                seccomp: Some(profile("profiles/app.json")),
                apparmor: Some(profile("app-apparmor")),
                apparmor_profile: "localhost/app-apparmor".into(),
                seccomp_profile_path: "localhost/app.json".into(),
            }),
        }),
        windows: Some(old::WindowsContainerConfig {
            resources: Some(windows_resources()),
            security_context: Some(old::WindowsContainerSecurityContext {
                run_as_username: "ContainerUser".into(),
                credential_spec: "{}".into(),
                host_process: true,
            }),
        }),
        cdi_devices: vec![old::CdiDevice {
            name: "vendor.example/gpu=0".into(),
        }],
    }
}

fn container_status() -> old::ContainerStatus {
    old::ContainerStatus {
        id: "c0ffee".into(),
        metadata: Some(old::ContainerMetadata {
            name: "app".into(),
            attempt: 1,
        }),
        state: old::ContainerState::ContainerExited as i32,
        created_at: 1_700_000_000_000_000_001,
        started_at: 1_700_000_000_000_000_002,
        finished_at: 1_700_000_000_000_000_003,
        exit_code: -137,
        image: Some(image_spec("app")),
        image_ref: "sha256:aa".into(),
        reason: "OOMKilled".into(),
        message: "out of memory".into(),
        labels: one("app", "web"),
        annotations: one("k", "v"),
        mounts: vec![mount(3)],
        log_path: "/var/log/pods/x/app/1.log".into(),
        resources: Some(old::ContainerResources {
            linux: Some(resources(4)),
            windows: Some(windows_resources()),
        }),
        image_id: "sha256:bb".into(),
        user: Some(old::ContainerUser {
            linux: Some(old::LinuxContainerUser {
                uid: 1000,
                gid: 3000,
                supplemental_groups: vec![3000, 4000],
            }),
        }),
    }
}

fn status_response() -> old::StatusResponse {
    let handler = |name: &str| old::RuntimeHandler {
        name: name.into(),
        features: Some(old::RuntimeHandlerFeatures {
            recursive_read_only_mounts: true,
            user_namespaces: true,
        }),
    };
    old::StatusResponse {
        status: Some(old::RuntimeStatus {
            conditions: vec![old::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                reason: "NetworkPluginReady".into(),
                message: "cni config loaded".into(),
            }],
        }),
        info: one("config", "{}"),
        runtime_handlers: vec![handler("runc"), handler("crun")],
        features: Some(old::RuntimeFeatures {
            supplemental_groups_policy: true,
        }),
    }
}

#[test]
fn pod_sandbox_config_round_trips() {
    round_trip::<_, new::PodSandboxConfig>(pod_config());
}

#[test]
fn container_config_round_trips() {
    round_trip::<_, new::ContainerConfig>(container_config());
    let create = old::CreateContainerRequest {
        pod_sandbox_id: "pod".into(),
        config: Some(container_config()),
        sandbox_config: Some(pod_config()),
    };
    round_trip::<_, new::CreateContainerRequest>(create);
}

#[test]
fn container_status_round_trips() {
    round_trip::<_, new::ContainerStatus>(container_status());
}

#[test]
fn image_spec_and_resources_round_trip() {
    round_trip::<_, new::ImageSpec>(image_spec("plain"));
    round_trip::<_, new::LinuxContainerResources>(resources(7));
}

#[test]
fn status_and_version_responses_round_trip() {
    round_trip::<_, new::StatusResponse>(status_response());
    round_trip::<_, new::VersionResponse>(old::VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "ferrio".into(),
        runtime_version: "0.1.0".into(),
        runtime_api_version: "v1".into(),
    });
}

/// Our encoding of `msg` is exactly `expected`, and `expected` decodes back to `msg`.
fn assert_encodes<M: Message + Default + PartialEq + std::fmt::Debug>(msg: M, expected: &[u8]) {
    assert_eq!(msg.encode_to_vec(), expected, "{msg:?}");
    assert_eq!(M::decode(expected).unwrap(), msg);
}

#[test]
fn mount_image_sub_path_is_field_10_string() {
    // Key: field 10, wire type 2 (length-delimited) = 0x52.
    assert_encodes(
        new::Mount {
            image_sub_path: "etc/x".into(),
            ..Default::default()
        },
        &[0x52, 5, b'e', b't', b'c', b'/', b'x'],
    );
    // An older peer skips it and keeps the rest.
    let old = old::Mount::decode(&[0x0a, 2, b'/', b'd', 0x52, 1, b'x'][..]).unwrap();
    assert_eq!(old.container_path, "/d");
}

#[test]
fn image_spec_image_ref_is_field_20_string() {
    // Key: field 20, wire type 2 = 162 = varint [0xa2, 0x01].
    assert_encodes(
        new::ImageSpec {
            image_ref: "sha256:ab".into(),
            ..Default::default()
        },
        &[
            0xa2, 0x01, 9, b's', b'h', b'a', b'2', b'5', b'6', b':', b'a', b'b',
        ],
    );
}

#[test]
fn stop_signals_are_field_18_and_19_enums() {
    // ContainerConfig.stop_signal: field 18, varint = 144 = [0x90, 0x01]; SIGUSR1 = 29.
    assert_encodes(
        new::ContainerConfig {
            stop_signal: new::Signal::Sigusr1 as i32,
            ..Default::default()
        },
        &[0x90, 0x01, 29],
    );
    // ContainerStatus.stop_signal: field 19, varint = 152 = [0x98, 0x01]; SIGRTMAX = 65.
    assert_encodes(
        new::ContainerStatus {
            stop_signal: new::Signal::Sigrtmax as i32,
            ..Default::default()
        },
        &[0x98, 0x01, 65],
    );
    assert_eq!(new::Signal::Sigterm as i32, 23);
    assert_eq!(new::Signal::Sigkill as i32, 13);
    assert_eq!(new::Signal::RuntimeDefault as i32, 0);
}

#[test]
fn key_value_value_is_bytes() {
    // key: field 1 (0x0a); value: field 2 (0x12), any bytes.
    let wire = [0x0a, 1, b'K', 0x12, 3, 0xff, 0x00, 0xfe];
    assert_encodes(
        new::KeyValue {
            key: "K".into(),
            value: vec![0xff, 0x00, 0xfe],
        },
        &wire,
    );
    // The 1.32 schema's string field cannot take them: the reason the field changed type.
    assert!(old::KeyValue::decode(&wire[..]).is_err());
}

#[test]
fn user_namespaces_host_network_is_field_2_bool() {
    assert_encodes(
        new::RuntimeFeatures {
            supplemental_groups_policy: true,
            user_namespaces_host_network: true,
        },
        &[0x08, 1, 0x10, 1],
    );
}

fn psi_sample() -> new::PsiStats {
    let data = |total| new::PsiData {
        total,
        avg10: 1.5,
        avg60: 0.25,
        avg300: 2.0,
    };
    new::PsiStats {
        full: Some(data(300)),
        some: Some(data(7)),
    }
}

/// PsiData: Total field 1 varint (0x08), Avg10/60/300 fields 2/3/4 double (wire type 1: 0x11, 0x19,
/// 0x21) as little-endian IEEE 754.
fn psi_data_wire(total: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08];
    v.extend_from_slice(total);
    for (key, x) in [(0x11u8, 1.5f64), (0x19, 0.25), (0x21, 2.0)] {
        v.push(key);
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// PsiStats: Full field 1 (0x0a), Some field 2 (0x12), both messages.
fn psi_stats_wire() -> Vec<u8> {
    let full = psi_data_wire(&[0xac, 0x02]); // 300
    let some = psi_data_wire(&[7]);
    let mut v = vec![0x0a, full.len() as u8];
    v.extend(full);
    v.extend([0x12, some.len() as u8]);
    v.extend(some);
    v
}

fn nested(key: u8, body: Vec<u8>) -> Vec<u8> {
    let mut v = vec![key, body.len() as u8];
    v.extend(body);
    v
}

#[test]
fn psi_and_io_usage_fields() {
    assert_encodes(psi_sample(), &psi_stats_wire());
    // CpuUsage.psi: field 4 (0x22); MemoryUsage.psi: field 8 (0x42).
    assert_encodes(
        new::CpuUsage {
            psi: Some(psi_sample()),
            ..Default::default()
        },
        &nested(0x22, psi_stats_wire()),
    );
    assert_encodes(
        new::MemoryUsage {
            psi: Some(psi_sample()),
            ..Default::default()
        },
        &nested(0x42, psi_stats_wire()),
    );
    // IoUsage: timestamp field 1 varint (0x08), psi field 2 (0x12).
    let io = new::IoUsage {
        timestamp: 5,
        psi: Some(psi_sample()),
    };
    let mut io_wire = vec![0x08, 5];
    io_wire.extend(nested(0x12, psi_stats_wire()));
    assert_encodes(io, &io_wire);
    // ContainerStats.io and LinuxPodSandboxStats.io: field 6 (0x32).
    assert_encodes(
        new::ContainerStats {
            io: Some(io),
            ..Default::default()
        },
        &nested(0x32, io_wire.clone()),
    );
    assert_encodes(
        new::LinuxPodSandboxStats {
            io: Some(io),
            ..Default::default()
        },
        &nested(0x32, io_wire),
    );
}

#[test]
fn update_pod_sandbox_resources_request_fields() {
    // pod_sandbox_id field 1 (0x0a), overhead field 2 (0x12), resources field 3 (0x1a); inside, cpu_shares
    // is field 3 varint (0x18).
    assert_encodes(
        new::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "p".into(),
            overhead: Some(new::LinuxContainerResources {
                cpu_shares: 2,
                ..Default::default()
            }),
            resources: Some(new::LinuxContainerResources {
                cpu_shares: 1024,
                ..Default::default()
            }),
        },
        &[0x0a, 1, b'p', 0x12, 2, 0x18, 2, 0x1a, 3, 0x18, 0x80, 0x08],
    );
}

#[test]
fn stream_responses_carry_their_lists_in_field_1() {
    let pod = new::PodSandbox {
        id: "a".into(),
        ..Default::default()
    };
    let container = new::Container {
        id: "a".into(),
        ..Default::default()
    };
    let image = new::Image {
        id: "a".into(),
        ..Default::default()
    };
    let item = [0x0a, 3, 0x0a, 1, b'a'];
    assert_encodes(
        new::StreamPodSandboxesResponse {
            pod_sandboxes: vec![pod],
        },
        &item,
    );
    assert_encodes(
        new::StreamContainersResponse {
            containers: vec![container],
        },
        &item,
    );
    assert_encodes(
        new::StreamImagesResponse {
            images: vec![image],
        },
        &item,
    );
}
