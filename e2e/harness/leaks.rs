//! What a test's objects may leave on the host, how to find it, and how to remove it afterwards.
//!
//! `find` is the assertion side: tests call it (through `Env::assert_no_leaks`) after they removed
//! everything, so a leak fails the test. `clean_up` is the drop side: it removes leftovers of a
//! failed test, touching only what carries this test's unique names (temp dir, bridge, network,
//! cgroup parents) and processes by pid.

use super::env::Env;
use super::sys;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::time::{Duration, Instant};

/// Processes a test saw running (pause, container processes), checked to be gone at the end.
#[derive(Default, Clone, Debug)]
pub struct LearnedPids {
    /// (pid, start time, what it was).
    procs: Vec<(u32, u64, String)>,
}

impl LearnedPids {
    /// Remember `pid` (if it is alive) as `what`.
    pub fn add(&mut self, pid: u32, what: &str) {
        if let Some((_, start)) = sys::stat(pid) {
            if !self.procs.iter().any(|(p, s, _)| *p == pid && *s == start) {
                self.procs.push((pid, start, what.to_string()));
            }
        }
    }

    /// Remember every process in the cgroups at or below `parent` (a pod's cgroup_parent) in any
    /// hierarchy; returns how many there are now.
    pub fn learn_cgroup(&mut self, parent: &str) -> usize {
        let mut n = 0;
        for h in sys::cgroup_hierarchies() {
            for pid in sys::cgroup_pids(&h.join(parent.trim_start_matches('/'))) {
                self.add(pid, &format!("process in cgroup {parent}"));
                n += 1;
            }
        }
        n
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|(p, _, _)| *p).collect()
    }

    /// Descriptions of the learnt processes that still exist (zombies included: nobody reaped them).
    pub fn still_alive(&self) -> Vec<String> {
        self.procs
            .iter()
            .filter_map(|(pid, start, what)| match sys::stat(*pid) {
                Some((state, s)) if s == *start => Some(format!(
                    "process {pid} ({what}) still exists, state {state}: {:?}",
                    sys::cmdline(*pid)
                )),
                _ => None,
            })
            .collect()
    }
}

/// Everything left behind, one line each.
pub fn find(env: &Env, live_daemons: &[u32], learned: &LearnedPids) -> Vec<String> {
    let mut problems = Vec::new();
    let dir = env.dir();

    // Mounts (rootfs overlays, pinned namespaces, shm) in our namespace and in each daemon's.
    let mut mountinfos = vec![("the test's".to_string(), "/proc/self/mountinfo".to_string())];
    for pid in live_daemons {
        mountinfos.push((format!("daemon {pid}'s"), format!("/proc/{pid}/mountinfo")));
    }
    for (whose, mi) in mountinfos {
        for m in sys::mounts_under(Path::new(&mi), dir) {
            problems.push(format!("mount {} in {whose} mount namespace", m.display()));
        }
    }

    // Pinned namespace files.
    for d in sys::dirs_depth_first(&env.namespaces_dir()) {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if !e.file_type().map(|t| t.is_dir()).unwrap_or(true) {
                    problems.push(format!("namespace file {}", e.path().display()));
                }
            }
        }
    }

    // The OCI runtime's state of containers that were never deleted.
    for handler in env.config().runtime.runtimes.keys() {
        if let Some(root) = env.config().runtime_root(handler) {
            if let Ok(rd) = std::fs::read_dir(&root) {
                for e in rd.flatten() {
                    problems.push(format!("{handler} state {}", e.path().display()));
                }
            }
        }
    }

    // veths still attached to the test's bridge.
    if let Ok(rd) = std::fs::read_dir(format!("/sys/class/net/{}/brif", env.bridge())) {
        for e in rd.flatten() {
            problems.push(format!(
                "interface {} still on bridge {}",
                e.file_name().to_string_lossy(),
                env.bridge()
            ));
        }
    }

    // host-local reservations: one file per IP, named after it.
    if let Ok(rd) = std::fs::read_dir(env.ipam_dir().join(env.network_name())) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name != "lock" && !name.starts_with("last_reserved_ip") {
                problems.push(format!("IP reservation {}", e.path().display()));
            }
        }
    }

    // The pods' cgroups (the parents are unique to the test, so any of them is ours).
    for parent in env.cgroup_parents() {
        for h in sys::cgroup_hierarchies() {
            let p = h.join(parent.trim_start_matches('/'));
            if p.exists() {
                problems.push(format!("cgroup directory {}", p.display()));
            }
        }
    }

    // Monitors and other helpers: their command lines name paths inside the temp dir.
    let me = std::process::id();
    let dir_s = dir.to_string_lossy().to_string();
    for pid in sys::all_pids() {
        if pid == me || live_daemons.contains(&pid) {
            continue;
        }
        let cl = sys::cmdline(pid);
        if cl.contains(&dir_s) {
            problems.push(format!("process {pid} still running: {cl}"));
        }
    }

    problems.extend(learned.still_alive());

    for r in sys::nat_rules_mentioning(env.network_name()) {
        problems.push(format!("iptables nat rule {}", r.text));
    }
    problems
}

