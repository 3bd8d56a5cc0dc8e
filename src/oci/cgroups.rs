//! The cgroups of containers and pods: where they live (cgroupfs paths and systemd slice
//! syntax), what they use (stats from cgroup v1 or v2 files), and removing them.
//!
//! `runc delete` removes only the leaf cgroup, and a failed create can leave the leaf behind; the
//! daemon removes both the leaf and the pod's parent here. Only `rmdir` is ever used: a cgroup
//! that still has processes stays, and nothing is ever mounted or unmounted. Stats are plain
//! file reads (callers run them on the blocking pool).

use std::path::{Path, PathBuf};

/// Where every cgroup hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The config owns the closed set of drivers; the paths each one gives are made here.
pub use crate::config::CgroupDriver;

impl CgroupDriver {
    /// The OCI `cgroupsPath` of object `id` under the pod's `parent`: `<parent>/ferrio-<id>` for
    /// cgroupfs, `<slice>:ferrio:<id>` for systemd (runc then makes `ferrio-<id>.scope`).
    /// `parent` is a pod's stored parent, already valid in the driver's syntax; an invalid one
    /// is passed on as it is and refused by the runtime.
    pub fn cgroups_path(self, parent: &str, id: &str) -> String {
        match self {
            CgroupDriver::Cgroupfs => format!("{}/ferrio-{id}", parent.trim_end_matches('/')),
            CgroupDriver::Systemd => {
                let slice = to_slice(parent).unwrap_or_else(|| parent.trim_matches('/').into());
                format!("{slice}:ferrio:{id}")
            }
        }
    }
}

/// A pod's cgroup parent as a systemd slice name, `None` when it names no valid slice.
///
/// - kubelet's systemd driver sends the slice's full path,
///   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`: the last
///   component is the slice (as CRI-O and containerd take it), and the components before it
///   must be the ones systemd nests it in, or the pod's cgroup would not be where the path says;
/// - a bare slice name `kubepods-burstable-pod<uid>.slice` is taken as it is;
/// - a cgroupfs-style path `/kubepods/burstable/pod<uid>` becomes
///   `kubepods-burstable-pod<uid>.slice` (a dash inside a component becomes `_`, since each dash
///   of a slice name opens a nested slice);
/// - an empty parent is `system.slice`.
pub fn to_slice(parent: &str) -> Option<String> {
    let p = parent.trim_matches('/');
    if p.is_empty() {
        return Some("system.slice".into());
    }
    let last = p.rsplit('/').next().unwrap_or(p);
    if last.ends_with(".slice") {
        let expanded = expand_slice(last)?;
        // `/a.slice/a-b.slice` must be exactly the expansion of `a-b.slice`.
        if p.contains('/') && expanded.trim_start_matches('/') != p {
            return None;
        }
        return Some(last.to_string());
    }
    let parts: Vec<String> = p
        .split('/')
        .filter(|c| !c.is_empty())
        .map(|c| c.trim_end_matches(".slice").replace('-', "_"))
        .collect();
    let slice = format!("{}.slice", parts.join("-"));
    expand_slice(&slice).map(|_| slice)
}

