//! Finding out whether the kernel OOM-killed something in a container's memory cgroup.
//!
//! The `oom_kill` counter (cgroup v1 `memory.oom_control`, cgroup v2 `memory.events`) survives
//! the processes, so reading it once after the container exited and before `<runtime> delete`
//! removes the cgroup is enough wherever the cgroup outlives its processes. With the systemd
//! driver it does not: systemd stops the container's scope, and removes its cgroup, as soon as it
//! sees the scope empty, which can be before the monitor reaps the init. On cgroup v2 an
//! [`OomWatch`] therefore reads the counter whenever the kernel signals a change of
//! `memory.events` while the container runs (the kernel signals it at the kill, before the
//! victim's exit empties the cgroup), and keeps the parent's hierarchical counter as a fallback
//! for a cgroup that is gone before the read.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

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
    let Some(rel) = relative(cgroup_path) else {
        return false;
    };
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

/// Watches a cgroup v2 container's `memory.events` while the container runs.
pub struct OomWatch {
    inotify: Inotify,
    events: PathBuf,
    /// The parent's `memory.events` and its `oom_kill` count when the watch started.
    parent: Option<(PathBuf, u64)>,
    seen: bool,
}

impl OomWatch {
    /// A watch on the cgroup at `cgroup_path`; `None` where it is not a cgroup v2 memory cgroup
    /// (cgroup v1 keeps the counter until delete, so the read at exit suffices there).
    pub fn start(cgroup_path: &str) -> Option<OomWatch> {
        Self::start_under(Path::new(CGROUP_ROOT), cgroup_path)
    }

    /// [`OomWatch::start`] against another cgroup root, for tests.
    pub fn start_under(root: &Path, cgroup_path: &str) -> Option<OomWatch> {
        let rel = relative(cgroup_path)?;
        let events = root.join(rel).join("memory.events");
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        inotify.add_watch(&events, AddWatchFlags::IN_MODIFY).ok()?;
        let parent = Path::new(rel)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| root.join(p).join("memory.events"))
            .and_then(|p| read_count(&p).map(|n| (p, n)));
        let mut watch = OomWatch {
            inotify,
            events,
            parent,
            seen: false,
        };
        // A kill before the watch was added raised no event.
        watch.check();
        Some(watch)
    }

    /// The fd that is readable when `memory.events` changed.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Drains the pending events and reads the counter again.
    pub fn on_ready(&mut self) {
        while matches!(self.inotify.read_events(), Ok(ev) if !ev.is_empty()) {}
        self.check();
    }

    fn check(&mut self) {
        if !self.seen {
            self.seen = read_count(&self.events).is_some_and(|n| n > 0);
        }
    }

    /// Whether the container was OOM-killed, asked once its init was reaped with `exit_code`.
    /// When the cgroup is already gone and the init died of SIGKILL, a grown parent counter
    /// stands for it: the kernel counts a kill in every ancestor.
    pub fn killed(&mut self, exit_code: i32) -> bool {
        self.check();
        if self.seen {
            return true;
        }
        let gone = !self.events.exists();
        let sigkill = exit_code == 128 + nix::libc::SIGKILL;
        self.seen = gone
            && sigkill
            && self
                .parent
                .as_ref()
                .is_some_and(|(p, base)| read_count(p).is_some_and(|n| n > *base));
        self.seen
    }
}

fn relative(cgroup_path: &str) -> Option<&str> {
    let rel = cgroup_path.strip_prefix('/')?;
    (!rel.split('/').any(|c| c == "..")).then_some(rel)
}

fn read_count(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()
        .map(|t| oom_kill_count(&t))
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

    #[test]
    fn a_watch_sees_a_kill_while_the_cgroup_lives() {
        let root = tempfile::tempdir().unwrap();
        let c = root.path().join("pod/c1");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(root.path().join("pod/memory.events"), "oom_kill 0\n").unwrap();
        std::fs::write(c.join("memory.events"), "max 4\noom_kill 0\n").unwrap();
        let mut w = OomWatch::start_under(root.path(), "/pod/c1").unwrap();
        std::fs::write(c.join("memory.events"), "max 9\noom 1\noom_kill 1\n").unwrap();
        w.on_ready();
        // The cgroup goes away before the init is reaped: what the watch read stands.
        std::fs::remove_dir_all(&c).unwrap();
        assert!(w.killed(137));
    }

    #[test]
    fn a_gone_cgroup_falls_back_to_the_parent_counter_for_a_sigkill() {
        let root = tempfile::tempdir().unwrap();
        let c = root.path().join("pod/c1");
        let parent = root.path().join("pod/memory.events");
        let start = |exit: i32, parent_after: &str| {
            std::fs::create_dir_all(&c).unwrap();
            std::fs::write(&parent, "oom_kill 2\n").unwrap();
            std::fs::write(c.join("memory.events"), "oom_kill 0\n").unwrap();
            let mut w = OomWatch::start_under(root.path(), "/pod/c1").unwrap();
            std::fs::remove_dir_all(&c).unwrap();
            std::fs::write(&parent, parent_after).unwrap();
            w.killed(exit)
        };
        assert!(start(137, "oom_kill 3\n"));
        assert!(!start(137, "oom_kill 2\n"), "no kill counted anywhere");
        assert!(
            !start(1, "oom_kill 3\n"),
            "a sibling was killed, not this one"
        );
        assert!(OomWatch::start_under(root.path(), "/pod/none").is_none());
        assert!(OomWatch::start_under(root.path(), "ferrio.slice:x:y").is_none());
    }
}
