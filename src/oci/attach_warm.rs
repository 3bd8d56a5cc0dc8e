//! Starting the grace period a cgroup v1 attach waits for before the runtime needs it.
//!
//! Moving a process into a cgroup takes the kernel's threadgroup rwsem for writing. A writer
//! that finds that rwsem idle first switches every reader (each fork and exit on the host) to
//! its slow path and waits for an RCU grace period; a writer that comes while that grace
//! period runs waits only for the rest of it, and one that comes within a grace period after
//! the last writer left does not wait at all. On cgroup v1 every OCI runtime attaches the
//! container's init by writing its pid to `cgroup.procs` (crun's clone into a cgroup exists on
//! v2 only), so on a host that starts no other process into a cgroup the runtime's create or
//! run waits a whole grace period in the middle of its work, after the monitor and the runtime
//! already spent their start-up.
//!
//! [`AttachWarm::start`] moves one of the daemon's threads into the cgroup it already is in (a
//! write to `tasks`, with no effect on any process) as a monitor launch begins: the grace
//! period then runs while the monitor and the runtime start up, and the runtime's own attach
//! finds it under way or passed. Nothing depends on it: a write that fails or is refused costs
//! only that overlap, and turns the warm-up off (such a failure is the host's shape: a read-only
//! cgroupfs, a hierarchy the daemon cannot write).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Warms the cgroup attach of one host: the v1 hierarchies the daemon's threads can be moved in.
#[derive(Debug)]
pub struct AttachWarm {
    /// Mount points of the v1 hierarchies mounted at their root, with the controllers (or the
    /// `name=` of a named hierarchy) that `/proc/<pid>/cgroup` lists for each.
    hierarchies: Vec<(String, PathBuf)>,
    /// A write runs now; a launch meanwhile shares its grace period.
    running: AtomicBool,
    /// A write failed: no more tries.
    off: AtomicBool,
}

impl AttachWarm {
    /// The warm-up of this host; `None` without a cgroup v1 hierarchy (cgroup v2 only, where
    /// crun clones into the cgroup).
    pub fn of_host() -> Option<Arc<AttachWarm>> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        AttachWarm::from_mountinfo(&mountinfo).map(Arc::new)
    }

    /// The v1 hierarchies of `mountinfo` (a `/proc/<pid>/mountinfo`) mounted at their root.
    fn from_mountinfo(mountinfo: &str) -> Option<AttachWarm> {
        let hierarchies: Vec<(String, PathBuf)> = mountinfo
            .lines()
            .filter_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                let mut post = post.split_whitespace();
                if post.next()? != "cgroup" {
                    return None;
                }
                let mut pre = pre.split_whitespace();
                // A hierarchy mounted from below its root (a cgroup namespace, a bind of a
                // subtree) does not show the paths `/proc/<pid>/cgroup` gives.
                if pre.nth(3)? != "/" {
                    return None;
                }
                let mount_point = PathBuf::from(pre.next()?);
                let super_options = post.nth(1)?;
                let key = hierarchy_key(super_options)?;
                Some((key, mount_point))
            })
            .collect();
        (!hierarchies.is_empty()).then_some(AttachWarm {
            hierarchies,
            running: AtomicBool::new(false),
            off: AtomicBool::new(false),
        })
    }

    /// Starts the warm-up on a blocking thread and returns at once; a no-op while one runs and
    /// after one failed. Needs a tokio runtime.
    pub fn start(self: &Arc<Self>) {
        if self.off.load(Ordering::Acquire) || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = this.warm_now() {
                this.off.store(true, Ordering::Release);
                tracing::info!(error = %e, "cgroup attach warm-up off: runtimes wait for their cgroup attach in full");
            }
            this.running.store(false, Ordering::Release);
        });
    }

    /// Moves the calling thread into its own cgroup of the first v1 hierarchy it can; returns
    /// once the kernel did (after the grace period), or the error of the last try.
    pub fn warm_now(&self) -> std::io::Result<()> {
        let own = std::fs::read_to_string("/proc/thread-self/cgroup")?;
        let tasks = self.tasks_file(&own).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no cgroup v1 hierarchy of this thread is mounted at its root",
            )
        })?;
        // An explicit thread id: the kernel skips the rwsem for a thread that names itself 0.
        let tid = nix::unistd::gettid().as_raw();
        std::fs::write(&tasks, tid.to_string())
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", tasks.display())))
    }

    /// The `tasks` file of the cgroup `own` (a `/proc/<pid>/cgroup`) names in the first v1
    /// hierarchy this host has mounted at its root.
    fn tasks_file(&self, own: &str) -> Option<PathBuf> {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_id, controllers, path) = (f.next()?, f.next()?, f.next()?);
            if controllers.is_empty() || !path.starts_with('/') || path.contains("/..") {
                return None;
            }
            let (_, mount_point) = self.hierarchies.iter().find(|(k, _)| k == controllers)?;
            Some(join_cgroup(mount_point, path).join("tasks"))
        })
    }
}

