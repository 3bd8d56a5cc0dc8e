//! The CRI ImageService of a real ferrio against the local test registry (`hack/test-registry.sh`):
//! verbose ImageStatus, ListImages filters, RemoveImage by id/tag/digest with the in-use check and
//! idempotence, ImageFsInfo, and pinned images.
//!
//! Needs root and `FERRIO_TEST_REGISTRY` (as the `e2e` target does).

#[path = "harness/mod.rs"]
mod harness;

use ferrio::cri::v1::{
    CreateContainerRequest, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest,
    ListImagesRequest, PullImageRequest, RemoveContainerRequest, RemoveImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use harness::{container_config, pod_config, Cri, Daemon, LearnedPids, Opts};
use tonic::Code;

const BUSYBOX: &str = "docker.io/library/busybox:1.36";
const PAUSE: &str = "registry.k8s.io/pause:3.10";

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn pull(cri: &mut Cri, image: &str) -> String {
    cri.img
        .pull_image(PullImageRequest {
            image: spec(image),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("PullImage {image}: {e}"))
        .into_inner()
        .image_ref
}

async fn status(cri: &mut Cri, image: &str, verbose: bool) -> ferrio::cri::v1::ImageStatusResponse {
    cri.img
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose,
        })
        .await
        .unwrap_or_else(|e| panic!("ImageStatus {image}: {e}"))
        .into_inner()
}

async fn list(cri: &mut Cri, filter: Option<&str>) -> Vec<ferrio::cri::v1::Image> {
    cri.img
        .list_images(ListImagesRequest {
            filter: filter.map(|f| ImageFilter { image: spec(f) }),
        })
        .await
        .unwrap_or_else(|e| panic!("ListImages: {e}"))
        .into_inner()
        .images
}

async fn remove(cri: &mut Cri, image: &str) -> Result<(), tonic::Status> {
    cri.img
        .remove_image(RemoveImageRequest { image: spec(image) })
        .await
        .map(|_| ())
}

async fn fs_info(cri: &mut Cri) -> ferrio::cri::v1::ImageFsInfoResponse {
    cri.img
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap_or_else(|e| panic!("ImageFsInfo: {e}"))
        .into_inner()
}