/// The cgroupfs path of a systemd slice: `a-b-c.slice` lives at `/a.slice/a-b.slice/a-b-c.slice`
/// (each dash opens a nested slice). `-.slice` is the root. `None` for a name systemd refuses
/// as a slice (empty components, characters outside unit names, over 255 bytes).
pub fn expand_slice(slice: &str) -> Option<String> {
    let name = slice.strip_suffix(".slice")?;
    if name == "-" {
        return Some("/".into());
    }
    if name.is_empty()
        || slice.len() > 255
        || name.starts_with('-')
        || name.ends_with('-')
        || name.contains("--")
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.\\-".contains(&b))
    {
        return None;
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Some(path)
}

/// The path below the hierarchy roots of an OCI `cgroupsPath`: an absolute cgroupfs path as it
/// is, systemd's `slice:prefix:name` as `/<expanded slice>/<prefix>-<name>.scope`.
pub fn fs_path(cgroups_path: &str) -> Option<String> {
    if cgroups_path.starts_with('/') {
        return Some(cgroups_path.to_string());
    }
    let mut it = cgroups_path.splitn(3, ':');
    let (slice, prefix, name) = (it.next()?, it.next()?, it.next()?);
    let base = expand_slice(if slice.is_empty() {
        "system.slice"
    } else {
        slice
    })?;
    let leaf = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Some(format!("{}/{leaf}", base.trim_end_matches('/')))
}

/// Whether the host is cgroup v2 only (the unified hierarchy mounted at the root).
pub fn is_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// One line of a cgroup v2 pressure file (`some ...` or `full ...`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PsiLine {
    /// Cumulative stall time, microseconds.
    pub total_us: u64,
    /// Share of wall time stalled over the last 10, 60 and 300 seconds, in percent.
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
}

/// A cgroup v2 pressure file (`cpu.pressure`, `memory.pressure`, `io.pressure`): `some` is the
/// time at least one task stalled, `full` the time all did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    pub some: PsiLine,
    /// Zero where the kernel writes no `full` line (cpu.pressure before Linux 5.13).
    pub full: PsiLine,
}

/// `some avg10=0.12 avg60=0.00 avg300=0.00 total=123` and the `full` line; `None` without a
/// readable `some` line (cgroup v1, or a kernel without PSI).
pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let line = |kind: &str| -> Option<PsiLine> {
        let rest = text
            .lines()
            .find_map(|l| l.strip_prefix(kind)?.strip_prefix(' '))?;
        let mut p = PsiLine::default();
        let mut total = None;
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "total" => total = Some(v.parse().ok()?),
                "avg10" => p.avg10 = v.parse().ok()?,
                "avg60" => p.avg60 = v.parse().ok()?,
                "avg300" => p.avg300 = v.parse().ok()?,
                _ => {}
            }
        }
        p.total_us = total?;
        Some(p)
    };
    Some(Pressure {
        some: line("some")?,
        full: line("full").unwrap_or_default(),
    })
}

/// Pressure stall information of one cgroup; all `None` on cgroup v1.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupPressure {
    pub cpu: Option<Pressure>,
    pub memory: Option<Pressure>,
    pub io: Option<Pressure>,
}

/// The pressure files of the v2 cgroup directory `dir`.
pub fn read_pressure(dir: &Path) -> CgroupPressure {
    let file = |name: &str| parse_pressure(&read(&dir.join(name)));
    CgroupPressure {
        cpu: file("cpu.pressure"),
        memory: file("memory.pressure"),
        io: file("io.pressure"),
    }
}

/// What a cgroup (and everything below it) uses. `None` where the host has no such file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// Memory charged to the cgroup, page cache included.
    pub memory_usage: Option<u64>,
    /// Usage minus inactive file pages: what kubelet evicts on.
    pub memory_working_set: Option<u64>,
    /// Anonymous memory (v1 `rss`, v2 `anon`).
    pub memory_rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// The memory limit, `None` when unlimited.
    pub memory_limit: Option<u64>,
    /// Processes and threads in the cgroup.
    pub pids: Option<u64>,
    /// Pressure stall information (cgroup v2 only).
    pub pressure: CgroupPressure,
}

impl CgroupStats {
    /// The limit minus the working set, when there is a limit.
    pub fn memory_available(&self) -> Option<u64> {
        Some(
            self.memory_limit?
                .saturating_sub(self.memory_working_set.unwrap_or(0)),
        )
    }
}

/// Stats of the cgroup at `path` (a path below the hierarchy roots, see [`fs_path`]) on this host.
pub fn read_stats(path: &str) -> CgroupStats {
    read_stats_under(Path::new(CGROUP_ROOT), is_v2(), path)
}

