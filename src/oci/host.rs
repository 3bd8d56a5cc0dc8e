//! What this host lets a container have: the capability bounding set, the lowest
//! `oom_score_adj`, and which cgroup/LSM/seccomp features are there.
//!
//! Read once at start from `/proc` and `/sys` (no writes, no processes), so the spec steps
//! ([`crate::spec`]) stay pure and leave out what the host would refuse (see
//! shared/docs/environment.md: no CAP_SYS_RESOURCE in the bounding set, negative
//! `oom_score_adj` refused, no hugetlb hierarchy, no AppArmor/SELinux).

use std::path::{Path, PathBuf};

/// Linux capability names by bit number (include/uapi/linux/capability.h).
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Bit number of CAP_SYS_RESOURCE, needed to lower `oom_score_adj` below our own floor.
const CAP_SYS_RESOURCE_BIT: u32 = 24;

/// What the host allows; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFeatures {
    /// The daemon's capability bounding set (`CAP_CHOWN`, ...): the most any container can get.
    pub cap_bounding: Vec<String>,
    /// The lowest `oom_score_adj` a container may ask for (-1000 with CAP_SYS_RESOURCE,
    /// otherwise the daemon's own value, which is the floor the kernel keeps for us).
    pub min_oom_score_adj: i32,
    /// A hugetlb controller usable by the runtime (a v1 hierarchy, or cgroup v2 unified).
    pub hugetlb: bool,
    /// AppArmor is enabled in the kernel and its securityfs lists profiles (so profiles can be
    /// loaded and checked).
    pub apparmor: bool,
    /// SELinux is enabled (selinuxfs mounted).
    pub selinux: bool,
    /// `/sys/fs/cgroup` is cgroup v2 only (not hybrid).
    pub cgroup_v2: bool,
    /// The kernel supports seccomp filters.
    pub seccomp: bool,
    /// Swap limits can be set (v1 `memory.memsw.*`, or v2 `memory.swap.max`); runc fails
    /// on a swap limit otherwise.
    pub memory_swap: bool,
    /// Recursive read-only bind mounts (`rro`): `mount_setattr(2)` with `MOUNT_ATTR_RDONLY` and
    /// `AT_RECURSIVE`, in kernels from 5.12 on.
    pub recursive_read_only_mounts: bool,
    /// The kernel lets us create user namespaces (`user.max_user_namespaces` > 0).
    pub user_namespaces: bool,
    /// The `ferrio-envexec` binary (see [`crate::spec::envexec`]); `None` when not installed,
    /// and then an env value that is not UTF-8 is refused.
    pub envexec: Option<std::path::PathBuf>,
    /// A pod's user namespace can be backed by idmapped mounts: user namespaces, and a kernel
    /// from 5.19 on, whose overlayfs takes idmapped lower layers (the rootfs) and whose ext4
    /// and tmpfs take idmapped bind mounts (volumes).
    pub idmapped_mounts: bool,
}

impl Default for HostFeatures {
    /// A permissive host (all features, all capabilities); tests start from it.
    fn default() -> Self {
        HostFeatures {
            cap_bounding: CAPABILITY_NAMES.iter().map(|s| s.to_string()).collect(),
            min_oom_score_adj: -1000,
            hugetlb: true,
            apparmor: false,
            selinux: false,
            cgroup_v2: true,
            seccomp: true,
            memory_swap: true,
            recursive_read_only_mounts: true,
            user_namespaces: true,
            envexec: None,
            idmapped_mounts: true,
        }
    }
}

