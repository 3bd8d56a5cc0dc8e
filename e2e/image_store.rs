//! The image store against a real `docker-registry` on loopback: images built with umoci from
//! busybox-static and pushed with skopeo; pulls direct and through mirrors, a multi-platform
//! index, missing and invalid references, a corrupted blob, garbage collection and overlay
//! mounts of the pulled layers.
//!
//! Needs root (layer owners, whiteout device nodes, overlay mounts) and the tools installed by
//! hack/: docker-registry, umoci, skopeo, busybox-static.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrio::config::{ImageConfig, MirrorConfig, RegistryConfig};
use ferrio::image::manifest::Platform;
use ferrio::image::{overlay, ImageError, ImageStore};
use sha2::{Digest, Sha256};

/// A docker-registry on a free loopback port with its own storage; killed by pid on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        Self::start_with(None)
    }

    /// `htpasswd`: one `user:bcrypt-hash` line turns on basic auth.
    fn start_with(htpasswd: Option<&str>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let auth = match htpasswd {
            Some(line) => {
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, format!("{line}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: ferrio-test\n    path: {}\n",
                    file.display()
                )
            }
            None => String::new(),
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let reg = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Path of a blob's data file in the registry's filesystem storage.
    fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Build image `tag` in the OCI layout `layout` with umoci: busybox-static as /bin/busybox, a
/// /bin/sh link, a marker file, and a config with every field the store reads.
fn build_image(layout: &Path, tag: &str, marker: &str, arch: &str) {
    if !layout.join("index.json").exists() {
        run(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    }
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]));
    let bundle = layout.with_extension(format!("bundle-{tag}"));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::fs::write(rootfs.join("marker"), marker).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    std::fs::remove_dir_all(&bundle).unwrap();
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--architecture",
        arch,
        "--os",
        "linux",
        "--config.entrypoint",
        "/bin/busybox",
        "--config.cmd",
        "sh",
        "--config.env",
        "FOO=bar",
        "--config.workingdir",
        "/tmp",
        "--config.user",
        "1000:1000",
        "--config.stopsignal",
        "SIGQUIT",
        "--config.volume",
        "/data",
        "--config.label",
        "org.example=yes",
    ]));
}

fn push(layout: &Path, tag: &str, reg: &Registry, dest: &str, all: bool) {
    push_as(layout, tag, reg, dest, all, None)
}

fn push_as(layout: &Path, tag: &str, reg: &Registry, dest: &str, all: bool, creds: Option<&str>) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        cmd.arg(format!("--dest-creds={c}"));
    }
    if all {
        cmd.arg("--all");
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{dest}", reg.host()));
    run(&mut cmd);
}

/// The OCI layout's manifest (digest, parsed JSON) for `tag`.
fn layout_manifest(layout: &Path, tag: &str) -> (String, serde_json::Value) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in layout"));
    let digest = desc["digest"].as_str().unwrap().to_string();
    let blob = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    (
        digest,
        serde_json::from_slice(&std::fs::read(blob).unwrap()).unwrap(),
    )
}

/// A mirror config: `prefix` goes to the test registry (optionally after a dead mirror).
fn mirror_cfg(prefix: &str, reg: &Registry, dead_first: bool) -> ImageConfig {
    let mut mirror = Vec::new();
    if dead_first {
        // Nothing listens on port 1: connection refused at once.
        mirror.push(MirrorConfig {
            location: "127.0.0.1:1".into(),
            insecure: true,
            ..Default::default()
        });
    }
    mirror.push(MirrorConfig {
        location: reg.host(),
        insecure: true,
        ..Default::default()
    });
    ImageConfig {
        registry: vec![RegistryConfig {
            prefix: prefix.into(),
            location: String::new(),
            insecure: false,
            fallback: false,
            mirror,
        }],
        ..Default::default()
    }
}

