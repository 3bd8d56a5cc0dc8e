//! What containers and pods use: cgroup counters (v1 or v2, see [`crate::oci::cgroups`]), the
//! CPU rate from two samples, the writable layer's bytes and inodes, and a pod's network
//! counters read in its network namespace.
//!
//! Reads only (cgroup files, the overlay upper dir, `/proc/<pause>/net/dev`), all on the
//! blocking pool. The one piece of state is the last CPU sample per cgroup, kept in memory so
//! `usage_nano_cores` is the rate since the previous stats call, as kubelet expects.

use super::lifecycle::{Container, ContainerState, Containers};
use crate::clock::now_ns;
use crate::image::usage::UsageCache;
use crate::oci::cgroups::{self, CgroupStats};
use crate::sandbox::lifecycle::Sandbox;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// With no earlier sample, how far apart the two samples of the CPU rate are taken.
const FIRST_SAMPLE_GAP: Duration = Duration::from_millis(100);
/// Samples older than this are forgotten (their object is probably gone).
const SAMPLE_TTL_NS: i64 = 10 * 60 * 1_000_000_000;

/// Last (time ns, cumulative cpu ns) per cgroup path.
static CPU_SAMPLES: Mutex<Option<HashMap<String, (i64, u64)>>> = Mutex::new(None);

/// How long a writable layer's walk is reused (see [`UsageCache`]): the walk was the per-call
/// cost that grew with every file a container writes (hack/bench-load.sh).
const LAYER_USAGE_TTL: Duration = Duration::from_secs(10);
static LAYER_USAGE: LazyLock<UsageCache<DiskUsage>> =
    LazyLock::new(|| UsageCache::new(LAYER_USAGE_TTL));

/// One cgroup's usage at one instant.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// When the counters were read, ns since the epoch.
    pub timestamp: i64,
    pub cgroup: CgroupStats,
    /// CPU rate since the previous sample, in billionths of a core.
    pub cpu_nano_cores: Option<u64>,
}

/// Disk used by a container's writable layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// The overlay upper directory measured.
    pub mountpoint: PathBuf,
    /// Allocated bytes (`st_blocks * 512`, hard links counted once).
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// A container's usage.
#[derive(Debug, Clone)]
pub struct ContainerUsage {
    pub container: Arc<Container>,
    pub usage: Usage,
    pub writable_layer: Option<DiskUsage>,
}

/// Counters of one network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceUsage {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// A pod's usage: its cgroup parent (pause and every container), its network, its containers.
#[derive(Debug, Clone)]
pub struct PodUsage {
    pub sandbox: Arc<Sandbox>,
    pub usage: Usage,
    /// Interfaces of the pod's network namespace, loopback left out; empty for host-network pods.
    pub interfaces: Vec<InterfaceUsage>,
    pub containers: Vec<ContainerUsage>,
}

/// A pod, its live containers and their upper dirs, gathered before going to the blocking pool.
type PodParts = (Arc<Sandbox>, Vec<Arc<Container>>, Vec<PathBuf>);

/// Read the cgroups at `paths` (OCI cgroupsPaths, or paths below the hierarchy roots) and turn CPU counters into rates. Paths
/// without an earlier sample are read twice, [`FIRST_SAMPLE_GAP`] apart, once for all of them.
fn sample(paths: &[String]) -> Vec<Usage> {
    let read = |p: &String| {
        let ts = now_ns();
        let st = cgroups::fs_path(p)
            .map(|fp| cgroups::read_stats(&fp))
            .unwrap_or_default();
        (ts, st)
    };
    let mut guard = CPU_SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
    let known = guard.get_or_insert_with(HashMap::new);
    let missing: Vec<&String> = paths.iter().filter(|p| !known.contains_key(*p)).collect();
    let mut first = false;
    for p in missing {
        let (ts, st) = read(p);
        if let Some(cpu) = st.cpu_usage_ns {
            known.insert(p.clone(), (ts, cpu));
            first = true;
        }
    }
    if first {
        // The lock is held over the short sleep on purpose: a concurrent caller would otherwise
        // take the same first samples again. Stats calls are rare (kubelet: every few seconds).
        std::thread::sleep(FIRST_SAMPLE_GAP);
    }
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let (ts, st) = read(p);
        let rate = match (known.get(p), st.cpu_usage_ns) {
            (Some(&(t0, c0)), Some(c1)) => cpu_rate(t0, c0, ts, c1),
            _ => None,
        };
        if let Some(cpu) = st.cpu_usage_ns {
            known.insert(p.clone(), (ts, cpu));
        }
        out.push(Usage {
            timestamp: ts,
            cgroup: st,
            cpu_nano_cores: rate,
        });
    }
    let cutoff = now_ns() - SAMPLE_TTL_NS;
    known.retain(|_, (t, _)| *t >= cutoff);
    out
}