/// Stats of `path` with the hierarchies mounted at `root` (v1: `root/<controller>/path`,
/// v2: `root/path`). Files that are missing or unparsable leave their fields `None`.
pub fn read_stats_under(root: &Path, v2: bool, path: &str) -> CgroupStats {
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return CgroupStats::default();
    }
    if v2 {
        let dir = root.join(rel);
        let cpu = parse_flat(&read(&dir.join("cpu.stat")));
        let mem = parse_flat(&read(&dir.join("memory.stat")));
        let usage = read_u64(&dir.join("memory.current"));
        CgroupStats {
            cpu_usage_ns: cpu.get("usage_usec").map(|u| u.saturating_mul(1000)),
            memory_usage: usage,
            memory_working_set: usage
                .map(|u| u.saturating_sub(mem.get("inactive_file").copied().unwrap_or(0))),
            memory_rss: mem.get("anon").copied(),
            page_faults: mem.get("pgfault").copied(),
            major_page_faults: mem.get("pgmajfault").copied(),
            memory_limit: read_u64(&dir.join("memory.max")),
            pids: read_u64(&dir.join("pids.current")),
            pressure: read_pressure(&dir),
        }
    } else {
        let cpuacct = root.join("cpuacct").join(rel);
        let memory = root.join("memory").join(rel);
        let mem = parse_flat(&read(&memory.join("memory.stat")));
        let usage = read_u64(&memory.join("memory.usage_in_bytes"));
        // The total_* keys include child cgroups; the pod's parent has its containers below.
        let total = |k: &str| mem.get(&format!("total_{k}")).or(mem.get(k)).copied();
        CgroupStats {
            cpu_usage_ns: read_u64(&cpuacct.join("cpuacct.usage")),
            memory_usage: usage,
            memory_working_set: usage
                .map(|u| u.saturating_sub(total("inactive_file").unwrap_or(0))),
            memory_rss: total("rss"),
            page_faults: total("pgfault"),
            major_page_faults: total("pgmajfault"),
            // v1 reports "unlimited" as a huge page-aligned number.
            memory_limit: read_u64(&memory.join("memory.limit_in_bytes"))
                .filter(|l| *l < (1u64 << 62)),
            pids: read_u64(&root.join("pids").join(rel).join("pids.current")),
            // v1 has no pressure files.
            pressure: CgroupPressure::default(),
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// One number per file (`max` counts as absent).
fn read_u64(path: &Path) -> Option<u64> {
    read(path).trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat).
fn parse_flat(text: &str) -> std::collections::HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Mount points of every cgroup hierarchy (v1 controllers and the unified v2 mount).
pub fn mountpoints() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
        .collect()
}

/// `rmdir` the cgroup at absolute `path` in every hierarchy where it exists, deepest first for
/// any children left by the runtime. Returns the directories that could not be removed.
pub fn remove(path: &str) -> Vec<PathBuf> {
    let Some(path) = fs_path(path) else {
        return Vec::new();
    };
    let rel = path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return Vec::new();
    }
    let mut left = Vec::new();
    for mp in mountpoints() {
        let dir = mp.join(rel);
        if dir.is_dir() && !remove_tree(&dir) {
            left.push(dir);
        }
    }
    left
}

fn remove_tree(dir: &Path) -> bool {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Limits ferrio itself writes to a cgroup it creates: a pod's cgroup, from the pod's overhead
/// plus the sum of its containers' resources (kubelet's `LinuxPodSandboxConfig.overhead` and
/// `.resources`). `None` leaves the kernel's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupLimits {
    /// v1 `cpu.shares`; v2 `cpu.weight` after conversion.
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per `cpu_period` (v1 `cpu.cfs_quota_us`, v2 `cpu.max`).
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// Bytes (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub memory_limit: Option<i64>,
}

impl CgroupLimits {
    pub fn is_empty(&self) -> bool {
        *self == CgroupLimits::default()
    }
}

