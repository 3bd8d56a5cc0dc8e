//! Small host probes for the harness: commands, mountinfo, /proc, cgroups, iptables.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Run a command and return its stdout, or None if it could not run or failed.
pub fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()
}

/// Run a command for its effect; failures are ignored (cleanup is best effort).
pub fn run_quiet(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Mount points at or below `prefix` in a mountinfo file (`/proc/<pid>/mountinfo`).
pub fn mounts_under(mountinfo: &Path, prefix: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(mountinfo).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(prefix))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A process's command line with NULs turned into spaces ("" for zombies and vanished ones).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// (state, start time in clock ticks) from /proc/<pid>/stat; the start time tells a reused pid apart.
pub fn stat(pid: u32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 of the full line is starttime; `rest` starts at field 3.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup (v1 controllers and `unified`), skipping
/// the compatibility symlinks (`cpu,cpuacct` style).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    // A pure cgroup v2 host has the controllers' files right in /sys/fs/cgroup.
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        v.push(PathBuf::from("/sys/fs/cgroup"));
    }
    v.sort();
    v
}

/// Every directory at or below `dir`, deepest first.
pub fn dirs_depth_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(d.to_path_buf());
    }
    if dir.is_dir() {
        walk(dir, &mut out);
    }
    out
}

/// Pids listed in `cgroup.procs` at or below `dir`.
pub fn cgroup_pids(dir: &Path) -> Vec<u32> {
    dirs_depth_first(dir)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// One rule of `iptables -t nat -S <chain>`: its 1-based number in the chain and its text.
pub struct NatRule {
    pub chain: String,
    pub number: usize,
    pub text: String,
}

/// nat rules whose comment mentions `needle` (the bridge and portmap plugins put
/// `name: "<network>" id: "<container>"` in their comments).
pub fn nat_rules_mentioning(needle: &str) -> Vec<NatRule> {
    let Some(all) = output("iptables", &["-w", "-t", "nat", "-S"]) else {
        return Vec::new();
    };
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut out = Vec::new();
    for line in all.lines() {
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rest.split(' ').next().unwrap_or_default().to_string();
        let n = counts.entry(chain.clone()).or_insert(0);
        *n += 1;
        if line.contains(needle) {
            out.push(NatRule {
                chain,
                number: *n,
                text: line.to_string(),
            });
        }
    }
    out
}

/// The `-j TARGET` of a rule, if any.
pub fn jump_target(rule: &str) -> Option<&str> {
    let mut it = rule.split(' ');
    while let Some(w) = it.next() {
        if w == "-j" {
            return it.next();
        }
    }
    None
}