/// Nano-cores between two samples: CPU nanoseconds per wall nanosecond, times 10^9. A counter
/// that went backwards (a recreated cgroup) or no time passing gives no rate.
pub fn cpu_rate(t0: i64, cpu0: u64, t1: i64, cpu1: u64) -> Option<u64> {
    let dt = t1.checked_sub(t0).filter(|d| *d > 0)? as u128;
    let dc = cpu1.checked_sub(cpu0)? as u128;
    u64::try_from(dc * 1_000_000_000 / dt).ok()
}

/// Bytes and inodes under `dir`, not following symlinks nor crossing into other filesystems
/// (a bind mount inside the upper dir is not the layer's).
pub fn disk_usage(dir: &Path) -> Option<DiskUsage> {
    let root = std::fs::symlink_metadata(dir).ok()?;
    let mut seen = std::collections::HashSet::new();
    let mut out = DiskUsage {
        mountpoint: dir.to_path_buf(),
        ..Default::default()
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != root.dev() {
                continue;
            }
            if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
                continue;
            }
            out.inodes_used += 1;
            out.used_bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Some(out)
}

/// `/proc/<pid>/net/dev`: the interfaces of the process's network namespace, `lo` left out.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceUsage> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" || name.is_empty() || name.contains('|') {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().ok())
                .collect::<Option<Vec<u64>>>()?;
            if v.len() < 16 {
                return None;
            }
            Some(InterfaceUsage {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

impl Containers {
    /// The overlay upper dir of container `id` (the writable layer).
    fn upper_dir(&self, id: &str) -> PathBuf {
        self.context.layout.container(id).upper_dir()
    }

    /// Usage of each of `containers`.
    pub async fn usage(&self, containers: Vec<Arc<Container>>) -> Vec<ContainerUsage> {
        let uppers: Vec<PathBuf> = containers.iter().map(|c| self.upper_dir(&c.id)).collect();
        tokio::task::spawn_blocking(move || container_usage(containers, uppers))
            .await
            .unwrap_or_default()
    }

    /// Usage of each of `pods` with their containers.
    pub async fn pod_usage(&self, pods: Vec<Arc<Sandbox>>) -> Vec<PodUsage> {
        let per_pod: Vec<PodParts> = pods
            .into_iter()
            .map(|p| {
                // Exited containers have no cgroup left to read.
                let cs: Vec<Arc<Container>> = self
                    .of_sandbox(&p.id)
                    .into_iter()
                    .filter(|c| {
                        matches!(
                            c.status().state(),
                            ContainerState::Created | ContainerState::Running
                        )
                    })
                    .collect();
                let ups = cs.iter().map(|c| self.upper_dir(&c.id)).collect();
                (p, cs, ups)
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            let paths: Vec<String> = per_pod
                .iter()
                .map(|(p, _, _)| p.meta.cgroup_fs_dir().to_string())
                .collect();
            let usages = sample(&paths);
            per_pod
                .into_iter()
                .zip(usages)
                .map(|((sandbox, cs, ups), usage)| {
                    let st = sandbox.status();
                    let interfaces = if sandbox.meta.host_network || st.pause_pid <= 0 {
                        Vec::new()
                    } else {
                        // /sys/class/net is the daemon's namespace; the pause process's
                        // /proc/<pid>/net/dev shows the pod's.
                        std::fs::read_to_string(format!("/proc/{}/net/dev", st.pause_pid))
                            .map(|t| parse_net_dev(&t))
                            .unwrap_or_default()
                    };
                    PodUsage {
                        sandbox,
                        usage,
                        interfaces,
                        containers: container_usage(cs, ups),
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }
}

fn container_usage(containers: Vec<Arc<Container>>, uppers: Vec<PathBuf>) -> Vec<ContainerUsage> {
    let paths: Vec<String> = containers.iter().map(|c| c.cgroups_path()).collect();
    let usages = sample(&paths);
    containers
        .into_iter()
        .zip(usages)
        .zip(uppers)
        .map(|((container, usage), upper)| ContainerUsage {
            container,
            usage,
            writable_layer: LAYER_USAGE.get_or_walk(&upper, disk_usage),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The rest of cAdvisor's per-container numbers, for ListPodSandboxMetrics

/// Block I/O of one device: `(major, minor, operation, bytes)`, operation as cAdvisor names it
/// (`Read`, `Write`, ...).
pub type DeviceIo = (u64, u64, String, u64);

/// What cAdvisor reports of a cgroup beyond [`CgroupStats`]: CFS throttling, user/system CPU,
/// the memory breakdown and failures, OOM kills, threads, the limits in force, block I/O and
/// (v2) pressure stall totals. `None` where the host has no such file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupDetail {
    pub cfs_periods: Option<u64>,
    pub cfs_throttled_periods: Option<u64>,
    pub cfs_throttled_ns: Option<u64>,
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub memory_cache: Option<u64>,
    pub memory_failcnt: Option<u64>,
    pub memory_kernel: Option<u64>,
    pub memory_mapped_file: Option<u64>,
    pub memory_max_usage: Option<u64>,
    pub memory_swap: Option<u64>,
    /// Page faults of the cgroup itself and of its whole subtree: (minor+major, major).
    pub faults_container: Option<(u64, u64)>,
    pub faults_hierarchy: Option<(u64, u64)>,
    pub oom_kills: Option<u64>,
    pub threads: Option<u64>,
    /// The pids limit; 0 for none (cAdvisor's convention).
    pub threads_max: Option<u64>,
    pub cpu_period: Option<u64>,
    /// CFS quota in microseconds; `None` without a quota.
    pub cpu_quota: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub memory_limit: Option<u64>,
    pub memory_reservation: Option<u64>,
    pub memory_swap_limit: Option<u64>,
    pub device_io: Vec<DeviceIo>,
    /// (ios, bytes) read and written over all devices.
    pub reads: Option<(u64, u64)>,
    pub writes: Option<(u64, u64)>,
    /// v2 PSI `total=` in microseconds: (some, full) for cpu, io and memory.
    pub pressure: [Option<(u64, u64)>; 3],
    /// Processes in the cgroup (for open files and sockets).
    pub pids: Vec<i32>,
}

fn read_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn read_num(p: &Path) -> Option<u64> {
    read_text(p).trim().parse().ok()
}

fn flat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// v1 `blkio.throttle.io_service_bytes_recursive` style lines: `8:0 Read 4096`.
fn parse_blkio_v1(text: &str) -> Vec<DeviceIo> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, op, v) = (f.next()?, f.next()?, f.next()?);
            let (ma, mi) = dev.split_once(':')?;
            Some((
                ma.parse().ok()?,
                mi.parse().ok()?,
                op.to_string(),
                v.parse().ok()?,
            ))
        })
        .collect()
}

/// v2 `io.stat` lines: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 ...` as (major, minor, key, value).
fn parse_io_stat_v2(text: &str) -> Vec<DeviceIo> {
    let mut out = Vec::new();
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let Some((ma, mi)) = f.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(ma), Ok(mi)) = (ma.parse(), mi.parse()) else {
            continue;
        };
        for kv in f {
            if let Some((k, v)) = kv.split_once('=') {
                if let Ok(v) = v.parse() {
                    out.push((ma, mi, k.to_string(), v));
                }
            }
        }
    }
    out
}

fn sum_io(ios: &[DeviceIo], ops: &str, bytes: &str) -> Option<(u64, u64)> {
    if ios.is_empty() {
        return None;
    }
    let sum = |k: &str| ios.iter().filter(|d| d.2 == k).map(|d| d.3).sum();
    Some((sum(ops), sum(bytes)))
}

/// The pids in `cgroup.procs` (or `tasks` for `threads`): one number a line.
fn count_lines(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p)
        .ok()
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as u64)
}

/// [`CgroupDetail`] of the cgroup at `path` (an OCI cgroupsPath) on this host.
pub fn cgroup_detail(path: &str) -> CgroupDetail {
    let Some(rel) = cgroups::fs_path(path) else {
        return CgroupDetail::default();
    };
    cgroup_detail_under(Path::new("/sys/fs/cgroup"), cgroups::is_v2(), &rel)
}

/// [`cgroup_detail`] with the hierarchies mounted at `root` (v1: `root/<controller>/path`).
pub fn cgroup_detail_under(root: &Path, v2: bool, path: &str) -> CgroupDetail {
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return CgroupDetail::default();
    }
    let mut d = CgroupDetail::default();
    if v2 {
        let dir = root.join(rel);
        let cpu = flat(&read_text(&dir.join("cpu.stat")));
        let mem = flat(&read_text(&dir.join("memory.stat")));
        let events = flat(&read_text(&dir.join("memory.events")));
        let us = |k: &str| cpu.get(k).map(|v| v.saturating_mul(1000));
        d.cfs_periods = cpu.get("nr_periods").copied();
        d.cfs_throttled_periods = cpu.get("nr_throttled").copied();
        d.cfs_throttled_ns = us("throttled_usec");
        d.cpu_user_ns = us("user_usec");
        d.cpu_system_ns = us("system_usec");
        d.memory_cache = mem.get("file").copied();
        d.memory_failcnt = events.get("max").copied();
        d.memory_kernel = mem.get("kernel").copied().or_else(|| {
            Some(mem.get("kernel_stack")? + mem.get("slab")? + mem.get("sock").unwrap_or(&0))
        });
        d.memory_mapped_file = mem.get("file_mapped").copied();
        d.memory_max_usage = read_num(&dir.join("memory.peak"));
        d.memory_swap = read_num(&dir.join("memory.swap.current"));
        // v2 counts faults for the subtree only; the cgroup's own are the same number.
        let f = mem
            .get("pgfault")
            .map(|p| (*p, mem.get("pgmajfault").copied().unwrap_or(0)));
        d.faults_container = f;
        d.faults_hierarchy = f;
        d.oom_kills = events.get("oom_kill").copied();
        d.threads = count_lines(&dir.join("cgroup.threads"));
        d.threads_max = dir
            .join("pids.max")
            .exists()
            .then(|| read_num(&dir.join("pids.max")).unwrap_or(0));
        let max = read_text(&dir.join("cpu.max"));
        let mut f = max.split_whitespace();
        let (quota, period) = (f.next(), f.next());
        d.cpu_quota = quota.and_then(|q| q.parse().ok());
        d.cpu_period = period.and_then(|p| p.parse().ok());
        // cpu.weight back to shares, as cAdvisor does (the inverse of runc's conversion).
        d.cpu_shares =
            read_num(&dir.join("cpu.weight")).map(|w| 2 + (w.saturating_sub(1) * 262_142) / 9999);
        let limit = |f: &str| {
            dir.join(f)
                .exists()
                .then(|| read_num(&dir.join(f)).unwrap_or(u64::MAX))
        };
        d.memory_limit = limit("memory.max");
        d.memory_reservation = limit("memory.low");
        d.memory_swap_limit = limit("memory.swap.max");
        d.device_io = parse_io_stat_v2(&read_text(&dir.join("io.stat")));
        d.reads = sum_io(&d.device_io, "rios", "rbytes");
        d.writes = sum_io(&d.device_io, "wios", "wbytes");
        let p = cgroups::read_pressure(&dir);
        let totals = |p: Option<cgroups::Pressure>| p.map(|p| (p.some.total_us, p.full.total_us));
        d.pressure = [totals(p.cpu), totals(p.io), totals(p.memory)];
        d.pids = pids_in(&dir.join("cgroup.procs"));
    } else {
        let cpu = root.join("cpu").join(rel);
        let cpuacct = root.join("cpuacct").join(rel);
        let memory = root.join("memory").join(rel);
        let pids = root.join("pids").join(rel);
        let blkio = root.join("blkio").join(rel);
        let cs = flat(&read_text(&cpu.join("cpu.stat")));
        d.cfs_periods = cs.get("nr_periods").copied();
        d.cfs_throttled_periods = cs.get("nr_throttled").copied();
        d.cfs_throttled_ns = cs.get("throttled_time").copied();
        // cpuacct.stat is in USER_HZ ticks (100 a second on Linux).
        let acct = flat(&read_text(&cpuacct.join("cpuacct.stat")));
        d.cpu_user_ns = acct.get("user").map(|t| t.saturating_mul(10_000_000));
        d.cpu_system_ns = acct.get("system").map(|t| t.saturating_mul(10_000_000));
        let mem = flat(&read_text(&memory.join("memory.stat")));
        let total = |k: &str| mem.get(&format!("total_{k}")).or(mem.get(k)).copied();
        d.memory_cache = total("cache");
        d.memory_failcnt = read_num(&memory.join("memory.failcnt"));
        d.memory_kernel = read_num(&memory.join("memory.kmem.usage_in_bytes"));
        d.memory_mapped_file = total("mapped_file");
        d.memory_max_usage = read_num(&memory.join("memory.max_usage_in_bytes"));
        d.memory_swap = total("swap");
        d.faults_container = mem
            .get("pgfault")
            .map(|p| (*p, mem.get("pgmajfault").copied().unwrap_or(0)));
        d.faults_hierarchy = mem
            .get("total_pgfault")
            .map(|p| (*p, mem.get("total_pgmajfault").copied().unwrap_or(0)));
        d.oom_kills = flat(&read_text(&memory.join("memory.oom_control")))
            .get("oom_kill")
            .copied();
        d.threads = count_lines(&pids.join("tasks"));
        d.threads_max = pids
            .join("pids.max")
            .exists()
            .then(|| read_num(&pids.join("pids.max")).unwrap_or(0));
        d.cpu_period = read_num(&cpu.join("cpu.cfs_period_us"));
        d.cpu_quota = read_num(&cpu.join("cpu.cfs_quota_us"));
        d.cpu_shares = read_num(&cpu.join("cpu.shares"));
        d.memory_limit = read_num(&memory.join("memory.limit_in_bytes"));
        d.memory_reservation = read_num(&memory.join("memory.soft_limit_in_bytes"));
        d.memory_swap_limit = read_num(&memory.join("memory.memsw.limit_in_bytes"));
        let bytes = parse_blkio_v1(&read_text(
            &blkio.join("blkio.throttle.io_service_bytes_recursive"),
        ));
        let ios = parse_blkio_v1(&read_text(
            &blkio.join("blkio.throttle.io_serviced_recursive"),
        ));
        let find = |v: &[DeviceIo], op: &str| -> Option<u64> {
            (!v.is_empty()).then(|| v.iter().filter(|d| d.2 == op).map(|d| d.3).sum())
        };
        d.reads = find(&ios, "Read").zip(find(&bytes, "Read"));
        d.writes = find(&ios, "Write").zip(find(&bytes, "Write"));
        d.device_io = bytes.into_iter().filter(|d| d.2 != "Total").collect();
        d.pids = pids_in(&pids.join("cgroup.procs"));
    }
    d
}

