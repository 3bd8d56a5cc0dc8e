//! Layer unpacking: a (gzip, zstd or plain) tar stream becomes one directory in overlay format.
//!
//! OCI whiteouts turn into overlay whiteouts (`.wh.NAME` -> char device 0/0 `NAME`) and opaque
//! directories (`.wh..wh..opq` -> xattr `trusted.overlay.opaque=y`). Modes, owners, times, xattrs,
//! symlinks, hard links and device nodes are kept. Nothing may be written outside the layer
//! directory: `..`, absolute names, writing through a symlink and hard links whose target leaves
//! the layer are refused with an error naming the entry. Runs on a blocking thread.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{lchown, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use sha2::{Digest, Sha256};

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Xattrs in this namespace would steer overlayfs itself (redirects, metacopy); a layer may not set them.
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// A reader that hashes everything read through it (the layer's diff id is the digest of the
/// uncompressed tar stream).
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// `sha256:<hex>` and the byte count of what was read.
    pub fn finish(self) -> (String, u64) {
        (
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Wrap `r` in the decompressor its first bytes call for.
fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    let head = br.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(br)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(br)?))
    } else {
        Ok(Box::new(br))
    }
}

/// Unpack the layer stream `r` into `dest` (an existing, empty directory) and return the diff id
/// (`sha256:` of the uncompressed tar). `layer` names the blob in errors.
pub fn unpack_layer<R: Read>(r: R, dest: &Path, layer: &str) -> Result<String, ImageError> {
    let fail = |entry: &str, source: io::Error| ImageError::Unpack {
        layer: layer.to_string(),
        entry: entry.to_string(),
        source,
    };
    let stream = decompress(r).map_err(|e| fail("", e))?;
    let mut archive = tar::Archive::new(HashingReader::new(stream));
    let mut dirs: Vec<(PathBuf, tar::Header)> = Vec::new();
    let mut u = Unpacker { dest, layer };
    for entry in archive.entries().map_err(|e| fail("", e))? {
        let mut entry = entry.map_err(|e| fail("", e))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        if let Some(dir) = u.entry(&mut entry, &name)? {
            dirs.push((dir, entry.header().clone()));
        }
    }
    // Directory times last: creating their children changed them.
    for (path, header) in dirs.iter().rev() {
        let name = path.display().to_string();
        set_times(path, header, false).map_err(|e| fail(&name, e))?;
    }
    let mut rest = archive.into_inner();
    // The diff id covers the whole stream, padding after the end-of-archive blocks included.
    io::copy(&mut rest, &mut io::sink()).map_err(|e| fail("", e))?;
    Ok(rest.finish().0)
}

struct Unpacker<'a> {
    dest: &'a Path,
    layer: &'a str,
}

