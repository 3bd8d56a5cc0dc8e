//! Live reload: the config files rewritten, SIGHUP, and the change seen through CRI (handlers,
//! the network and sandbox image of new pods, pulls through a new mirror, pinned images), while a
//! pod from before the reload still stops and removes with what it started with; a broken config
//! is refused and the old one keeps serving.

use crate::harness::{
    container_config, pod_config, pod_status, run_pod, start_container, stop_and_remove_pod,
    wait_for_container_state, Cri, Daemon, Env, LearnedPids, Opts, REGISTRY_ENV,
};
use ferrio::config::{Config, MirrorConfig, RegistryConfig, RuntimeHandler};
use ferrio::cri::v1::{
    ContainerState, ImageSpec, ImageStatusRequest, PodSandboxConfig, PullImageRequest,
    StatusRequest,
};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const PAUSE_VIA_NEW_MIRROR: &str = "reload.test/pause:3.10";
const BUSYBOX: &str = "docker.io/library/busybox:1.36";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Options with the metrics endpoint on `port`.
fn with_metrics(port: u16) -> Opts {
    Opts {
        configure: Some(Box::new(move |c: &mut Config| {
            c.metrics.enable = true;
            c.metrics.address = format!("127.0.0.1:{port}");
        })),
        ..Default::default()
    }
}

async fn scrape(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Edit the env's config file as an operator would (the daemon keeps running).
fn rewrite(env: &Env, edit: impl FnOnce(&mut Config)) {
    let text = std::fs::read_to_string(env.config_path()).expect("read the config file");
    let mut c: Config = toml::from_str(&text).expect("the config file parses");
    edit(&mut c);
    std::fs::write(env.config_path(), toml::to_string_pretty(&c).unwrap())
        .expect("write the config file");
}

/// Create and start a container running `sleep` in a pod; returns its id once running.
async fn start_sleeper(cri: &mut Cri, pod_id: &str, pod: &PodSandboxConfig, name: &str) -> String {
    start_container(
        cri,
        pod_id,
        pod,
        container_config(name, BUSYBOX, &["sleep", "300"]),
    )
    .await
}

/// (ip, verbose info) of a pod.
async fn pod_ip(cri: &mut Cri, id: &str) -> (String, serde_json::Value) {
    let (status, info) = pod_status(cri, id).await;
    (status.network.map(|n| n.ip).unwrap_or_default(), info)
}

/// The configured runtime handlers Status reports, sorted, and whether the network is ready.
async fn handlers_and_network(cri: &mut Cri) -> (Vec<String>, bool) {
    let st = cri
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    // The default handler is listed under "" too (e2e/conformance.rs checks that); the names here are
    // the configured ones.
    let mut names: Vec<String> = st
        .runtime_handlers
        .into_iter()
        .map(|h| h.name)
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    let net = st
        .status
        .map(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "NetworkReady" && c.status)
        })
        .unwrap_or(false);
    (names, net)
}

async fn image_status(cri: &mut Cri, image: &str) -> Option<ferrio::cri::v1::Image> {
    cri.img
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image
}

async fn assert_no_leaks_soon(d: &Daemon, learned: &LearnedPids) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.env().leaks(&[d.pid()], learned).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.assert_no_leaks(learned);
}

