//! Ending what a container leaves behind when its init exits.
//!
//! With a private pid namespace the kernel kills every other process of the container when its
//! init dies. In a pod's shared pid namespace (pid = POD, kubelet's default) it does not: a
//! background child keeps running under the pause process and keeps the log pipes open, so the
//! container would neither finish its output nor stop. Like containerd's shim, the monitor then
//! kills whatever is still in the container's cgroup.

use std::path::Path;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The processes in the cgroup at `cgroup_path` (below the hierarchy roots, either driver), from the v1 `pids`
/// or `memory` hierarchy or the v2 unified one. Unknown layouts answer nothing.
pub fn procs_under(root: &Path, cgroup_path: &str) -> Vec<i32> {
    let Some(rel) = cgroup_path.strip_prefix('/') else {
        return Vec::new();
    };
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return Vec::new();
    }
    for dir in [
        root.join("pids").join(rel),
        root.join("memory").join(rel),
        root.join(rel),
    ] {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            return text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        }
    }
    Vec::new()
}

/// SIGKILL every process still in the container's cgroup; returns how many were signalled.
pub fn kill(cgroup_path: &str) -> usize {
    let me = std::process::id() as i32;
    let mut n = 0;
    for pid in procs_under(Path::new(CGROUP_ROOT), cgroup_path) {
        if pid > 1 && pid != me {
            let target = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).is_ok() {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v1_then_v2_layouts_and_refuses_odd_paths() {
        let d = tempfile::tempdir().unwrap();
        let v1 = d.path().join("pids/pod/c1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("cgroup.procs"), "12\n34\n").unwrap();
        assert_eq!(procs_under(d.path(), "/pod/c1"), vec![12, 34]);
        let v2 = d.path().join("pod/c2");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cgroup.procs"), "56\n").unwrap();
        assert_eq!(procs_under(d.path(), "/pod/c2"), vec![56]);
        assert!(procs_under(d.path(), "pod.slice:ferrio:x").is_empty());
        assert!(procs_under(d.path(), "/../etc").is_empty());
        assert!(procs_under(d.path(), "/").is_empty());
    }
}