impl Unpacker<'_> {
    fn refuse(&self, entry: &str, reason: &str) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The OS error stays the source, so a full disk is recognised by its errno.
    fn fail(&self, entry: &str, e: impl Into<io::Error>) -> ImageError {
        ImageError::Unpack {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            source: e.into(),
        }
    }

    /// A relative path made only of normal components; `..` and absolute names are refused.
    fn clean(&self, entry: &str, raw: &Path) -> Result<PathBuf, ImageError> {
        let mut out = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                Component::ParentDir => return Err(self.refuse(entry, "path contains \"..\"")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.refuse(entry, "absolute path"))
                }
            }
        }
        Ok(out)
    }

    /// Create the missing parents of `rel` as directories; an existing parent that is a symlink
    /// (or not a directory) is refused, so nothing is ever written through a link.
    fn ensure_parents(&self, entry: &str, rel: &Path) -> Result<(), ImageError> {
        let mut cur = self.dest.to_path_buf();
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.refuse(
                        entry,
                        "parent directory is a symlink (write through a symlink)",
                    ))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(self.refuse(entry, "parent is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&cur)
                        .map_err(|e| self.fail(entry, e))?;
                }
                Err(e) => return Err(self.fail(entry, e)),
            }
        }
        Ok(())
    }

    /// Remove whatever an earlier entry left at `path` (never following a symlink); a directory
    /// is kept when `keep_dir` (tar merges a directory entry into an existing directory).
    fn clear(&self, entry: &str, path: &Path, keep_dir: bool) -> Result<bool, ImageError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                fs::remove_dir_all(path).map_err(|e| self.fail(entry, e))?;
            }
            Ok(_) => fs::remove_file(path).map_err(|e| self.fail(entry, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.fail(entry, e)),
        }
        Ok(false)
    }

    /// Apply one entry; returns the path of a directory whose times must be set at the end.
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        name: &str,
    ) -> Result<Option<PathBuf>, ImageError> {
        let raw = entry.path().map_err(|e| self.fail(name, e))?.into_owned();
        // umoci and some other builders emit the layer root as "/": that names the root
        // itself, not a path outside it. Every other absolute name is still refused.
        if raw == Path::new("/") {
            return Ok(None);
        }
        let rel = self.clean(name, &raw)?;
        if rel.as_os_str().is_empty() {
            // "./": the layer root itself; its owner and mode are the overlay's business.
            return Ok(None);
        }
        self.ensure_parents(name, &rel)?;
        let path = self.dest.join(&rel);
        let file_name = rel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();

        if file_name == OPAQUE_MARKER {
            let dir = path.parent().unwrap_or(self.dest);
            xattr::set(dir, OPAQUE_XATTR, b"y").map_err(|e| self.fail(name, e))?;
            return Ok(None);
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) {
                // Other `.wh..wh.*` names are aufs bookkeeping (hard-link dirs): meaningless here.
                return Ok(None);
            }
            let target = path.with_file_name(hidden);
            self.clear(name, &target, false)?;
            mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| self.fail(name, e))?;
            return Ok(None);
        }

        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().map_err(|e| self.fail(name, e))? & 0o7777;
        match kind {
            tar::EntryType::Directory => {
                if !self.clear(name, &path, true)? {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&path)
                        .map_err(|e| self.fail(name, e))?;
                }
                self.set_meta(entry, &path, name, mode, false)?;
                return Ok(Some(path));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.clear(name, &path, false)?;
                // create_new never follows a symlink at the final component.
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| self.fail(name, e))?;
                copy_big(entry, &mut f).map_err(|e| self.fail(name, e))?;
                drop(f);
                self.set_meta(entry, &path, name, mode, false)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.fail(name, e))?
                    .ok_or_else(|| self.fail(name, io::Error::other("symlink without a target")))?;
                self.clear(name, &path, false)?;
                std::os::unix::fs::symlink(&target, &path).map_err(|e| self.fail(name, e))?;
                self.set_meta(entry, &path, name, mode, true)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.fail(name, e))?
                    .ok_or_else(|| {
                        self.fail(name, io::Error::other("hard link without a target"))
                    })?;
                let target_rel = self.clean(name, &target).map_err(|_| {
                    self.refuse(
                        name,
                        &format!("hard link target {} is outside the layer", target.display()),
                    )
                })?;
                if target_rel.as_os_str().is_empty() {
                    return Err(self.refuse(name, "hard link to the layer root"));
                }
                self.check_no_symlink_parents(name, &target_rel)?;
                let source = self.dest.join(&target_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_dir() => {
                        return Err(self.refuse(name, "hard link to a directory"))
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let reason = format!("hard link target {}: {e}", target.display());
                        return Err(self.fail(name, io::Error::new(e.kind(), reason)));
                    }
                }
                if source == path {
                    return Ok(None);
                }
                self.clear(name, &path, false)?;
                // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
                fs::hard_link(&source, &path).map_err(|e| self.fail(name, e))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                // A fifo's device fields are often blank; only device nodes need them.
                let (major, minor) = if kind == tar::EntryType::Fifo {
                    (0, 0)
                } else {
                    (
                        header
                            .device_major()
                            .map_err(|e| self.fail(name, e))?
                            .unwrap_or(0),
                        header
                            .device_minor()
                            .map_err(|e| self.fail(name, e))?
                            .unwrap_or(0),
                    )
                };
                let flag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                self.clear(name, &path, false)?;
                mknod(
                    &path,
                    flag,
                    Mode::from_bits_truncate(mode),
                    makedev(u64::from(major), u64::from(minor)),
                )
                .map_err(|e| self.fail(name, e))?;
                self.set_meta(entry, &path, name, mode, false)?;
            }
            // Global pax headers and other metadata-only records carry nothing to write.
            _ => {}
        }
        Ok(None)
    }

    fn check_no_symlink_parents(&self, entry: &str, rel: &Path) -> Result<(), ImageError> {
        let mut cur = self.dest.to_path_buf();
        if let Some(parent) = rel.parent() {
            for c in parent.components() {
                cur.push(c);
                if fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(self.refuse(entry, "hard link target is reached through a symlink"));
                }
            }
        }
        Ok(())
    }

    /// Owner first (chown clears set-id bits), then mode, xattrs and times.
    fn set_meta<R: Read>(
        &self,
        entry: &mut tar::Entry<R>,
        path: &Path,
        name: &str,
        mode: u32,
        is_link: bool,
    ) -> Result<(), ImageError> {
        let h = entry.header();
        let uid = h.uid().map_err(|e| self.fail(name, e))?;
        let gid = h.gid().map_err(|e| self.fail(name, e))?;
        let uid = u32::try_from(uid)
            .map_err(|_| self.fail(name, io::Error::other(format!("uid {uid} out of range"))))?;
        let gid = u32::try_from(gid)
            .map_err(|_| self.fail(name, io::Error::other(format!("gid {gid} out of range"))))?;
        lchown(path, Some(uid), Some(gid)).map_err(|e| self.fail(name, e))?;
        if !is_link {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(|e| self.fail(name, e))?;
        }
        if let Some(exts) = entry.pax_extensions().map_err(|e| self.fail(name, e))? {
            for ext in exts {
                let ext = ext.map_err(|e| self.fail(name, e))?;
                let Ok(key) = ext.key() else { continue };
                let Some(attr) = key.strip_prefix(PAX_XATTR_PREFIX) else {
                    continue;
                };
                if attr.starts_with(OVERLAY_XATTR_PREFIX) {
                    return Err(self.refuse(name, &format!("sets overlay xattr {attr}")));
                }
                if let Err(e) = xattr::set(path, attr, ext.value_bytes()) {
                    // user.* xattrs cannot live on symlinks; file systems without xattrs lose them.
                    let unsupported =
                        matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM));
                    if !(is_link || unsupported) {
                        // The kind survives the added context (StorageFull for a full disk).
                        let reason = format!("xattr {attr}: {e}");
                        return Err(self.fail(name, io::Error::new(e.kind(), reason)));
                    }
                }
            }
        }
        let header = entry.header().clone();
        set_times(path, &header, is_link).map_err(|e| self.fail(name, e))
    }
}