/// Config that lets the test registry itself be reached over plain HTTP.
fn insecure_cfg(reg: &Registry) -> ImageConfig {
    ImageConfig {
        registry: vec![RegistryConfig {
            prefix: reg.host(),
            insecure: true,
            fallback: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_resolve_remove_through_mirror() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    build_image(&layout, "1.36", "busybox", &Platform::host().architecture);
    push(&layout, "1.36", &reg, "library/busybox:1.36", false);
    let (manifest_digest, manifest) = layout_manifest(&layout, "1.36");
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();

    let root = work.path().join("images");
    let store = std::sync::Arc::new(ImageStore::open(&root).unwrap());
    // docker.io goes to the loopback mirror only (fallback off: never the internet), after a
    // dead mirror that must be skipped quickly.
    let cfg = mirror_cfg("docker.io", &reg, true);
    let started = Instant::now();
    let (a, b) = tokio::join!(
        store.pull("busybox:1.36", &cfg, None),
        store.pull("busybox:1.36", &cfg, None)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "dead mirror cost {:?}",
        started.elapsed()
    );
    assert_eq!(a.id, config_digest, "image id is the config digest");
    assert_eq!(a, b, "concurrent pulls of one image agree");
    assert_eq!(a.repo_tags, vec!["docker.io/library/busybox:1.36"]);
    assert_eq!(
        a.repo_digests,
        vec![format!("docker.io/library/busybox@{manifest_digest}")]
    );
    assert_eq!(a.chain_ids.len(), 1);
    assert!(a.size > 500_000, "size {}", a.size);
    let c = &a.config;
    assert_eq!(c.entrypoint, vec!["/bin/busybox"]);
    assert_eq!(c.cmd, vec!["sh"]);
    assert!(c.env.contains(&"FOO=bar".to_string()), "{:?}", c.env);
    assert_eq!(c.working_dir, "/tmp");
    assert_eq!(c.user, "1000:1000");
    assert_eq!(c.stop_signal, "SIGQUIT");
    assert_eq!(c.volumes, vec!["/data"]);
    assert_eq!(c.labels.get("org.example").map(String::as_str), Some("yes"));

    // The layer is unpacked once, with the file, link and content intact.
    let layers = store.layer_dirs(&a);
    assert_eq!(layers.len(), 1);
    assert_eq!(
        std::fs::read(layers[0].join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        std::fs::read_link(layers[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(dir_names(&root.join("layers")).len(), 1);
    assert!(
        dir_names(&root.join("tmp")).is_empty(),
        "no leftovers after a pull"
    );

    // Every way kubelet and crictl name an image finds it.
    let hex = a.id.trim_start_matches("sha256:");
    for q in [
        a.id.clone(),
        hex.to_string(),
        hex[..12].to_string(),
        "busybox:1.36".into(),
        "docker.io/library/busybox:1.36".into(),
        format!("busybox@{manifest_digest}"),
    ] {
        assert_eq!(
            store.resolve(&q).as_ref().map(|i| &i.id),
            Some(&a.id),
            "resolve {q}"
        );
    }
    assert!(
        store.resolve("busybox").is_none(),
        "busybox:latest was never pulled"
    );
    assert_eq!(store.list().len(), 1);

    // Pulled again under another tag: one image, two tags.
    push(&layout, "1.36", &reg, "library/busybox:latest", false);
    let again = store
        .pull("docker.io/library/busybox", &cfg, None)
        .await
        .unwrap();
    assert_eq!(again.id, a.id);
    assert_eq!(store.list().len(), 1);
    assert_eq!(store.list()[0].repo_tags.len(), 2);

    // The index survives a restart.
    drop(store);
    let store = ImageStore::open(&root).unwrap();
    assert_eq!(
        store.resolve("busybox:1.36").map(|i| i.id),
        Some(a.id.clone())
    );

    // Removing one of two tags only untags; removing by id frees layers and blobs; idempotent.
    store.remove("busybox:latest").unwrap();
    assert!(store.resolve("busybox:latest").is_none());
    assert!(store.resolve("busybox:1.36").is_some());
    store.remove(&a.id).unwrap();
    store.remove(&a.id).unwrap();
    assert!(store.list().is_empty());
    assert!(dir_names(&root.join("layers")).is_empty());
    assert!(dir_names(&root.join("blobs/sha256")).is_empty());
    assert!(dir_names(&root.join("tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_for_registry_k8s_io_and_overlay_rootfs() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    build_image(&layout, "3.10", "pause", &Platform::host().architecture);
    push(&layout, "3.10", &reg, "pause:3.10", false);
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    let cfg = mirror_cfg("registry.k8s.io", &reg, false);
    let img = store
        .pull("registry.k8s.io/pause:3.10", &cfg, None)
        .await
        .unwrap();
    assert_eq!(img.repo_tags, vec!["registry.k8s.io/pause:3.10"]);
    assert!(img.repo_digests[0].starts_with("registry.k8s.io/pause@sha256:"));

    let rootfs = work.path().join("ctr");
    let merged = overlay::mount_rootfs(&store.layer_dirs(&img), &rootfs, None).unwrap();
    assert_eq!(merged, rootfs.join("merged"));
    assert!(merged.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_to_string(merged.join("marker")).unwrap(),
        "pause"
    );
    // Writes go to the upper directory, never into the shared layer.
    std::fs::write(merged.join("marker"), "changed").unwrap();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("upper/marker")).unwrap(),
        "changed"
    );
    assert_eq!(
        std::fs::read_to_string(store.layer_dirs(&img)[0].join("marker")).unwrap(),
        "pause"
    );
    overlay::unmount_rootfs(&rootfs).unwrap();
    assert!(!rootfs.exists());
    assert!(!overlay::is_mountpoint(&rootfs.join("merged")).unwrap());
    overlay::unmount_rootfs(&rootfs).unwrap();
    assert!(
        store.layer_dirs(&img)[0].join("bin/busybox").is_file(),
        "layer intact after unmount"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_platform_index_selects_this_node() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    let host = Platform::host();
    let other = if host.architecture == "s390x" {
        "ppc64le"
    } else {
        "s390x"
    };
    build_image(&layout, "native", "native", &host.architecture);
    build_image(&layout, "foreign", "foreign", other);
    let (native_digest, native) = layout_manifest(&layout, "native");
    let (foreign_digest, _) = layout_manifest(&layout, "foreign");
    let size_of = |d: &str| {
        std::fs::metadata(
            layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
        .len()
    };
    // An OCI index by hand: the foreign platform first, then ours, plus an attestation-like
    // unknown/unknown entry that must never be chosen.
    let mut native_platform = serde_json::json!({"os": "linux", "architecture": host.architecture});
    if let Some(v) = &host.variant {
        native_platform["variant"] = serde_json::json!(v);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": foreign_digest,
             "size": size_of(&foreign_digest), "platform": {"os": "linux", "architecture": other}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": native_digest,
             "size": size_of(&native_digest), "platform": native_platform},
        ]
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let index_digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    std::fs::write(
        layout
            .join("blobs/sha256")
            .join(index_digest.trim_start_matches("sha256:")),
        &bytes,
    )
    .unwrap();
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest,
            "size": bytes.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}
        }));
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    push(&layout, "multi", &reg, "multi/app:v1", true);

    let store = ImageStore::open(&work.path().join("images")).unwrap();
    let name = format!("{}/multi/app:v1", reg.host());
    let img = store.pull(&name, &insecure_cfg(&reg), None).await.unwrap();
    assert_eq!(img.id, native["config"]["digest"].as_str().unwrap());
    // The repo digest is the index's, so `name@digest` pulls the same on every platform.
    assert_eq!(
        img.repo_digests,
        vec![format!("{}/multi/app@{index_digest}", reg.host())]
    );
    let layer = &store.layer_dirs(&img)[0];
    assert_eq!(
        std::fs::read_to_string(layer.join("marker")).unwrap(),
        "native"
    );
    // By digest, too (no tag then).
    let by_digest = store
        .pull(
            &format!("{}/multi/app@{index_digest}", reg.host()),
            &insecure_cfg(&reg),
            None,
        )
        .await
        .unwrap();
    assert_eq!(by_digest.id, img.id);

    // A node of a platform the index lacks gets a clear error naming what is there.
    let other_store = ImageStore::open_with(
        &work.path().join("images2"),
        Default::default(),
        Platform {
            os: "linux".into(),
            architecture: "mips64le".into(),
            variant: None,
        },
    )
    .unwrap();
    let err = other_store
        .pull(&name, &insecure_cfg(&reg), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::NoMatchingPlatform { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(other), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_references_missing_images_and_corrupt_blobs() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("images");
    let store = ImageStore::open(&root).unwrap();
    let cfg = mirror_cfg("docker.io", &reg, false);

    match store.pull("Not A Valid//ref", &cfg, None).await {
        Err(ImageError::InvalidReference { reference, .. }) => {
            assert_eq!(reference, "Not A Valid//ref")
        }
        other => panic!("expected InvalidReference, got {other:?}"),
    }
    match store.pull("doesnotexist:1.0", &cfg, None).await {
        Err(e @ ImageError::NotFound { .. }) => {
            assert!(
                e.to_string().contains("docker.io/library/doesnotexist:1.0"),
                "{e}"
            )
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A registry that answers nothing at all is not "not found".
    let dead = mirror_cfg("example.org", &reg, false);
    let dead = ImageConfig {
        registry: vec![RegistryConfig {
            mirror: vec![MirrorConfig {
                location: "127.0.0.1:1".into(),
                insecure: true,
                ..Default::default()
            }],
            ..dead.registry[0].clone()
        }],
        ..dead
    };
    let err = store
        .pull("example.org/x:1", &dead, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err:?}");

    // A layer whose bytes changed in the registry: the pull fails naming the blob, keeps nothing.
    let layout = work.path().join("oci");
    build_image(&layout, "t", "x", &Platform::host().architecture);
    push(&layout, "t", &reg, "library/corrupt:t", false);
    let (_, manifest) = layout_manifest(&layout, "t");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let data = reg.blob_data(&layer);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let err = store.pull("corrupt:t", &cfg, None).await.unwrap_err();
    assert!(err.to_string().contains(&layer), "{err}");
    assert!(store.list().is_empty());
    assert!(dir_names(&root.join("layers")).is_empty());
    assert!(dir_names(&root.join("tmp")).is_empty());
    assert!(dir_names(&root.join("blobs/sha256")).is_empty());
}

#[test]
fn open_sweeps_leftovers_of_interrupted_pulls() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("images");
    drop(ImageStore::open(&root).unwrap());
    std::fs::create_dir_all(root.join("tmp/half-unpacked/diff/etc")).unwrap();
    std::fs::create_dir_all(root.join("layers/abc/diff")).unwrap();
    std::fs::write(root.join("blobs/sha256/def"), b"{}").unwrap();
    let store = ImageStore::open(&root).unwrap();
    assert!(store.list().is_empty());
    assert!(dir_names(&root.join("tmp")).is_empty());
    assert!(dir_names(&root.join("layers")).is_empty());
    assert!(dir_names(&root.join("blobs/sha256")).is_empty());
}

#[test]
fn overlay_with_more_layers_than_one_option_page() {
    let work = tempfile::tempdir().unwrap();
    // 200 layers with ~120-byte paths: ~24 KiB of absolute lowerdirs, far beyond one page.
    let long = "l".repeat(100);
    let layers: Vec<PathBuf> = (0..200)
        .map(|i| {
            let d = work.path().join(format!("{long}-{i:04}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("f{i}")), i.to_string()).unwrap();
            std::fs::write(d.join("top"), i.to_string()).unwrap();
            d
        })
        .collect();
    let dir = work.path().join("rootfs");
    let merged = overlay::mount_rootfs(&layers, &dir, None).unwrap();
    let top = std::fs::read_to_string(merged.join("top"));
    let first = std::fs::read_to_string(merged.join("f0"));
    let last = std::fs::read_to_string(merged.join("f199"));
    overlay::unmount_rootfs(&dir).unwrap();
    assert_eq!(top.unwrap(), "199", "the last layer is on top");
    assert_eq!(first.unwrap(), "0");
    assert_eq!(last.unwrap(), "199");
    assert!(!dir.exists());
}

/// bcrypt (cost 4, so the registry answers fast) of the password `s3cret`.
const HTPASSWD: &str = "tester:$2b$04$vEeDbN.vrOtjl0Ki.8Zh3OVIOJsFKXEdWwany2IoyygP7m/TABujW";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_pull_request_credentials() {
    use base64::Engine;
    use ferrio::image::RegistryAuth;

    let reg = Registry::start_with(Some(HTPASSWD));
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    build_image(&layout, "1", "private", &Platform::host().architecture);
    push_as(
        &layout,
        "1",
        &reg,
        "private/app:1",
        false,
        Some("tester:s3cret"),
    );
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    let cfg = mirror_cfg("quay.io", &reg, false);

    let err = store
        .pull("quay.io/private/app:1", &cfg, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err:?}");
    assert!(err.to_string().contains("basic auth"), "{err}");
    let wrong = RegistryAuth {
        username: "tester".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    assert!(store
        .pull("quay.io/private/app:1", &cfg, Some(&wrong))
        .await
        .is_err());
    assert!(store.list().is_empty());

    let right = RegistryAuth {
        username: "tester".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    let img = store
        .pull("quay.io/private/app:1", &cfg, Some(&right))
        .await
        .unwrap();
    assert_eq!(img.repo_tags, vec!["quay.io/private/app:1"]);
    store.remove(&img.id).unwrap();
    // The base64 `auth` form of the same credentials.
    let encoded = RegistryAuth {
        auth: base64::engine::general_purpose::STANDARD.encode("tester:s3cret"),
        ..Default::default()
    };
    let img2 = store
        .pull("quay.io/private/app:1", &cfg, Some(&encoded))
        .await
        .unwrap();
    assert_eq!(img2.id, img.id);
}

/// The daemon holds the store in an Arc and awaits pulls inside tonic handlers.
#[allow(dead_code)]
fn store_and_pull_are_send_and_sync(store: std::sync::Arc<ImageStore>, cfg: ImageConfig) {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    send_sync(&store);
    send(async move { store.pull("busybox", &cfg, None).await });
}

#[path = "image_proxy.rs"]
mod proxy;

use ferrio::config::PullFromMirror;
use proxy::{Mode, Server, TokenAuth};

/// Image `tag` in `layout` with `n` layers, each adding a `layer<i>` file of `size` random bytes
/// (busybox in the first).
fn build_layered(layout: &Path, tag: &str, n: usize, size: usize) {
    build_image(layout, tag, tag, &Platform::host().architecture);
    let image = format!("{}:{tag}", layout.display());
    for i in 1..n {
        let bundle = layout.with_extension(format!("bundle-{tag}-{i}"));
        run(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle));
        let data: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
        std::fs::write(bundle.join(format!("rootfs/layer{i}")), data).unwrap();
        run(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle));
        std::fs::remove_dir_all(&bundle).unwrap();
    }
}

fn mirror(location: String, timeout: &str, pull_from: PullFromMirror) -> MirrorConfig {
    MirrorConfig {
        location,
        insecure: true,
        timeout: timeout.into(),
        pull_from_mirror: pull_from,
    }
}

fn registry_cfg(prefix: &str, mirrors: Vec<MirrorConfig>) -> RegistryConfig {
    RegistryConfig {
        prefix: prefix.into(),
        mirror: mirrors,
        ..Default::default()
    }
}

fn proxy_to(reg: &Registry) -> Mode {
    Mode::Proxy {
        backend: reg.host(),
        auth: None,
        throttle: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_404_and_dead_mirrors_cost_their_own_timeout() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    build_image(&layout, "1", "m", &Platform::host().architecture);
    push(&layout, "1", &reg, "library/mirrored:1", false);
    let stall = Server::start(Mode::Stall).await;
    let gone = Server::start(Mode::NotFound).await;
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    let cfg = ImageConfig {
        registry: vec![registry_cfg(
            "docker.io",
            vec![
                mirror(stall.host(), "1s", PullFromMirror::All),
                mirror(gone.host(), "1s", PullFromMirror::All),
                mirror("127.0.0.1:1".into(), "1s", PullFromMirror::All),
                mirror(reg.host(), "", PullFromMirror::All),
            ],
        )],
        ..Default::default()
    };
    let started = Instant::now();
    let img = store.pull("mirrored:1", &cfg, None).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "the stalled mirror was tried: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "each bad mirror cost at most 1s: {took:?}"
    );
    assert_eq!(
        stall.seen.count("GET"),
        0,
        "the stalled mirror never read a request"
    );
    assert_eq!(gone.seen.count("GET /v2/library/mirrored/manifests/1"), 1);
    assert_eq!(img.repo_tags, vec!["docker.io/library/mirrored:1"]);

    // A mirror that stalls in the middle of a blob: also skipped after its timeout. The proxy
    // sends 16 KiB every 3s, so a 1s read timeout fires during the body.
    let slow = Server::start(Mode::Proxy {
        backend: reg.host(),
        auth: None,
        throttle: Some(Duration::from_secs(3)),
    })
    .await;
    store.remove(&img.id).unwrap();
    let cfg = ImageConfig {
        registry: vec![registry_cfg(
            "docker.io",
            vec![
                mirror(slow.host(), "1s", PullFromMirror::All),
                mirror(reg.host(), "", PullFromMirror::All),
            ],
        )],
        ..Default::default()
    };
    let started = Instant::now();
    store.pull("mirrored:1", &cfg, None).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "a stalled blob costs its read timeout: {took:?}"
    );
    assert!(
        slow.seen.count("/blobs/") >= 1,
        "the slow mirror was tried first"
    );
    assert!(dir_names(&work.path().join("images/tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_mirror_and_longest_prefix() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    build_image(&layout, "1", "p", &Platform::host().architecture);
    push(&layout, "1", &reg, "library/pfm:1", false);
    let (digest, _) = layout_manifest(&layout, "1");
    let digest_only = Server::start(proxy_to(&reg)).await;
    let tag_only = Server::start(proxy_to(&reg)).await;
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    // `docker.io` alone leads nowhere (a dead mirror, no fallback); `docker.io/library` is the
    // longer prefix and wins for library images.
    let cfg = ImageConfig {
        registry: vec![
            registry_cfg(
                "docker.io",
                vec![mirror("127.0.0.1:1".into(), "1s", PullFromMirror::All)],
            ),
            registry_cfg(
                "docker.io/library",
                vec![
                    mirror(
                        format!("{}/library", digest_only.host()),
                        "",
                        PullFromMirror::DigestOnly,
                    ),
                    mirror(
                        format!("{}/library", tag_only.host()),
                        "",
                        PullFromMirror::TagOnly,
                    ),
                ],
            ),
        ],
        ..Default::default()
    };
    let by_tag = store.pull("pfm:1", &cfg, None).await.unwrap();
    assert_eq!(
        digest_only.seen.count("GET"),
        0,
        "digest-only mirror skipped for a tag"
    );
    assert!(tag_only.seen.count("/manifests/1") == 1);
    store.remove(&by_tag.id).unwrap();
    let tag_requests = tag_only.seen.count("GET");
    let by_digest = store
        .pull(&format!("pfm@{digest}"), &cfg, None)
        .await
        .unwrap();
    assert_eq!(by_digest.id, by_tag.id);
    assert_eq!(
        tag_only.seen.count("GET"),
        tag_requests,
        "tag-only mirror skipped for a digest"
    );
    assert_eq!(digest_only.seen.count(&format!("/manifests/{digest}")), 1);
    // Outside docker.io/library only the dead mirror applies.
    let err = store.pull("someone/pfm:1", &cfg, None).await.unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_auth_in_every_form_and_the_global_auth_file() {
    use base64::Engine;
    use ferrio::image::RegistryAuth;

    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    build_image(&layout, "1", "tok", &Platform::host().architecture);
    push(&layout, "1", &reg, "team/private:1", false);
    let token = TokenAuth {
        username: "alice".into(),
        password: "wonder land".into(),
        refresh_token: "refresh-xyz".into(),
        token: format!("tok-{}", rand::random::<u64>()),
    };
    let auth_proxy = Server::start(Mode::Proxy {
        backend: reg.host(),
        auth: Some(token.clone()),
        throttle: None,
    })
    .await;
    let mut cfg = ImageConfig {
        registry: vec![registry_cfg(
            "quay.io",
            vec![mirror(auth_proxy.host(), "", PullFromMirror::All)],
        )],
        ..Default::default()
    };
    let root = work.path().join("images");
    let store = ImageStore::open(&root).unwrap();
    let name = "quay.io/team/private:1";

    let err = store.pull(name, &cfg, None).await.unwrap_err();
    assert!(err.to_string().contains("token request"), "{err}");
    let wrong = RegistryAuth {
        username: "alice".into(),
        password: "nope".into(),
        ..Default::default()
    };
    assert!(store.pull(name, &cfg, Some(&wrong)).await.is_err());
    assert!(store.list().is_empty());

    let forms = [
        RegistryAuth {
            username: "alice".into(),
            password: "wonder land".into(),
            ..Default::default()
        },
        RegistryAuth {
            auth: base64::engine::general_purpose::STANDARD.encode("alice:wonder land"),
            ..Default::default()
        },
        RegistryAuth {
            identity_token: "refresh-xyz".into(),
            ..Default::default()
        },
        RegistryAuth {
            registry_token: token.token.clone(),
            ..Default::default()
        },
    ];
    for (i, auth) in forms.iter().enumerate() {
        let img = store
            .pull(name, &cfg, Some(auth))
            .await
            .unwrap_or_else(|e| panic!("auth form {i}: {e}"));
        assert_eq!(img.repo_tags, vec![name]);
        store.remove(&img.id).unwrap();
    }
    // The token requests named the service and the repository's pull scope; the identity
    // token went as an OAuth2 refresh grant.
    let seen = auth_proxy.seen.token_requests.lock().unwrap().clone();
    assert!(
        seen.iter().all(
            |q| q.contains("service=ferrio-test") && q.contains("repository:team/private:pull")
        ),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .any(|q| q.starts_with("POST") && q.contains("grant_type=refresh_token")));

    // No credentials in the request: the global auth file's entry for the mirror host.
    let auth_file = work.path().join("auth.json");
    std::fs::write(
        &auth_file,
        serde_json::json!({"auths": {
            "ghcr.io": {"auth": "eDp5"},
            format!("http://{}", auth_proxy.host()): {
                "auth": base64::engine::general_purpose::STANDARD.encode("alice:wonder land")
            }
        }})
        .to_string(),
    )
    .unwrap();
    cfg.global_auth_file = auth_file;
    let img = store.pull(name, &cfg, None).await.unwrap();
    assert_eq!(img.repo_tags, vec![name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_share_downloads_and_parallelism_is_bounded() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    build_layered(&layout, "5", 5, 300_000);
    push(&layout, "5", &reg, "library/layered:5", false);
    let (_, manifest) = layout_manifest(&layout, "5");
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(layers.len(), 5);
    let throttled = || Mode::Proxy {
        backend: reg.host(),
        auth: None,
        throttle: Some(Duration::from_millis(20)),
    };

    for (parallel, expect_max) in [(1usize, 1usize), (3, 3)] {
        let p = Server::start(throttled()).await;
        let store = std::sync::Arc::new(
            ImageStore::open(&work.path().join(format!("images{parallel}"))).unwrap(),
        );
        let cfg = ImageConfig {
            registry: vec![registry_cfg(
                "docker.io",
                vec![mirror(p.host(), "", PullFromMirror::All)],
            )],
            max_concurrent_downloads: parallel,
            ..Default::default()
        };
        let (a, b) = tokio::join!(
            store.pull("layered:5", &cfg, None),
            store.pull("docker.io/library/layered:5", &cfg, None)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a, b);
        for l in &layers {
            assert_eq!(
                p.seen.count(&format!("/blobs/{l}")),
                1,
                "layer {l} downloaded once"
            );
        }
        let max = p
            .seen
            .max_inflight
            .load(std::sync::atomic::Ordering::SeqCst);
        if parallel == 1 {
            assert_eq!(max, 1, "one layer at a time");
        } else {
            assert!(max > 1 && max <= expect_max, "parallel downloads: {max}");
        }
        assert_eq!(store.layer_dirs(&a).len(), 5);
        for (i, d) in store.layer_dirs(&a).iter().enumerate().skip(1) {
            assert_eq!(
                std::fs::metadata(d.join(format!("layer{i}")))
                    .unwrap()
                    .len(),
                300_000
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_pull_leaves_nothing_and_logs_progress() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    build_layered(&layout, "3", 3, 400_000);
    push(&layout, "3", &reg, "library/slowpoke:3", false);
    let p = Server::start(Mode::Proxy {
        backend: reg.host(),
        auth: None,
        throttle: Some(Duration::from_millis(50)),
    })
    .await;
    let logs = capture_logs();
    let root = work.path().join("images");
    let store = std::sync::Arc::new(ImageStore::open(&root).unwrap());
    store.set_progress_interval(Duration::from_millis(200));
    let cfg = ImageConfig {
        registry: vec![registry_cfg(
            "docker.io",
            vec![mirror(p.host(), "", PullFromMirror::All)],
        )],
        ..Default::default()
    };
    let (s, c) = (store.clone(), cfg.clone());
    let pull = tokio::spawn(async move { s.pull("slowpoke:3", &c, None).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.seen.blob_bytes.load(std::sync::atomic::Ordering::SeqCst) < 300_000 {
        assert!(Instant::now() < deadline, "no blob bytes flowed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The pull is dropped mid-download (as when the daemon stops): nothing half-done remains.
    pull.abort();
    assert!(pull.await.unwrap_err().is_cancelled());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir_names(&root.join("tmp")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "tmp not cleaned: {:?}",
            dir_names(&root.join("tmp"))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.list().is_empty());
    drop(store);
    // After a "restart" nothing of the interrupted pull is left either, and it pulls cleanly.
    let store = ImageStore::open(&root).unwrap();
    assert!(store.list().is_empty());
    assert!(
        dir_names(&root.join("layers")).is_empty(),
        "{:?}",
        dir_names(&root.join("layers"))
    );
    assert!(dir_names(&root.join("blobs/sha256")).is_empty());
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("pull in progress") && l.contains("slowpoke"))
        .unwrap_or_else(|| panic!("no progress line in:\n{text}"));
    assert!(
        line.contains("downloaded_bytes=") && line.contains("layers=3"),
        "{line}"
    );
    let img = store
        .pull("slowpoke:3", &mirror_cfg("docker.io", &reg, false), None)
        .await
        .unwrap();
    assert_eq!(img.chain_ids.len(), 3);
}

/// Route every tracing event of this test process into a buffer (once; tests share it).
fn capture_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static BUF: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    BUF.get_or_init(|| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let b = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(b.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
    .clone()
}

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Write blob `bytes` into the OCI layout; returns its digest.
fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// An OCI layout holding one image `tag` whose single layer is the tar `layer` (gzipped here).
fn layout_with_layer(layout: &Path, tag: &str, layer: &[u8]) {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(layer).unwrap();
    let gz = gz.finish().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(layer)));
    let layer_digest = put_blob(layout, &gz);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": Platform::host().architecture, "os": "linux",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    }))
    .unwrap();
    let config_digest = put_blob(layout, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": gz.len()}]
    }))
    .unwrap();
    let manifest_digest = put_blob(layout, &manifest);
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": manifest_digest, "size": manifest.len(),
                           "annotations": {"org.opencontainers.image.ref.name": tag}}]
        }))
        .unwrap(),
    )
    .unwrap();
}

/// A tar whose entries the `tar` builder would refuse to write (`..`, absolute names) is built
/// from raw headers.
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        let raw = h.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_layers_from_a_registry_are_refused() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("images");
    let store = ImageStore::open(&root).unwrap();
    let cfg = mirror_cfg("docker.io", &reg, false);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            raw_tar(&[("../../evil", Regular, "", b"x")]),
            "../../evil",
        ),
        (
            "absolute",
            raw_tar(&[("/etc/evil", Regular, "", b"x")]),
            "/etc/evil",
        ),
        (
            "symlink",
            raw_tar(&[
                ("out", Symlink, "/tmp", b""),
                ("out/evil", Regular, "", b"x"),
            ]),
            "out/evil",
        ),
        (
            "hardlink",
            raw_tar(&[
                ("d", Directory, "", b""),
                ("d/passwd", Link, "../../etc/passwd", b""),
            ]),
            "d/passwd",
        ),
    ];
    for (tag, layer, entry) in cases {
        let layout = work.path().join(format!("oci-{tag}"));
        layout_with_layer(&layout, tag, &layer);
        push(&layout, tag, &reg, &format!("library/evil:{tag}"), false);
        let err = store
            .pull(&format!("evil:{tag}"), &cfg, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImageError::UnsafeEntry { .. }),
            "{tag}: {err:?}"
        );
        assert!(err.to_string().contains(entry), "{tag}: {err}");
    }
    assert!(store.list().is_empty());
    assert!(dir_names(&root.join("layers")).is_empty());
    assert!(dir_names(&root.join("tmp")).is_empty());
    assert!(!Path::new("/tmp/evil").exists());
}
