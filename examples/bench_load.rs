//! The load benchmark: a private ferrio with N pods x 2 busybox containers (sleeping), then
//!
//! - ListPodSandbox, ListContainers and ListContainerStats latency, p50 / p99 over `--calls`
//!   serial calls each (goal: p99 <= 5 ms for the two lists; kubelet calls them every second),
//! - the daemon's CPU while idle over `--idle-secs` (utime + stime from /proc/<pid>/stat;
//!   goal < 1% of one core), the CPU of its reaped children and of all ferrio-monitors,
//! - RSS and PSS of the daemon and of the monitors (total and per monitor).
//!
//! Prints a table, writes `load-<time>.csv` under `--results`, tears everything down (pods,
//! daemon, monitors, mounts, bridge, nat rules, cgroups, work dir) and checks nothing is left.
//! Everything lives in `/var/tmp/ferrio-load-<hex>` (own root, runroot, socket, conflist with
//! its own bridge and 10.216.X.0/24): daemon and monitors name it on their command lines, which
//! is how their processes are found and how the cleanup finds leftovers.
//!
//! `hack/bench-load.sh` builds and runs it; `e2e/bench_smoke.rs` runs it with N=3.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use ferrio::cri::v1::image_service_client::ImageServiceClient;
use ferrio::cri::v1::runtime_service_client::RuntimeServiceClient;
use ferrio::cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListContainerStatsRequest, ListContainersRequest, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PullImageRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use hyper_util::rt::TokioIo;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

const BUSYBOX: &str = "docker.io/library/busybox:1.36";
const PAUSE: &str = "registry.k8s.io/pause:3.10";
const RUNC: &str = "/usr/sbin/runc";
const CNI_BIN: &str = "/usr/lib/cni";
/// Sleeps, and exits at once on SIGTERM (a bare `sleep` as pid 1 ignores it, turning every
/// stop in the teardown into the full timeout).
const SLEEPER: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 36000 & wait"];
/// Containers per pod.
const CONTAINERS: usize = 2;
/// Goal for the two list RPCs' p99, in ms.
const LIST_P99_GOAL_MS: f64 = 5.0;
/// Goal for the idle daemon, in percent of one core.
const IDLE_CPU_GOAL_PCT: f64 = 1.0;

#[derive(Parser, Debug)]
#[command(about = "ferrio with N pods x 2 containers: list latencies, idle CPU, memory")]
struct Args {
    /// Pods (each with 2 busybox containers).
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Calls per list RPC.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Idle window for the CPU reading, in seconds.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// Pods created at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    #[arg(long, default_value = "target/release/ferrio")]
    ferrio: PathBuf,
    /// Default: `ferrio-monitor` next to `--ferrio`.
    #[arg(long)]
    monitor: Option<PathBuf>,
    /// `host:port` of the test registry (hack/test-registry.sh).
    #[arg(long, default_value = "127.0.0.1:5055")]
    registry: String,
    /// Where the CSV goes.
    #[arg(long, default_value = "hack/bench/results")]
    results: PathBuf,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Opts {
    pub pods: usize,
    pub calls: usize,
    pub idle: Duration,
    pub parallel: usize,
    pub ferrio_bin: PathBuf,
    pub monitor_bin: PathBuf,
    pub registry: String,
    pub results_dir: PathBuf,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub unit: &'static str,
    /// The value, or the p50 of a latency.
    pub value: f64,
    pub p99: Option<f64>,
    /// The goal in words, and whether it was met.
    pub goal: Option<(String, bool)>,
}

#[derive(Debug)]
pub struct Report {
    pub rows: Vec<Row>,
    pub table: String,
    pub csv: PathBuf,
    /// The work dir (gone after the run).
    pub work: PathBuf,
    /// What the teardown found still there (processes, mounts, bridge, files).
    pub leftovers: Vec<String>,
}

impl Report {
    pub fn row(&self, metric: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.metric == metric)
    }
}

type Rt = RuntimeServiceClient<Channel>;

async fn connect(path: &Path) -> Result<Channel> {
    let path = path.to_path_buf();
    // The URI is a placeholder: the connector ignores it.
    Ok(Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?)
}

