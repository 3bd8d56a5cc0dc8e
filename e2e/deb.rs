//! `make deb`'s packaging logic without a release build: hack/build-deb.sh packs the test build's
//! binaries, and the test checks the package's control fields, file list, conffiles, unit, man
//! pages and maintainer scripts (run against an unpacked tree through DPKG_ROOT, so the host's
//! /etc and systemd are never touched), then runs lintian on it. Needs dpkg-dev, binutils and
//! lintian (hack/install-deps.sh); run with `cargo test --test deb`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run `cmd` and return its stdout; panics with its stderr when it fails or cannot start.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package built from the test binaries, in a temp dir that lives as long as the value.
struct Package {
    dir: tempfile::TempDir,
    deb: PathBuf,
}

impl Package {
    fn build() -> Package {
        let dir = tempfile::tempdir().unwrap();
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_ferrio")).parent().unwrap();
        assert!(bin_dir.join("ferrio-monitor").exists());
        assert!(bin_dir.join("ferrio-envexec").exists());
        let out = run(Command::new("bash")
            .arg(repo().join("hack/build-deb.sh"))
            .arg("--bin-dir")
            .arg(bin_dir)
            .arg("--out")
            .arg(dir.path())
            .arg("--fast"));
        let deb = PathBuf::from(out.trim());
        Package { dir, deb }
    }

    /// The package unpacked (files and DEBIAN/) into a fresh dir below the temp dir.
    fn unpack(&self, name: &str) -> PathBuf {
        let root = self.dir.path().join(name);
        run(Command::new("dpkg-deb").arg("-x").arg(&self.deb).arg(&root));
        run(Command::new("dpkg-deb")
            .arg("-e")
            .arg(&self.deb)
            .arg(root.join("DEBIAN")));
        root
    }

    fn field(&self, name: &str) -> String {
        run(Command::new("dpkg-deb").arg("-f").arg(&self.deb).arg(name))
            .trim()
            .to_string()
    }
}

/// Run a maintainer script of the unpacked tree `root` with DPKG_ROOT pointing at it.
fn maintainer_script(root: &Path, script: &str, args: &[&str]) {
    run(Command::new("sh")
        .arg(root.join("DEBIAN").join(script))
        .args(args)
        .env("DPKG_ROOT", root));
}