/// Remove whatever the test left. Best effort: never panics.
pub fn clean_up(env: &Env) {
    let dir = env.dir();
    let dir_s = dir.to_string_lossy().to_string();
    let me = std::process::id();

    // Daemons and monitors of this test (their command lines name the temp dir).
    let ours: Vec<u32> = sys::all_pids()
        .into_iter()
        .filter(|p| *p != me && sys::cmdline(*p).contains(&dir_s))
        .collect();
    kill_and_wait(&ours);

    // Containers the runtime still knows: kill and delete them through the runtime itself.
    for (handler, h) in &env.config().runtime.runtimes {
        let Some(root) = env.config().runtime_root(handler) else {
            continue;
        };
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
        let bin = h.runtime_path.to_string_lossy().to_string();
        let root_s = root.to_string_lossy().to_string();
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            sys::run_quiet(&bin, &["--root", &root_s, "kill", &id, "KILL"]);
            sys::run_quiet(&bin, &["--root", &root_s, "delete", "--force", &id]);
        }
    }

    // Anything still in the test's cgroups, then the cgroups themselves (leaves first).
    for parent in env.cgroup_parents() {
        let rel = parent.trim_start_matches('/').to_string();
        let mut pids = Vec::new();
        for h in sys::cgroup_hierarchies() {
            pids.extend(sys::cgroup_pids(&h.join(&rel)));
        }
        pids.sort();
        pids.dedup();
        kill_and_wait(&pids);
        for h in sys::cgroup_hierarchies() {
            for d in sys::dirs_depth_first(&h.join(&rel)) {
                for _ in 0..20 {
                    if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    // Mounts under the temp dir, deepest first; detach so a busy one does not block the rest.
    let mut mounts = sys::mounts_under(Path::new("/proc/self/mountinfo"), dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in mounts {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }

    // iptables rules of the test's network (comments name it), then the per-container chains they
    // jumped to. The shared CNI-HOSTPORT-* chains belong to every portmap user: left alone.
    let rules = sys::nat_rules_mentioning(env.network_name());
    let mut chains: Vec<String> = rules
        .iter()
        .filter_map(|r| sys::jump_target(&r.text))
        .filter(|t| t.starts_with("CNI-") && !t.starts_with("CNI-HOSTPORT-"))
        .map(str::to_string)
        .collect();
    chains.sort();
    chains.dedup();
    let mut by_number: Vec<&sys::NatRule> = rules.iter().collect();
    by_number.sort_by(|a, b| (&a.chain, b.number).cmp(&(&b.chain, a.number)));
    for r in by_number {
        sys::run_quiet(
            "iptables",
            &["-w", "-t", "nat", "-D", &r.chain, &r.number.to_string()],
        );
    }
    for c in chains {
        sys::run_quiet("iptables", &["-w", "-t", "nat", "-F", &c]);
        sys::run_quiet("iptables", &["-w", "-t", "nat", "-X", &c]);
    }

    if Path::new(&format!("/sys/class/net/{}", env.bridge())).exists() {
        sys::run_quiet("ip", &["link", "del", env.bridge()]);
    }
}

/// SIGKILL each pid and wait (up to 5 s) until they are gone or zombies.
fn kill_and_wait(pids: &[u32]) {
    for p in pids {
        let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if pids
            .iter()
            .all(|p| !matches!(sys::stat(*p), Some((s, _)) if s != 'Z'))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