/// The daemon and everything the teardown must remove.
struct Load {
    work: PathBuf,
    bridge: String,
    cgroup_parent: String,
    child: Option<Child>,
    pid: u32,
    /// ferrio's Prometheus endpoint: its latency histogram is the time spent in the daemon.
    metrics: String,
}

impl Drop for Load {
    fn drop(&mut self) {
        // Also on an error or a panic half-way: nothing may stay behind.
        self.stop_daemon();
        hard_clean(&self.work, &self.bridge, &self.cgroup_parent);
    }
}

pub async fn run(opts: Opts) -> Result<Report> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the load benchmark needs root (runc, CNI, mounts)");
    }
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let work = PathBuf::from(format!("/var/tmp/ferrio-load-{tag}"));
    let mut load = Load {
        work: work.clone(),
        bridge: format!("fload{tag}"),
        cgroup_parent: format!("/ferrio-load-{tag}"),
        child: None,
        pid: 0,
        metrics: String::new(),
    };
    let rows = load.measure(&opts).await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            let log = std::fs::read_to_string(work.join("ferrio.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(e.context(format!("ferrio log tail:\n{}", tail.join("\n"))));
        }
    };
    let (bridge, cgroup_parent) = (load.bridge.clone(), load.cgroup_parent.clone());
    drop(load);
    let leftovers = leftovers(&work, &bridge, &cgroup_parent);

    let table = to_table(&rows, &opts);
    std::fs::create_dir_all(&opts.results_dir)
        .with_context(|| format!("create {}", opts.results_dir.display()))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let csv = opts.results_dir.join(format!("load-{stamp}.csv"));
    std::fs::write(&csv, to_csv(&rows, &opts)).with_context(|| format!("{}", csv.display()))?;
    Ok(Report {
        rows,
        table,
        csv,
        work,
        leftovers,
    })
}

