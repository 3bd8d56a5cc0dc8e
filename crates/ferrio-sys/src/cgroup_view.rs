//! A private cgroup v1 view for OCI runtimes that refuse a hybrid host.
//!
//! crun 1.8 fails with "cgroups in hybrid mode not supported" when `/sys/fs/cgroup` holds v1
//! hierarchies next to a cgroup2 `unified` mount. It works when it runs in a mount namespace of
//! its own whose `/sys/fs/cgroup` is a fresh tmpfs holding the v1 hierarchies only. This module
//! builds that namespace in a `pre_exec` hook of the runtime's `Command`.
//!
//! The hook runs between fork and exec, in a child of a possibly multi-threaded process: it
//! only makes syscalls (unshare, mount, mkdir, symlink) on C strings prepared before the fork,
//! and never allocates.
//!
//! How the host is kept safe: the hook first makes `/sys/fs/cgroup` a recursive slave in the
//! new namespace, so nothing mounted there can propagate back to the host; the rest of the tree
//! keeps its propagation, so kubelet's HostToContainer and Bidirectional volumes behave as
//! with runc. Every path the runtime and the container need (rootfs, bundle, pinned namespace
//! files under `namespaces_dir`, the runtime's `--root`) is outside `/sys/fs/cgroup` and is the
//! same mount in the copy.
//!
//! How the view is built without a spare directory: the tmpfs is first mounted on top of the
//! cgroup2 mount point it hides (`/sys/fs/cgroup/unified`), the v1 hierarchies are bound into
//! it while their paths still resolve, and then it is moved onto `/sys/fs/cgroup`.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where cgroup hierarchies are mounted on every distribution.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The mounts to recreate under a fresh `/sys/fs/cgroup`, as C strings ready for the hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupV1View {
    /// `/sys/fs/cgroup`.
    root: CString,
    /// The cgroup2 mount point the view hides; the tmpfs is assembled on top of it.
    staging: CString,
    /// Bind mounts: (host hierarchy, its place in the staged tmpfs).
    binds: Vec<(CString, CString)>,
    /// Symbolic links such as `cpu -> cpu,cpuacct`: (link target, link path in the staged tmpfs).
    links: Vec<(CString, CString)>,
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul in path"))
}

fn name_ok(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/')
}