fn set_times(path: &Path, h: &tar::Header, _is_link: bool) -> io::Result<()> {
    let mtime = h.mtime().unwrap_or(0);
    let secs = i64::try_from(mtime).unwrap_or(i64::MAX);
    let ts = TimeSpec::new(secs, 0);
    utimensat(None, path, &ts, &ts, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

/// io::copy with a larger buffer: layer files are often big and the 8 KiB default costs syscalls.
fn copy_big<R: Read, W: Write>(r: &mut R, w: &mut W) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A tar entry with raw name bytes, so the test can write names `tar::Builder` would refuse.
    fn entry(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        name: &str,
        link: &str,
        data: &[u8],
        mode: u32,
    ) {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(1234);
        h.set_gid(4321);
        h.set_mtime(1_000_000_000);
        let raw = h.as_mut_bytes();
        raw[..name.len()].copy_from_slice(name.as_bytes());
        raw[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    #[ignore = "needs root: file ownership and xattrs"]
    fn unpacks_files_links_whiteouts_and_metadata() {
        let t = tar_of(|b| {
            entry(b, tar::EntryType::Directory, "etc/", "", b"", 0o755);
            entry(b, tar::EntryType::Regular, "etc/hello", "", b"hi\n", 0o4750);
            entry(
                b,
                tar::EntryType::Symlink,
                "etc/link",
                "/etc/hello",
                b"",
                0o777,
            );
            entry(b, tar::EntryType::Link, "etc/hard", "etc/hello", b"", 0o644);
            entry(b, tar::EntryType::Regular, "gone/.wh.file", "", b"", 0o644);
            entry(b, tar::EntryType::Directory, "opaque/", "", b"", 0o711);
            entry(
                b,
                tar::EntryType::Regular,
                "opaque/.wh..wh..opq",
                "",
                b"",
                0o644,
            );
            entry(b, tar::EntryType::Regular, "opaque/kept", "", b"x", 0o600);
            entry(b, tar::EntryType::Fifo, "run/fifo", "", b"", 0o620);
        });
        let want_diff = format!("sha256:{}", hex::encode(Sha256::digest(&t)));
        for data in [t.clone(), gzip(&t), zstd::encode_all(&t[..], 1).unwrap()] {
            let d = tempfile::tempdir().unwrap();
            let diff = unpack_layer(&data[..], d.path(), "sha256:layer").unwrap();
            assert_eq!(
                diff, want_diff,
                "diff id is the digest of the uncompressed tar"
            );
            let p = d.path();
            assert_eq!(fs::read(p.join("etc/hello")).unwrap(), b"hi\n");
            let m = fs::metadata(p.join("etc/hello")).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o4750, "set-id bit survives chown");
            assert_eq!((m.uid(), m.gid()), (1234, 4321));
            assert_eq!(m.mtime(), 1_000_000_000);
            assert_eq!(
                fs::read_link(p.join("etc/link")).unwrap(),
                Path::new("/etc/hello")
            );
            assert_eq!(fs::metadata(p.join("etc/hard")).unwrap().ino(), m.ino());
            assert_eq!(
                fs::metadata(p.join("etc")).unwrap().mtime(),
                1_000_000_000,
                "dir times set last"
            );
            let w = fs::symlink_metadata(p.join("gone/file")).unwrap();
            assert!(w.file_type().is_char_device());
            assert_eq!(w.rdev(), 0);
            assert!(!p.join("gone/.wh.file").exists());
            assert_eq!(
                xattr::get(p.join("opaque"), OPAQUE_XATTR)
                    .unwrap()
                    .as_deref(),
                Some(&b"y"[..])
            );
            assert!(!p.join("opaque/.wh..wh..opq").exists());
            assert!(p.join("opaque/kept").exists());
            assert!(fs::symlink_metadata(p.join("run/fifo"))
                .unwrap()
                .file_type()
                .is_fifo());
        }
    }

    #[test]
    #[ignore = "needs root: file ownership and xattrs"]
    fn keeps_pax_xattrs() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("SCHILY.xattr.user.test", &b"value"[..])])
            .unwrap();
        entry(&mut b, tar::EntryType::Regular, "f", "", b"x", 0o644);
        let t = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        unpack_layer(&t[..], d.path(), "l").unwrap();
        assert_eq!(
            xattr::get(d.path().join("f"), "user.test")
                .unwrap()
                .as_deref(),
            Some(&b"value"[..])
        );
    }

    fn refused(t: Vec<u8>, bad: &str) {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("layer");
        fs::create_dir(&dest).unwrap();
        match unpack_layer(&t[..], &dest, "sha256:evil") {
            Err(ImageError::UnsafeEntry { layer, entry, .. }) => {
                assert_eq!(layer, "sha256:evil");
                assert_eq!(entry, bad);
            }
            other => panic!("{bad}: expected a refusal, got {other:?}"),
        }
        // Nothing landed next to the layer directory.
        let names: Vec<_> = fs::read_dir(outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("layer")], "{bad}");
    }

    #[test]
    #[ignore = "needs root: file ownership and xattrs"]
    fn refuses_escapes() {
        refused(
            tar_of(|b| entry(b, tar::EntryType::Regular, "../evil", "", b"x", 0o644)),
            "../evil",
        );
        refused(
            tar_of(|b| entry(b, tar::EntryType::Regular, "a/../../evil", "", b"x", 0o644)),
            "a/../../evil",
        );
        refused(
            tar_of(|b| entry(b, tar::EntryType::Regular, "/evil", "", b"x", 0o644)),
            "/evil",
        );
        // A symlink to the outside, then a file written through it.
        refused(
            tar_of(|b| {
                entry(b, tar::EntryType::Symlink, "esc", "..", b"", 0o777);
                entry(b, tar::EntryType::Regular, "esc/evil", "", b"x", 0o644);
            }),
            "esc/evil",
        );
        refused(
            tar_of(|b| {
                entry(b, tar::EntryType::Symlink, "esc", "/tmp", b"", 0o777);
                entry(b, tar::EntryType::Directory, "esc/evil/", "", b"", 0o755);
            }),
            "esc/evil/",
        );
        // Hard links to outside paths, directly or through a symlink.
        refused(
            tar_of(|b| entry(b, tar::EntryType::Link, "h", "../../etc/passwd", b"", 0o644)),
            "h",
        );
        refused(
            tar_of(|b| entry(b, tar::EntryType::Link, "h", "/etc/passwd", b"", 0o644)),
            "h",
        );
        refused(
            tar_of(|b| {
                entry(b, tar::EntryType::Symlink, "etc", "/etc", b"", 0o777);
                entry(b, tar::EntryType::Link, "h", "etc/passwd", b"", 0o644);
            }),
            "h",
        );
        refused(
            tar_of(|b| entry(b, tar::EntryType::Regular, "../.wh.x", "", b"", 0o644)),
            "../.wh.x",
        );
    }

    #[test]
    #[ignore = "needs root: file ownership and xattrs"]
    fn later_entries_replace_symlinks_without_following() {
        let outer = tempfile::tempdir().unwrap();
        let victim = outer.path().join("victim");
        fs::write(&victim, b"safe").unwrap();
        let dest = outer.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let t = tar_of(|b| {
            entry(
                b,
                tar::EntryType::Symlink,
                "f",
                victim.to_str().unwrap(),
                b"",
                0o777,
            );
            entry(b, tar::EntryType::Regular, "f", "", b"new", 0o644);
        });
        unpack_layer(&t[..], &dest, "l").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"safe");
        assert_eq!(fs::read(dest.join("f")).unwrap(), b"new");
    }
}
