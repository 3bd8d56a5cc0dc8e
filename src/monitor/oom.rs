//! Finding out whether the kernel OOM-killed something in a container's memory cgroup.
//!
//! Read once, after the container has exited and before `<runtime> delete` removes the cgroup:
//! the `oom_kill` counter (cgroup v1 `memory.oom_control`, cgroup v2 `memory.events`) survives
//! the processes, so no eventfd has to be watched while the container runs.

use std::path::Path;

/// The root under which cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether the cgroup at `cgroup_path` (below the hierarchy roots, as the daemon resolved it
/// for either cgroup driver) saw an OOM kill. Unknown layouts (no memory controller, systemd's
/// unexpanded `slice:prefix:name`) answer `false`.
pub fn oom_killed(cgroup_path: &str) -> bool {
    oom_killed_under(Path::new(CGROUP_ROOT), cgroup_path)
}

/// [`oom_killed`] against another cgroup root, for tests.
pub fn oom_killed_under(root: &Path, cgroup_path: &str) -> bool {
    let Some(rel) = cgroup_path.strip_prefix('/') else {
        return false;
    };
    if rel.split('/').any(|c| c == "..") {
        return false;
    }
    // cgroup v1 (also the memory hierarchy of a hybrid host).
    if let Ok(text) =
        std::fs::read_to_string(root.join("memory").join(rel).join("memory.oom_control"))
    {
        return oom_kill_count(&text) > 0;
    }
    // cgroup v2 unified hierarchy.
    if let Ok(text) = std::fs::read_to_string(root.join(rel).join("memory.events")) {
        return oom_kill_count(&text) > 0;
    }
    false
}

/// The `oom_kill` counter from a `memory.oom_control` or `memory.events` file (0 when absent).
pub fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_v1_and_v2_files() {
        assert_eq!(
            oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            oom_kill_count("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"),
            1
        );
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }

    #[test]
    fn v1_then_v2_layouts_are_found() {
        let root = tempfile::tempdir().unwrap();
        let v1 = root.path().join("memory/pod/c1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\noom_kill 1\n",
        )
        .unwrap();
        assert!(oom_killed_under(root.path(), "/pod/c1"));
        let v2 = root.path().join("pod/c2");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
        assert!(!oom_killed_under(root.path(), "/pod/c2"));
        assert!(!oom_killed_under(root.path(), "/pod/none"));
        assert!(!oom_killed_under(root.path(), "system.slice:ferrio:c1"));
        assert!(!oom_killed_under(root.path(), "/pod/../pod/c1"));
    }
}
