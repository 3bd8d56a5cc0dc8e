//! Faults, each with an asserted outcome (a clear gRPC error, a full rollback, nothing leaked, a
//! daemon that still serves): the daemon SIGKILLed at seeded random points across hundreds of
//! pod+container lifecycles, a container's monitor SIGKILLed, an OCI runtime that fails create
//! or start, a registry that drops the connection mid-blob, and an image store whose disk is full.

use crate::harness::{
    container_config, pod_config, pod_status, run_pod, wait_for_container_state, Cri, Daemon, Env,
    LearnedPids, Opts,
};
use ferrio::config::RuntimeHandler;
use ferrio::cri::v1::{
    ContainerConfig, ContainerState, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    ListContainersRequest, ListImagesRequest, ListPodSandboxRequest, PodSandboxConfig,
    PodSandboxState, PullImageRequest, RemoveContainerRequest, RemoveImageRequest,
    RemovePodSandboxRequest, StartContainerRequest, StatusRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Code, Status};

const BUSYBOX: &str = "docker.io/library/busybox:1.36";

// ---------------------------------------------------------------------------------------------
// CRI calls as kubelet makes them.

async fn pull(cri: &mut Cri, image: &str) -> Result<String, Status> {
    cri.img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn create(
    cri: &mut Cri,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String, Status> {
    cri.rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

async fn start(cri: &mut Cri, id: &str) -> Result<(), Status> {
    cri.rt
        .start_container(StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .map(|_| ())
}

async fn stop_ctr(cri: &mut Cri, id: &str) -> Result<(), Status> {
    cri.rt
        .stop_container(StopContainerRequest {
            container_id: id.into(),
            timeout: 0,
        })
        .await
        .map(|_| ())
}

async fn remove_ctr(cri: &mut Cri, id: &str) -> Result<(), Status> {
    cri.rt
        .remove_container(RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .map(|_| ())
}

async fn stop_pod(cri: &mut Cri, id: &str) -> Result<(), Status> {
    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map(|_| ())
}

async fn remove_pod(cri: &mut Cri, id: &str) -> Result<(), Status> {
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map(|_| ())
}

async fn pods(cri: &mut Cri) -> Vec<ferrio::cri::v1::PodSandbox> {
    cri.rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap_or_else(|e| panic!("ListPodSandbox: {e}"))
        .into_inner()
        .items
}

async fn containers(cri: &mut Cri) -> Vec<ferrio::cri::v1::Container> {
    cri.rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap_or_else(|e| panic!("ListContainers: {e}"))
        .into_inner()
        .containers
}

/// ContainerStatus with its verbose info parsed.
async fn container_status(
    cri: &mut Cri,
    id: &str,
) -> (ferrio::cri::v1::ContainerStatus, serde_json::Value) {
    let r = cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
        .into_inner();
    let info = r
        .info
        .get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    (r.status.expect("a status"), info)
}

/// Whether Status says the runtime and the network are ready.
async fn assert_serving(cri: &mut Cri) {
    let st = cri
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap_or_else(|e| panic!("Status: {e}"))
        .into_inner()
        .status
        .expect("runtime conditions");
    for c in &st.conditions {
        assert!(c.status, "condition {} is false: {c:?}", c.r#type);
    }
}

/// Kubelet's cleanup: stop and remove every container, then every pod, retrying each call a few
/// times (kubelet retries on its next sync). Returns how many retries were needed.
async fn stop_and_remove_everything(cri: &mut Cri) -> usize {
    async fn retry<F, Fut>(what: &str, mut f: F) -> usize
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), Status>>,
    {
        let mut last = None;
        for attempt in 0..4 {
            match f().await {
                Ok(()) => return attempt,
                Err(e) => {
                    eprintln!("{what}: attempt {attempt} failed: {e}");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        panic!("{what} kept failing: {last:?}");
    }
    let mut retries = 0;
    for c in containers(cri).await {
        let c1 = cri.clone();
        retries += retry(&format!("StopContainer {}", c.id), || {
            let (mut cri, id) = (c1.clone(), c.id.clone());
            async move { stop_ctr(&mut cri, &id).await }
        })
        .await;
        retries += retry(&format!("RemoveContainer {}", c.id), || {
            let (mut cri, id) = (c1.clone(), c.id.clone());
            async move { remove_ctr(&mut cri, &id).await }
        })
        .await;
    }
    for p in pods(cri).await {
        let c1 = cri.clone();
        retries += retry(&format!("StopPodSandbox {}", p.id), || {
            let (mut cri, id) = (c1.clone(), p.id.clone());
            async move { stop_pod(&mut cri, &id).await }
        })
        .await;
        retries += retry(&format!("RemovePodSandbox {}", p.id), || {
            let (mut cri, id) = (c1.clone(), p.id.clone());
            async move { remove_pod(&mut cri, &id).await }
        })
        .await;
    }
    assert!(
        containers(cri).await.is_empty(),
        "containers left after cleanup"
    );
    assert!(pods(cri).await.is_empty(), "pods left after cleanup");
    retries
}

/// Leak check that allows the kernel a moment: a netns (and its veth) goes asynchronously once
/// its last user is gone, and a killed process needs its parent to reap it.
async fn assert_no_leaks_soon(d: &Daemon, learned: &LearnedPids) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.env().leaks(&[d.pid()], learned).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.assert_no_leaks(learned);
}

/// Learn every process in the cgroups of the env's pods (pause, containers), to check at the end
/// that they are gone.
fn learn_all(env: &Env, learned: &mut LearnedPids) {
    for parent in env.cgroup_parents() {
        learned.learn_cgroup(&parent);
    }
}

/// What the host holds for this env right now (mounts, runtime state, veths, IPs, processes,
/// cgroups, nat rules), plus the cgroup directories below the pods' parents: a create that fails
/// must leave this exactly as it was.
fn footprint(d: &Daemon) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = d
        .env()
        .leaks(&[d.pid()], &LearnedPids::default())
        .into_iter()
        .collect();
    for parent in d.env().cgroup_parents() {
        for h in cgroup_hierarchies() {
            let base = h.join(parent.trim_start_matches('/'));
            let mut stack = vec![base];
            while let Some(dir) = stack.pop() {
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    for e in rd.flatten() {
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            set.insert(format!("cgroup directory {}", e.path().display()));
                            stack.push(e.path());
                        }
                    }
                }
            }
        }
    }
    set
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// `runc list` of a handler's root: container id -> (status, pid).
fn runtime_list(env: &Env, handler: &str) -> BTreeMap<String, (String, i64)> {
    let root = env
        .config()
        .runtime_root(handler)
        .unwrap_or_else(|| panic!("no runtime handler {handler}"));
    let out = std::process::Command::new("/usr/sbin/runc")
        .arg("--root")
        .arg(&root)
        .args(["list", "--format", "json"])
        .output()
        .expect("run runc list");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["id"].as_str().unwrap_or_default().to_string(),
                        (
                            c["status"].as_str().unwrap_or_default().to_string(),
                            c["pid"].as_i64().unwrap_or(0),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn alive(pid: i64) -> bool {
    pid > 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 2..].chars().next())
                    .is_some_and(|st| st != 'Z')
            })
            .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// The daemon SIGKILLed at seeded random points across many pod+container lifecycles.

const STEPS: [&str; 7] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];

/// What the client of one lifecycle was told before the kill.
#[derive(Default, Debug, Clone)]
struct Acked {
    pod: Option<String>,
    ctr: Option<String>,
    /// How many steps were answered OK (in order).
    done: usize,
    /// Whether step `done` was sent and had no answer when the daemon died.
    in_flight: bool,
}

/// Step `s` of a lifecycle; the two creates return the new id.
async fn lifecycle_step(
    mut cri: Cri,
    s: usize,
    pod_cfg: PodSandboxConfig,
    acked: Acked,
) -> Result<Option<String>, Status> {
    let pod = acked.pod.unwrap_or_default();
    let ctr = acked.ctr.unwrap_or_default();
    match s {
        0 => run_pod(&mut cri, &pod_cfg, "").await.map(Some),
        1 => {
            let c = container_config("app", BUSYBOX, &["sleep", "1000"]);
            create(&mut cri, &pod, &pod_cfg, c).await.map(Some)
        }
        2 => start(&mut cri, &ctr).await.map(|_| None),
        3 => stop_ctr(&mut cri, &ctr).await.map(|_| None),
        4 => remove_ctr(&mut cri, &ctr).await.map(|_| None),
        5 => stop_pod(&mut cri, &pod).await.map(|_| None),
        _ => remove_pod(&mut cri, &pod).await.map(|_| None),
    }
}

/// After a restart: the only objects are those of the interrupted lifecycle, everything the
/// client was told about is there (and nothing it was told is gone), and each is listed with
/// its true state (the one the OCI runtime reports).
async fn check_after_restart(d: &Daemon, cri: &mut Cri, a: &Acked, what: &str) {
    assert_serving(cri).await;
    let ps = pods(cri).await;
    let cs = containers(cri).await;
    assert!(
        ps.len() <= 1,
        "{what}: more than this lifecycle's pod: {ps:?}"
    );
    assert!(
        cs.len() <= 1,
        "{what}: more than this lifecycle's container: {cs:?}"
    );
    let (done, fl) = (a.done, a.in_flight);
    let pod = ps.first();
    let ctr = cs.first();
    if let (Some(p), Some(k)) = (pod, &a.pod) {
        assert_eq!(&p.id, k, "{what}: a pod that is not ours");
    }
    if let (Some(c), Some(k)) = (ctr, &a.ctr) {
        assert_eq!(&c.id, k, "{what}: a container that is not ours");
    }

    // Acknowledged creates are listed; acknowledged removes are not.
    let pod_must = (1..=6).contains(&done) && !(done == 6 && fl);
    let pod_never = done == 7 || (done == 0 && !fl);
    assert!(
        !pod_must || pod.is_some(),
        "{what}: the acknowledged pod is gone"
    );
    assert!(
        !pod_never || pod.is_none(),
        "{what}: a removed pod is listed: {pod:?}"
    );
    let ctr_must = (2..=4).contains(&done) && !(done == 4 && fl);
    let ctr_never = done == 0 || done >= 5 || (done == 1 && !fl);
    assert!(
        !ctr_must || ctr.is_some(),
        "{what}: the acknowledged container is gone"
    );
    assert!(
        !ctr_never || ctr.is_none(),
        "{what}: a removed container is listed: {ctr:?}"
    );

    if let Some(p) = pod {
        let (st, info, (status, pid)) = settle_pod(cri, d.env(), &p.id).await;
        let ready = st.state == PodSandboxState::SandboxReady as i32;
        // Ready until StopPodSandbox was sent, not ready once it was acknowledged.
        if done <= 4 || (done == 5 && !fl) {
            assert!(ready, "{what}: the pod should still be ready: {st:?}");
        }
        if done == 6 {
            assert!(!ready, "{what}: a stopped pod is ready: {st:?}");
        }
        if ready {
            assert_eq!(
                status, "running",
                "{what}: a ready pod's pause is {status:?}"
            );
            assert!(alive(pid), "{what}: the ready pod's pause {pid} is dead");
            if let Some(ipid) = info["pid"].as_i64() {
                assert_eq!(
                    ipid, pid,
                    "{what}: the pause pid on record differs from runc's"
                );
            }
        }
    }
    if let Some(c) = ctr {
        let (st, info, (rstatus, rpid)) = settle_container(cri, d.env(), &c.id).await;
        let state = ContainerState::try_from(st.state).unwrap_or(ContainerState::ContainerUnknown);
        let allowed: &[ContainerState] = match (done, fl) {
            (1, _) => &[
                ContainerState::ContainerCreated,
                ContainerState::ContainerExited,
            ],
            (2, false) => &[ContainerState::ContainerCreated],
            (2, true) => &[
                ContainerState::ContainerCreated,
                ContainerState::ContainerRunning,
            ],
            (3, false) => &[ContainerState::ContainerRunning],
            (3, true) => &[
                ContainerState::ContainerRunning,
                ContainerState::ContainerExited,
            ],
            _ => &[ContainerState::ContainerExited],
        };
        assert!(
            allowed.contains(&state),
            "{what}: container in {state:?}, expected one of {allowed:?}: {st:?}"
        );
        match state {
            ContainerState::ContainerRunning => {
                assert_eq!(
                    rstatus, "running",
                    "{what}: CRI says running, runc {rstatus:?}"
                );
                assert!(
                    alive(rpid),
                    "{what}: running container's pid {rpid} is dead"
                );
                assert_eq!(
                    info["status"]["pid"].as_i64(),
                    Some(rpid),
                    "{what}: the pid on record differs from runc's"
                );
            }
            ContainerState::ContainerCreated => {
                // A deferred create leaves the runtime out until StartContainer runs it.
                let expected = if info["status"]["deferred"].as_bool() == Some(true) {
                    ""
                } else {
                    "created"
                };
                assert_eq!(
                    rstatus, expected,
                    "{what}: CRI says created, runc {rstatus:?}"
                );
            }
            _ => {
                assert!(
                    rstatus.is_empty() || rstatus == "stopped",
                    "{what}: CRI says exited, runc {rstatus:?}"
                );
                assert!(
                    st.finished_at > 0,
                    "{what}: exited without a finish time: {st:?}"
                );
                assert!(
                    !st.reason.is_empty(),
                    "{what}: exited without a reason: {st:?}"
                );
            }
        }
    }
}

/// How long a process that died (SIGKILLed by an interrupted Stop) may take to be reported:
/// its monitor reaps it and writes the exit record, then the daemon reads it.
const SETTLE: Duration = Duration::from_secs(5);

/// The pod's status and runc's view of its pause, once they agree: a ready pod whose pause is
/// gone (killed by an interrupted StopPodSandbox) must turn not ready within [`SETTLE`].
async fn settle_pod(
    cri: &mut Cri,
    env: &Env,
    id: &str,
) -> (
    ferrio::cri::v1::PodSandboxStatus,
    serde_json::Value,
    (String, i64),
) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (st, info) = pod_status(cri, id).await;
        let rt = runtime_list(env, "runc")
            .get(id)
            .cloned()
            .unwrap_or_default();
        let ready = st.state == PodSandboxState::SandboxReady as i32;
        let dead = rt.0 != "running" || !alive(rt.1);
        if !(ready && dead) || Instant::now() > deadline {
            return (st, info, rt);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The container's status and runc's view of it, once they agree: a process that has died (or
/// a created container killed) must be reported exited within [`SETTLE`].
async fn settle_container(
    cri: &mut Cri,
    env: &Env,
    id: &str,
) -> (
    ferrio::cri::v1::ContainerStatus,
    serde_json::Value,
    (String, i64),
) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (st, info) = container_status(cri, id).await;
        let rt = runtime_list(env, "runc")
            .get(id)
            .cloned()
            .unwrap_or_default();
        let gone = rt.0.is_empty() || rt.0 == "stopped";
        // A deferred created container is not in the runtime: nothing to wait for.
        let deferred = info["status"]["deferred"].as_bool() == Some(true);
        let live = st.state == ContainerState::ContainerRunning as i32
            || (st.state == ContainerState::ContainerCreated as i32 && !deferred);
        if !(live && gone) || Instant::now() > deadline {
            return (st, info, rt);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints how to replay the seed when the loop fails.
struct Replay {
    seed: u64,
    lifecycles: usize,
}

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\nfault loop FAILED with seed {}; replay with:\n  FERRIO_FAULT_SEED={} FERRIO_FAULT_SEEDS=1 \
                 FERRIO_FAULT_LIFECYCLES={} cargo test --test e2e -- --test-threads=1 --nocapture faults::daemon_sigkilled\n",
                self.seed, self.seed, self.lifecycles
            );
        }
    }
}

fn env_number(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.trim().parse().ok())
}

/// Busy loops beside the test, so that the daemon, its monitors and the runtime are preempted
/// at odd instants and the windows between their steps open wide. Killed by pid on drop.
struct CpuHogs(Vec<std::process::Child>);

impl CpuHogs {
    fn start(n: usize) -> CpuHogs {
        CpuHogs(
            (0..n)
                .map(|_| {
                    std::process::Command::new("/bin/sh")
                        .args(["-c", "while :; do :; done"])
                        .stdin(std::process::Stdio::null())
                        .spawn()
                        .expect("start a CPU hog")
                })
                .collect(),
        )
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The seed after `seed` (splitmix64), so that one starting seed names every run of the loop.
fn next_seed(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// At least 200 pod+container lifecycles in all, split over several seeds
/// (`FERRIO_FAULT_SEEDS`, default 3; `FERRIO_FAULT_LIFECYCLES` per seed, default enough for
/// 200 in all), with the machine loaded by CPU hogs (`FERRIO_FAULT_HOGS`, default one per CPU).
/// In about one in five lifecycles the daemon is SIGKILLed at a seeded random step, at a random
/// instant within it (mostly mid-RPC), and sometimes killed again during the recovery that
/// follows. After each kill: a restart, the invariants of `check_after_restart`, kubelet's
/// stop+remove of everything, and the full leak check. `FERRIO_FAULT_SEED` is the first seed
/// (the others follow from it); with `FERRIO_FAULT_SEEDS=1 FERRIO_FAULT_LIFECYCLES=200` a seed
/// plans the same kills as a single 200-lifecycle run of it did.
#[tokio::test]
async fn daemon_sigkilled_at_random_points_across_200_lifecycles() {
    let first = env_number("FERRIO_FAULT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let seeds = env_number("FERRIO_FAULT_SEEDS").unwrap_or(3).max(1) as usize;
    let lifecycles = env_number("FERRIO_FAULT_LIFECYCLES")
        .map(|n| n as usize)
        .unwrap_or(200usize.div_ceil(seeds));
    let hogs = env_number("FERRIO_FAULT_HOGS").map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let _hogs = CpuHogs::start(hogs);
    println!(
        "fault loop: first seed {first}, seeds: {seeds}, lifecycles per seed: {lifecycles}, CPU hogs: {hogs}"
    );
    let (mut total, mut kills) = (0usize, 0usize);
    let mut seed = first;
    for _ in 0..seeds {
        kills += fault_loop(seed, lifecycles).await;
        total += lifecycles;
        seed = next_seed(seed);
    }
    if env_number("FERRIO_FAULT_LIFECYCLES").is_none() {
        assert!(
            total >= 200 && kills >= 10,
            "{total} lifecycles, {kills} kills"
        );
    }
}

/// One run of the fault loop with `seed`; the number of daemon kills.
async fn fault_loop(seed: u64, lifecycles: usize) -> usize {
    println!(
        "fault loop: seed {seed} (FERRIO_FAULT_SEED={seed} FERRIO_FAULT_SEEDS=1 replays it), {lifecycles} lifecycles"
    );
    let _replay = Replay { seed, lifecycles };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let env = Arc::new(Env::new(Opts {
        log_level: ferrio::config::LogLevel::Info,
        ..Default::default()
    }));
    let mut d = Daemon::start_on(&env).await;
    let mut cri = d.client().await;
    pull(&mut cri, BUSYBOX).await.expect("PullImage");
    let mut learned = LearnedPids::default();
    // Running mean of each step's duration (ms), so a kill lands inside the RPC most of the time.
    let mut mean_ms = [50.0f64; 7];
    let (mut kills, mut recovery_kills, mut mid_rpc, mut interrupted, mut retries) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut kills_by_step = [0usize; 7];
    let t0 = Instant::now();

    for n in 0..lifecycles {
        let plan = rng.gen_bool(0.2).then(|| {
            (
                rng.gen_range(0..7usize),
                rng.gen_range(0.0..1.3f64),
                rng.gen_bool(0.2),
            )
        });
        let pod_cfg = pod_config(&env, &format!("f{n}"));
        let parent = pod_cfg
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        let mut a = Acked::default();
        let mut killed = false;
        for s in 0..7 {
            let started = Instant::now();
            let task = tokio::spawn(lifecycle_step(cri.clone(), s, pod_cfg.clone(), a.clone()));
            let res = match plan {
                Some((ks, frac, _)) if ks == s => {
                    let delay = Duration::from_micros((mean_ms[s] * frac * 1000.0) as u64);
                    tokio::time::sleep(delay).await;
                    sigkill(d.pid() as i32);
                    killed = true;
                    kills += 1;
                    kills_by_step[s] += 1;
                    task.await.expect("the step task")
                }
                _ => {
                    let r = task.await.expect("the step task");
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    mean_ms[s] = mean_ms[s] * 0.8 + ms * 0.2;
                    r
                }
            };
            match res {
                Ok(id) => {
                    match s {
                        0 => a.pod = id,
                        1 => a.ctr = id,
                        _ => {}
                    }
                    a.done = s + 1;
                    if s == 0 || s == 2 {
                        learned.learn_cgroup(&parent);
                    }
                }
                // The answer never came: the step may or may not have taken effect.
                Err(_) if killed => {
                    a.in_flight = true;
                    mid_rpc += 1;
                }
                Err(e) => panic!("lifecycle {n}: {} failed without a fault: {e}", STEPS[s]),
            }
            if killed {
                break;
            }
        }
        if !killed {
            continue;
        }
        interrupted += 1;
        let what = format!(
            "lifecycle {n}, killed at {} ({}), acked {a:?}",
            STEPS[plan.map(|p| p.0).unwrap_or(0)],
            if a.in_flight {
                "mid-RPC"
            } else {
                "after the reply"
            },
        );
        drop(d);
        if plan.is_some_and(|p| p.2) {
            // Killed again while it recovers (or before it even got there).
            let again = Daemon::spawn_on(&env);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
            sigkill(again.pid() as i32);
            drop(again);
            recovery_kills += 1;
        }
        d = Daemon::start_on(&env).await;
        cri = d.client().await;
        learned.learn_cgroup(&parent);
        check_after_restart(&d, &mut cri, &a, &what).await;
        retries += stop_and_remove_everything(&mut cri).await;
        assert_no_leaks_soon(&d, &learned).await;
    }
    assert!(pods(&mut cri).await.is_empty());
    assert!(containers(&mut cri).await.is_empty());
    assert_no_leaks_soon(&d, &learned).await;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "fault loop: seed {seed}: {lifecycles} lifecycles ({interrupted} interrupted) in {secs:.0} s; \
         {kills} daemon kills ({mid_rpc} mid-RPC, {recovery_kills} more during recovery), by step {:?}; \
         {retries} cleanup retries; mean step ms {:?}",
        STEPS.iter().zip(kills_by_step).collect::<Vec<_>>(),
        mean_ms.iter().map(|m| m.round() as u64).collect::<Vec<_>>(),
    );
    assert_eq!(kills, interrupted);
    kills
}

// ---------------------------------------------------------------------------------------------
// A container's monitor SIGKILLed.

/// The monitor of a running container dies (SIGKILL, so it cannot write an exit file). The
/// daemon reports a sane state (still running while the runtime says so, or exited with a reason
/// and a message), StopContainer and RemoveContainer work, and nothing is left.
#[tokio::test]
async fn a_killed_monitor_is_reported_and_the_container_still_stops_and_goes() {
    let d = Daemon::start(Opts::default()).await;
    let env = d.env().clone();
    let mut cri = d.client().await;
    let mut learned = LearnedPids::default();
    pull(&mut cri, BUSYBOX).await.expect("PullImage");
    let pod_cfg = pod_config(&env, "monkill");
    let pod = run_pod(&mut cri, &pod_cfg, "")
        .await
        .expect("RunPodSandbox");
    let c = container_config("victim", BUSYBOX, &["sleep", "1000"]);
    let id = create(&mut cri, &pod, &pod_cfg, c)
        .await
        .expect("CreateContainer");
    start(&mut cri, &id).await.expect("StartContainer");
    wait_for_container_state(
        &mut cri,
        &id,
        ContainerState::ContainerRunning,
        Duration::from_secs(20),
    )
    .await;
    let (_, info) = container_status(&mut cri, &id).await;
    let monitor = info["status"]["monitor_pid"].as_i64().expect("monitor_pid");
    let pid = info["status"]["pid"].as_i64().expect("pid");
    learned.add(monitor as u32, "the container's monitor");
    learn_all(&env, &mut learned);
    assert!(alive(monitor) && alive(pid));

    sigkill(monitor as i32);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(monitor) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(monitor), "the monitor {monitor} survived SIGKILL");
    // Give the daemon time to notice (its connection to the monitor breaks at once).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let (st, _) = container_status(&mut cri, &id).await;
        println!(
            "after the monitor's SIGKILL: state {:?}, reason {:?}, message {:?}",
            st.state(),
            st.reason,
            st.message
        );
        let runc = runtime_list(&env, "runc")
            .get(&id)
            .cloned()
            .unwrap_or_default();
        match ContainerState::try_from(st.state) {
            Ok(ContainerState::ContainerRunning) => {
                assert_eq!(runc.0, "running", "running on record, runc says {runc:?}");
                assert!(
                    alive(pid),
                    "running on record but the process {pid} is gone"
                );
            }
            Ok(ContainerState::ContainerExited) => {
                assert!(!st.reason.is_empty(), "exited without a reason: {st:?}");
                assert!(st.finished_at > 0, "exited without a finish time: {st:?}");
                assert!(
                    st.message.contains("monitor"),
                    "the message says why: {st:?}"
                );
                // Exited is the truth only if the process is gone too (the daemon deletes a
                // container whose monitor vanished, which kills it).
                let deadline = Instant::now() + SETTLE;
                while alive(pid) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert!(!alive(pid), "reported exited while {pid} runs: {st:?}");
                let runc = runtime_list(&env, "runc")
                    .get(&id)
                    .cloned()
                    .unwrap_or_default();
                assert!(
                    runc.0.is_empty() || runc.0 == "stopped",
                    "reported exited, runc says {runc:?}"
                );
            }
            other => panic!("after the monitor died the container is {other:?}: {st:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Other RPCs still work: the pod is ready and a new container runs in it.
    let (pst, _) = pod_status(&mut cri, &pod).await;
    assert_eq!(pst.state, PodSandboxState::SandboxReady as i32);

    stop_ctr(&mut cri, &id)
        .await
        .expect("StopContainer after the monitor died");
    let (st, _) = container_status(&mut cri, &id).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32, "{st:?}");
    assert!(!alive(pid), "StopContainer left the process {pid} running");
    remove_ctr(&mut cri, &id)
        .await
        .expect("RemoveContainer after the monitor died");
    assert!(containers(&mut cri).await.is_empty());

    let c = container_config("after", BUSYBOX, &["sleep", "1000"]);
    let id2 = create(&mut cri, &pod, &pod_cfg, c)
        .await
        .expect("CreateContainer after");
    start(&mut cri, &id2).await.expect("StartContainer after");
    learn_all(&env, &mut learned);
    assert_eq!(stop_and_remove_everything(&mut cri).await, 0);
    assert_no_leaks_soon(&d, &learned).await;
}

// ---------------------------------------------------------------------------------------------
// An OCI runtime that fails create or start.

/// A runtime wrapper: refuses `create` / `start` while `fail-create` / `fail-start` exist next to
/// it, with a message on stderr, and is runc otherwise. `run` is a create and a start, so it
/// fails as either would.
fn faulty_runtime(dir: &Path) -> PathBuf {
    let path = dir.join("faulty-runc");
    let script = format!(
        "#!/bin/sh\n\
         # ferrio fault test: an OCI runtime that fails on demand.\n\
         for a in \"$@\"; do\n\
           case \"$a\" in\n\
             create|start|run)\n\
               for v in create start; do\n\
                 if [ \"$a\" = \"$v\" ] || [ \"$a\" = run ]; then\n\
                   if [ -e '{dir}/fail-'\"$v\" ]; then\n\
                     echo \"faulty-runc: injected $v failure\" >&2\n\
                     exit 3\n\
                   fi\n\
                 fi\n\
               done\n\
               break ;;\n\
           esac\n\
         done\n\
         exec /usr/sbin/runc \"$@\"\n",
        dir = dir.display()
    );
    std::fs::write(&path, script).expect("write the runtime wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The runtime fails create (for a pod, then for a container) and start: each RPC fails with the
/// runtime's own message, everything it had made is undone, and the same request succeeds once
/// the runtime works again.
#[tokio::test]
async fn a_runtime_failing_create_or_start_rolls_back_and_a_retry_works() {
    let tools = tempfile::Builder::new()
        .prefix("ferrio-faults-rt-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let wrapper = faulty_runtime(tools.path());
    let fail_create = tools.path().join("fail-create");
    let fail_start = tools.path().join("fail-start");
    let d = Daemon::start(Opts::with_handler(
        "faulty",
        RuntimeHandler {
            runtime_path: wrapper,
            // The container's create and start each run the runtime, so each can fail on its
            // own (a deferred create's run is
            // `a_deferred_create_whose_run_fails_stays_created_and_leaves_nothing`).
            defer_create: Some(false),
            ..Default::default()
        },
    ))
    .await;
    let env = d.env().clone();
    let mut cri = d.client().await;
    let mut learned = LearnedPids::default();
    pull(&mut cri, BUSYBOX).await.expect("PullImage");
    let before = footprint(&d);

    // RunPodSandbox whose pause create fails.
    std::fs::write(&fail_create, "").unwrap();
    let pod_cfg = pod_config(&env, "faulty");
    let e = run_pod(&mut cri, &pod_cfg, "faulty")
        .await
        .expect_err("RunPodSandbox with a failing runtime");
    assert!(
        e.message().contains("faulty-runc: injected create failure"),
        "the runtime's message reaches the client: {e:?}"
    );
    assert_ne!(e.code(), Code::Ok);
    assert!(pods(&mut cri).await.is_empty(), "a failed pod is listed");
    assert_eq!(footprint(&d), before, "RunPodSandbox left things behind");
    std::fs::remove_file(&fail_create).unwrap();
    let pod = run_pod(&mut cri, &pod_cfg, "faulty")
        .await
        .expect("the same RunPodSandbox once the runtime works");
    learn_all(&env, &mut learned);

    // CreateContainer whose runtime create fails.
    let with_pod = footprint(&d);
    std::fs::write(&fail_create, "").unwrap();
    let cfg = container_config("app", BUSYBOX, &["sleep", "1000"]);
    let e = create(&mut cri, &pod, &pod_cfg, cfg.clone())
        .await
        .expect_err("CreateContainer with a failing runtime");
    assert!(
        e.message().contains("faulty-runc: injected create failure"),
        "the runtime's message reaches the client: {e:?}"
    );
    assert!(
        containers(&mut cri).await.is_empty(),
        "a failed container is listed"
    );
    assert_eq!(
        footprint(&d),
        with_pod,
        "CreateContainer left things behind"
    );
    std::fs::remove_file(&fail_create).unwrap();
    let id = create(&mut cri, &pod, &pod_cfg, cfg.clone())
        .await
        .expect("the same CreateContainer once the runtime works");

    // StartContainer whose runtime start fails: the container never runs.
    std::fs::write(&fail_start, "").unwrap();
    let e = start(&mut cri, &id)
        .await
        .expect_err("StartContainer with a failing runtime");
    assert!(
        e.message().contains("faulty-runc: injected start failure"),
        "the runtime's message reaches the client: {e:?}"
    );
    let (st, info) = container_status(&mut cri, &id).await;
    assert_ne!(
        st.state,
        ContainerState::ContainerRunning as i32,
        "a container whose start failed is running: {st:?}"
    );
    let pid = info["status"]["pid"].as_i64().unwrap_or(0);
    learn_all(&env, &mut learned);
    std::fs::remove_file(&fail_start).unwrap();
    // Kubelet removes the failed container and creates the next attempt.
    let _ = stop_ctr(&mut cri, &id).await;
    remove_ctr(&mut cri, &id)
        .await
        .expect("RemoveContainer of the container whose start failed");
    assert!(
        !alive(pid),
        "the failed container's process {pid} is still there"
    );
    assert_eq!(
        footprint(&d),
        with_pod,
        "the failed start left things behind"
    );
    let mut cfg1 = cfg;
    cfg1.metadata.as_mut().unwrap().attempt = 1;
    let id = create(&mut cri, &pod, &pod_cfg, cfg1)
        .await
        .expect("CreateContainer once the runtime works");
    start(&mut cri, &id)
        .await
        .expect("StartContainer once the runtime works");
    wait_for_container_state(
        &mut cri,
        &id,
        ContainerState::ContainerRunning,
        Duration::from_secs(20),
    )
    .await;
    learn_all(&env, &mut learned);
    assert_eq!(stop_and_remove_everything(&mut cri).await, 0);
    assert_no_leaks_soon(&d, &learned).await;
}

/// A daemon with the fault wrapper as handler `faulty` (its create deferred, as by default) and a
/// ready pod on it named `name`.
struct DeferredPod {
    _tools: tempfile::TempDir,
    /// While it exists, the wrapper fails `create` and `run`.
    fail_create: PathBuf,
    d: Daemon,
    env: Arc<Env>,
    cri: Cri,
    learned: LearnedPids,
    pod_cfg: PodSandboxConfig,
    pod: String,
}

impl DeferredPod {
    async fn start(name: &str) -> DeferredPod {
        let tools = tempfile::Builder::new()
            .prefix("ferrio-faults-run-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let wrapper = faulty_runtime(tools.path());
        let fail_create = tools.path().join("fail-create");
        let d = Daemon::start(Opts::with_handler(
            "faulty",
            RuntimeHandler {
                runtime_path: wrapper,
                ..Default::default()
            },
        ))
        .await;
        let env = d.env().clone();
        let mut cri = d.client().await;
        let mut learned = LearnedPids::default();
        pull(&mut cri, BUSYBOX).await.expect("PullImage");
        let pod_cfg = pod_config(&env, name);
        let pod = run_pod(&mut cri, &pod_cfg, "faulty")
            .await
            .expect("RunPodSandbox");
        learn_all(&env, &mut learned);
        DeferredPod {
            _tools: tools,
            fail_create,
            d,
            env,
            cri,
            learned,
            pod_cfg,
            pod,
        }
    }
}

/// With the default `defer_create`, CreateContainer does not run the runtime and StartContainer
/// runs its `run`: a failing run fails StartContainer with the runtime's message, leaves the
/// container created with nothing in the runtime, and the same container starts once the runtime
/// works.
#[tokio::test]
async fn a_deferred_create_whose_run_fails_stays_created_and_leaves_nothing() {
    let DeferredPod {
        _tools,
        fail_create,
        d,
        env,
        mut cri,
        mut learned,
        pod_cfg,
        pod,
    } = DeferredPod::start("deferred").await;
    let with_pod = footprint(&d);

    std::fs::write(&fail_create, "").unwrap();
    let cfg = container_config("app", BUSYBOX, &["sleep", "1000"]);
    let id = create(&mut cri, &pod, &pod_cfg, cfg)
        .await
        .expect("CreateContainer does not run the runtime");
    let e = start(&mut cri, &id)
        .await
        .expect_err("StartContainer with a runtime whose run fails");
    assert!(
        e.message().contains("faulty-runc: injected create failure"),
        "the runtime's message reaches the client: {e:?}"
    );
    let (st, _) = container_status(&mut cri, &id).await;
    assert_eq!(
        st.state,
        ContainerState::ContainerCreated as i32,
        "a container whose run failed is still created: {st:?}"
    );
    std::fs::remove_file(&fail_create).unwrap();
    start(&mut cri, &id)
        .await
        .expect("StartContainer of the same container once the runtime works");
    wait_for_container_state(
        &mut cri,
        &id,
        ContainerState::ContainerRunning,
        Duration::from_secs(20),
    )
    .await;
    learn_all(&env, &mut learned);
    stop_ctr(&mut cri, &id).await.expect("StopContainer");
    remove_ctr(&mut cri, &id).await.expect("RemoveContainer");
    assert_eq!(footprint(&d), with_pod, "the container left things behind");
    assert_eq!(stop_and_remove_everything(&mut cri).await, 0);
    assert_no_leaks_soon(&d, &learned).await;
}

/// A failed run leaves its monitor's handle file behind: a daemon restarted after it still
/// finds the container created (not a start the restart cut short), and starts it.
#[tokio::test]
async fn a_deferred_container_whose_run_failed_is_still_created_after_a_restart() {
    let DeferredPod {
        _tools,
        fail_create,
        d,
        env,
        mut cri,
        mut learned,
        pod_cfg,
        pod,
    } = DeferredPod::start("deferred-restart").await;

    std::fs::write(&fail_create, "").unwrap();
    let cfg = container_config("app", BUSYBOX, &["sleep", "1000"]);
    let id = create(&mut cri, &pod, &pod_cfg, cfg)
        .await
        .expect("CreateContainer does not run the runtime");
    start(&mut cri, &id)
        .await
        .expect_err("StartContainer with a runtime whose run fails");

    drop(cri);
    let status = d.stop();
    assert!(status.success(), "ferrio exits 0 on SIGTERM: {status}");
    let d = Daemon::start_on(&env).await;
    let mut cri = d.client().await;
    let (st, _) = container_status(&mut cri, &id).await;
    assert_eq!(
        st.state,
        ContainerState::ContainerCreated as i32,
        "a container whose run failed is still created after a restart: {st:?}"
    );
    std::fs::remove_file(&fail_create).unwrap();
    start(&mut cri, &id)
        .await
        .expect("StartContainer of the same container on the restarted daemon");
    wait_for_container_state(
        &mut cri,
        &id,
        ContainerState::ContainerRunning,
        Duration::from_secs(20),
    )
    .await;
    learn_all(&env, &mut learned);
    assert_eq!(stop_and_remove_everything(&mut cri).await, 0);
    assert_no_leaks_soon(&d, &learned).await;
}

// ---------------------------------------------------------------------------------------------
// A registry that drops the connection mid-blob.

/// A loopback HTTP proxy in front of the test registry that cuts the first `cuts` layer-sized
/// blob bodies after `after` bytes (the headers promise the whole length), as a registry or a
/// middlebox that drops the connection mid-download.
struct CuttingProxy {
    port: u16,
    /// Bodies cut so far.
    cut: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CuttingProxy {
    async fn start(backend: String, cuts: usize, after: usize) -> CuttingProxy {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicUsize::new(0));
        let left = Arc::new(AtomicUsize::new(cuts));
        let counter = cut.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            while let Ok((sock, _)) = listener.accept().await {
                let (backend, client, left, counter) = (
                    backend.clone(),
                    client.clone(),
                    left.clone(),
                    counter.clone(),
                );
                tokio::spawn(async move {
                    let cut_after = |len: usize| {
                        (len > after
                            && left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok())
                        .then(|| {
                            counter.fetch_add(1, Ordering::SeqCst);
                            after
                        })
                    };
                    let _ = proxy_one(sock, &backend, &client, cut_after).await;
                });
            }
        });
        CuttingProxy { port, cut, task }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn cuts(&self) -> usize {
        self.cut.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Serve one request on `sock` from `backend`; `cut_after(len)` says whether (and after how many
/// bytes) a successful blob body of `len` bytes is cut off.
async fn proxy_one(
    mut sock: tokio::net::TcpStream,
    backend: &str,
    client: &reqwest::Client,
    cut_after: impl Fn(usize) -> Option<usize>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (
        first.next().unwrap_or_default().to_string(),
        first.next().unwrap_or_default().to_string(),
    );
    let mut req = client.request(
        method.parse().unwrap_or(reqwest::Method::GET),
        format!("http://{backend}{target}"),
    );
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("accept") || k.eq_ignore_ascii_case("authorization") {
                req = req.header(k.trim(), v.trim());
            }
        }
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            let head = format!(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                msg.len()
            );
            sock.write_all(head.as_bytes()).await?;
            return sock.write_all(msg.as_bytes()).await;
        }
    };
    let status = resp.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for k in ["content-type", "docker-content-digest", "www-authenticate"] {
        if let Some(v) = resp.headers().get(k).and_then(|v| v.to_str().ok()) {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    if method == "HEAD" {
        let len = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_string();
        out.push_str(&format!("Content-Length: {len}\r\n\r\n"));
        return sock.write_all(out.as_bytes()).await;
    }
    let body = resp.bytes().await.unwrap_or_default();
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    sock.write_all(out.as_bytes()).await?;
    let is_blob = target.contains("/blobs/") && status.is_success();
    match is_blob.then(|| cut_after(body.len())).flatten() {
        Some(n) => {
            sock.write_all(&body[..n]).await?;
            sock.flush().await?;
            // Dropping the socket closes it: the client sees EOF before Content-Length.
            Ok(())
        }
        None => sock.write_all(&body).await,
    }
}

/// Blob files in the store whose content does not hash to their name (a partial download
/// under a final name), and the names of everything in its tmp dir.
fn partial_blobs(images: &Path) -> (Vec<String>, Vec<String>) {
    use sha2::Digest;
    let mut bad = Vec::new();
    if let Ok(rd) = std::fs::read_dir(images.join("blobs/sha256")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let data = std::fs::read(e.path()).unwrap_or_default();
            if hex::encode(sha2::Sha256::digest(&data)) != name {
                bad.push(name);
            }
        }
    }
    let tmp = std::fs::read_dir(images.join("tmp"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    (bad, tmp)
}

async fn images(cri: &mut Cri) -> Vec<ferrio::cri::v1::Image> {
    cri.img
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap_or_else(|e| panic!("ListImages: {e}"))
        .into_inner()
        .images
}

async fn remove_image(cri: &mut Cri, image: &str) {
    cri.img
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveImage {image}: {e}"));
}

/// The registry drops the connection after 64 KiB of the layer: PullImage fails with an error
/// that names the blob (ferrio does not retry a pull by itself; kubelet does, with back-off),
/// no partial blob is left under a final name nor in tmp, and the next pull works.
#[tokio::test]
async fn a_registry_dropping_the_connection_mid_blob_fails_the_pull_cleanly() {
    let registry = std::env::var(crate::harness::REGISTRY_ENV).expect("the test registry");
    let proxy = CuttingProxy::start(registry, 1, 64 * 1024).await;
    let host = proxy.host();
    let d = Daemon::start(Opts {
        configure: Some(Box::new(move |c| {
            for r in &mut c.image.registry {
                for m in &mut r.mirror {
                    m.location = host.clone();
                }
            }
        })),
        ..Default::default()
    })
    .await;
    let mut cri = d.client().await;
    let store = d.env().root().join("images");

    let e = pull(&mut cri, BUSYBOX)
        .await
        .expect_err("a pull whose layer download is cut");
    println!("PullImage with the connection cut mid-blob: {e:?}");
    assert_eq!(proxy.cuts(), 1, "the layer download was not cut");
    assert!(
        matches!(e.code(), Code::Unknown | Code::Unavailable | Code::Internal),
        "{e:?}"
    );
    assert!(
        e.message().contains("blob") || e.message().contains("sha256:"),
        "the error names the blob: {e:?}"
    );
    assert!(
        images(&mut cri).await.is_empty(),
        "a half-pulled image is listed"
    );
    let (bad, tmp) = partial_blobs(&store);
    assert!(bad.is_empty(), "partial blobs under final names: {bad:?}");
    assert!(tmp.is_empty(), "leftovers in the store's tmp: {tmp:?}");

    // The daemon still serves, and the same pull now works.
    assert_serving(&mut cri).await;
    let image_ref = pull(&mut cri, BUSYBOX)
        .await
        .expect("the pull after the cut");
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    assert_eq!(images(&mut cri).await.len(), 1);
    let (bad, tmp) = partial_blobs(&store);
    assert!(bad.is_empty() && tmp.is_empty(), "{bad:?} {tmp:?}");
    remove_image(&mut cri, BUSYBOX).await;
    assert_no_leaks_soon(&d, &LearnedPids::default()).await;
}

// ---------------------------------------------------------------------------------------------
// The image store's disk full.

/// An image with one ~8 MiB incompressible layer, pushed to the test registry as
/// `e2e/faults-big:1` once (the content is fixed, so later pushes are no-ops).
fn push_big_image(registry: &str) -> &'static str {
    const IMAGE: &str = "docker.io/e2e/faults-big:1";
    let url = format!("http://{registry}/v2/e2e/faults-big/manifests/1");
    let have = std::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-H"])
        .arg("Accept: application/vnd.oci.image.manifest.v1+json")
        .arg(&url)
        .status()
        .is_ok_and(|s| s.success());
    if have {
        return IMAGE;
    }
    use sha2::Digest;
    use std::io::Write;
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    // xorshift: incompressible and the same every time.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, "big.bin", &data[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&tar)));
    let layer = put(&gz);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer, "size": gz.len()}]
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
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
                           "annotations": {"org.opencontainers.image.ref.name": "1"}}]
        }))
        .unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{registry}/e2e/faults-big:1"))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    IMAGE
}

/// Bytes in use on the file system holding `path`.
fn used_bytes(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).expect("statvfs");
    (s.blocks() - s.blocks_free()) as u64 * s.fragment_size() as u64
}

/// The daemon's root is a 6 MiB tmpfs and the image is bigger: PullImage fails saying the disk
/// is full, the space is given back (nothing partial stays), and the daemon still serves, down
/// to a smaller pull that fits.
#[tokio::test]
async fn a_full_image_store_fails_the_pull_cleanly_and_the_daemon_serves_on() {
    let registry = std::env::var(crate::harness::REGISTRY_ENV).expect("the test registry");
    let big = push_big_image(&registry);
    let env = Arc::new(Env::new(Opts::default()));
    let root = env.root();
    nix::mount::mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=6m,mode=0700"),
    )
    .expect("mount a 6 MiB tmpfs on the daemon's root");
    let d = Daemon::start_on(&env).await;
    let mut cri = d.client().await;
    let before = used_bytes(&root);

    let e = pull(&mut cri, big)
        .await
        .expect_err("a pull bigger than the disk");
    println!("PullImage on a full disk: {e:?}");
    assert!(
        e.message().to_ascii_lowercase().contains("no space"),
        "the error says the disk is full: {e:?}"
    );
    assert!(
        matches!(e.code(), Code::ResourceExhausted | Code::Internal),
        "a full disk is ResourceExhausted (or Internal): {e:?}"
    );
    assert!(
        images(&mut cri).await.is_empty(),
        "a half-pulled image is listed"
    );
    let (bad, tmp) = partial_blobs(&root.join("images"));
    assert!(bad.is_empty(), "partial blobs under final names: {bad:?}");
    assert!(tmp.is_empty(), "leftovers in the store's tmp: {tmp:?}");
    let after = used_bytes(&root);
    assert!(
        after <= before + 256 * 1024,
        "the failed pull keeps {} KiB of the disk",
        (after - before) / 1024
    );

    // Still serving: status, and a pull that fits (busybox, ~1 MiB).
    assert_serving(&mut cri).await;
    pull(&mut cri, BUSYBOX).await.expect("a pull that fits");
    assert_eq!(images(&mut cri).await.len(), 1);
    remove_image(&mut cri, BUSYBOX).await;
    drop(cri);
    let status = d.stop();
    assert!(status.success(), "daemon exit: {status:?}");
    nix::mount::umount(&root).expect("unmount the tmpfs");
    env.assert_no_leaks(&[], &LearnedPids::default());
}