#[tokio::test]
async fn status_list_fs_info_pinned_and_remove() {
    let d = Daemon::start(Opts {
        configure: Some(Box::new(|c| {
            c.image.pinned_images = vec!["docker.io/library/busy*".into()];
        })),
        ..Default::default()
    })
    .await;
    let mut cri = d.client().await;
    let root = d.env().root();

    // Nothing yet: an empty image filesystem, a missing image is an empty status (no error).
    let empty = fs_info(&mut cri).await;
    assert_eq!(empty.image_filesystems.len(), 1);
    let ifs = &empty.image_filesystems[0];
    assert_eq!(
        ifs.fs_id.as_ref().unwrap().mountpoint,
        root.join("images").display().to_string()
    );
    assert_eq!(ifs.used_bytes.as_ref().unwrap().value, 0);
    assert!(ifs.timestamp > 1_700_000_000_000_000_000, "nanoseconds");
    assert_eq!(
        empty.container_filesystems[0]
            .fs_id
            .as_ref()
            .unwrap()
            .mountpoint,
        root.join("overlay").display().to_string()
    );
    let missing = status(&mut cri, BUSYBOX, true).await;
    assert!(missing.image.is_none() && missing.info.is_empty());
    remove(&mut cri, BUSYBOX).await.expect("absent: success");

    let id = pull(&mut cri, "busybox:1.36").await;
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let st = status(&mut cri, BUSYBOX, true).await;
    let img = st.image.expect("pulled image has a status");
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec![BUSYBOX]);
    assert!(img.repo_digests[0].starts_with("docker.io/library/busybox@sha256:"));
    assert!(img.pinned, "matches the pinned_images glob");
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["os"], "linux", "{info}");
    assert!(info["imageSpec"]["rootfs"]["diff_ids"].is_array(), "{info}");
    assert!(info["imageSpec"]["config"].is_object(), "{info}");
    assert_eq!(info["chainIDs"].as_array().unwrap().len(), 1);
    assert!(info["manifestDigest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert!(status(&mut cri, BUSYBOX, false).await.info.is_empty());

    // The image filesystem grew by about the unpacked layer (busybox-static is ~2 MB).
    let after = fs_info(&mut cri).await.image_filesystems[0].clone();
    let used = after.used_bytes.unwrap().value;
    assert!(used > 1_000_000, "used {used}");
    assert!(after.inodes_used.unwrap().value > 3);

    // The sandbox image is pinned although no pinned_images entry names it.
    let pause_id = pull(&mut cri, PAUSE).await;
    let pause = status(&mut cri, PAUSE, false).await.image.unwrap();
    assert!(pause.pinned);
    assert_eq!(pause.id, pause_id);

    // ListImages: everything, or what the filter names (tag, id, digest); an unknown name none.
    assert_eq!(list(&mut cri, None).await.len(), 2);
    for f in [
        "busybox:1.36",
        BUSYBOX,
        id.as_str(),
        &id[7..19],
        img.repo_digests[0].as_str(),
    ] {
        let l = list(&mut cri, Some(f)).await;
        assert_eq!(l.len(), 1, "filter {f}");
        assert_eq!(l[0].id, id, "filter {f}");
    }
    assert!(list(&mut cri, Some("nothere:1")).await.is_empty());
    let e = cri
        .img
        .pull_image(PullImageRequest {
            image: spec("Bad Ref"),
            ..Default::default()
        })
        .await
        .expect_err("invalid reference");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // In use by a container: RemoveImage is refused until the container is gone.
    let learned = LearnedPids::default();
    let pod = pod_config(d.env(), "imgsvc");
    let pod_id = cri
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
        .into_inner()
        .pod_sandbox_id;
    let ctr = cri
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config("c", BUSYBOX, &["true"])),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}"))
        .into_inner()
        .container_id;
    for name in [id.as_str(), BUSYBOX, img.repo_digests[0].as_str()] {
        let e = remove(&mut cri, name).await.expect_err("image in use");
        assert_eq!(e.code(), Code::FailedPrecondition, "{name}: {e}");
        assert!(e.message().contains(&ctr), "{e}");
    }
    cri.rt
        .remove_container(RemoveContainerRequest {
            container_id: ctr.clone(),
        })
        .await
        .unwrap();
    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap();
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap();

    // By digest, then (idempotent) by id and tag: gone, and its layer's bytes are freed.
    remove(&mut cri, &img.repo_digests[0]).await.unwrap();
    remove(&mut cri, &id).await.unwrap();
    remove(&mut cri, BUSYBOX).await.unwrap();
    assert!(status(&mut cri, BUSYBOX, false).await.image.is_none());
    assert_eq!(list(&mut cri, None).await.len(), 1);
    let freed = fs_info(&mut cri).await.image_filesystems[0]
        .used_bytes
        .unwrap()
        .value;
    assert!(freed + 1_000_000 < used, "freed {freed} < used {used}");

    // By tag and by id for the pause image.
    remove(&mut cri, PAUSE).await.unwrap();
    assert!(list(&mut cri, None).await.is_empty());
    assert_eq!(
        fs_info(&mut cri).await.image_filesystems[0]
            .used_bytes
            .unwrap()
            .value,
        0
    );
    d.assert_no_leaks(&learned);
}

#[path = "image_proxy.rs"]
#[allow(dead_code)]
mod proxy;

/// The daemon is SIGKILLed in the middle of a (slowed down) pull: after a restart there is no
/// half image, no stray layer, blob or temporary file, and the image pulls cleanly.
#[tokio::test]
async fn daemon_killed_mid_pull_leaves_no_half_image() {
    let backend = std::env::var(harness::REGISTRY_ENV).unwrap_or_default();
    let slow = proxy::Server::start(proxy::Mode::Proxy {
        backend,
        auth: None,
        throttle: Some(std::time::Duration::from_millis(40)),
    })
    .await;
    let mirror = slow.host();
    let d = Daemon::start(Opts {
        configure: Some(Box::new(move |c| {
            for r in c
                .image
                .registry
                .iter_mut()
                .filter(|r| r.prefix == "docker.io")
            {
                r.mirror[0].location = mirror.clone();
            }
        })),
        ..Default::default()
    })
    .await;
    let env = d.env().clone();
    let images = env.root().join("images");
    let mut cri = d.client().await;
    let pulling = tokio::spawn(async move { pull(&mut cri, BUSYBOX).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while slow
        .seen
        .blob_bytes
        .load(std::sync::atomic::Ordering::SeqCst)
        < 200_000
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(pulling.await.is_err(), "the pull died with the daemon");
    drop(d);
    assert!(
        !names(&images.join("tmp")).is_empty(),
        "the kill did interrupt an unpack"
    );

    let d = Daemon::start_on(&env).await;
    let mut cri = d.client().await;
    assert!(list(&mut cri, None).await.is_empty(), "no half image");
    assert!(names(&images.join("tmp")).is_empty());
    assert!(names(&images.join("layers")).is_empty());
    assert!(names(&images.join("blobs/sha256")).is_empty());
    let id = pull(&mut cri, BUSYBOX).await;
    assert_eq!(status(&mut cri, BUSYBOX, false).await.image.unwrap().id, id);
    d.assert_no_leaks(&LearnedPids::default());
}

fn names(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
