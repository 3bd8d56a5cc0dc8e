//! Removing the cgroup directories a container or pod used.
//!
//! `runc delete` removes only the leaf cgroup, and a failed create can leave the leaf behind; the
//! daemon removes both the leaf and the pod's parent here. Only `rmdir` is ever used: a cgroup
//! that still has processes stays, and nothing is ever mounted or unmounted.

use std::path::{Path, PathBuf};

/// Mount points of every cgroup hierarchy (v1 controllers and the unified v2 mount).
pub fn mountpoints() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
        .collect()
}

/// `rmdir` the cgroup at absolute `path` in every hierarchy where it exists, deepest first for
/// any children left by the runtime. Returns the directories that could not be removed.
pub fn remove(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return Vec::new();
    }
    let mut left = Vec::new();
    for mp in mountpoints() {
        let dir = mp.join(rel);
        if dir.is_dir() && !remove_tree(&dir) {
            left.push(dir);
        }
    }
    left
}

fn remove_tree(dir: &Path) -> bool {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_relative_escapes_and_root() {
        assert!(remove("/").is_empty());
        assert!(remove("/../x").is_empty());
    }

    #[test]
    fn finds_cgroup_mounts() {
        assert!(!mountpoints().is_empty());
    }

    #[test]
    fn removes_a_leaf_and_its_parent() {
        let name = format!("ferrio-cg-test-{}", std::process::id());
        let mut made = Vec::new();
        for mp in mountpoints() {
            let d = mp.join(&name).join("leaf");
            if std::fs::create_dir_all(&d).is_ok() {
                made.push(d);
            }
        }
        assert!(!made.is_empty(), "could not create a test cgroup anywhere");
        assert!(remove(&format!("/{name}")).is_empty());
        for d in made {
            assert!(!d.exists() && !d.parent().unwrap().exists());
        }
    }
}