impl HostFeatures {
    /// Reads the host's features from /proc and /sys. Unreadable files count as "feature
    /// absent", which is the safe side for every field.
    pub fn detect() -> HostFeatures {
        let status = read("/proc/self/status");
        let mountinfo = read("/proc/self/mountinfo");
        let own_oom = read("/proc/self/oom_score_adj")
            .trim()
            .parse::<i32>()
            .unwrap_or(0);
        let cgroup_v2 = cgroup_v2_from_mountinfo(&mountinfo);
        let v2_controllers = if cgroup_v2 {
            read("/sys/fs/cgroup/cgroup.controllers")
        } else {
            String::new()
        };
        let hugetlb = if cgroup_v2 {
            v2_controllers.split_whitespace().any(|c| c == "hugetlb")
        } else {
            v1_controller_mounted(&mountinfo, "hugetlb")
        };
        let memory_swap = if cgroup_v2 {
            // memory.swap.max exists only in non-root cgroups; look at ours.
            let own = own_cgroup_v2_path(&read("/proc/self/cgroup"));
            Path::new("/sys/fs/cgroup")
                .join(own.trim_start_matches('/'))
                .join("memory.swap.max")
                .exists()
                || Path::new("/sys/fs/cgroup/init.scope/memory.swap.max").exists()
        } else {
            v1_mount_point(&mountinfo, "memory")
                .map(|m| m.join("memory.memsw.limit_in_bytes").exists())
                .unwrap_or(false)
        };
        let cap_eff = status_hex(&status, "CapEff:").unwrap_or(0);
        let osrelease = read("/proc/sys/kernel/osrelease");
        let user_namespaces = read("/proc/sys/user/max_user_namespaces")
            .trim()
            .parse::<u64>()
            .is_ok_and(|n| n > 0);
        HostFeatures {
            cap_bounding: capability_names(status_hex(&status, "CapBnd:").unwrap_or(0)),
            min_oom_score_adj: min_oom_score_adj(cap_eff, own_oom),
            hugetlb,
            apparmor: read("/sys/module/apparmor/parameters/enabled").trim() == "Y"
                && Path::new("/sys/kernel/security/apparmor/profiles").exists(),
            selinux: mountinfo_has_fstype(&mountinfo, "selinuxfs")
                && Path::new("/sys/fs/selinux/enforce").exists(),
            cgroup_v2,
            seccomp: status.lines().any(|l| l.starts_with("Seccomp:")),
            memory_swap,
            recursive_read_only_mounts: kernel_at_least(&osrelease, (5, 12)),
            user_namespaces,
            idmapped_mounts: user_namespaces && kernel_at_least(&osrelease, (5, 19)),
            // A configured path, not a probe: the daemon sets it from its config.
            envexec: None,
        }
    }

    /// Whether `cap` (`CAP_X`) is in the bounding set.
    pub fn has_capability(&self, cap: &str) -> bool {
        self.cap_bounding.iter().any(|c| c == cap)
    }

    /// The value to put in a spec for a requested `oom_score_adj`: raised to the host's floor
    /// when `restrict` is set (containerd's `restrict_oom_score_adj`), since runc fails on a
    /// value below it.
    pub fn clamp_oom_score_adj(&self, requested: i64, restrict: bool) -> i32 {
        let v = requested.clamp(-1000, 1000) as i32;
        if restrict && v < self.min_oom_score_adj {
            self.min_oom_score_adj
        } else {
            v
        }
    }
}

/// How `/sys/fs/cgroup` is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup v2 only: a cgroup2 file system at `/sys/fs/cgroup`.
    Unified,
    /// v1 hierarchies only, below a tmpfs at `/sys/fs/cgroup`.
    Legacy,
    /// v1 hierarchies plus a cgroup2 mount below `/sys/fs/cgroup` (`unified`, usually holding
    /// no controller or only hugetlb). runc copes; crun 1.8 refuses it.
    Hybrid,
}

impl CgroupLayout {
    /// This host's layout, from /proc/self/mountinfo (unreadable counts as legacy).
    pub fn detect() -> CgroupLayout {
        CgroupLayout::from_mountinfo(&read("/proc/self/mountinfo"))
    }

    /// The layout a mountinfo text describes.
    pub fn from_mountinfo(mountinfo: &str) -> CgroupLayout {
        if cgroup_v2_from_mountinfo(mountinfo) {
            return CgroupLayout::Unified;
        }
        let (v1, v2) = crate::sys::mounts_below(mountinfo, Path::new(crate::sys::CGROUP_ROOT));
        if !v1.is_empty() && !v2.is_empty() {
            CgroupLayout::Hybrid
        } else {
            CgroupLayout::Legacy
        }
    }
}

/// Whether the OCI runtime at `runtime_path` must run in a private mount namespace whose
/// `/sys/fs/cgroup` holds the v1 hierarchies only ([`crate::sys::CgroupV1View`]). Only ever on
/// a hybrid host; there `configured` (the handler's `cgroup_v1_view`) decides when set, else
/// the runtime's kind: crun refuses hybrid hosts, runc and others do not.
pub fn needs_cgroup_v1_view(
    layout: CgroupLayout,
    runtime_path: &Path,
    configured: Option<bool>,
) -> bool {
    layout == CgroupLayout::Hybrid && configured.unwrap_or_else(|| is_crun(runtime_path))
}