#[test]
fn package_from_the_test_build_has_what_make_deb_promises() {
    let pkg = Package::build();
    assert_eq!(
        pkg.deb.file_name().unwrap().to_str().unwrap(),
        format!(
            "ferrio_{}_{}.deb",
            env!("CARGO_PKG_VERSION"),
            pkg.field("Architecture")
        )
    );
    assert_eq!(pkg.field("Package"), "ferrio");
    assert_eq!(pkg.field("Version"), env!("CARGO_PKG_VERSION"));
    let depends = pkg.field("Depends");
    for dep in [
        "libc6 (>= ",
        // The default handler's runtime first: apt installs it.
        "crun | runc",
        "containernetworking-plugins",
        "iptables",
    ] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&pkg.deb));
    let files: BTreeSet<&str> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches("./"))
        .collect();
    let expected: BTreeSet<&str> = [
        "usr/bin/ferrio",
        "usr/libexec/ferrio/ferrio-monitor",
        "usr/libexec/ferrio/ferrio-envexec",
        "lib/systemd/system/ferrio.service",
        "etc/ferrio/ferrio.toml",
        "usr/share/ferrio/10-ferrio-bridge.conflist",
        "usr/share/doc/ferrio/examples/10-ferrio-bridge.conflist",
        "usr/share/doc/ferrio/examples/crictl.yaml",
        "usr/share/doc/ferrio/examples/ferrio-systemd-cgroups.toml",
        "usr/share/doc/ferrio/examples/kubelet-config.yaml",
        "usr/share/doc/ferrio/examples/kubelet-ferrio.conf",
        "usr/share/doc/ferrio/copyright",
        "usr/share/doc/ferrio/changelog.gz",
        "usr/share/doc/ferrio/README.md.gz",
        "usr/share/lintian/overrides/ferrio",
        "usr/share/man/man8/ferrio.8.gz",
        "usr/share/man/man5/ferrio.toml.5.gz",
    ]
    .into();
    assert_eq!(files, expected);
    assert!(
        listing.contains(" ./etc/ferrio/ferrio.d/\n"),
        "the drop-in dir is packaged"
    );

    let root = pkg.unpack("root");
    assert_eq!(
        std::fs::read_to_string(root.join("DEBIAN/conffiles")).unwrap(),
        "/etc/ferrio/ferrio.toml\n"
    );
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/ferrio.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/ferrio --config /etc/ferrio/ferrio.toml\n"),
        "{unit}"
    );
    assert_eq!(
        std::fs::read(root.join("etc/ferrio/ferrio.toml")).unwrap(),
        std::fs::read(repo().join("deploy/ferrio.toml")).unwrap()
    );
    for page in [
        "usr/share/man/man8/ferrio.8.gz",
        "usr/share/man/man5/ferrio.toml.5.gz",
    ] {
        let roff = run(Command::new("gzip").arg("-dc").arg(root.join(page)));
        assert!(roff.starts_with(".TH "), "{page}: {roff:.80}");
    }
    for script in ["postinst", "prerm", "postrm"] {
        let text = std::fs::read_to_string(root.join("DEBIAN").join(script)).unwrap();
        assert!(
            !text.contains("@CNI_EXAMPLE_SHA256@"),
            "{script} is filled in"
        );
        run(Command::new("sh")
            .arg("-n")
            .arg(root.join("DEBIAN").join(script)));
    }

    let lintian = Command::new("lintian")
        .args(["--fail-on", "error,warning"])
        .arg(&pkg.deb)
        .output()
        .unwrap_or_else(|e| panic!("lintian cannot run (hack/install-deps.sh installs it): {e}"));
    assert!(
        lintian.status.success(),
        "lintian:\n{}{}",
        String::from_utf8_lossy(&lintian.stdout),
        String::from_utf8_lossy(&lintian.stderr)
    );
}

#[test]
fn maintainer_scripts_install_the_example_network_only_on_a_node_without_one() {
    let pkg = Package::build();
    let example = std::fs::read(repo().join("cni/10-ferrio-bridge.conflist")).unwrap();

    // A fresh install on a node without CNI config gets the example; a purge takes it back.
    let root = pkg.unpack("fresh");
    let installed = root.join("etc/cni/net.d/10-ferrio-bridge.conflist");
    maintainer_script(&root, "postinst", &["configure"]);
    assert_eq!(std::fs::read(&installed).unwrap(), example);
    maintainer_script(&root, "prerm", &["remove"]);
    maintainer_script(&root, "postrm", &["remove"]);
    assert!(installed.exists(), "a remove keeps the configuration");
    maintainer_script(&root, "postrm", &["purge"]);
    assert!(!installed.exists(), "a purge removes the unchanged example");

    // An admin's change to the example survives a purge.
    maintainer_script(&root, "postinst", &["configure"]);
    std::fs::write(&installed, b"{\"name\": \"mine\"}").unwrap();
    maintainer_script(&root, "postrm", &["purge"]);
    assert!(installed.exists(), "a changed example is the admin's");

    // A node with a network of its own keeps it alone, and so does an upgrade.
    let root = pkg.unpack("configured");
    let net_dir = root.join("etc/cni/net.d");
    std::fs::create_dir_all(&net_dir).unwrap();
    std::fs::write(net_dir.join("05-other.conf"), b"{}").unwrap();
    maintainer_script(&root, "postinst", &["configure"]);
    assert!(!net_dir.join("10-ferrio-bridge.conflist").exists());
    let root = pkg.unpack("upgrade");
    maintainer_script(&root, "postinst", &["configure", "0.0.1"]);
    assert!(!root
        .join("etc/cni/net.d/10-ferrio-bridge.conflist")
        .exists());
}