/// Why writing a cgroup's limits failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup path {0:?} is not below the hierarchy roots")]
    Path(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates the cgroup at `path` (see [`fs_path`]) and writes `limits` into it, on this host.
pub fn apply_limits(path: &str, limits: &CgroupLimits) -> Result<(), CgroupError> {
    apply_limits_under(Path::new(CGROUP_ROOT), is_v2(), path, limits)
}

/// [`apply_limits`] with the hierarchies mounted at `root`. On v1 only the `cpu` and `memory`
/// hierarchies that exist are touched (a host without one cannot limit it anyway); on v2 the
/// controllers are enabled in every ancestor's `cgroup.subtree_control` first, or the files
/// would not exist.
pub fn apply_limits_under(
    root: &Path,
    v2: bool,
    path: &str,
    limits: &CgroupLimits,
) -> Result<(), CgroupError> {
    let full = fs_path(path).ok_or_else(|| CgroupError::Path(path.to_string()))?;
    let rel = full.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return Err(CgroupError::Path(path.to_string()));
    }
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CgroupError::Io { path: p, source }
    };
    let write = |dir: &Path, file: &str, value: String| {
        let f = dir.join(file);
        std::fs::write(&f, value).map_err(io(&f))
    };
    let wants_cpu =
        limits.cpu_shares.is_some() || limits.cpu_quota.is_some() || limits.cpu_period.is_some();
    let wants_memory = limits.memory_limit.is_some();
    if v2 {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let controllers: Vec<&str> = [(wants_cpu, "+cpu"), (wants_memory, "+memory")]
            .into_iter()
            .filter_map(|(w, c)| w.then_some(c))
            .collect();
        if !controllers.is_empty() {
            let mut ancestor = root.to_path_buf();
            for comp in rel.split('/') {
                // Already enabled is fine; a real failure shows as a missing file below.
                let _ = std::fs::write(
                    ancestor.join("cgroup.subtree_control"),
                    controllers.join(" "),
                );
                ancestor.push(comp);
            }
        }
        if let Some(shares) = limits.cpu_shares {
            write(&dir, "cpu.weight", shares_to_weight(shares).to_string())?;
        }
        if limits.cpu_quota.is_some() || limits.cpu_period.is_some() {
            let period = limits.cpu_period.unwrap_or(100_000);
            let quota = match limits.cpu_quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            write(&dir, "cpu.max", format!("{quota} {period}"))?;
        }
        if let Some(m) = limits.memory_limit {
            let v = if m > 0 { m.to_string() } else { "max".into() };
            write(&dir, "memory.max", v)?;
        }
        return Ok(());
    }
    let hierarchy = |ctrl: &str| -> Result<Option<PathBuf>, CgroupError> {
        let base = root.join(ctrl);
        if !base.is_dir() {
            return Ok(None);
        }
        let dir = base.join(rel);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Some(dir))
    };
    if wants_cpu {
        if let Some(dir) = hierarchy("cpu")? {
            // The period first: the kernel checks a quota against the period in force.
            if let Some(p) = limits.cpu_period {
                write(&dir, "cpu.cfs_period_us", p.to_string())?;
            }
            if let Some(q) = limits.cpu_quota {
                write(&dir, "cpu.cfs_quota_us", q.max(-1).to_string())?;
            }
            if let Some(s) = limits.cpu_shares {
                write(&dir, "cpu.shares", s.to_string())?;
            }
        }
    }
    if let Some(m) = limits.memory_limit {
        if let Some(dir) = hierarchy("memory")? {
            write(&dir, "memory.limit_in_bytes", m.max(-1).to_string())?;
        }
    }
    Ok(())
}

