//! Mounts: the defaults `runc spec` starts from, the request's bind mounts and image volumes
//! (with their propagation checked against the host's mounts), and the pod's generated files.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder, Spec};

use super::security::{linux_of, strings};
use super::{Input, SpecError};

/// An image volume of the request's `mounts`, already mounted read-only on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageVolume {
    /// Index of the mount in the request's `mounts`.
    pub index: usize,
    /// The host path bound into the container: the read-only overlay, or the file or
    /// directory inside it that `image_sub_path` names.
    pub source: PathBuf,
}

/// How a bind mount propagates (CRI's `MountPropagation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

/// One mount of the request.
#[derive(Debug, Clone, Default)]
pub struct MountRequest {
    pub container_path: String,
    pub host_path: String,
    pub propagation: Propagation,
    pub readonly: bool,
    pub recursive_read_only: bool,
    /// The mount is an image volume (see [`ImageVolume`]).
    pub image: bool,
    /// The request asks for uid or gid mappings.
    pub idmapped: bool,
}

/// Host paths of the pod's generated files.
#[derive(Debug, Clone)]
pub struct PodFilePaths {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname: PathBuf,
}

/// The mounts a spec gets.
#[derive(Debug, Clone, Default)]
pub struct MountsInput {
    /// sysfs and cgroupfs writable.
    pub privileged: bool,
    pub mounts: Vec<MountRequest>,
    pub image_volumes: Vec<ImageVolume>,
    /// Bound at /etc/hosts, /etc/resolv.conf and /etc/hostname unless the request mounts those.
    pub pod_files: Option<PodFilePaths>,
}

/// Step: default mounts, pod files and the request's mounts (parents before children), and
/// the rootfs propagation the request's mounts need.
pub fn mounts(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    let req = &input.mounts;
    let mut mountinfo: Option<String> = None;
    let mut user: Vec<(PathBuf, Mount)> = Vec::new();
    let mut propagation: Option<&'static str> = None;
    for (i, m) in req.mounts.iter().enumerate() {
        let field = format!("mounts[{i}]");
        if !m.container_path.starts_with('/') {
            return Err(SpecError::invalid(
                field,
                format!("container path {:?} is not absolute", m.container_path),
            ));
        }
        if m.image {
            // An image volume: the image's read-only overlay, bound read-only, never
            // propagating (there is nothing to propagate into an image).
            let Some(v) = req.image_volumes.iter().find(|v| v.index == i) else {
                return Err(SpecError::invalid(field, "image volume is not mounted"));
            };
            let dest = PathBuf::from(&m.container_path);
            let options = strings(&["rbind", "rprivate", "ro", "nodev"]);
            user.push((dest.clone(), bind(&dest, &v.source, options)?));
            continue;
        }
        if m.host_path.is_empty() {
            return Err(SpecError::invalid(field, "host path is empty"));
        }
        if m.idmapped {
            return Err(SpecError::invalid(
                field,
                "idmapped mounts are not supported",
            ));
        }
        let source = input.host.files.bind_source(Path::new(&m.host_path))?;
        let mut options = vec!["rbind".to_string()];
        let prop = m.propagation;
        // Only a propagating mount needs the host's mount table.
        let check = if prop == Propagation::Private {
            None
        } else {
            let mi = mountinfo.get_or_insert_with(|| input.host.files.mountinfo());
            if mi.is_empty() {
                None
            } else {
                mount_propagation_of(mi, &source)
            }
        };
        match prop {
            Propagation::Private => options.push("rprivate".into()),
            Propagation::HostToContainer => {
                if let Some((shared, slave)) = check {
                    if !shared && !slave {
                        return Err(SpecError::invalid(
                            field,
                            format!(
                                "{} is not on a shared or slave mount, host-to-container propagation is impossible",
                                source.display()
                            ),
                        ));
                    }
                }
                options.push("rslave".into());
                if propagation.is_none() {
                    propagation = Some("rslave");
                }
            }
            Propagation::Bidirectional => {
                if let Some((shared, _)) = check {
                    if !shared {
                        return Err(SpecError::invalid(
                            field,
                            format!(
                                "{} is not on a shared mount, bidirectional propagation is impossible",
                                source.display()
                            ),
                        ));
                    }
                }
                options.push("rshared".into());
                propagation = Some("rshared");
            }
        }
        if m.recursive_read_only {
            if !m.readonly || prop != Propagation::Private {
                return Err(SpecError::invalid(
                    field,
                    "recursive_read_only needs readonly and private propagation",
                ));
            }
            if !input.host.features.recursive_read_only_mounts {
                return Err(SpecError::invalid(
                    field,
                    "recursive read-only mounts need kernel 5.12 or later",
                ));
            }
            options.push("rro".into());
        } else if m.readonly {
            options.push("ro".into());
        } else {
            options.push("rw".into());
        }
        let dest = PathBuf::from(&m.container_path);
        user.push((dest.clone(), bind(&dest, &source, options)?));
    }
    // Parents before children, whatever order the request used.
    user.sort_by_key(|(d, _)| d.components().count());

    let covered = |p: &Path| user.iter().any(|(d, _)| d == p);
    let mut out: Vec<Mount> = default_mounts(req.privileged)?
        .into_iter()
        .filter(|m| !covered(m.destination()))
        .collect();
    if let Some(files) = &req.pod_files {
        let rw = if input.readonly_rootfs { "ro" } else { "rw" };
        for (dest, src) in [
            ("/etc/hosts", &files.hosts),
            ("/etc/resolv.conf", &files.resolv_conf),
            ("/etc/hostname", &files.hostname),
        ] {
            let dest = Path::new(dest);
            if !covered(dest) {
                out.push(bind(dest, src, strings(&["rbind", "rprivate", rw]))?);
            }
        }
    }
    out.extend(user.into_iter().map(|(_, m)| m));
    spec.set_mounts(Some(out));
    if let Some(p) = propagation {
        linux_of(spec).set_rootfs_propagation(Some(p.to_string()));
    }
    Ok(())
}

fn bind(dest: &Path, source: &Path, options: Vec<String>) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest.to_path_buf())
        .typ("bind")
        .source(source.to_path_buf())
        .options(options)
        .build()?)
}

/// Whether the mount holding `path` propagates: (shared, slave), from mountinfo's optional
/// fields. `None` when mountinfo cannot tell (then we do not second-guess the kernel).
pub fn mount_propagation_of(mountinfo: &str, path: &Path) -> Option<(bool, bool)> {
    let mut best: Option<(usize, bool, bool)> = None;
    for line in mountinfo.lines() {
        let Some((left, _)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let Some(mp) = fields.get(4) else { continue };
        let mp = Path::new(mp);
        if path.starts_with(mp) {
            let depth = mp.components().count();
            let optional = &fields[6.min(fields.len())..];
            let shared = optional.iter().any(|f| f.starts_with("shared:"));
            let slave = optional.iter().any(|f| f.starts_with("master:"));
            // Later lines over-mount earlier ones at the same point.
            if best.map(|(d, _, _)| depth >= d).unwrap_or(true) {
                best = Some((depth, shared, slave));
            }
        }
    }
    best.map(|(_, s, m)| (s, m))
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ)
        .source(PathBuf::from(source))
        .options(strings(options))
        .build()?)
}

/// The mounts `runc spec` starts from; sysfs and cgroupfs are writable only when privileged.
pub fn default_mounts(privileged: bool) -> Result<Vec<Mount>, SpecError> {
    let rw = if privileged { "rw" } else { "ro" };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", rw])?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", rw],
        )?,
    ])
}