/// Entries of a directory (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn reload_applies_to_new_pods_and_old_pods_keep_what_they_started_with() {
    let port = free_port();
    let d = Daemon::start(with_metrics(port)).await;
    let env = d.env().clone();
    let mut cri = d.client().await;
    let registry = std::env::var(REGISTRY_ENV).expect("the test registry");

    // A pod from before the reload, on the handler whose state dir the reload moves, with a
    // container running in it.
    cri.img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("PullImage busybox");
    let before_cfg = pod_config(&env, "before");
    let before = run_pod(&mut cri, &before_cfg, "")
        .await
        .expect("RunPodSandbox before the reload");
    let c1 = start_sleeper(&mut cri, &before, &before_cfg, "c1").await;
    let (ip_before, _) = pod_ip(&mut cri, &before).await;
    assert!(env.in_subnet(&ip_before), "{ip_before}");
    assert_eq!(
        handlers_and_network(&mut cri).await,
        (vec!["crun".to_string(), "runc".to_string()], true)
    );
    assert!(
        image_status(&mut cri, PAUSE_VIA_NEW_MIRROR).await.is_none(),
        "nothing maps reload.test to a registry yet"
    );
    assert!(
        d.log_tail(10_000).contains("DEBUG"),
        "the test daemon starts at debug"
    );

    // A second network in a new dir: the same bridge and subnet, its own name and address range,
    // so a pod's address shows which one it got.
    let net2 = env.dir().join("net2.d");
    let net2_name = format!("{}r", env.network_name());
    let prefix = env.subnet().trim_end_matches("0/24").to_string();
    std::fs::create_dir_all(&net2).unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": net2_name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": env.bridge(),
                "isGateway": true,
                "ipMasq": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": env.ipam_dir(),
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "ranges": [[{
                        "subnet": env.subnet(),
                        "rangeStart": format!("{prefix}200"),
                        "rangeEnd": format!("{prefix}250"),
                    }]]
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    });
    std::fs::write(
        net2.join("10-reload.conflist"),
        serde_json::to_string_pretty(&conflist).unwrap(),
    )
    .unwrap();

    let moved_root = env.runroot().join("oci").join("runc-moved");
    let (net2_dir, moved) = (net2.clone(), moved_root.clone());
    rewrite(&env, move |c| {
        c.log_level = ferrio::config::LogLevel::Info;
        c.image.sandbox_image = PAUSE_VIA_NEW_MIRROR.into();
        c.image.registry.push(RegistryConfig {
            prefix: "reload.test".into(),
            fallback: false,
            mirror: vec![MirrorConfig {
                location: registry,
                insecure: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        c.runtime.runtimes.remove("crun");
        c.runtime.runtimes.insert(
            "runc-b".into(),
            RuntimeHandler {
                runtime_path: "/usr/sbin/runc".into(),
                ..Default::default()
            },
        );
        c.runtime.runtimes.get_mut("runc").unwrap().runtime_root = moved;
        c.network.network_dir = net2_dir;
        // Not live: logged and ignored (metrics keep serving on the old port).
        c.metrics.address = "127.0.0.1:1".into();
        c.api.stream_token_ttl = "2m".into();
    });
    let log = d.sighup().await;
    // Everything logged after the reload's last line is under the new level.
    let reloaded_at = std::fs::read_to_string(env.daemon_log()).unwrap().len();
    assert!(log.contains("config reloaded"), "{log}");
    for key in [
        "image.sandbox_image",
        "image.registry",
        "runtime.runtimes.crun",
        "runtime.runtimes.runc-b",
        "network.network_dir",
        "log_level",
    ] {
        assert!(log.contains(key), "{key} applied: {log}");
    }
    assert!(
        log.contains("need a restart")
            && log.contains("metrics.address")
            && log.contains("api.stream_token_ttl"),
        "{log}"
    );

    // Handlers: crun gone, runc-b there; the new network is ready.
    assert_eq!(
        handlers_and_network(&mut cri).await,
        (vec!["runc".to_string(), "runc-b".to_string()], true)
    );
    let e = run_pod(&mut cri, &pod_config(&env, "gone"), "crun")
        .await
        .expect_err("crun was removed");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // A new pod on the new handler: the new network, and the new sandbox image pulled through
    // the new mirror.
    let after = run_pod(&mut cri, &pod_config(&env, "after"), "runc-b")
        .await
        .expect("RunPodSandbox on the new handler");
    let (ip_after, info) = pod_ip(&mut cri, &after).await;
    let last: u8 = ip_after.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        env.in_subnet(&ip_after) && (200..=250).contains(&last),
        "the pod got the new network's range: {ip_after}"
    );
    assert_eq!(info["image"], PAUSE_VIA_NEW_MIRROR, "{info}");
    assert_eq!(info["runtimeHandler"], "runc-b", "{info}");
    let pause = image_status(&mut cri, PAUSE_VIA_NEW_MIRROR)
        .await
        .expect("the new sandbox image was pulled through the new mirror");
    assert!(pause.pinned, "the sandbox image is pinned: {pause:?}");

    // A new pod on the changed handler runs under its new state dir.
    let moved_pod = run_pod(&mut cri, &pod_config(&env, "moved"), "runc")
        .await
        .expect("RunPodSandbox on the changed handler");
    assert!(
        entries(&moved_root).contains(&moved_pod),
        "runc state of the new pod under {}: {:?}",
        moved_root.display(),
        entries(&moved_root)
    );

    // The new level: info, so creating those pods logged no DEBUG lines.
    let since = std::fs::read_to_string(env.daemon_log()).unwrap();
    let since = since.get(reloaded_at..).unwrap_or_default();
    assert!(
        !since.contains("DEBUG") && since.contains("INFO"),
        "info and no DEBUG lines after log_level=info:\n{since}"
    );

    // Metrics kept their old address (a restart setting) and counted the reload.
    let m = scrape(port).await;
    assert!(
        m.contains("ferrio_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("ferrio_config_reloads_total{result=\"error\"} 0"),
        "{m}"
    );

    // The pod from before is untouched, and a container created in it now runs with the runc
    // (and state dir) the pod started with.
    let old_root = env.runroot().join("oci").join("runc");
    wait_for_container_state(
        &mut cri,
        &c1,
        ContainerState::ContainerRunning,
        Duration::from_secs(5),
    )
    .await;
    let c2 = start_sleeper(&mut cri, &before, &before_cfg, "c2").await;
    assert!(
        entries(&old_root).contains(&c2) && !entries(&moved_root).contains(&c2),
        "old root {:?}, new root {:?}",
        entries(&old_root),
        entries(&moved_root)
    );

    // It stops and removes with that runc too.
    assert!(
        entries(&old_root).contains(&before),
        "{:?}",
        entries(&old_root)
    );
    for id in [&before, &after, &moved_pod] {
        stop_and_remove_pod(&mut cri, id).await;
    }
    for id in [&before, &c1, &c2] {
        assert!(
            !entries(&old_root).contains(id),
            "runc state of {id} removed"
        );
    }
    assert!(
        entries(&moved_root).is_empty(),
        "{:?}",
        entries(&moved_root)
    );
    let reserved: Vec<String> = entries(&env.ipam_dir().join(&net2_name))
        .into_iter()
        .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
        .collect();
    assert!(
        reserved.is_empty(),
        "new network's IPs released: {reserved:?}"
    );
    assert_no_leaks_soon(&d, &LearnedPids::default()).await;
}

#[tokio::test]
async fn invalid_config_is_refused_and_the_old_one_keeps_serving() {
    let port = free_port();
    let d = Daemon::start(with_metrics(port)).await;
    let env = d.env().clone();
    let mut cri = d.client().await;
    let good = std::fs::read_to_string(env.config_path()).unwrap();
    let defaults = (vec!["crun".to_string(), "runc".to_string()], true);

    // A parse error: the log names the file.
    std::fs::write(
        env.config_path(),
        format!("{good}\nsandbox_image = = \"x\"\n"),
    )
    .unwrap();
    let log = d.sighup().await;
    assert!(log.contains("config reload refused"), "{log}");
    assert!(
        log.contains(&env.config_path().display().to_string()),
        "{log}"
    );

    // An unknown key in a drop-in: named with its file.
    std::fs::write(env.config_path(), &good).unwrap();
    let dropin = env.dropin_dir().join("50-bad.toml");
    std::fs::write(&dropin, "[image]\nsandbox_imag = \"x\"\n").unwrap();
    let log = d.sighup().await;
    assert!(
        log.contains("config reload refused")
            && log.contains("50-bad.toml")
            && log.contains("sandbox_imag"),
        "{log}"
    );
    std::fs::remove_file(&dropin).unwrap();

    // A validation error, next to a valid live change that must not apply either.
    rewrite(&env, |c| {
        c.image.sandbox_image = PAUSE_VIA_NEW_MIRROR.into();
        c.runtime.default_runtime = "nope".into();
    });
    let log = d.sighup().await;
    assert!(
        log.contains("config reload refused") && log.contains("runtime.default_runtime"),
        "{log}"
    );

    // A new handler whose binary is missing: refused at reload, before anything changes.
    std::fs::write(env.config_path(), &good).unwrap();
    rewrite(&env, |c| {
        c.log_level = ferrio::config::LogLevel::Info;
        c.runtime.runtimes.insert(
            "ghost".into(),
            RuntimeHandler {
                runtime_path: "/nonexistent/runc".into(),
                ..Default::default()
            },
        );
    });
    let log = d.sighup().await;
    assert!(
        log.contains("config reload refused")
            && log.contains("runtime.runtimes.ghost.runtime_path"),
        "{log}"
    );

    // The old config is whole: handlers, level and sandbox image as at start.
    assert_eq!(handlers_and_network(&mut cri).await, defaults);
    let log_len = std::fs::read_to_string(env.daemon_log()).unwrap().len();
    let pod = run_pod(&mut cri, &pod_config(&env, "still"), "")
        .await
        .expect("RunPodSandbox after refused reloads");
    let (_, info) = pod_ip(&mut cri, &pod).await;
    assert_eq!(info["image"], "registry.k8s.io/pause:3.10", "{info}");
    let since = std::fs::read_to_string(env.daemon_log()).unwrap();
    assert!(
        since.get(log_len..).unwrap_or_default().contains("DEBUG"),
        "still at debug after the refused log_level change"
    );

    // A valid drop-in afterwards applies: pinned images are live.
    std::fs::write(env.config_path(), &good).unwrap();
    cri.img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("PullImage busybox");
    assert!(!image_status(&mut cri, BUSYBOX).await.unwrap().pinned);
    std::fs::write(
        env.dropin_dir().join("50-pin.toml"),
        "[image]\npinned_images = [\"docker.io/library/busy*\"]\n",
    )
    .unwrap();
    let log = d.sighup().await;
    assert!(
        log.contains("config reloaded") && log.contains("image.pinned_images"),
        "{log}"
    );
    assert!(image_status(&mut cri, BUSYBOX).await.unwrap().pinned);

    let m = scrape(port).await;
    assert!(
        m.contains("ferrio_config_reloads_total{result=\"error\"} 4"),
        "{m}"
    );
    assert!(
        m.contains("ferrio_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );

    stop_and_remove_pod(&mut cri, &pod).await;
    assert_no_leaks_soon(&d, &LearnedPids::default()).await;
}

/// Not a test: the body of the pre-installed NRI plugin that `a_plugin_installed_after_start_joins_on_sighup`
/// installs, a script that runs this test binary with this test's name. Run as a test, it returns at once.
#[test]
#[ignore = "the daemon runs it as an NRI plugin"]
fn preinstalled_plugin_process() {
    let Some(plugin) = crate::nri_plugin::Preinstalled::from_env() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the plugin");
    rt.block_on(plugin.serve())
        .expect("the plugin serves the daemon");
}

/// `line` without the terminal colour sequences of the daemon's log.
fn without_colours(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// The lines the test plugin logged so far.
fn plugin_saw(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_until_plugin_saw(d: &Daemon, log: &Path, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !plugin_saw(log).iter().any(|l| l == line) {
        assert!(
            Instant::now() < deadline,
            "the plugin never saw {line:?}; it saw {:?}; daemon log:\n{}",
            plugin_saw(log),
            d.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_plugin_installed_after_start_joins_on_sighup() {
    use std::os::unix::fs::PermissionsExt;
    let port = free_port();
    let d = Daemon::start(with_metrics(port)).await;
    let nri = d.env().config().nri.clone();
    let saw = d.env().dir().join("nri-joiner.log");
    std::fs::create_dir_all(&nri.plugin_path).unwrap();
    std::fs::create_dir_all(&nri.plugin_config_path).unwrap();
    std::fs::write(
        nri.plugin_config_path.join("10-joiner.conf"),
        format!("log = {}\n", saw.display()),
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = nri.plugin_path.join("10-joiner");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec '{}' reload::preinstalled_plugin_process --exact --ignored --nocapture --test-threads=1 >/dev/null\n",
            exe.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        scrape(port).await.contains("\nferrio_nri_plugins 0\n"),
        "no plugin before the reload"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        plugin_saw(&saw).is_empty(),
        "nothing starts the plugin before SIGHUP"
    );

    let log = d.sighup().await;
    assert!(log.contains("config reloaded"), "{log}");
    wait_until_plugin_saw(&d, &saw, "Synchronize 0 0").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !scrape(port).await.contains("\nferrio_nri_plugins 1\n") {
        assert!(
            Instant::now() < deadline,
            "the plugin never counts as registered:\n{}",
            d.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(d.env().daemon_log()).unwrap();
    let connected = text
        .lines()
        .map(without_colours)
        .find(|l| l.contains("NRI: plugin connected"))
        .unwrap_or_else(|| panic!("no connect line:\n{}", d.log_tail(40)));
    assert!(
        connected.contains("index=10") && connected.contains("name=joiner"),
        "the connect line names the plugin's index and name: {connected}"
    );

    // The next pod's events reach it, in order.
    let mut cri = d.client().await;
    let config = pod_config(d.env(), "nri-joiner");
    let pod_id = run_pod(&mut cri, &config, "")
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"));
    stop_and_remove_pod(&mut cri, &pod_id).await;
    wait_until_plugin_saw(&d, &saw, &format!("RemovePodSandbox {pod_id}")).await;
    assert_eq!(
        plugin_saw(&saw),
        [
            "Configure".to_string(),
            "Synchronize 0 0".to_string(),
            format!("RunPodSandbox {pod_id}"),
            format!("StopPodSandbox {pod_id}"),
            format!("RemovePodSandbox {pod_id}"),
        ]
    );
    let metrics = scrape(port).await;
    for event in ["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"] {
        assert!(
            metrics.contains(&format!(
                "ferrio_nri_event_duration_seconds_count{{event=\"{event}\"}} 1\n"
            )),
            "{event} is timed once:\n{metrics}"
        );
    }
    // A second reload leaves the running plugin alone.
    d.sighup().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        plugin_saw(&saw)
            .iter()
            .filter(|l| *l == "Configure")
            .count(),
        1,
        "the plugin is not started twice"
    );
    d.assert_no_leaks(&LearnedPids::default());
}

#[tokio::test]
async fn disable_connections_closes_and_reopens_the_nri_socket_on_sighup() {
    let d = Daemon::start(Opts::default()).await;
    let socket = d.env().config().nri.socket_path.clone();
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    let plugin = tokio::spawn(crate::nri_plugin::serve(stream, "external", "30"));
    let connected = |d: &Daemon| {
        std::fs::read_to_string(d.env().daemon_log())
            .unwrap_or_default()
            .matches("NRI: plugin connected")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected(&d) < 1 {
        assert!(
            Instant::now() < deadline,
            "never connected:\n{}",
            d.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    rewrite(d.env(), |c| c.nri.disable_connections = true);
    let log = d.sighup().await;
    assert!(
        log.contains("nri.disable_connections"),
        "applied live: {log}"
    );
    assert!(!log.contains("need a restart"), "{log}");
    // The external plugin is dropped: its connection ends.
    tokio::time::timeout(Duration::from_secs(10), plugin)
        .await
        .expect("the external plugin is disconnected")
        .unwrap()
        .unwrap();
    assert!(!socket.exists(), "the socket is gone");

    rewrite(d.env(), |c| c.nri.disable_connections = false);
    let log = d.sighup().await;
    assert!(log.contains("config reloaded"), "{log}");
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .unwrap_or_else(|e| panic!("connect again to {}: {e}", socket.display()));
    let plugin = tokio::spawn(crate::nri_plugin::serve(stream, "external", "30"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected(&d) < 2 {
        assert!(
            Instant::now() < deadline,
            "never connected again:\n{}",
            d.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    plugin.abort();
    d.assert_no_leaks(&LearnedPids::default());
}