impl Load {
    async fn measure(&mut self, opts: &Opts) -> Result<Vec<Row>> {
        let channel = self.start(opts).await?;
        let mut rt = RuntimeServiceClient::new(channel.clone());
        let mut img = ImageServiceClient::new(channel);
        for image in [PAUSE, BUSYBOX] {
            img.pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .with_context(|| format!("pull {image}"))?;
        }

        // N pods, `parallel` at a time.
        let started = Instant::now();
        let mut pods = Vec::new();
        let mut next = 0;
        while next < opts.pods {
            let batch: Vec<_> = (next..opts.pods.min(next + opts.parallel.max(1)))
                .map(|n| {
                    let mut rt = rt.clone();
                    let config = self.pod_config(n);
                    tokio::spawn(async move { start_pod(&mut rt, config).await })
                })
                .collect();
            next += batch.len();
            for t in batch {
                pods.push(t.await??);
            }
        }
        let create_s = started.elapsed().as_secs_f64();
        let mut rows = vec![Row {
            metric: format!("create {} pods x {CONTAINERS} containers", opts.pods),
            unit: "s",
            value: create_s,
            p99: None,
            goal: None,
        }];

        let listed = rt
            .list_containers(ListContainersRequest::default())
            .await?
            .into_inner()
            .containers;
        if listed.len() != opts.pods * CONTAINERS {
            bail!(
                "ListContainers gave {} containers, expected {}",
                listed.len(),
                opts.pods * CONTAINERS
            );
        }

        // Latencies, serial, one client.
        // One untimed call each first: the first stats call takes two CPU samples 100 ms apart.
        rt.list_pod_sandbox(ListPodSandboxRequest::default())
            .await?;
        rt.list_container_stats(ListContainerStatsRequest::default())
            .await?;
        let before = scrape_latency(&self.metrics);
        let mut lat = |metric: &str, samples: Vec<Duration>, goal: bool| {
            let p50 = percentile(&samples, 50.0);
            let p99 = percentile(&samples, 99.0);
            rows.push(Row {
                metric: format!("{metric}, {} pods", opts.pods),
                unit: "ms",
                value: p50,
                p99: Some(p99),
                goal: goal.then(|| {
                    (
                        format!("p99 <= {LIST_P99_GOAL_MS} ms"),
                        p99 <= LIST_P99_GOAL_MS,
                    )
                }),
            });
        };
        let s = time_calls(opts.calls, || {
            let mut rt = rt.clone();
            async move {
                rt.list_pod_sandbox(ListPodSandboxRequest::default())
                    .await
                    .map(|_| ())
            }
        })
        .await?;
        lat("ListPodSandbox", s, true);
        let s = time_calls(opts.calls, || {
            let mut rt = rt.clone();
            async move {
                rt.list_containers(ListContainersRequest::default())
                    .await
                    .map(|_| ())
            }
        })
        .await?;
        lat("ListContainers", s, true);
        let s = time_calls(opts.calls, || {
            let mut rt = rt.clone();
            async move {
                rt.list_container_stats(ListContainerStatsRequest::default())
                    .await
                    .map(|_| ())
            }
        })
        .await?;
        lat("ListContainerStats", s, false);
        // The same calls as the daemon timed them (request in to response out): what of the
        // client's latency is the daemon's, and what is the box's scheduling.
        let after = scrape_latency(&self.metrics);
        for op in ["ListPodSandbox", "ListContainers", "ListContainerStats"] {
            if let Some(bound) = p99_bound(&before, &after, op) {
                rows.push(Row {
                    metric: format!("{op} p99 in the daemon, at most"),
                    unit: "ms",
                    value: bound * 1000.0,
                    p99: None,
                    goal: None,
                });
            }
        }
        let stats = rt
            .list_container_stats(ListContainerStatsRequest::default())
            .await?
            .into_inner()
            .stats;
        if stats.len() != opts.pods * CONTAINERS {
            bail!("ListContainerStats gave {} entries", stats.len());
        }

        // Idle: no calls at all while the window runs. Let the calls above settle first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let monitors = procs_matching("ferrio-monitor", &self.work);
        let d0 = cpu_ticks(self.pid).context("daemon /proc/<pid>/stat")?;
        let m0: u64 = monitors
            .iter()
            .filter_map(|p| cpu_ticks(*p))
            .map(|t| t.0)
            .sum();
        let t0 = Instant::now();
        tokio::time::sleep(opts.idle).await;
        let d1 = cpu_ticks(self.pid).context("daemon /proc/<pid>/stat")?;
        let m1: u64 = monitors
            .iter()
            .filter_map(|p| cpu_ticks(*p))
            .map(|t| t.0)
            .sum();
        let secs = t0.elapsed().as_secs_f64();
        let hz = clock_ticks() as f64;
        let pct = |ticks: u64| ticks as f64 / hz / secs * 100.0;
        let daemon_pct = pct(d1.0.saturating_sub(d0.0));
        rows.push(Row {
            metric: format!("daemon CPU idle, {} s", opts.idle.as_secs()),
            unit: "%",
            value: daemon_pct,
            p99: None,
            goal: Some((
                format!("< {IDLE_CPU_GOAL_PCT}%"),
                daemon_pct < IDLE_CPU_GOAL_PCT,
            )),
        });
        rows.push(Row {
            metric: "daemon children CPU idle (reaped)".into(),
            unit: "%",
            value: pct(d1.1.saturating_sub(d0.1)),
            p99: None,
            goal: None,
        });
        rows.push(Row {
            metric: format!("monitors CPU idle, {} monitors", monitors.len()),
            unit: "%",
            value: pct(m1.saturating_sub(m0)),
            p99: None,
            goal: None,
        });

        // Memory.
        let mib = |k: u64| k as f64 / 1024.0;
        rows.push(Row {
            metric: "daemon RSS".into(),
            unit: "MiB",
            value: mib(status_field(self.pid, "status", "VmRSS:")),
            p99: None,
            goal: None,
        });
        rows.push(Row {
            metric: "daemon PSS".into(),
            unit: "MiB",
            value: mib(status_field(self.pid, "smaps_rollup", "Pss:")),
            p99: None,
            goal: None,
        });
        let monitors = procs_matching("ferrio-monitor", &self.work);
        let n = monitors.len().max(1) as f64;
        let rss: u64 = monitors
            .iter()
            .map(|p| status_field(*p, "status", "VmRSS:"))
            .sum();
        let pss: u64 = monitors
            .iter()
            .map(|p| status_field(*p, "smaps_rollup", "Pss:"))
            .sum();
        for (metric, v) in [
            (
                format!("monitors RSS total, {} monitors", monitors.len()),
                mib(rss),
            ),
            ("monitors PSS total".into(), mib(pss)),
            ("RSS per monitor".into(), mib(rss) / n),
            ("PSS per monitor".into(), mib(pss) / n),
        ] {
            rows.push(Row {
                metric,
                unit: "MiB",
                value: v,
                p99: None,
                goal: None,
            });
        }

        // Restart (an upgrade is one): the monitors, and so the containers, must outlive the
        // daemon, and the new daemon must find every one of them again.
        let before = procs_matching("ferrio-monitor", &self.work);
        drop(rt);
        self.stop_daemon();
        let alive = before
            .iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .count();
        let started = Instant::now();
        let channel = self.spawn(opts).await?;
        let restart_s = started.elapsed().as_secs_f64();
        let mut rt = RuntimeServiceClient::new(channel);
        let running = rt
            .list_containers(ListContainersRequest::default())
            .await?
            .into_inner()
            .containers
            .iter()
            .filter(|c| c.state == ferrio::cri::v1::ContainerState::ContainerRunning as i32)
            .count();
        let mut after = procs_matching("ferrio-monitor", &self.work);
        let mut before = before;
        before.sort_unstable();
        after.sort_unstable();
        rows.push(Row {
            metric: format!("restart to serving, {} pods", opts.pods),
            unit: "s",
            value: restart_s,
            p99: None,
            goal: None,
        });
        rows.push(Row {
            metric: "monitors alive across the restart".into(),
            unit: "",
            value: alive as f64,
            p99: None,
            goal: Some((
                format!("all {} (same pids after)", before.len()),
                alive == before.len() && before == after,
            )),
        });
        rows.push(Row {
            metric: "containers running after the restart".into(),
            unit: "",
            value: running as f64,
            p99: None,
            goal: Some((
                format!("all {}", opts.pods * CONTAINERS),
                running == opts.pods * CONTAINERS,
            )),
        });

        // Teardown through the API, as kubelet would, `parallel` pods at a time.
        let started = Instant::now();
        for chunk in pods.chunks(opts.parallel.max(1)) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|id| {
                    let mut rt = rt.clone();
                    let id = id.clone();
                    tokio::spawn(async move { remove_pod(&mut rt, &id).await })
                })
                .collect();
            for t in tasks {
                t.await??;
            }
        }
        rows.push(Row {
            metric: format!("stop+remove {} pods", opts.pods),
            unit: "s",
            value: started.elapsed().as_secs_f64(),
            p99: None,
            goal: None,
        });
        let left = rt
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items;
        if !left.is_empty() {
            bail!("{} pods still listed after the teardown", left.len());
        }
        Ok(rows)
    }

    async fn start(&mut self, opts: &Opts) -> Result<Channel> {
        use ferrio::config::{Config, MirrorConfig, RegistryConfig};
        let dir = self.work.clone();
        for d in ["root", "run", "net.d", "ferrio.d", "ipam", "pod-logs"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let mut c = Config {
            root: dir.join("root"),
            runroot: dir.join("run"),
            log_level: ferrio::config::LogLevel::Warn,
            ..Config::default()
        };
        c.api.listen = dir.join("ferrio.sock");
        c.nri.socket_path = dir.join("nri.sock");
        c.nri.plugin_path = dir.join("nri-plugins");
        c.api.stream_address = "127.0.0.1".into();
        c.api.stream_port = 0;
        c.runtime.monitor_path = opts.monitor_bin.clone();
        c.runtime.namespaces_dir = dir.join("run").join("ns");
        c.image.registry = ["registry.k8s.io", "docker.io"]
            .iter()
            .map(|prefix| RegistryConfig {
                prefix: prefix.to_string(),
                location: String::new(),
                insecure: false,
                // Only the local registry: the benchmark never touches the internet.
                fallback: false,
                mirror: vec![MirrorConfig {
                    location: opts.registry.clone(),
                    insecure: true,
                    ..Default::default()
                }],
            })
            .collect();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        self.metrics = format!("127.0.0.1:{port}");
        c.metrics.enable = true;
        c.metrics.address = self.metrics.clone();
        c.network.network_dir = dir.join("net.d");
        c.network.plugin_dirs = vec![CNI_BIN.into()];
        if let Err(e) = c.validate() {
            bail!("the ferrio config is invalid: {e}");
        }
        std::fs::write(dir.join("ferrio.toml"), toml::to_string_pretty(&c)?)?;
        let octet = pick_octet()?;
        std::fs::write(
            dir.join("net.d").join("10-load.conflist"),
            conflist(&self.bridge, octet, &dir.join("ipam")),
        )?;

        self.spawn(opts).await
    }

    /// Starts the daemon on the files `start` wrote and waits until it answers Version.
    async fn spawn(&mut self, opts: &Opts) -> Result<Channel> {
        let dir = self.work.clone();
        // Appends: a restarted daemon's log follows the first one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("ferrio.log"))?;
        let child = Command::new(&opts.ferrio_bin)
            .arg("--config")
            .arg(dir.join("ferrio.toml"))
            // Keeps /etc/ferrio/ferrio.d out of the benchmark.
            .arg("--config-dir")
            .arg(dir.join("ferrio.d"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", opts.ferrio_bin.display()))?;
        self.pid = child.id();
        self.child = Some(child);

        let socket = dir.join("ferrio.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("ferrio exited during start-up with {st}");
            }
            if socket.exists() {
                if let Ok(ch) = connect(&socket).await {
                    let v = RuntimeServiceClient::new(ch.clone())
                        .version(VersionRequest {
                            version: "v1".into(),
                        })
                        .await;
                    if v.is_ok() {
                        return Ok(ch);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("ferrio did not answer Version within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pod_config(&self, n: usize) -> PodSandboxConfig {
        let name = format!("load-{n}");
        let uid = format!("{:032x}", rand::random::<u128>());
        let log_dir = self
            .work
            .join("pod-logs")
            .join(format!("bench_{name}_{uid}"));
        // kubelet creates the pod log dir before RunPodSandbox.
        let _ = std::fs::create_dir_all(&log_dir);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid,
                namespace: "bench".into(),
                attempt: 0,
            }),
            hostname: name,
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels: [("bench".to_string(), "load".to_string())].into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/pod{n}", self.cgroup_parent),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(kubelet_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// SIGTERM, then SIGKILL after 15 s. Monitors (and so containers) outlive the daemon by
    /// design; `hard_clean` takes them down.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// What kubelet sends for an ordinary pod: a pid namespace per container.
fn kubelet_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn container_config(i: usize) -> ContainerConfig {
    let name = format!("c{i}");
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.clone(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: SLEEPER.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// RunPodSandbox, then create and start its containers; the pod's id.
async fn start_pod(rt: &mut Rt, config: PodSandboxConfig) -> Result<String> {
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    for i in 0..CONTAINERS {
        let cid = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: id.clone(),
                config: Some(container_config(i)),
                sandbox_config: Some(config.clone()),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest { container_id: cid })
            .await
            .context("StartContainer")?;
    }
    Ok(id)
}

async fn remove_pod(rt: &mut Rt, pod_id: &str) -> Result<()> {
    let cs = rt
        .list_containers(ListContainersRequest {
            filter: Some(ferrio::cri::v1::ContainerFilter {
                pod_sandbox_id: pod_id.to_string(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    for c in cs {
        rt.stop_container(StopContainerRequest {
            container_id: c.id.clone(),
            timeout: 10,
        })
        .await?;
        rt.remove_container(RemoveContainerRequest { container_id: c.id })
            .await?;
    }
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod_id.to_string(),
    })
    .await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.to_string(),
    })
    .await?;
    Ok(())
}

/// `n` serial calls of `call`; their durations.
async fn time_calls<F, Fut>(n: usize, call: F) -> Result<Vec<Duration>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        call().await?;
        v.push(t.elapsed());
    }
    Ok(v)
}

/// The nearest-rank percentile `p` of `v`, in milliseconds.
fn percentile(v: &[Duration], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort();
    if s.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0 * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1].as_secs_f64() * 1000.0
}

/// The bridge + host-local + portmap conflist, on its own bridge and /24.
fn conflist(name: &str, octet: u8, ipam_dir: &Path) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            { "type": "bridge", "bridge": name, "isGateway": true, "ipMasq": true,
              "hairpinMode": true,
              "ipam": { "type": "host-local", "dataDir": ipam_dir,
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "ranges": [[{ "subnet": format!("10.216.{octet}.0/24") }]] } },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    }))
    .unwrap_or_default()
}

/// A free 10.216.X.0/24 (neither routed nor addressed on the host).
fn pick_octet() -> Result<u8> {
    let out = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let used = out(&["-4", "-o", "route", "show"]) + &out(&["-4", "-o", "addr", "show"]);
    let free: Vec<u8> = (2..=250u8)
        .filter(|o| !used.contains(&format!("10.216.{o}.")))
        .collect();
    if free.is_empty() {
        bail!("no free 10.216.X.0/24 subnet");
    }
    Ok(free[rand::random::<usize>() % free.len()])
}

// ---- the daemon's metrics ----

/// Cumulative `ferrio_operations_latency_seconds` bucket counts: (operation, le) -> count.
type Buckets = std::collections::BTreeMap<(String, String), u64>;

/// GET /metrics (empty when it cannot be read: the rows derived from it are left out).
fn scrape_latency(addr: &str) -> Buckets {
    use std::io::{Read, Write};
    let mut text = String::new();
    if let Ok(mut s) = std::net::TcpStream::connect(addr) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).is_ok() {
            let _ = s.read_to_string(&mut text);
        }
    }
    let label = |l: &str, k: &str| {
        let at = l.find(&format!("{k}=\""))? + k.len() + 2;
        Some(l[at..].split('"').next()?.to_string())
    };
    text.lines()
        .filter(|l| l.starts_with("ferrio_operations_latency_seconds_bucket{"))
        .filter_map(|l| {
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some(((label(l, "operation")?, label(l, "le")?), count))
        })
        .collect()
}