/// crun by the binary's name, or the name of what a symlink points to (`/usr/local/bin/oci ->
/// crun`). A name is enough: probing with `--version` would cost a process per handler and
/// reload for the same answer.
fn is_crun(runtime_path: &Path) -> bool {
    let named_crun = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "crun" || n.starts_with("crun-") || n.starts_with("crun."))
    };
    named_crun(runtime_path) || std::fs::canonicalize(runtime_path).is_ok_and(|p| named_crun(&p))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Whether a kernel release string (`6.1.0-18-amd64`) is at least `(major, minor)`. An
/// unparsable release counts as too old.
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut it = release.trim().split(['.', '-', '+']);
    let major = it.next().and_then(|v| v.parse::<u32>().ok());
    let minor = it.next().and_then(|v| v.parse::<u32>().ok());
    match (major, minor) {
        (Some(a), Some(b)) => (a, b) >= want,
        _ => false,
    }
}

/// The hex value of a `/proc/<pid>/status` line such as `CapBnd:\t000001ffffffffff`.
fn status_hex(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Capability names for the bits set in `mask`; bits the table does not know are skipped
/// because no OCI runtime could name them either.
pub fn capability_names(mask: u64) -> Vec<String> {
    CAPABILITY_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, name)| name.to_string())
        .collect()
}

/// Without CAP_SYS_RESOURCE the kernel refuses an `oom_score_adj` below the one we were
/// started with, and a container's init inherits that limit.
fn min_oom_score_adj(cap_eff: u64, own: i32) -> i32 {
    if cap_eff & (1u64 << CAP_SYS_RESOURCE_BIT) != 0 {
        -1000
    } else {
        own
    }
}

/// `(mount point, fstype, super options)` of each mountinfo line.
fn mountinfo_entries(mountinfo: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut r = right.split(' ');
        let fstype = r.next()?;
        let _source = r.next()?;
        let opts = r.next().unwrap_or("");
        Some((mount_point, fstype, opts))
    })
}

fn cgroup_v2_from_mountinfo(mountinfo: &str) -> bool {
    mountinfo_entries(mountinfo).any(|(mp, fs, _)| mp == "/sys/fs/cgroup" && fs == "cgroup2")
}

fn v1_mount_point(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo_entries(mountinfo)
        .find(|(_, fs, opts)| *fs == "cgroup" && opts.split(',').any(|o| o == controller))
        .map(|(mp, _, _)| PathBuf::from(mp))
}

fn v1_controller_mounted(mountinfo: &str, controller: &str) -> bool {
    v1_mount_point(mountinfo, controller).is_some()
}

fn mountinfo_has_fstype(mountinfo: &str, fstype: &str) -> bool {
    mountinfo_entries(mountinfo).any(|(_, fs, _)| fs == fstype)
}

