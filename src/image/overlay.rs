//! Overlay root filesystems for containers: the image's layer directories as lowers, a fresh
//! upper and work directory, mounted at `<dir>/merged`.
//!
//! `lowerdir=` lives in one page of mount data, so long layer paths limit the layer count. Each
//! layer gets a short symlink `<dir>/l/<n>` and the mount is made from a dedicated thread whose
//! working directory (unshared with CLONE_FS, so the daemon's cwd is untouched) is `<dir>`: the
//! option string is then `lowerdir=l/9:l/8:...`, four or five bytes per layer.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::ImageError;

const LINKS: &str = "l";
const UPPER: &str = "upper";
const WORK: &str = "work";
const MERGED: &str = "merged";
/// An empty lower for images without layers (overlay needs at least one lowerdir).
const EMPTY: &str = "empty";
/// Mount data must fit one page.
const PAGE: usize = 4096;

/// A rootfs seen through a pod's user namespace: the layers keep their owners on disk and the
/// container's root owns what host root owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idmap {
    /// The pod's pinned user namespace.
    pub userns: PathBuf,
    /// The host ids of the container's root, which own the fresh upper dir (the root
    /// directory the container sees) and everything the container writes.
    pub root_uid: u32,
    pub root_gid: u32,
    /// An empty directory, outside every directory that is ever deleted recursively, where the
    /// idmapped copies of the layers are attached while the overlay is mounted.
    pub staging: PathBuf,
}

/// Create `dir/{upper,work,merged}` and mount an overlay of `layers` (bottom first) at
/// `dir/merged`; returns the merged path. On failure nothing is left mounted.
///
/// With `idmap`, each layer is an idmapped copy of its directory, attached under its
/// `staging` dir only until the overlay is mounted: overlayfs keeps a private clone of each
/// lower's mount (with its mapping), so nothing idmapped stays mounted besides the overlay.
pub fn mount_rootfs(
    layers: &[PathBuf],
    dir: &Path,
    idmap: Option<&Idmap>,
) -> Result<PathBuf, ImageError> {
    let dir = absolute(dir)?;
    for sub in [UPPER, WORK] {
        fs::create_dir_all(dir.join(sub)).map_err(io_err(&dir.join(sub)))?;
    }
    let Some(idmap) = idmap else {
        let lowers = link_layers(layers, &dir, false)?;
        return mount_overlay(
            &dir,
            format!("lowerdir={lowers},upperdir={UPPER},workdir={WORK}"),
            MsFlags::empty(),
            layers.len(),
        );
    };
    let upper = dir.join(UPPER);
    nix::unistd::chown(
        &upper,
        Some(nix::unistd::Uid::from_raw(idmap.root_uid)),
        Some(nix::unistd::Gid::from_raw(idmap.root_gid)),
    )
    .map_err(|e| ImageError::io(&upper, e.into()))?;
    let staged = idmap.staging.clone();
    let result = stage_idmapped(layers, &staged, &idmap.userns).and_then(|mapped| {
        let lowers = link_layers(&mapped, &dir, false)?;
        mount_overlay(
            &dir,
            format!("lowerdir={lowers},upperdir={UPPER},workdir={WORK}"),
            MsFlags::empty(),
            layers.len(),
        )
    });
    let cleaned = unstage_idmapped(&staged);
    if let Some(object_dir) = staged.parent() {
        // The object's staging dir goes with its last staged copy (an error here means it
        // still holds another's, which its own unstaging removes).
        let _ = fs::remove_dir(object_dir);
    }
    let merged = result?;
    if let Err(e) = cleaned {
        // The overlay holds its own clones: a staged copy left behind is only a leak.
        let _ = unmount_rootfs(&dir);
        return Err(e);
    }
    Ok(merged)
}