/// The smallest bucket bound (seconds) under which 99% of `op`'s calls between the two scrapes
/// finished.
fn p99_bound(before: &Buckets, after: &Buckets, op: &str) -> Option<f64> {
    let mut buckets: Vec<(f64, u64)> = after
        .iter()
        .filter(|((o, _), _)| o == op)
        .map(|(key, n)| {
            let le = key.1.parse().unwrap_or(f64::INFINITY); // "+Inf"
            (le, n.saturating_sub(before.get(key).copied().unwrap_or(0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, n)| *n as f64 >= 0.99 * total as f64)
        .map(|(le, _)| *le)
}

// ---- /proc ----

/// (utime + stime, cutime + cstime) of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11) // state .. cmajflt: fields 3..=13
        .take(4)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f.len() == 4).then(|| (f[0] + f[1], f[2] + f[3]))
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100)
}

fn status_field(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose `comm` is `comm` and whose command line names `dir`.
fn procs_matching(comm: &str, dir: &Path) -> Vec<u32> {
    let dir = dir.to_string_lossy();
    pids()
        .into_iter()
        .filter(|pid| {
            let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            c.trim_end() == comm && cmdline(*pid).contains(dir.as_ref())
        })
        .collect()
}

// ---- cleanup ----

/// Kills what names the work dir, deletes runc containers under the runroot, unmounts, removes
/// the bridge, its nat rules and the cgroups, then the work dir.
fn hard_clean(work: &Path, bridge: &str, cgroup_parent: &str) {
    let w = work.to_string_lossy().into_owned();
    let me = std::process::id();
    for pid in pids() {
        if pid != me && cmdline(pid).contains(&w) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let root = work.join("run/oci/runc");
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            let _ = Command::new(RUNC)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force"])
                .arg(e.file_name())
                .stderr(Stdio::null())
                .status();
        }
    }
    for m in mounts_under(&w).iter().rev() {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
    clean_iptables(bridge);
    if Path::new("/sys/class/net").join(bridge).exists() {
        let _ = Command::new("ip").args(["link", "del", bridge]).status();
    }
    for h in cgroup_dirs(cgroup_parent) {
        rmdir_tree(&h);
    }
    let _ = std::fs::remove_dir_all(work);
}

fn mounts_under(w: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(w))
        .collect()
}

fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|h| h.path().join(parent.trim_start_matches('/')))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default()
}

/// nat POSTROUTING rules whose comment names network `net`, and the chains they jump to.
fn clean_iptables(net: &str) {
    for (i, chain) in nat_rules(net).into_iter().rev() {
        let _ = Command::new("iptables")
            .args(["-w", "-t", "nat", "-D", "POSTROUTING", &i.to_string()])
            .status();
        if let Some(c) = chain.filter(|c| c.starts_with("CNI-")) {
            let _ = Command::new("iptables")
                .args(["-w", "-t", "nat", "-F", &c])
                .status();
            let _ = Command::new("iptables")
                .args(["-w", "-t", "nat", "-X", &c])
                .status();
        }
    }
}

/// (rule number, jump target) of the POSTROUTING rules naming `net`.
fn nat_rules(net: &str) -> Vec<(usize, Option<String>)> {
    let Ok(out) = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", "POSTROUTING"])
        .output()
    else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let quoted = format!("\\\"{net}\\\"");
    text.lines()
        .filter(|l| l.starts_with("-A "))
        .enumerate()
        .filter(|(_, l)| l.contains(&quoted))
        .map(|(i, l)| (i + 1, l.split(" -j ").nth(1).map(|c| c.trim().to_string())))
        .collect()
}

