//! What containers and pods use: cgroup counters (v1 or v2, see [`crate::oci::cgroups`]), the
//! CPU rate from two samples, the writable layer's bytes and inodes, and a pod's network
//! counters read in its network namespace.
//!
//! Reads only (cgroup files, the overlay upper dir, `/proc/<pause>/net/dev`), all on the
//! blocking pool. The one piece of state is the last CPU sample per cgroup, kept in memory so
//! `usage_nano_cores` is the rate since the previous stats call, as kubelet expects.

use super::lifecycle::{Container, ContainerState, Containers};
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
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
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

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Read the cgroups at `paths` (OCI cgroupsPaths) and turn CPU counters into rates. Paths
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
                rx_errors: v[2],
                tx_bytes: v[8],
                tx_errors: v[10],
            })
        })
        .collect()
}

impl Containers {
    /// The overlay upper dir of container `id` (the writable layer; the layout is
    /// `lifecycle`'s: `<root>/overlay/<id>/upper`).
    fn upper_dir(&self, id: &str) -> PathBuf {
        self.pods
            .config
            .load()
            .root
            .join("overlay")
            .join(id)
            .join("upper")
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
                .map(|(p, _, _)| p.meta.cgroup_parent.clone())
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
    let paths: Vec<String> = containers
        .iter()
        .map(|c| c.meta.cgroups_path.clone())
        .collect();
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
                rx_errors: 1,
                tx_bytes: 936,
                tx_errors: 2,
            }]
        );
        assert!(parse_net_dev("eth0: 1 2 3\n").is_empty());
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
