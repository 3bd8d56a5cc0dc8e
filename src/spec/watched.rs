//! Directories of definition files (OCI hooks, CDI specs) read again only when they change.
//!
//! Each CreateContainer asks for the current definitions. Listing the directories and taking
//! each file's size and modification time costs a `readdir` and a `stat` per file; the files
//! are parsed again only when that fingerprint differs from the last one, so an edited, added
//! or removed file applies to the next container without a daemon restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What identifies one file's content without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

/// The files of `dirs` whose name ends with one of `extensions`, in directory order and by
/// name within a directory; a missing or unreadable directory has none.
pub fn files_in(dirs: &[PathBuf], extensions: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    !n.starts_with('.') && extensions.iter().any(|x| n.ends_with(x))
                })
            })
            .collect();
        names.sort();
        out.extend(names);
    }
    out
}

fn stamps(files: &[PathBuf]) -> Vec<FileStamp> {
    files
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok();
            FileStamp {
                path: p.clone(),
                len: meta.as_ref().map(|m| m.len()).unwrap_or(0),
                modified: meta.and_then(|m| m.modified().ok()),
            }
        })
        .collect()
}

/// Definitions and what they were loaded from.
struct Loaded<T> {
    dirs: Vec<PathBuf>,
    stamps: Vec<FileStamp>,
    value: Arc<T>,
}

/// The last definitions loaded from a list of directories.
pub struct Watched<T> {
    extensions: &'static [&'static str],
    last: Mutex<Option<Loaded<T>>>,
}

impl<T> Watched<T> {
    /// Watches files ending with one of `extensions`.
    pub const fn new(extensions: &'static [&'static str]) -> Self {
        Watched {
            extensions,
            last: Mutex::new(None),
        }
    }

    /// The definitions of `dirs`: the last ones when no file changed, else `load` over the
    /// current files (in the order [`files_in`] gives).
    pub fn get(&self, dirs: &[PathBuf], load: impl FnOnce(&[PathBuf]) -> T) -> Arc<T> {
        let files = files_in(dirs, self.extensions);
        let now = stamps(&files);
        {
            let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(l) = last.as_ref().filter(|l| l.dirs == dirs && l.stamps == now) {
                return l.value.clone();
            }
        }
        // Parsed without the lock held: two creates that race here both parse, and either
        // result is current.
        let value = Arc::new(load(&files));
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Loaded {
            dirs: dirs.to_vec(),
            stamps: now,
            value: value.clone(),
        });
        value
    }
}

/// The name a file overrides by: a file of a later directory replaces the earlier one of the
/// same name.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_again_only_when_a_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf(), dir.path().join("missing")];
        std::fs::write(dir.path().join("b.json"), "1").unwrap();
        std::fs::write(dir.path().join("a.json"), "1").unwrap();
        std::fs::write(dir.path().join("c.txt"), "ignored").unwrap();
        let w: Watched<Vec<String>> = Watched::new(&[".json"]);
        let mut loads = 0;
        let mut load = |files: &[PathBuf]| {
            loads += 1;
            files.iter().map(|p| file_name(p)).collect::<Vec<_>>()
        };
        assert_eq!(*w.get(&dirs, &mut load), vec!["a.json", "b.json"]);
        assert_eq!(*w.get(&dirs, &mut load), vec!["a.json", "b.json"]);
        std::fs::write(dir.path().join("a.json"), "22").unwrap();
        w.get(&dirs, &mut load);
        std::fs::remove_file(dir.path().join("b.json")).unwrap();
        assert_eq!(*w.get(&dirs, &mut load), vec!["a.json"]);
        // another list of directories is another set of definitions
        w.get(&dirs[..1], &mut load);
        assert_eq!(loads, 4);
    }
}