impl CgroupV1View {
    /// A view of `root` holding the v1 hierarchies mounted at `root/<name>` for each of
    /// `hierarchies`, the symlinks `links` (`name -> target`, as in `cpu -> cpu,cpuacct`), and
    /// not the cgroup2 mount at `root/<hidden>`, which must be a mount point.
    pub fn new(
        root: &Path,
        hidden: &OsStr,
        hierarchies: &[&OsStr],
        links: &[(&OsStr, &Path)],
    ) -> io::Result<CgroupV1View> {
        let bad = |n: &OsStr| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{:?} is not a plain name below {}", n, root.display()),
            )
        };
        if !name_ok(hidden) {
            return Err(bad(hidden));
        }
        let staging = root.join(hidden);
        let mut binds = Vec::with_capacity(hierarchies.len());
        for h in hierarchies {
            if !name_ok(h) || *h == hidden {
                return Err(bad(h));
            }
            binds.push((
                cstring(root.join(h).as_os_str().as_bytes())?,
                cstring(staging.join(h).as_os_str().as_bytes())?,
            ));
        }
        let mut symlinks = Vec::with_capacity(links.len());
        for (name, target) in links {
            if !name_ok(name) || *name == hidden {
                return Err(bad(name));
            }
            symlinks.push((
                cstring(target.as_os_str().as_bytes())?,
                cstring(staging.join(name).as_os_str().as_bytes())?,
            ));
        }
        Ok(CgroupV1View {
            root: cstring(root.as_os_str().as_bytes())?,
            staging: cstring(staging.as_os_str().as_bytes())?,
            binds,
            links: symlinks,
        })
    }

    /// The view of this host's `/sys/fs/cgroup`: every v1 hierarchy mounted directly below it
    /// and every symlink there, without the cgroup2 mount. `None` when the host is not hybrid
    /// (no v1 hierarchy, or no cgroup2 mount below `/sys/fs/cgroup`).
    pub fn of_host() -> io::Result<Option<CgroupV1View>> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let root = Path::new(CGROUP_ROOT);
        let (v1, v2) = mounts_below(&mountinfo, root);
        let Some(hidden) = v2.first() else {
            return Ok(None);
        };
        if v1.is_empty() {
            return Ok(None);
        }
        let mut links: Vec<(std::ffi::OsString, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(root)? {
            let e = e?;
            if e.file_type()?.is_symlink() {
                links.push((e.file_name(), std::fs::read_link(e.path())?));
            }
        }
        let v1: Vec<&OsStr> = v1.iter().map(|s| OsStr::new(s.as_str())).collect();
        let links: Vec<(&OsStr, &Path)> = links
            .iter()
            .map(|(n, t)| (n.as_os_str(), t.as_path()))
            .collect();
        CgroupV1View::new(root, OsStr::new(hidden.as_str()), &v1, &links).map(Some)
    }

    /// The v1 hierarchies this view binds (their paths on the host).
    pub fn hierarchies(&self) -> impl Iterator<Item = &Path> {
        self.binds
            .iter()
            .map(|(src, _)| Path::new(OsStr::from_bytes(src.as_bytes())))
    }

    /// Makes `cmd` start its program in a new mount namespace holding this view. Keep the
    /// view alive (it is moved into the hook) — nothing else is needed.
    pub fn apply(self: &std::sync::Arc<Self>, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let view = self.clone();
        // SAFETY: the hook runs between fork and exec. It reads only memory the Arc keeps
        // alive (C strings built before the fork), calls only async-signal-safe syscalls
        // (unshare, mount, mkdir, symlink) and allocates nothing: io::Error::from_raw_os_error
        // stores the errno inline.
        unsafe {
            cmd.pre_exec(move || view.enter());
        }
    }

    /// Enters a new mount namespace and assembles the view there. Runs in the forked child.
    fn enter(&self) -> io::Result<()> {
        // SAFETY: unshare takes a flags word only.
        check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
        // Nothing mounted below /sys/fs/cgroup from here on may reach the host's namespace.
        mount(None, &self.root, None, libc::MS_REC | libc::MS_SLAVE, None)?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        mount(
            Some(c"tmpfs"),
            &self.staging,
            Some(c"tmpfs"),
            flags,
            Some(c"mode=755"),
        )?;
        for (src, dst) in &self.binds {
            // SAFETY: mkdir reads the NUL-terminated path, alive for the call.
            check(unsafe { libc::mkdir(dst.as_ptr(), 0o555) })?;
            mount(Some(src), dst, None, libc::MS_BIND | libc::MS_REC, None)?;
        }
        for (target, link) in &self.links {
            // SAFETY: symlink reads two NUL-terminated paths, alive for the call.
            check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })?;
        }
        // The staged tmpfs now covers the cgroup2 mount; moved onto /sys/fs/cgroup it also
        // covers the host's tmpfs, and the hidden mount is out of reach below it.
        mount(Some(&self.staging), &self.root, None, libc::MS_MOVE, None)
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2) on prepared C strings; async-signal-safe.
fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string alive for the call; `data` is a
    // string as tmpfs expects (or null).
    check(unsafe {
        libc::mount(
            p(src),
            target.as_ptr(),
            p(fstype),
            flags,
            p(data) as *const libc::c_void,
        )
    })
}

