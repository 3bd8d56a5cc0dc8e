//! The node as systemd and the kernel show it: commands, units, cgroup v2 files, processes.
//! Everything here reads the node through its public interfaces (`systemctl`, `busctl`,
//! `/sys/fs/cgroup`, `/proc`), never ferrio's own state.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Runs `cmd args...`; its stdout, or an error naming the command with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

pub fn systemctl(args: &[&str]) -> Result<String, String> {
    run("systemctl", args)
}

/// One property of a unit (`systemctl show -p NAME --value`); "" where the unit is unknown.
pub fn unit_prop(unit: &str, prop: &str) -> String {
    systemctl(&["show", "-p", prop, "--value", unit])
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Every unit systemd knows whose name matches `pattern`, loaded or not, active or not.
pub fn units_matching(pattern: &str) -> Vec<String> {
    systemctl(&["list-units", "--all", "--plain", "--no-legend", pattern])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Starts a transient slice over D-Bus, as kubelet's systemd driver creates a pod's slice.
pub fn start_slice(name: &str) -> Result<(), String> {
    run(
        "busctl",
        &[
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            name,
            "replace",
            "1",
            "Description",
            "s",
            "node-shape pod slice",
            "0",
        ],
    )?;
    wait_for(&format!("{name} active"), Duration::from_secs(10), || {
        unit_prop(name, "ActiveState") == "active"
    })
}

/// Stops a slice and waits until systemd forgets it (kubelet's pod slice removal).
pub fn stop_slice(name: &str) -> Result<(), String> {
    systemctl(&["stop", name])?;
    Ok(())
}

/// The unified-hierarchy path of a process (`0::/a/b` -> `/a/b`).
pub fn proc_cgroup(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// A process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22): with the pid,
/// what identifies a process across pid reuse.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A process identified by pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub start: u64,
}

impl Proc {
    pub fn of(pid: i32) -> Option<Proc> {
        Some(Proc {
            pid,
            start: start_time(pid)?,
        })
    }

    /// The same process is still there (not a reused pid, not a zombie).
    pub fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let zombie = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].chars().next())
            .is_some_and(|s| s == 'Z');
        !zombie && start_time(self.pid) == Some(self.start)
    }
}

pub fn cgroup_dir(path: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(path.trim_start_matches('/'))
}

/// A cgroup v2 interface file, trimmed.
pub fn read_cgroup(path: &str, file: &str) -> Result<String, String> {
    let p = cgroup_dir(path).join(file);
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// Every cgroup directory below the root whose name starts with `prefix`.
pub fn cgroups_named(prefix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from(CGROUP_ROOT)];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(prefix) {
                found.push(e.path());
            }
            stack.push(e.path());
        }
    }
    found
}

/// Mount points (from this process's mount table) that contain `needle`.
pub fn mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Polls `f` every 100 ms until it holds, or fails naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Whether this is the node shape the suite is for: systemd as PID 1 and cgroup v2 only.
pub fn is_systemd_v2_node() -> Result<(), String> {
    if !Path::new("/run/systemd/system").exists() {
        return Err("systemd is not PID 1 (/run/systemd/system is missing)".into());
    }
    if !Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        return Err("cgroup v2 is not mounted at /sys/fs/cgroup".into());
    }
    Ok(())
}