fn rmdir_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

/// Whatever of the run is still on the host.
fn leftovers(work: &Path, bridge: &str, cgroup_parent: &str) -> Vec<String> {
    let w = work.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut left: Vec<String> = pids()
        .into_iter()
        .filter(|p| *p != me)
        .map(|p| (p, cmdline(p)))
        .filter(|(_, c)| c.contains(&w))
        .map(|(p, c)| format!("process {p}: {c}"))
        .collect();
    left.extend(mounts_under(&w).into_iter().map(|m| format!("mount {m}")));
    if work.exists() {
        left.push(format!("dir {w}"));
    }
    if Path::new("/sys/class/net").join(bridge).exists() {
        left.push(format!("bridge {bridge}"));
    }
    if !nat_rules(bridge).is_empty() {
        left.push(format!("nat rules of {bridge}"));
    }
    left.extend(
        cgroup_dirs(cgroup_parent)
            .into_iter()
            .map(|p| format!("cgroup {}", p.display())),
    );
    left
}

// ---- output ----

fn to_table(rows: &[Row], opts: &Opts) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "ferrio load: {} pods x {CONTAINERS} containers, {} calls per list, idle {} s",
        opts.pods,
        opts.calls,
        opts.idle.as_secs()
    );
    let _ = writeln!(
        t,
        "{:<52} {:>10} {:>10} {:>5}  goal",
        "metric", "value/p50", "p99", "unit"
    );
    for r in rows {
        let p99 = r
            .p99
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "-".into());
        let goal = r
            .goal
            .as_ref()
            .map(|(g, ok)| format!("{g} {}", if *ok { "ok" } else { "MISSED" }))
            .unwrap_or_default();
        let _ = writeln!(
            t,
            "{:<52} {:>10.2} {:>10} {:>5}  {goal}",
            r.metric, r.value, p99, r.unit
        );
    }
    t
}

