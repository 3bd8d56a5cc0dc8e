//! Layer unpacking never panics and never writes outside its directory, whatever the tar
//! (gzip, zstd or plain) holds: `..`, absolute names, links through symlinks, hard links out.
#![no_main]

use std::path::Path;

use ferrio::image::unpack::unpack_layer;
use libfuzzer_sys::fuzz_target;

/// Every path under `root` (symlinks not followed).
fn walk(root: &Path, out: &mut Vec<std::path::PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.clone());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&p, out);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let work = tempfile::tempdir().expect("temp dir");
    let dest = work.path().join("layer");
    let outside = work.path().join("outside");
    std::fs::create_dir(&dest).expect("layer dir");
    std::fs::create_dir(&outside).expect("outside dir");
    // A symlink out of the layer that a malicious entry might try to write through.
    std::os::unix::fs::symlink(&outside, work.path().join("escape")).expect("symlink");
    let _ = unpack_layer(std::io::Cursor::new(data), &dest, "fuzz");
    let mut all = Vec::new();
    walk(work.path(), &mut all);
    for p in all {
        assert!(
            p.starts_with(&dest) || p == outside || p == work.path().join("escape"),
            "unpack wrote outside its layer: {}",
            p.display()
        );
    }
    assert!(std::fs::read_dir(&outside).expect("outside").next().is_none());
});