/// The names of the v1 (`cgroup`) and v2 (`cgroup2`) mounts directly below `root` in a
/// mountinfo text, in mount order. Mount points with escaped characters are skipped (no
/// hierarchy is named that way).
pub fn mounts_below(mountinfo: &str, root: &Path) -> (Vec<String>, Vec<String>) {
    let (mut v1, mut v2) = (Vec::new(), Vec::new());
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(mp), Some(fs)) = (left.split(' ').nth(4), right.split(' ').next()) else {
            continue;
        };
        let mp = Path::new(mp);
        if mp.parent() != Some(root) || mp.as_os_str().as_bytes().contains(&b'\\') {
            continue;
        }
        let Some(name) = mp.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let list = match fs {
            "cgroup" => &mut v1,
            "cgroup2" => &mut v2,
            _ => continue,
        };
        // A later mount on the same point hides the earlier one; keep one entry.
        if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
    }
    (v1, v2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 35 0:32 /x /sys/fs/cgroup/memory/x rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn mounts_below_the_root_only() {
        let (v1, v2) = mounts_below(HYBRID, Path::new(CGROUP_ROOT));
        assert_eq!(v1, ["cpu,cpuacct", "memory", "systemd"]);
        assert_eq!(v2, ["unified"]);
        let unified = "25 30 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mounts_below(unified, Path::new(CGROUP_ROOT)),
            (vec![], vec![])
        );
    }

    #[test]
    fn view_paths_are_staged_under_the_hidden_mount() {
        let v = CgroupV1View::new(
            Path::new("/sys/fs/cgroup"),
            OsStr::new("unified"),
            &[OsStr::new("memory")],
            &[(OsStr::new("cpu"), Path::new("cpu,cpuacct"))],
        )
        .unwrap();
        assert_eq!(v.staging.as_bytes(), b"/sys/fs/cgroup/unified");
        assert_eq!(v.binds[0].0.as_bytes(), b"/sys/fs/cgroup/memory");
        assert_eq!(v.binds[0].1.as_bytes(), b"/sys/fs/cgroup/unified/memory");
        assert_eq!(v.links[0].0.as_bytes(), b"cpu,cpuacct");
        assert_eq!(v.links[0].1.as_bytes(), b"/sys/fs/cgroup/unified/cpu");
        assert_eq!(
            v.hierarchies().collect::<Vec<_>>(),
            [Path::new("/sys/fs/cgroup/memory")]
        );
        for bad in ["..", "a/b", "", "unified"] {
            assert!(CgroupV1View::new(
                Path::new("/sys/fs/cgroup"),
                OsStr::new("unified"),
                &[OsStr::new(bad)],
                &[],
            )
            .is_err());
        }
    }

    /// On a hybrid host (like this one) a child sees v1 hierarchies only; the host's own view
    /// is unchanged afterwards.
    #[test]
    fn child_sees_v1_only_and_the_host_is_untouched() {
        let Some(view) = CgroupV1View::of_host().unwrap() else {
            eprintln!("skipped: /sys/fs/cgroup is not a hybrid layout on this host");
            return;
        };
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mount namespaces need root");
            return;
        }
        // Other tests mount things meanwhile: compare the cgroup part of the table only.
        let cgroup_mounts = || {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .filter(|l| l.contains(" /sys/fs/cgroup"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let before = cgroup_mounts();
        let view = std::sync::Arc::new(view);
        // What a runtime checks: statfs of /sys/fs/cgroup and of what is below it.
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            "ls /sys/fs/cgroup; stat -f -c %T /sys/fs/cgroup /sys/fs/cgroup/memory",
        ]);
        view.apply(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let child = String::from_utf8_lossy(&out.stdout);
        let mut host: Vec<String> = std::fs::read_dir(CGROUP_ROOT)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "unified")
            .collect();
        host.sort();
        host.extend(["tmpfs".to_string(), "cgroupfs".to_string()]);
        assert_eq!(child.lines().collect::<Vec<_>>(), host, "{child}");
        // The host's mount table is as it was.
        assert_eq!(before, cgroup_mounts());
        assert!(std::path::Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists());
    }
}