/// cgroup v1 `cpu.shares` (2..262144) as v2 `cpu.weight` (1..10000), the conversion runc and
/// the kernel documentation use.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/oci/testdata")
            .join(name)
    }

    #[test]
    fn v1_stats_from_fixture_files() {
        let s = read_stats_under(&testdata("cgroup-v1"), false, "/pod/ctr");
        assert_eq!(s.cpu_usage_ns, Some(1_234_567_890));
        assert_eq!(s.memory_usage, Some(10_485_760));
        // usage minus total_inactive_file
        assert_eq!(s.memory_working_set, Some(10_485_760 - 2_097_152));
        assert_eq!(s.memory_rss, Some(4_194_304));
        assert_eq!(s.page_faults, Some(1500));
        assert_eq!(s.major_page_faults, Some(3));
        assert_eq!(s.memory_limit, Some(67_108_864));
        assert_eq!(s.memory_available(), Some(67_108_864 - 8_388_608));
        assert_eq!(s.pids, Some(4));
        // unlimited memory reads as no limit
        let s = read_stats_under(&testdata("cgroup-v1"), false, "/pod");
        assert_eq!(s.memory_limit, None);
        assert_eq!(s.memory_available(), None);
    }

    #[test]
    fn v2_stats_from_fixture_files() {
        let s = read_stats_under(&testdata("cgroup-v2"), true, "/pod/ctr");
        assert_eq!(s.cpu_usage_ns, Some(987_654_000));
        assert_eq!(s.memory_usage, Some(20_971_520));
        assert_eq!(s.memory_working_set, Some(20_971_520 - 1_048_576));
        assert_eq!(s.memory_rss, Some(3_145_728));
        assert_eq!(s.page_faults, Some(2200));
        assert_eq!(s.major_page_faults, Some(7));
        assert_eq!(s.memory_limit, Some(134_217_728));
        assert_eq!(s.pids, Some(2));
        let cpu = s.pressure.cpu.unwrap();
        assert_eq!(cpu.some.total_us, 1_500_000);
        assert_eq!(cpu.some.avg10, 1.5);
        assert_eq!(cpu.full.total_us, 500_000);
        assert_eq!(cpu.full.avg300, 0.25);
        let mem = s.pressure.memory.unwrap();
        assert_eq!((mem.some.total_us, mem.full.total_us), (77, 33));
        assert_eq!(mem.some.avg60, 0.5);
        let io = s.pressure.io.unwrap();
        assert_eq!((io.some.total_us, io.full.total_us), (4_000, 1_000));
        // memory.max "max" is no limit
        let s = read_stats_under(&testdata("cgroup-v2"), true, "/pod");
        assert_eq!(s.memory_limit, None);
        assert_eq!(s.pids, Some(3));
        // A kernel without PSI (or PSI off) has no pressure files: absent, not zero.
        assert_eq!(s.pressure, CgroupPressure::default());
    }

    #[test]
    fn v1_has_no_pressure() {
        let s = read_stats_under(&testdata("cgroup-v1"), false, "/pod/ctr");
        assert_eq!(s.pressure, CgroupPressure::default());
    }

    #[test]
    fn pressure_lines() {
        // cpu.pressure before Linux 5.13 has no `full` line.
        let p = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=9\n").unwrap();
        assert_eq!(p.some.total_us, 9);
        assert_eq!(p.full, PsiLine::default());
        assert_eq!(parse_pressure(""), None);
        assert_eq!(parse_pressure("some avg10=x total=1\n"), None);
        assert_eq!(parse_pressure("some avg10=0.00\n"), None);
    }

    #[test]
    fn missing_cgroup_reads_as_empty() {
        let s = read_stats_under(&testdata("cgroup-v2"), true, "/nope");
        assert_eq!(s, CgroupStats::default());
        let s = read_stats_under(&testdata("cgroup-v1"), false, "/../etc");
        assert_eq!(s, CgroupStats::default());
    }

    #[test]
    fn live_stats_of_our_own_cgroup() {
        // Whatever layout this host has, the root cgroup's memory is readable on v1.
        if !is_v2() {
            let s = read_stats("/");
            assert!(s.cpu_usage_ns.unwrap_or(0) > 0, "{s:?}");
            assert!(s.memory_usage.unwrap_or(0) > 0, "{s:?}");
        }
    }

    #[test]
    fn systemd_slices() {
        assert_eq!(to_slice("").as_deref(), Some("system.slice"));
        assert_eq!(to_slice("/").as_deref(), Some("system.slice"));
        assert_eq!(
            to_slice("kubepods-burstable-pod12.slice").as_deref(),
            Some("kubepods-burstable-pod12.slice")
        );
        assert_eq!(
            to_slice("/kubepods/burstable/pod1-2").as_deref(),
            Some("kubepods-burstable-pod1_2.slice")
        );
        assert_eq!(
            expand_slice("kubepods-burstable-pod12.slice").as_deref(),
            Some("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice")
        );
        assert_eq!(expand_slice("-.slice").as_deref(), Some("/"));
        assert_eq!(expand_slice("a--b.slice"), None);
        assert_eq!(expand_slice("a.scope"), None);
        assert_eq!(expand_slice(".slice"), None);
        assert_eq!(expand_slice("a b.slice"), None);
        assert_eq!(expand_slice("a/b.slice"), None);
        assert_eq!(expand_slice(&format!("{}.slice", "a".repeat(250))), None);
    }

    /// kubelet's systemd driver, exactly as it sends `linux.cgroup_parent` per QoS class (pod
    /// uids with their dashes turned into underscores).
    const UID: &str = "5f0c2b1e_8a3d_4c2b_9e1f_0a1b2c3d4e5f";

    fn kubelet_parents() -> [(String, &'static str); 3] {
        [
            (
                format!("/kubepods.slice/kubepods-pod{UID}.slice"),
                "guaranteed",
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice"
                ),
                "burstable",
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID}.slice"
                ),
                "besteffort",
            ),
        ]
    }

    #[test]
    fn kubelets_full_slice_paths_name_their_last_slice() {
        for (parent, qos) in kubelet_parents() {
            let last = parent.rsplit('/').next().unwrap();
            let slice = to_slice(&parent).unwrap_or_else(|| panic!("{qos}: {parent}"));
            assert_eq!(slice, last, "{qos}");
            // The expansion of the slice is the path kubelet sent: the pod's cgroup is there.
            assert_eq!(
                expand_slice(&slice).as_deref(),
                Some(parent.as_str()),
                "{qos}"
            );
            // The pause and the containers are scopes of runc's inside it.
            let driver = CgroupDriver::Systemd;
            let pause = driver.cgroups_path(&parent, "abc");
            assert_eq!(pause, format!("{last}:ferrio:abc"), "{qos}");
            assert_eq!(
                fs_path(&pause),
                Some(format!("{parent}/ferrio-abc.scope")),
                "{qos}"
            );
            // The stored parent (the bare slice) gives the same paths again.
            assert_eq!(driver.cgroups_path(&slice, "abc"), pause, "{qos}");
            // A trailing slash changes nothing.
            assert_eq!(to_slice(&format!("{parent}/")), Some(slice), "{qos}");
        }
    }

    #[test]
    fn slice_paths_that_contradict_their_slice_are_refused() {
        for bad in [
            // The components are not the nesting of the last slice.
            "/kubepods.slice/kubepods-podX.slice/kubepods-burstable-podX.slice",
            "/kubepods/kubepods-podX.slice",
            "/other.slice/kubepods-podX.slice",
            "kubepods.slice/kubepods-besteffort-podX.slice",
            // Not a valid slice name at the end.
            "/kubepods.slice/kubepods--podX.slice",
            "/kubepods.slice/-kubepods.slice",
            "/kubepods.slice/kubepods-pod X.slice",
        ] {
            assert_eq!(to_slice(bad), None, "{bad}");
        }
        // A cgroupfs-style path whose components make an invalid slice.
        assert_eq!(to_slice("/kube pods/pod1"), None);
    }

    #[test]
    fn cgroups_paths_per_driver() {
        let d: CgroupDriver = "cgroupfs".parse().unwrap();
        assert_eq!(
            d.cgroups_path("/kubepods/pod1/", "abc"),
            "/kubepods/pod1/ferrio-abc"
        );
        let d: CgroupDriver = "systemd".parse().unwrap();
        assert_eq!(d, CgroupDriver::Systemd);
        let p = d.cgroups_path("kubepods-besteffort-pod9.slice", "abc");
        assert_eq!(p, "kubepods-besteffort-pod9.slice:ferrio:abc");
        assert_eq!(
            fs_path(&p).as_deref(),
            Some("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9.slice/ferrio-abc.scope")
        );
        assert_eq!(fs_path("/a/b").as_deref(), Some("/a/b"));
        assert_eq!(
            fs_path(":ferrio:x").as_deref(),
            Some("/system.slice/ferrio-x.scope")
        );
        assert_eq!(fs_path("nonsense"), None);
    }

    #[test]
    fn refuses_relative_escapes_and_root() {
        assert!(remove("/").is_empty());
        assert!(remove("/../x").is_empty());
    }

    #[test]
    fn finds_cgroup_mounts() {
        assert!(!mountpoints().is_empty());
    }

    #[test]
    #[ignore = "needs root: cgroup directories"]
    fn removes_a_leaf_and_its_parent() {
        let name = format!("ferrio-cg-test-{}", std::process::id());
        let mut made = Vec::new();
        for mp in mountpoints() {
            let d = mp.join(&name).join("leaf");
            if std::fs::create_dir_all(&d).is_ok() {
                made.push(d);
            }
        }
        assert!(!made.is_empty(), "could not create a test cgroup anywhere");
        assert!(remove(&format!("/{name}")).is_empty());
        for d in made {
            assert!(!d.exists() && !d.parent().unwrap().exists());
        }
    }

    fn limits() -> CgroupLimits {
        CgroupLimits {
            cpu_shares: Some(640),
            cpu_quota: Some(60_000),
            cpu_period: Some(100_000),
            memory_limit: Some(80 << 20),
        }
    }

    #[test]
    fn v1_limits_go_to_the_cpu_and_memory_hierarchies() {
        let root = tempfile::tempdir().unwrap();
        for c in ["cpu", "memory"] {
            std::fs::create_dir(root.path().join(c)).unwrap();
        }
        apply_limits_under(root.path(), false, "/pods/p1", &limits()).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("cpu/pods/p1/cpu.shares"), "640");
        assert_eq!(read("cpu/pods/p1/cpu.cfs_quota_us"), "60000");
        assert_eq!(read("cpu/pods/p1/cpu.cfs_period_us"), "100000");
        assert_eq!(
            read("memory/pods/p1/memory.limit_in_bytes"),
            (80u64 << 20).to_string()
        );
        // A hierarchy the host lacks is skipped, not created.
        assert!(!root.path().join("cpuset").exists());
    }

    #[test]
    fn v2_limits_enable_controllers_and_convert_shares() {
        let root = tempfile::tempdir().unwrap();
        apply_limits_under(root.path(), true, "/pods/p1", &limits()).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(
            read("pods/p1/cpu.weight"),
            shares_to_weight(640).to_string()
        );
        assert_eq!(read("pods/p1/cpu.max"), "60000 100000");
        assert_eq!(read("pods/p1/memory.max"), (80u64 << 20).to_string());
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory");
        assert_eq!(read("pods/cgroup.subtree_control"), "+cpu +memory");
        // No quota is "max".
        let l = CgroupLimits {
            cpu_period: Some(50_000),
            ..Default::default()
        };
        apply_limits_under(root.path(), true, "/pods/p2", &l).unwrap();
        assert_eq!(read("pods/p2/cpu.max"), "max 50000");
        assert!(!root.path().join("pods/p2/memory.max").exists());
    }

    #[test]
    fn shares_convert_to_weights_at_the_ends() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }

    #[test]
    fn limits_refuse_escapes() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["/", "/a/../b", "nonsense"] {
            assert!(
                matches!(
                    apply_limits_under(root.path(), true, bad, &limits()),
                    Err(CgroupError::Path(_))
                ),
                "{bad}"
            );
        }
    }
}