fn to_csv(rows: &[Row], opts: &Opts) -> String {
    let mut s = String::from("pods,metric,unit,value_or_p50,p99,goal,met\n");
    for r in rows {
        let (goal, met) = r
            .goal
            .as_ref()
            .map(|(g, ok)| (g.clone(), ok.to_string()))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{},\"{}\",{},{:.3},{},\"{goal}\",{met}",
            opts.pods,
            r.metric,
            r.unit,
            r.value,
            r.p99.map(|v| format!("{v:.3}")).unwrap_or_default()
        );
    }
    s
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = Args::parse();
    let monitor_bin = match a.monitor {
        Some(m) => m,
        None => a
            .ferrio
            .parent()
            .map(|d| d.join("ferrio-monitor"))
            .ok_or_else(|| anyhow!("no monitor next to {}", a.ferrio.display()))?,
    };
    let abs = |p: PathBuf| std::fs::canonicalize(&p).with_context(|| format!("{}", p.display()));
    let report = run(Opts {
        pods: a.pods,
        calls: a.calls,
        idle: Duration::from_secs(a.idle_secs),
        parallel: a.parallel,
        ferrio_bin: abs(a.ferrio)?,
        monitor_bin: abs(monitor_bin)?,
        registry: a.registry,
        results_dir: a.results,
    })
    .await?;
    print!("{}", report.table);
    println!("csv: {}", report.csv.display());
    if !report.leftovers.is_empty() {
        bail!("left behind: {:?}", report.leftovers);
    }
    Ok(())
}