/// Attaches an idmapped copy of each layer at `staged/<n>`; returns those paths. On failure
/// the caller's [`unstage_idmapped`] takes down what was attached.
fn stage_idmapped(
    layers: &[PathBuf],
    staged: &Path,
    userns: &Path,
) -> Result<Vec<PathBuf>, ImageError> {
    use std::os::fd::AsFd;
    let ns = fs::File::open(userns).map_err(io_err(userns))?;
    let mut out = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let target = staged.join(i.to_string());
        fs::create_dir_all(&target).map_err(io_err(&target))?;
        let tree =
            crate::sys::idmapped_tree(layer, ns.as_fd(), false).map_err(|e| ImageError::Mount {
                path: layer.clone(),
                reason: format!("idmapped copy: {e}"),
            })?;
        crate::sys::attach_tree(tree.as_fd(), &target).map_err(|e| ImageError::Mount {
            path: target.clone(),
            reason: format!("attach idmapped layer: {e}"),
        })?;
        out.push(target);
    }
    Ok(out)
}

/// Detaches every mount at or below `staged` (deepest first) and deletes `staged`; idempotent.
/// Never deletes while anything is still mounted there: that would delete through an
/// idmapped copy into the layer or volume it shows.
pub fn unstage_idmapped(staged: &Path) -> Result<(), ImageError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| ImageError::io("/proc/self/mountinfo", e))?;
    let base = staged.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mountinfo))
        .filter(|mp| mp == &base || mp.starts_with(&format!("{base}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in &points {
        // A staged copy is nobody's but the overlay's clone or the runtime's bind: detach it,
        // whatever still uses it.
        while umount2(Path::new(p), MntFlags::MNT_DETACH).is_ok() {}
        if is_mountpoint(Path::new(p))? {
            return Err(ImageError::Mount {
                path: PathBuf::from(p),
                reason: "still mounted after unmount".into(),
            });
        }
    }
    match fs::remove_dir_all(staged) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(staged, e)),
    }
}

/// Attaches an idmapped copy of `src` (a directory with its submounts, or a file) at `target`,
/// which is created as the same kind. `Ok(false)` when the file system under `src` cannot be
/// idmapped (EINVAL): the caller then binds `src` as it is.
pub fn stage_idmapped_bind(src: &Path, target: &Path, userns: &Path) -> Result<bool, ImageError> {
    use std::os::fd::AsFd;
    let meta = fs::metadata(src).map_err(io_err(src))?;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    if meta.is_dir() {
        fs::create_dir_all(target).map_err(io_err(target))?;
    } else {
        fs::File::create(target).map_err(io_err(target))?;
    }
    let ns = fs::File::open(userns).map_err(io_err(userns))?;
    let tree = match crate::sys::idmapped_tree(src, ns.as_fd(), meta.is_dir()) {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
        Err(e) => {
            return Err(ImageError::Mount {
                path: src.to_path_buf(),
                reason: format!("idmapped copy: {e}"),
            })
        }
    };
    crate::sys::attach_tree(tree.as_fd(), target).map_err(|e| ImageError::Mount {
        path: target.to_path_buf(),
        reason: format!("attach idmapped copy of {}: {e}", src.display()),
    })?;
    Ok(true)
}

/// Mount the image's `layers` (bottom first) read-only at `dir/merged`, with no upper dir: an
/// image volume (KEP-4639), which the container sees exactly as the image ships it. Returns the
/// merged path; on failure nothing is left mounted. [`unmount_rootfs`] takes it down.
pub fn mount_readonly(layers: &[PathBuf], dir: &Path) -> Result<PathBuf, ImageError> {
    let dir = absolute(dir)?;
    // Without an upper dir overlay wants at least two lowers: an empty one goes at the bottom.
    let lowers = link_layers(layers, &dir, true)?;
    mount_overlay(
        &dir,
        format!("lowerdir={lowers}"),
        // Read-only by the kernel, not only by the bind into the container; devices in an image
        // are not the container's to open. Executables stay executable (kubelet's contract).
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        layers.len(),
    )
}

fn io_err(p: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let p = p.to_path_buf();
    move |e| ImageError::io(p, e)
}

fn absolute(dir: &Path) -> Result<PathBuf, ImageError> {
    Ok(if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().map_err(io_err(dir))?.join(dir)
    })
}

