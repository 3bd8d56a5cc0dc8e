//! Disk usage of the image and container file systems, as ImageFsInfo reports it.
//!
//! Counting is a directory walk, so the store does it once per layer (when the layer is made)
//! and keeps the totals; only directories that change all the time (container upper dirs) are
//! walked on demand.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Walk results per directory, each reused for `ttl`: a container's writable layer is walked at
/// most once per `ttl` however often stats are asked for (kubelet's eviction manager and summary
/// API, metrics scrapers), so a layer with many files cannot make every stats call slow. The
/// numbers lag by up to `ttl`, as cAdvisor's periodic `du` does.
pub struct UsageCache<T = FsUsage> {
    ttl: Duration,
    inner: Mutex<CacheInner<T>>,
}

struct CacheInner<T> {
    entries: HashMap<PathBuf, (Instant, Option<T>)>,
    last_prune: Option<Instant>,
}

impl<T: Clone> UsageCache<T> {
    pub fn new(ttl: Duration) -> Self {
        UsageCache {
            ttl,
            inner: Mutex::new(CacheInner {
                entries: HashMap::new(),
                last_prune: None,
            }),
        }
    }

    /// The usage of `dir`: the cached one while younger than the ttl, else `walk(dir)` (run
    /// without the lock held, so walks of different directories proceed in parallel).
    pub fn get_or_walk(&self, dir: &Path, walk: impl FnOnce(&Path) -> Option<T>) -> Option<T> {
        self.get_or_walk_at(dir, Instant::now(), walk)
    }

    fn get_or_walk_at(
        &self,
        dir: &Path,
        now: Instant,
        walk: impl FnOnce(&Path) -> Option<T>,
    ) -> Option<T> {
        {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, v)) = inner.entries.get(dir) {
                if now.saturating_duration_since(*at) < self.ttl {
                    return v.clone();
                }
            }
        }
        let v = walk(dir);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.entries.insert(dir.to_path_buf(), (now, v.clone()));
        // Directories nobody asked about for a while (removed containers) are dropped, in one
        // pass per ttl at most.
        if inner
            .last_prune
            .is_none_or(|t| now.saturating_duration_since(t) >= self.ttl)
        {
            let keep = self.ttl * 6;
            inner
                .entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < keep);
            inner.last_prune = Some(now);
        }
        v
    }

    /// Drops what is known about `dir` (its container is gone, or it must be walked afresh).
    pub fn forget(&self, dir: &Path) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.entries.remove(dir);
    }

    /// Directories with a cached result.
    pub fn len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    fn cache_walks_once_per_ttl_and_forgets() {
        let d = tempfile::tempdir().unwrap();
        let cache: UsageCache = UsageCache::new(Duration::from_secs(10));
        let walks = std::cell::Cell::new(0);
        let walk = |p: &Path| {
            walks.set(walks.get() + 1);
            dir_usage(p).ok()
        };
        let t0 = Instant::now();
        let first = cache.get_or_walk_at(d.path(), t0, walk).unwrap();
        fs::write(d.path().join("new"), vec![1u8; 50_000]).unwrap();
        // Within the ttl: the cached numbers, no second walk.
        let again = cache
            .get_or_walk_at(d.path(), t0 + Duration::from_secs(9), walk)
            .unwrap();
        assert_eq!((again, walks.get()), (first, 1));
        // After it: walked again, the new file counted.
        let later = cache
            .get_or_walk_at(d.path(), t0 + Duration::from_secs(10), walk)
            .unwrap();
        assert_eq!(walks.get(), 2);
        assert_eq!(later.inodes_used, first.inodes_used + 1);
        assert!(later.used_bytes >= first.used_bytes + 50_000, "{later:?}");
        // forget: the next call walks at once.
        cache.forget(d.path());
        cache.get_or_walk_at(d.path(), t0 + Duration::from_secs(11), walk);
        assert_eq!(walks.get(), 3);
    }

    #[test]
    fn cache_drops_directories_nobody_asks_about() {
        let cache: UsageCache<u32> = UsageCache::new(Duration::from_secs(1));
        let t0 = Instant::now();
        cache.get_or_walk_at(Path::new("/gone"), t0, |_| Some(1));
        assert_eq!(cache.len(), 1);
        // A missing directory is cached as such too.
        assert_eq!(cache.get_or_walk_at(Path::new("/none"), t0, |_| None), None);
        assert_eq!(cache.len(), 2);
        cache.get_or_walk_at(Path::new("/live"), t0 + Duration::from_secs(7), |_| Some(2));
        assert_eq!(cache.len(), 1, "entries older than 6 ttl are pruned");
        assert_eq!(
            cache.get_or_walk_at(Path::new("/live"), t0 + Duration::from_secs(7), |_| None),
            Some(2)
        );
    }

    #[test]
    fn mountpoint_contains_the_path() {
        let mp = mountpoint_of(Path::new("/proc/self"));
        assert_eq!(mp, PathBuf::from("/proc"));
        assert!(Path::new("/var/tmp").starts_with(mountpoint_of(Path::new("/var/tmp"))));
    }
}