fn pids_in(procs: &Path) -> Vec<i32> {
    read_text(procs)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Open files and sockets of `pids`: (file descriptors, sockets).
pub fn open_files(pids: &[i32]) -> (u64, u64) {
    let (mut fds, mut sockets) = (0, 0);
    for pid in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in rd.flatten() {
            fds += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            {
                sockets += 1;
            }
        }
    }
    (fds, sockets)
}

/// The filesystem holding a path: its device name (mountinfo's source), capacity and inodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsInfo {
    pub device: String,
    pub limit_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

/// [`FsInfo`] of the filesystem `path` lives on.
pub fn fs_info(path: &Path) -> Option<FsInfo> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let mp = crate::image::usage::mountpoint_of(path);
    let device = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            // The last line for the mount point is the one on top.
            info.lines()
                .rev()
                .find(|l| {
                    l.split(' ')
                        .nth(4)
                        .map(crate::image::overlay::unescape_mountinfo)
                        == Some(mp.to_string_lossy().into_owned())
                })
                .and_then(|l| l.split_once(" - "))
                .and_then(|(_, post)| post.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_else(|| mp.display().to_string());
    Some(FsInfo {
        device,
        limit_bytes: (st.blocks() as u64).saturating_mul(st.fragment_size() as u64),
        inodes_total: st.files() as u64,
        inodes_free: st.files_free() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     120       2    0    0    0     0          0         0      120       2    0    0    0     0       0          0
  eth0:    1296      16    1    0    0     0          0         0      936      12    2    0    0     0       0          0
";

    #[test]
    fn net_dev_skips_loopback_and_headers() {
        let v = parse_net_dev(NET_DEV);
        assert_eq!(
            v,
            vec![InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 1296,
                rx_packets: 16,
                rx_errors: 1,
                rx_dropped: 0,
                tx_bytes: 936,
                tx_packets: 12,
                tx_errors: 2,
                tx_dropped: 0,
            }]
        );
        assert!(parse_net_dev("eth0: 1 2 3\n").is_empty());
    }

    #[test]
    fn cgroup_detail_v1_and_v2_from_files() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, t: &str| {
            let f = d.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, t).unwrap();
        };
        w(
            "cpu/p/c/cpu.stat",
            "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n",
        );
        w("cpu/p/c/cpu.cfs_quota_us", "20000\n");
        w("cpu/p/c/cpu.cfs_period_us", "100000\n");
        w("cpu/p/c/cpu.shares", "1024\n");
        w("cpuacct/p/c/cpuacct.stat", "user 3\nsystem 2\n");
        w(
            "memory/p/c/memory.stat",
            "cache 10\npgfault 7\npgmajfault 1\ntotal_cache 40\ntotal_mapped_file 8\ntotal_swap 0\ntotal_pgfault 9\ntotal_pgmajfault 2\n",
        );
        w(
            "memory/p/c/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        );
        w("memory/p/c/memory.memsw.limit_in_bytes", "67108864\n");
        w("pids/p/c/tasks", "1\n2\n3\n");
        w("pids/p/c/cgroup.procs", "1\n2\n");
        w("pids/p/c/pids.max", "max\n");
        w(
            "blkio/p/c/blkio.throttle.io_service_bytes_recursive",
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\nTotal 12288\n",
        );
        w(
            "blkio/p/c/blkio.throttle.io_serviced_recursive",
            "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\n",
        );
        let c = cgroup_detail_under(d.path(), false, "/p/c");
        assert_eq!(
            (c.cfs_periods, c.cfs_throttled_periods),
            (Some(10), Some(4))
        );
        assert_eq!(c.cfs_throttled_ns, Some(5000));
        assert_eq!(
            (c.cpu_user_ns, c.cpu_system_ns),
            (Some(30_000_000), Some(20_000_000))
        );
        assert_eq!(
            (c.cpu_quota, c.cpu_period, c.cpu_shares),
            (Some(20000), Some(100000), Some(1024))
        );
        assert_eq!((c.memory_cache, c.memory_mapped_file), (Some(40), Some(8)));
        assert_eq!(c.faults_container, Some((7, 1)));
        assert_eq!(c.faults_hierarchy, Some((9, 2)));
        assert_eq!(
            (c.oom_kills, c.threads, c.threads_max),
            (Some(3), Some(3), Some(0))
        );
        assert_eq!(c.memory_swap_limit, Some(64 << 20));
        assert_eq!(c.reads, Some((1, 4096)));
        assert_eq!(c.writes, Some((2, 8192)));
        assert_eq!(c.device_io.len(), 2, "Total lines are not devices");
        assert_eq!(c.pids, vec![1, 2]);

        w("u/p/c/cpu.stat", "usage_usec 9\nuser_usec 5\nsystem_usec 4\nnr_periods 6\nnr_throttled 1\nthrottled_usec 2\n");
        w("u/p/c/cpu.max", "max 100000\n");
        w(
            "u/p/c/memory.events",
            "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n",
        );
        w("u/p/c/memory.max", "max\n");
        w(
            "u/p/c/io.stat",
            "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n",
        );
        w("u/p/c/memory.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=77\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=33\n");
        let c = cgroup_detail_under(&d.path().join("u"), true, "/p/c");
        assert_eq!((c.cpu_user_ns, c.cpu_system_ns), (Some(5000), Some(4000)));
        assert_eq!(
            (c.cfs_throttled_ns, c.cpu_quota, c.cpu_period),
            (Some(2000), None, Some(100000))
        );
        assert_eq!((c.memory_failcnt, c.oom_kills), (Some(5), Some(1)));
        assert_eq!(c.memory_limit, Some(u64::MAX));
        assert_eq!((c.reads, c.writes), (Some((1, 100)), Some((2, 200))));
        assert_eq!(c.pressure, [None, None, Some((77, 33))]);
        assert_eq!(
            cgroup_detail_under(d.path(), false, "/../x"),
            CgroupDetail::default()
        );
    }

    /// The systemd driver on cgroup v2: a container's scope inside kubelet's pod slice, read
    /// through the same paths the daemon and the monitor resolve.
    #[test]
    fn v2_files_of_a_systemd_scope_in_kubelets_slice() {
        use crate::oci::cgroups::CgroupDriver;
        let d = tempfile::tempdir().unwrap();
        let pod = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice";
        let slice = cgroups::to_slice(pod).unwrap();
        let ctr = cgroups::fs_path(&CgroupDriver::Systemd.cgroups_path(&slice, "c1")).unwrap();
        assert_eq!(ctr, format!("{pod}/ferrio-c1.scope"));
        let w = |dir: &str, f: &str, text: &str| {
            let dir = d.path().join(dir.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(f), text).unwrap();
        };
        for dir in [pod, ctr.as_str()] {
            w(
                dir,
                "cpu.stat",
                "usage_usec 10\nuser_usec 6\nsystem_usec 4\n",
            );
            w(dir, "memory.current", "4096\n");
            w(dir, "memory.stat", "anon 1024\ninactive_file 1024\n");
            w(dir, "cpu.max", "50000 100000\n");
            w(dir, "cpu.weight", "39\n");
        }
        w(pod, "memory.max", "67108864\n");
        w(&ctr, "memory.max", "33554432\n");
        w(
            &ctr,
            "memory.events",
            "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n",
        );
        w(
            &ctr,
            "io.stat",
            "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
        );
        let psi = "some avg10=0.00 avg60=0.00 avg300=0.00 total=11\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n";
        for f in ["cpu.pressure", "io.pressure", "memory.pressure"] {
            w(&ctr, f, psi);
        }
        let c = cgroup_detail_under(d.path(), true, &ctr);
        assert_eq!(c.oom_kills, Some(1));
        assert_eq!(c.pressure, [Some((11, 5)); 3]);
        assert_eq!((c.reads, c.writes), (Some((1, 10)), Some((2, 20))));
        assert_eq!((c.cpu_quota, c.cpu_period), (Some(50000), Some(100000)));
        let st = cgroups::read_stats_under(d.path(), true, &ctr);
        assert_eq!(st.memory_usage, Some(4096));
        assert_eq!(st.memory_working_set, Some(3072));
        assert_eq!(st.memory_limit, Some(32 << 20));
        assert_eq!(st.cpu_usage_ns, Some(10_000));
        // The pod's own numbers come from the slice kubelet named.
        let st = cgroups::read_stats_under(d.path(), true, pod);
        assert_eq!(st.memory_limit, Some(64 << 20));
        // The monitor finds the OOM kill at the same place.
        assert!(crate::monitor::oom::oom_killed_under(d.path(), &ctr));
    }

    #[test]
    fn cpu_rates() {
        // half a core: 50 ms of CPU in 100 ms
        assert_eq!(cpu_rate(0, 0, 100_000_000, 50_000_000), Some(500_000_000));
        assert_eq!(cpu_rate(0, 10, 100, 5), None);
        assert_eq!(cpu_rate(5, 0, 5, 10), None);
    }

    #[test]
    fn disk_usage_counts_files_dirs_and_hard_links_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a"), vec![1u8; 10_000]).unwrap();
        std::fs::hard_link(d.path().join("sub/a"), d.path().join("b")).unwrap();
        std::os::unix::fs::symlink("sub/a", d.path().join("c")).unwrap();
        let u = disk_usage(d.path()).unwrap();
        // sub, sub/a (= b), c
        assert_eq!(u.inodes_used, 3);
        assert!(u.used_bytes >= 10_000, "{u:?}");
        assert!(disk_usage(&d.path().join("nope")).is_none());
    }

    #[test]
    fn samples_give_a_rate_on_the_first_call() {
        if cgroups::is_v2() || !Path::new("/sys/fs/cgroup/cpuacct/cpuacct.usage").exists() {
            return;
        }
        // The root cgroup always has CPU use.
        let u = sample(&["/".to_string()]);
        assert_eq!(u.len(), 1);
        assert!(u[0].cgroup.cpu_usage_ns.is_some());
        assert!(u[0].cpu_nano_cores.is_some(), "{u:?}");
    }
}