/// Our cgroup on a v2 host, from the `0::/path` line of /proc/self/cgroup.
fn own_cgroup_v2_path(proc_cgroup: &str) -> String {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const UNIFIED: &str = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
26 30 0:23 / /sys/fs/selinux rw,relatime shared:5 - selinuxfs selinuxfs rw
";

    #[test]
    fn capability_mask_without_sys_resource() {
        // The mask measured on this kind of host: all 41 caps but bit 24.
        let names = capability_names(0x000001fffeffffff);
        assert_eq!(names.len(), 40);
        assert!(!names.iter().any(|n| n == "CAP_SYS_RESOURCE"));
        assert_eq!(names[0], "CAP_CHOWN");
        assert_eq!(
            names.last().map(String::as_str),
            Some("CAP_CHECKPOINT_RESTORE")
        );
    }

    #[test]
    fn status_parsing() {
        let status = "Name:\tx\nCapBnd:\t000000000000000f\nSeccomp:\t0\n";
        assert_eq!(status_hex(status, "CapBnd:"), Some(0xf));
        assert_eq!(status_hex(status, "CapEff:"), None);
    }

    #[test]
    fn oom_floor_depends_on_sys_resource() {
        assert_eq!(min_oom_score_adj(0x000001fffeffffff, 0), 0);
        assert_eq!(min_oom_score_adj(0x000001fffeffffff, -500), -500);
        assert_eq!(min_oom_score_adj(0x000001ffffffffff, 0), -1000);
    }

    #[test]
    fn clamp_only_when_restricted() {
        let h = HostFeatures {
            min_oom_score_adj: 0,
            ..HostFeatures::default()
        };
        assert_eq!(h.clamp_oom_score_adj(-998, true), 0);
        assert_eq!(h.clamp_oom_score_adj(-998, false), -998);
        assert_eq!(h.clamp_oom_score_adj(500, true), 500);
        assert_eq!(h.clamp_oom_score_adj(-5000, false), -1000);
    }

    #[test]
    fn kernel_versions() {
        assert!(kernel_at_least("6.18.44-fc-v595", (5, 12)));
        assert!(kernel_at_least("5.12.0", (5, 12)));
        assert!(!kernel_at_least("5.11.22-generic", (5, 12)));
        assert!(!kernel_at_least("4.19.0-25-amd64", (5, 12)));
        assert!(!kernel_at_least("garbage", (5, 12)));
        assert!(!kernel_at_least("", (5, 12)));
    }

    #[test]
    fn cgroup_layouts() {
        assert!(!cgroup_v2_from_mountinfo(HYBRID));
        assert!(cgroup_v2_from_mountinfo(UNIFIED));
        assert!(!v1_controller_mounted(HYBRID, "hugetlb"));
        assert!(v1_controller_mounted(HYBRID, "memory"));
        assert_eq!(
            v1_mount_point(HYBRID, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert!(mountinfo_has_fstype(UNIFIED, "selinuxfs"));
        assert!(!mountinfo_has_fstype(HYBRID, "selinuxfs"));
        assert_eq!(
            own_cgroup_v2_path("0::/system.slice/x.service\n"),
            "/system.slice/x.service"
        );
    }

    #[test]
    fn cgroup_layout_and_who_needs_the_v1_view() {
        let legacy = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
                      35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(CgroupLayout::from_mountinfo(HYBRID), CgroupLayout::Hybrid);
        assert_eq!(CgroupLayout::from_mountinfo(UNIFIED), CgroupLayout::Unified);
        assert_eq!(CgroupLayout::from_mountinfo(legacy), CgroupLayout::Legacy);
        // A cgroup2 mount elsewhere (a container's, a test's) does not make a host hybrid.
        let elsewhere = format!("{legacy}50 1 0:40 / /run/x/cg rw - cgroup2 cgroup2 rw\n");
        assert_eq!(
            CgroupLayout::from_mountinfo(&elsewhere),
            CgroupLayout::Legacy
        );

        let crun = Path::new("/usr/bin/crun");
        let runc = Path::new("/usr/sbin/runc");
        use CgroupLayout::*;
        assert!(needs_cgroup_v1_view(Hybrid, crun, None));
        assert!(!needs_cgroup_v1_view(Hybrid, runc, None));
        assert!(needs_cgroup_v1_view(
            Hybrid,
            Path::new("/opt/crun-1.8"),
            None
        ));
        assert!(!needs_cgroup_v1_view(Hybrid, Path::new("/opt/scrun"), None));
        // The handler's setting wins on a hybrid host, and nothing changes elsewhere.
        assert!(!needs_cgroup_v1_view(Hybrid, crun, Some(false)));
        assert!(needs_cgroup_v1_view(Hybrid, runc, Some(true)));
        for layout in [Unified, Legacy] {
            assert!(!needs_cgroup_v1_view(layout, crun, None));
            assert!(!needs_cgroup_v1_view(layout, runc, Some(true)));
        }
        // A symlink named otherwise is judged by what it points to.
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("crun");
        std::fs::write(&target, b"").unwrap();
        let link = dir.path().join("oci-runtime");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(needs_cgroup_v1_view(Hybrid, &link, None));
    }

    #[test]
    fn detect_matches_this_host() {
        let h = HostFeatures::detect();
        // Whatever the host, the bounding set is a subset of the known names and the floor
        // is a valid oom_score_adj.
        assert!(h
            .cap_bounding
            .iter()
            .all(|c| CAPABILITY_NAMES.contains(&c.as_str())));
        assert!((-1000..=1000).contains(&h.min_oom_score_adj));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let bnd = status_hex(&status, "CapBnd:").unwrap();
        assert_eq!(h.cap_bounding, capability_names(bnd));
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(h.cgroup_v2, cgroup_v2_from_mountinfo(&mi));
        assert_eq!(h.cgroup_v2, CgroupLayout::detect() == CgroupLayout::Unified);
    }
}