/// What `/proc/<pid>/cgroup` lists for the hierarchy with these super options: its controllers
/// in the kernel's order, then `name=<n>`, comma-separated (`cpu,cpuacct`, `name=systemd`).
fn hierarchy_key(super_options: &str) -> Option<String> {
    const NOT_CONTROLLERS: &[&str] = &[
        "rw",
        "ro",
        "noprefix",
        "clone_children",
        "xattr",
        "cpuset_v2_mode",
        "favordynmods",
    ];
    let mut controllers = Vec::new();
    let mut name = None;
    for o in super_options.split(',') {
        if let Some(n) = o.strip_prefix("name=") {
            name = Some(n);
        } else if !NOT_CONTROLLERS.contains(&o) && !o.contains('=') {
            controllers.push(o);
        }
    }
    let mut key = controllers.join(",");
    if let Some(n) = name {
        if !key.is_empty() {
            key.push(',');
        }
        key.push_str("name=");
        key.push_str(n);
    }
    (!key.is_empty()).then_some(key)
}

fn join_cgroup(mount_point: &Path, path: &str) -> PathBuf {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        mount_point.to_path_buf()
    } else {
        mount_point.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 30 0:31 /kubepods /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn the_tasks_file_is_the_threads_own_cgroup_in_a_hierarchy_mounted_at_its_root() {
        let w = AttachWarm::from_mountinfo(HYBRID).unwrap();
        // memory is mounted from below its root: skipped for the next hierarchy listed.
        let own = "12:memory:/ferrio.service\n5:pids:/ferrio.service\n0::/ferrio.service\n";
        assert_eq!(
            w.tasks_file(own),
            Some(PathBuf::from("/sys/fs/cgroup/pids/ferrio.service/tasks"))
        );
        assert_eq!(
            w.tasks_file("3:cpu,cpuacct:/\n"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/tasks"))
        );
        assert_eq!(
            w.tasks_file("1:name=systemd:/user.slice/x.scope\n"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/systemd/user.slice/x.scope/tasks"
            ))
        );
    }

    #[test]
    fn no_tasks_file_for_v2_paths_unknown_hierarchies_or_dot_dot() {
        let w = AttachWarm::from_mountinfo(HYBRID).unwrap();
        assert_eq!(w.tasks_file("0::/ferrio.service\n"), None);
        assert_eq!(w.tasks_file("9:blkio:/x\n"), None);
        assert_eq!(w.tasks_file("5:pids:/a/../../etc\n"), None);
    }

    #[tokio::test]
    async fn a_failed_write_turns_the_warm_up_off() {
        // A mount table whose only hierarchy is nowhere this thread's cgroups are.
        let w = Arc::new(
            AttachWarm::from_mountinfo(
                "35 30 0:31 / /nonexistent/ferrio-test rw - cgroup cgroup rw,ferrio_test_none\n",
            )
            .unwrap(),
        );
        w.start();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !w.off.load(Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < until,
                "still on after a failed write"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        while w.running.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        w.start();
        assert!(
            !w.running.load(Ordering::Acquire),
            "no write after it is off"
        );
    }

    #[test]
    fn a_host_without_v1_hierarchies_needs_no_warm_up() {
        let v2 = "\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";
        assert!(AttachWarm::from_mountinfo(v2).is_none());
    }

    #[test]
    fn hierarchy_keys_are_what_proc_cgroup_lists() {
        assert_eq!(
            hierarchy_key("rw,cpu,cpuacct").as_deref(),
            Some("cpu,cpuacct")
        );
        assert_eq!(
            hierarchy_key("rw,xattr,name=systemd").as_deref(),
            Some("name=systemd")
        );
        assert_eq!(
            hierarchy_key("rw,noprefix,release_agent=/x,cpuset").as_deref(),
            Some("cpuset")
        );
        assert_eq!(hierarchy_key("rw,xattr"), None);
    }
}