/// Short links `dir/l/<n>` to each layer and the `lowerdir` value naming them, topmost first.
/// `empty_bottom` adds the empty dir below all layers; it is also the only lower of an image
/// without layers.
fn link_layers(layers: &[PathBuf], dir: &Path, empty_bottom: bool) -> Result<String, ImageError> {
    fs::create_dir_all(dir.join(MERGED)).map_err(io_err(&dir.join(MERGED)))?;
    let links = dir.join(LINKS);
    // Stale links from an earlier attempt would point at other layers.
    if links.exists() {
        fs::remove_dir_all(&links).map_err(io_err(&links))?;
    }
    fs::create_dir_all(&links).map_err(io_err(&links))?;
    let mut lowers: Vec<String> = Vec::with_capacity(layers.len() + 1);
    if layers.is_empty() || empty_bottom {
        fs::create_dir_all(dir.join(EMPTY)).map_err(io_err(&dir.join(EMPTY)))?;
        lowers.push(EMPTY.to_string());
    }
    for (i, layer) in layers.iter().enumerate() {
        if !layer.is_dir() {
            return Err(ImageError::Mount {
                path: dir.join(MERGED),
                reason: format!("layer directory {} is missing", layer.display()),
            });
        }
        let link = links.join(i.to_string());
        std::os::unix::fs::symlink(layer, &link).map_err(io_err(&link))?;
        lowers.push(format!("{LINKS}/{i}"));
    }
    // overlay wants the topmost layer first.
    lowers.reverse();
    Ok(lowers.join(":"))
}

/// Mount overlay with option string `data` (relative to `dir`) at `dir/merged`.
fn mount_overlay(
    dir: &Path,
    data: String,
    flags: MsFlags,
    layer_count: usize,
) -> Result<PathBuf, ImageError> {
    let merged = dir.join(MERGED);
    if data.len() >= PAGE {
        return Err(ImageError::Mount {
            path: merged,
            reason: format!("{layer_count} layers do not fit in one mount option page"),
        });
    }
    let (d, m) = (dir.to_path_buf(), merged.clone());
    let res = std::thread::spawn(move || -> Result<(), String> {
        // This thread alone gets its own cwd, so relative lowerdirs resolve under `dir`.
        unshare(CloneFlags::CLONE_FS).map_err(|e| format!("unshare(CLONE_FS): {e}"))?;
        nix::unistd::chdir(&d).map_err(|e| format!("chdir {}: {e}", d.display()))?;
        mount(
            Some("overlay"),
            &m,
            Some("overlay"),
            flags,
            Some(data.as_str()),
        )
        .map_err(|e| format!("mount overlay ({data}): {e}"))
    })
    .join()
    .unwrap_or_else(|_| Err("mount thread panicked".into()));
    res.map_err(|reason| ImageError::Mount {
        path: merged.clone(),
        reason,
    })?;
    Ok(merged)
}

/// Unmount `dir/merged` if mounted and delete `dir` entirely; idempotent. Never deletes while
/// anything is still mounted there (that would delete through the mount into the layers).
pub fn unmount_rootfs(dir: &Path) -> Result<(), ImageError> {
    let merged = dir.join(MERGED);
    // Mounts may be stacked; unmount until nothing is left.
    for _ in 0..16 {
        match umount2(&merged, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
            Err(nix::errno::Errno::EBUSY) => {
                // Busy (e.g. a process still has its cwd inside): detach it lazily.
                umount2(&merged, MntFlags::MNT_DETACH).map_err(|e| ImageError::Mount {
                    path: merged.clone(),
                    reason: format!("lazy unmount: {e}"),
                })?;
            }
            Err(e) => {
                return Err(ImageError::Mount {
                    path: merged.clone(),
                    reason: format!("unmount: {e}"),
                })
            }
        }
    }
    if is_mountpoint(&merged)? {
        return Err(ImageError::Mount {
            path: merged,
            reason: "still mounted after unmount".into(),
        });
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(dir, e)),
    }
}

/// Whether `path` is a mount point in this mount namespace (per /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> Result<bool, ImageError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| ImageError::io("/proc/self/mountinfo", e))?;
    let want = path.to_string_lossy();
    Ok(info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == want)
    }))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
