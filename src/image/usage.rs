//! Disk usage of the image and container file systems, as ImageFsInfo reports it.
//!
//! Counting is a directory walk, so the store does it once per layer (when the layer is made)
//! and keeps the totals; only directories that change all the time (container upper dirs) are
//! walked on demand.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes and inodes a tree occupies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsUsage {
    /// Allocated bytes (`st_blocks * 512`, as `du` counts), hard links once.
    pub used_bytes: u64,
    /// Inodes (files, directories, links, devices), hard links once.
    pub inodes_used: u64,
}

impl std::ops::AddAssign for FsUsage {
    fn add_assign(&mut self, o: FsUsage) {
        self.used_bytes += o.used_bytes;
        self.inodes_used += o.inodes_used;
    }
}

impl std::ops::SubAssign for FsUsage {
    fn sub_assign(&mut self, o: FsUsage) {
        self.used_bytes = self.used_bytes.saturating_sub(o.used_bytes);
        self.inodes_used = self.inodes_used.saturating_sub(o.inodes_used);
    }
}

/// Usage of the tree at `root`, staying on its file system (a mounted container rootfs below
/// it is not counted twice). A missing `root` is empty; entries vanishing mid-walk are skipped.
pub fn dir_usage(root: &Path) -> io::Result<FsUsage> {
    let top = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FsUsage::default()),
        Err(e) => return Err(e),
    };
    let dev = top.dev();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut total = FsUsage::default();
    let mut stack: Vec<(PathBuf, fs::Metadata)> = vec![(root.to_path_buf(), top)];
    while let Some((path, meta)) = stack.pop() {
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
            continue;
        }
        total.used_bytes += meta.blocks() * 512;
        total.inodes_used += 1;
        if !meta.is_dir() {
            continue;
        }
        let rd = match fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in rd {
            let Ok(e) = e else { continue };
            let p = e.path();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            if m.dev() != dev {
                continue;
            }
            stack.push((p, m));
        }
    }
    Ok(total)
}

/// The mount point of the file system holding `path` (the longest mount point that contains
/// it, per /proc/self/mountinfo); `/` when that cannot be read.
pub fn mountpoint_of(path: &Path) -> PathBuf {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return PathBuf::from("/");
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(super::overlay::unescape_mountinfo(mp)))
        .filter(|mp| path.starts_with(mp))
        .max_by_key(|mp| mp.as_os_str().len())
        .unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_files_dirs_and_hard_links_once() {
        let d = tempfile::tempdir().unwrap();
        let empty = dir_usage(d.path()).unwrap();
        assert_eq!(empty.inodes_used, 1);
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/a"), vec![7u8; 100_000]).unwrap();
        fs::hard_link(d.path().join("sub/a"), d.path().join("b")).unwrap();
        std::os::unix::fs::symlink("sub/a", d.path().join("l")).unwrap();
        let u = dir_usage(d.path()).unwrap();
        assert_eq!(u.inodes_used, 4, "root, sub, a (= b), l");
        assert!(u.used_bytes >= 100_000 && u.used_bytes < 200_000, "{u:?}");
        assert_eq!(
            dir_usage(&d.path().join("missing")).unwrap(),
            FsUsage::default()
        );
    }

    #[test]
    fn mountpoint_contains_the_path() {
        let mp = mountpoint_of(Path::new("/proc/self"));
        assert_eq!(mp, PathBuf::from("/proc"));
        assert!(Path::new("/var/tmp").starts_with(mountpoint_of(Path::new("/var/tmp"))));
    }
}
