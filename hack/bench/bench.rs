//! The side-by-side benchmark: a ferrio and (when installed) a containerd on private roots,
//! sockets, bridges and subnets, both driven through the same CRI client, alternating A/B; plus
//! the floors (`runc run`, conmon + runc) timed in the same run. See `hack/bench/run.sh`.
//!
//! Everything lives under one work dir (`/var/tmp/ferrio-bench-<hex>`): daemons, monitors and
//! shims name it on their command lines, which is how memory is attributed and how the cleanup
//! finds leftovers.

use anyhow::{anyhow, bail, Context, Result};
use ferrio::cri::v1::image_service_client::ImageServiceClient;
use ferrio::cri::v1::runtime_service_client::RuntimeServiceClient;
use ferrio::cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PullImageRequest,
    RemoveContainerRequest, RemoveImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub const BUSYBOX: &str = "docker.io/library/busybox:1.36";
pub const PAUSE: &str = "registry.k8s.io/pause:3.10";
const RUNC: &str = "/usr/sbin/runc";
const CRUN: &str = "/usr/bin/crun";
const CNI_BIN: &str = "/opt/cni/bin";
/// A container that exits at once on SIGTERM (busybox `sleep` as pid 1 would ignore it and
/// turn every stop into the full timeout).
const SLEEPER: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"];

/// What to run.
pub struct Opts {
    /// Iterations per runtime of each timed operation.
    pub n: usize,
    /// Pods present while ListContainers / ListPodSandbox are timed.
    pub list_pods: usize,
    /// Running-pod counts at which memory is sampled.
    pub mem_pods: Vec<usize>,
    pub ferrio_bin: PathBuf,
    pub monitor_bin: PathBuf,
    /// `host:port` of the test registry (hack/test-registry.sh).
    pub registry: String,
    pub results_dir: PathBuf,
    /// Use containerd when its binary is installed.
    pub containerd: bool,
    /// ferrio's handler for every pod (`runc` or `crun`); the floors run the same runtime.
    /// containerd keeps runc: its shim cannot run crun on a hybrid cgroup host.
    pub handler: Handler,
    /// The command of a no-op NRI plugin (see e2e/nri_plugin.rs), for the row of the pod lifecycle with NRI
    /// and one plugin against NRI off; None leaves that row out.
    pub nri_plugin: Option<Vec<String>>,
    /// Only the NRI row (a quick check of it): no containerd, no floors, no memory or List rows.
    pub only_nri: bool,
}

/// The NRI row's metric, and the name of its baseline.
pub const NRI_ROW: &str = "pod lifecycle, NRI + no-op plugin";
pub const NRI_BASELINE: &str = "ferrio, NRI off";

/// How a ferrio side runs NRI.
enum NriMode {
    /// The default config: NRI on, no plugin.
    Default,
    Off,
    /// NRI on, with `plugin` as its one pre-installed plugin and the metrics endpoint (to see it register).
    Plugin(Vec<String>),
}

/// The OCI runtime ferrio's pods and the floors use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    Runc,
    Crun,
}

impl Handler {
    pub fn name(self) -> &'static str {
        match self {
            Handler::Runc => "runc",
            Handler::Crun => "crun",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Handler::Runc => RUNC,
            Handler::Crun => CRUN,
        }
    }
}

/// p50 and p95 of one metric on one side.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub p50: f64,
    pub p95: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(samples: &[f64]) -> Option<Stat> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        // Nearest rank: with few samples p95 is the maximum, which is what a reader expects.
        let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        Some(Stat {
            p50: rank(0.50),
            p95: rank(0.95),
            n: s.len(),
        })
    }
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub metric: String,
    pub unit: &'static str,
    pub ferrio: Option<Stat>,
    pub containerd: Option<Stat>,
    /// The floor this metric is compared with (its name and value).
    pub floor: Option<(String, Stat)>,
}

impl Row {
    pub fn ratio(&self) -> Option<f64> {
        Some(self.ferrio?.p50 / self.containerd?.p50)
    }
    pub fn over_floor(&self) -> Option<f64> {
        Some(self.ferrio?.p50 / self.floor.as_ref()?.1.p50)
    }
}

pub struct Report {
    pub rows: Vec<Row>,
    pub containerd: bool,
    pub notes: Vec<String>,
    pub table: String,
    pub csv: PathBuf,
    pub png: PathBuf,
    /// The work dir, gone once [`run`] returned.
    pub work: PathBuf,
}

/// Which daemon a [`Side`] is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Ferrio,
    Containerd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ferrio => "ferrio",
            Kind::Containerd => "containerd",
        }
    }
}

/// Both CRI services over one unix-socket channel, as kubelet uses them.
#[derive(Clone)]
struct Cri {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
}

async fn connect(path: &Path) -> Result<Cri> {
    let path = path.to_path_buf();
    // The URI is a placeholder: the connector ignores it.
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(Cri {
        rt: RuntimeServiceClient::new(channel.clone()),
        img: ImageServiceClient::new(channel),
    })
}

/// One daemon under test.
struct Side {
    kind: Kind,
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    pid: u32,
    cri: Option<Cri>,
    cgroup_parent: String,
    /// `comm` of its per-pod helper processes.
    helper_comm: &'static str,
    exec_supported: bool,
    seq: usize,
    /// The metrics endpoint's port, where one is served.
    metrics_port: u16,
}

impl Side {
    fn cri(&mut self) -> &mut Cri {
        self.cri.as_mut().expect("connected after start")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn spawn(&mut self, mut cmd: Command) -> Result<()> {
        let log = std::fs::File::create(self.log())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.kind.name()))?;
        self.pid = child.id();
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited during start-up with {st}:\n{}",
                    self.kind.name(),
                    self.log_tail()
                );
            }
            if self.socket.exists() {
                if let Ok(mut c) = connect(&self.socket).await {
                    let v =
                        c.rt.version(VersionRequest {
                            version: "v1".into(),
                        })
                        .await;
                    if v.is_ok() {
                        self.cri = Some(c);
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer Version within 60s:\n{}",
                    self.kind.name(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then SIGKILL after 15 s.
    fn stop(&mut self) {
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

    fn pod_config(&mut self, work: &Path, prefix: &str) -> PodSandboxConfig {
        self.seq += 1;
        let name = format!("{prefix}-{}", self.seq);
        let uid = format!("{:032x}", rand::random::<u128>());
        let log_dir = work
            .join(self.kind.name())
            .join("pod-logs")
            .join(format!("{name}_{uid}"));
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
            labels: [("bench".to_string(), prefix.to_string())].into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(kubelet_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn helpers(&self) -> Vec<u32> {
        procs_matching(self.helper_comm, &self.dir)
    }
}

fn container_config() -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: SLEEPER.iter().map(|s| s.to_string()).collect(),
        log_path: "c/0.log".into(),
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

/// What kubelet sends for an ordinary pod: its own pid namespace per container (the CRI default,
/// 0, is POD: a shared pid namespace, where a container's orphans outlive its init).
fn kubelet_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Samples per (metric, side).
#[derive(Default)]
struct Samples(BTreeMap<(String, Kind), Vec<f64>>);

impl Samples {
    fn add(&mut self, metric: &str, kind: Kind, v: f64) {
        self.0
            .entry((metric.to_string(), kind))
            .or_default()
            .push(v);
    }
    fn stat(&self, metric: &str, kind: Kind) -> Option<Stat> {
        Stat::of(self.0.get(&(metric.to_string(), kind))?)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn timed<T, F: std::future::Future<Output = Result<T, tonic::Status>>>(
    what: &str,
    f: F,
) -> Result<(T, f64)> {
    let t = Instant::now();
    let r = f.await.map_err(|e| anyhow!("{what}: {e}"))?;
    Ok((r, ms(t.elapsed())))
}

/// The whole benchmark; cleans up after itself on every path.
pub async fn run(opts: Opts) -> Result<Report> {
    let work = PathBuf::from(format!(
        "/var/tmp/ferrio-bench-{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    ));
    std::fs::create_dir_all(&work)?;
    let mut bench = Bench {
        work: work.clone(),
        sides: Vec::new(),
        nri_sides: Vec::new(),
        bridges: Vec::new(),
        cgroup_parents: Vec::new(),
    };
    let r = bench.run(&opts).await;
    bench.teardown().await;
    r
}

struct Bench {
    work: PathBuf,
    sides: Vec<Side>,
    /// The two ferrios of the NRI row, only while it is timed.
    nri_sides: Vec<Side>,
    bridges: Vec<String>,
    cgroup_parents: Vec<String>,
}

impl Drop for Bench {
    /// The backstop for a panic or an interrupted future: kill what names the work dir, then
    /// the host-side leftovers. The normal path has emptied everything through CRI by then.
    fn drop(&mut self) {
        for s in self.sides.iter_mut().chain(self.nri_sides.iter_mut()) {
            s.stop();
        }
        hard_clean(&self.work, &self.bridges, &self.cgroup_parents);
    }
}

impl Bench {
    async fn run(&mut self, opts: &Opts) -> Result<Report> {
        let mut notes = Vec::new();
        let tag = self
            .work
            .file_name()
            .map(|n| n.to_string_lossy().replace("ferrio-bench-", ""))
            .unwrap_or_default();
        let (tag8, octets) = (&tag[..8.min(tag.len())], pick_octets()?);
        if opts.only_nri {
            return self.run_only_nri(opts, tag8, octets.3).await;
        }

        let side = self
            .ferrio_side(opts, "ferrio", tag8, octets.0, NriMode::Default)
            .await?;
        self.sides.push(side);
        let containerd_found =
            which("containerd").is_some() && which("containerd-shim-runc-v2").is_some();
        if opts.containerd && containerd_found {
            self.start_containerd(opts, tag8, octets.1).await?;
        } else {
            let why = if opts.containerd {
                "containerd is not installed (apt-get install containerd)"
            } else {
                "containerd disabled"
            };
            notes.push(format!(
                "{why}: ferrio is compared with the runc / conmon floors only"
            ));
        }
        let containerd = self.sides.len() > 1;
        eprintln!(
            "bench: work dir {}, runtimes: {}",
            self.work.display(),
            self.sides
                .iter()
                .map(|s| s.kind.name())
                .collect::<Vec<_>>()
                .join(", ")
        );

        let floor = Floor::prepare(&self.work, &opts.registry, tag8, octets.2, opts.handler)?;
        let rt = opts.handler.name();
        self.cgroup_parents.push(floor.cgroup_parent.clone());
        self.bridges.push(floor.net.clone());

        // Warm-up: images present (pause pulled by the first pod), one lifecycle each.
        let mut samples = Samples::default();
        for i in 0..self.sides.len() {
            let side = &mut self.sides[i];
            pull(side, BUSYBOX).await?;
            pull(side, PAUSE).await?;
            lifecycle(side, &self.work, &mut Samples::default()).await?;
        }
        let mut mem: BTreeMap<(String, Kind), f64> = BTreeMap::new();
        for s in &self.sides {
            let (rss, pss) = (rss_kib(s.pid), pss_kib(s.pid));
            mem.insert(("daemon RSS idle".into(), s.kind), kib_mib(rss));
            mem.insert(("daemon PSS idle".into(), s.kind), kib_mib(pss));
        }

        // Timed operations, alternating A/B (and the floors in the same loop).
        let mut floor_samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for i in 0..opts.n {
            let order: Vec<usize> = if i % 2 == 0 {
                (0..self.sides.len()).collect()
            } else {
                (0..self.sides.len()).rev().collect()
            };
            for k in order {
                let side = &mut self.sides[k];
                let kind = side.kind;
                remove_image(side, BUSYBOX).await?;
                let t = pull(side, BUSYBOX).await?;
                samples.add("PullImage (cold)", kind, t);
                lifecycle(side, &self.work, &mut samples).await?;
            }
            floor_samples
                .entry(format!("{rt} run"))
                .or_default()
                .push(floor.runc_run(i)?);
            floor_samples
                .entry(format!("conmon + {rt}"))
                .or_default()
                .push(floor.conmon_run(i)?);
            let (create, start) = floor.runc_create_start(i)?;
            let cni = floor.cni_add_del(i)?;
            for (name, v) in [
                (format!("{rt} create"), create),
                (format!("{rt} create + start"), create + start),
                ("CNI ADD + DEL".to_string(), cni),
                (
                    format!("pod: CNI + {rt} create + start"),
                    cni + create + start,
                ),
            ] {
                floor_samples.entry(name).or_default().push(v);
            }
            if (i + 1) % 10 == 0 {
                eprintln!("bench: {} of {} iterations", i + 1, opts.n);
            }
        }
        // NRI's cost, while the node is as quiet as for the rows above.
        let mut nri_row = None;
        if let Some(plugin) = &opts.nri_plugin {
            nri_row = Some(self.nri_row(opts, plugin, tag8, octets.3).await?);
        } else {
            notes.push("no NRI plugin command: the NRI row is left out".into());
        }
        for s in &self.sides {
            if !s.exec_supported {
                notes.push(format!(
                    "{}: ExecSync is Unimplemented, skipped",
                    s.kind.name()
                ));
            }
        }

        // Pods that stay: memory at each mem_pods count, then List* with list_pods present.
        let mut checkpoints: Vec<usize> = opts.mem_pods.clone();
        checkpoints.push(opts.list_pods);
        checkpoints.sort_unstable();
        checkpoints.dedup();
        let mut held: Vec<Vec<String>> = vec![Vec::new(); self.sides.len()];
        for &target in &checkpoints {
            while held.iter().any(|h| h.len() < target) {
                for (k, side) in self.sides.iter_mut().enumerate() {
                    if held[k].len() < target {
                        held[k].push(run_pod_with_container(side, &self.work).await?);
                    }
                }
            }
            if opts.mem_pods.contains(&target) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                for s in &self.sides {
                    let helpers = s.helpers();
                    let rss: u64 = helpers.iter().map(|p| rss_kib(*p)).sum();
                    let pss: u64 = helpers.iter().map(|p| pss_kib(*p)).sum();
                    let per = |v: u64| kib_mib(v) / target as f64;
                    mem.insert(
                        (format!("daemon RSS, {target} pods"), s.kind),
                        kib_mib(rss_kib(s.pid)),
                    );
                    mem.insert(
                        (format!("helper RSS per pod, {target} pods"), s.kind),
                        per(rss),
                    );
                    mem.insert(
                        (format!("helper PSS per pod, {target} pods"), s.kind),
                        per(pss),
                    );
                    if !helpers.is_empty() {
                        mem.insert(
                            (
                                format!("RSS per {} process, {target} pods", s.helper_comm),
                                s.kind,
                            ),
                            kib_mib(rss) / helpers.len() as f64,
                        );
                        notes.push(format!(
                            "{}: {} {} processes for {target} pods",
                            s.kind.name(),
                            helpers.len(),
                            s.helper_comm
                        ));
                    }
                }
            }
            if target == opts.list_pods {
                for i in 0..opts.n {
                    for k in 0..self.sides.len() {
                        let k = if i % 2 == 0 {
                            k
                        } else {
                            self.sides.len() - 1 - k
                        };
                        let side = &mut self.sides[k];
                        let kind = side.kind;
                        let (_, t) = timed(
                            "ListPodSandbox",
                            side.cri()
                                .rt
                                .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
                        )
                        .await?;
                        samples.add(&format!("ListPodSandbox, {target} pods"), kind, t);
                        let (_, t) = timed(
                            "ListContainers",
                            side.cri()
                                .rt
                                .list_containers(ListContainersRequest { filter: None }),
                        )
                        .await?;
                        samples.add(&format!("ListContainers, {target} pods"), kind, t);
                    }
                }
            }
        }
        let conmon_mem = floor.conmon_memory()?;

        // The table.
        let lf = |n: &str| floor_samples.get(n).and_then(|v| Stat::of(v));
        let mut rows = Vec::new();
        let timed_metrics = [
            "PullImage (cold)",
            "RunPodSandbox",
            "CreateContainer",
            "StartContainer",
            "create+start",
            "ExecSync true",
            "StopContainer",
            "RemoveContainer",
            "StopPodSandbox",
            "RemovePodSandbox",
            "pod lifecycle",
        ];
        for m in timed_metrics {
            let floor = match m {
                "create+start" => lf(&format!("{rt} run")).map(|s| (format!("{rt} run"), s)),
                // What no runtime can skip: the plugins' ADD and DEL and the container's create
                // and start (the pause runs beside the ADD; the rest is the runtime's own).
                "pod lifecycle" => lf(&format!("pod: CNI + {rt} create + start"))
                    .map(|s| (format!("CNI + {rt} create + start"), s)),
                "RunPodSandbox" | "StopPodSandbox" => None,
                _ => None,
            };
            rows.push(self.row(&samples, m, "ms", floor));
        }
        rows.extend(nri_row);
        for m in [
            format!("ListPodSandbox, {} pods", opts.list_pods),
            format!("ListContainers, {} pods", opts.list_pods),
        ] {
            rows.push(self.row(&samples, &m, "ms", None));
        }
        for (name, v) in &floor_samples {
            rows.push(Row {
                metric: format!("floor: {name}"),
                unit: "ms",
                ferrio: None,
                containerd: None,
                floor: Stat::of(v).map(|s| (name.to_string(), s)),
            });
        }
        let mut mem_metrics: Vec<String> = Vec::new();
        for (m, _) in mem.keys() {
            if !mem_metrics.contains(m) {
                mem_metrics.push(m.clone());
            }
        }
        let one = |v: f64| Stat {
            p50: v,
            p95: v,
            n: 1,
        };
        for m in mem_metrics {
            let conmon = if m.starts_with("RSS per") {
                conmon_mem.map(|(rss, _)| ("conmon RSS".to_string(), one(rss)))
            } else if m.starts_with("helper PSS") {
                conmon_mem.map(|(_, pss)| ("conmon PSS".to_string(), one(pss)))
            } else {
                None
            };
            rows.push(Row {
                metric: m.clone(),
                unit: "MiB",
                ferrio: mem.get(&(m.clone(), Kind::Ferrio)).copied().map(one),
                containerd: mem.get(&(m.clone(), Kind::Containerd)).copied().map(one),
                floor: conmon,
            });
        }
        if let Some((rss, pss)) = conmon_mem {
            rows.push(Row {
                metric: "floor: conmon (1 container)".into(),
                unit: "MiB",
                ferrio: None,
                containerd: None,
                floor: Some((format!("RSS; PSS {pss:.2}"), one(rss))),
            });
        }

        self.report(opts, rows, containerd, notes)
    }

    /// Write the CSV and PNG of `rows`.
    fn report(
        &self,
        opts: &Opts,
        rows: Vec<Row>,
        containerd: bool,
        notes: Vec<String>,
    ) -> Result<Report> {
        std::fs::create_dir_all(&opts.results_dir)?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let csv = opts.results_dir.join(format!("bench-{stamp}.csv"));
        let png = opts.results_dir.join(format!("bench-{stamp}.png"));
        std::fs::write(&csv, to_csv(&rows))?;
        std::fs::write(&png, to_png(&rows, opts.n)?)?;
        let table = to_table(&rows, &notes, opts.n);
        Ok(Report {
            rows,
            containerd,
            notes,
            table,
            csv,
            png,
            work: self.work.clone(),
        })
    }

    async fn run_only_nri(&mut self, opts: &Opts, tag: &str, octet: u8) -> Result<Report> {
        let Some(plugin) = &opts.nri_plugin else {
            bail!("only the NRI row was asked for, and there is no NRI plugin command");
        };
        let row = self.nri_row(opts, plugin, tag, octet).await?;
        self.report(opts, vec![row], false, Vec::new())
    }

    /// The pod lifecycle on a ferrio with NRI and one no-op plugin against one with NRI off, alternating A/B;
    /// both are stopped before it returns.
    async fn nri_row(
        &mut self,
        opts: &Opts,
        plugin: &[String],
        tag: &str,
        octet: u8,
    ) -> Result<Row> {
        let off = self
            .ferrio_side(opts, "ferrio-nri-off", tag, octet, NriMode::Off)
            .await;
        self.nri_sides.extend(off);
        let on = self
            .ferrio_side(
                opts,
                "ferrio-nri-plugin",
                tag,
                octet,
                NriMode::Plugin(plugin.to_vec()),
            )
            .await;
        self.nri_sides.extend(on);
        let r = self.time_nri(opts).await;
        for side in &mut self.nri_sides {
            remove_all_pods(side).await;
            side.stop();
        }
        r
    }

    async fn time_nri(&mut self, opts: &Opts) -> Result<Row> {
        if self.nri_sides.len() != 2 {
            bail!("the NRI row's ferrios did not start");
        }
        let metrics_port = self.nri_sides[1].metrics_port;
        wait_for_nri_plugin(metrics_port, &self.nri_sides[1]).await?;
        let mut samples: [Samples; 2] = Default::default();
        for side in &mut self.nri_sides {
            pull(side, BUSYBOX).await?;
            pull(side, PAUSE).await?;
            lifecycle(side, &self.work, &mut Samples::default()).await?;
        }
        for i in 0..opts.n {
            for k in [i % 2, 1 - i % 2] {
                lifecycle(&mut self.nri_sides[k], &self.work, &mut samples[k]).await?;
            }
        }
        // The plugin must still be there: a lifecycle without it would measure NRI with no plugin.
        wait_for_nri_plugin(metrics_port, &self.nri_sides[1]).await?;
        Ok(Row {
            metric: NRI_ROW.into(),
            unit: "ms",
            ferrio: samples[1].stat("pod lifecycle", Kind::Ferrio),
            containerd: None,
            floor: samples[0]
                .stat("pod lifecycle", Kind::Ferrio)
                .map(|s| (NRI_BASELINE.to_string(), s)),
        })
    }

    fn row(&self, s: &Samples, m: &str, unit: &'static str, floor: Option<(String, Stat)>) -> Row {
        Row {
            metric: m.to_string(),
            unit,
            ferrio: s.stat(m, Kind::Ferrio),
            containerd: s.stat(m, Kind::Containerd),
            floor,
        }
    }

    /// A ferrio under `work/<name>` on a bridge of its own for `octet` (shared by the sides of one octet).
    async fn ferrio_side(
        &mut self,
        opts: &Opts,
        name: &str,
        tag: &str,
        octet: u8,
        nri: NriMode,
    ) -> Result<Side> {
        use ferrio::config::{Config, MirrorConfig, RegistryConfig};
        let dir = self.work.join(name);
        let net = format!("fb{tag}{octet:02x}");
        for d in ["root", "run", "net.d", "ferrio.d", "pod-logs"] {
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
        c.runtime.default_runtime = opts.handler.name().into();
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
        c.network.network_dir = dir.join("net.d");
        c.network.plugin_dirs = vec![CNI_BIN.into()];
        let mut metrics_port = 0;
        match nri {
            NriMode::Default => {}
            NriMode::Off => c.nri.enable = false,
            NriMode::Plugin(cmd) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::create_dir_all(&c.nri.plugin_path)?;
                let quoted: Vec<String> = cmd.iter().map(|a| format!("'{a}'")).collect();
                let script = c.nri.plugin_path.join("10-noop");
                std::fs::write(
                    &script,
                    format!("#!/bin/sh\nexec {} >/dev/null\n", quoted.join(" ")),
                )?;
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
                metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                c.metrics.enable = true;
                c.metrics.address = format!("127.0.0.1:{metrics_port}");
            }
        }
        if let Err(e) = c.validate() {
            bail!("the ferrio config is invalid: {e}");
        }
        std::fs::write(dir.join("ferrio.toml"), toml::to_string_pretty(&c)?)?;
        // host-local locks its dir: sides of one bridge share it, and never get the same address.
        std::fs::write(
            dir.join("net.d").join("10-bench.conflist"),
            conflist(&net, octet, Some(&self.work.join(format!("ipam-{octet}")))),
        )?;
        if !self.bridges.contains(&net) {
            self.bridges.push(net);
        }
        let cgroup_parent = format!("/ferrio-bench-{tag}-{name}");
        self.cgroup_parents.push(cgroup_parent.clone());
        let mut cmd = Command::new(&opts.ferrio_bin);
        cmd.arg("--config").arg(dir.join("ferrio.toml"));
        let help = Command::new(&opts.ferrio_bin).arg("--help").output();
        if help.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--config-dir")) {
            // Keep /etc/ferrio/ferrio.d out of the benchmark.
            cmd.arg("--config-dir").arg(dir.join("ferrio.d"));
        }
        let mut side = Side {
            kind: Kind::Ferrio,
            socket: dir.join("ferrio.sock"),
            dir,
            child: None,
            pid: 0,
            cri: None,
            cgroup_parent,
            helper_comm: "ferrio-monitor",
            exec_supported: true,
            seq: 0,
            metrics_port,
        };
        side.spawn(cmd)?;
        match side.wait_ready().await {
            Ok(()) => Ok(side),
            Err(e) => {
                side.stop();
                Err(e)
            }
        }
    }

    async fn start_containerd(&mut self, opts: &Opts, tag: &str, octet: u8) -> Result<()> {
        let dir = self.work.join("containerd");
        let net = format!("fb{tag}c");
        for d in ["root", "state", "net.d", "opt", "runc", "pod-logs"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        // Registry hosts: docker.io and registry.k8s.io resolve only at the local registry.
        for host in ["docker.io", "registry.k8s.io"] {
            let d = dir.join("certs.d").join(host);
            std::fs::create_dir_all(&d)?;
            std::fs::write(
                d.join("hosts.toml"),
                format!(
                    "server = \"http://{r}\"\n\n[host.\"http://{r}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                    r = opts.registry
                ),
            )?;
        }
        std::fs::write(
            dir.join("net.d").join("10-bench.conflist"),
            conflist(&net, octet, None),
        )?;
        self.bridges.push(net);
        let cgroup_parent = format!("/ferrio-bench-{tag}-containerd");
        self.cgroup_parents.push(cgroup_parent.clone());
        let d = |p: &str| dir.join(p).display().to_string();
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[{cri}]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  Root = "{runc}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{netd}"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{certs}"
"#,
            root = d("root"),
            state = d("state"),
            sock = d("containerd.sock"),
            opt = d("opt"),
            runc = d("runc"),
            netd = d("net.d"),
            certs = d("certs.d"),
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(dir.join("config.toml"));
        let mut side = Side {
            kind: Kind::Containerd,
            socket: dir.join("containerd.sock"),
            dir,
            child: None,
            pid: 0,
            cri: None,
            cgroup_parent,
            helper_comm: "containerd-shim",
            exec_supported: true,
            seq: 0,
            metrics_port: 0,
        };
        side.spawn(cmd)?;
        let r = side.wait_ready().await;
        self.sides.push(side);
        r
    }

    /// Remove every pod through CRI, stop the daemons, then the host-side leftovers.
    async fn teardown(&mut self) {
        for side in &mut self.sides {
            remove_all_pods(side).await;
        }
        for s in &mut self.sides {
            s.stop();
        }
        hard_clean(&self.work, &self.bridges, &self.cgroup_parents);
    }
}

/// Remove every pod `side` still has, through CRI.
async fn remove_all_pods(side: &mut Side) {
    if side.cri.is_none() || side.child.is_none() {
        return;
    }
    let pods = match side
        .cri()
        .rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
    {
        Ok(r) => r.into_inner().items,
        Err(e) => {
            eprintln!("bench: {}: ListPodSandbox: {e}", side.kind.name());
            Vec::new()
        }
    };
    let n = pods.len();
    for p in pods {
        if let Err(e) = remove_pod(side, &p.id).await {
            eprintln!("bench: {}: remove pod {}: {e}", side.kind.name(), p.id);
        }
    }
    if n > 0 {
        eprintln!("bench: {}: removed {n} pods", side.kind.name());
    }
}

async fn pull(side: &mut Side, image: &str) -> Result<f64> {
    let req = PullImageRequest {
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        auth: None,
        sandbox_config: None,
    };
    Ok(timed("PullImage", side.cri().img.pull_image(req)).await?.1)
}

async fn remove_image(side: &mut Side, image: &str) -> Result<()> {
    let req = RemoveImageRequest {
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
    };
    match side.cri().img.remove_image(req).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
        Err(e) => Err(anyhow!("{}: RemoveImage: {e}", side.kind.name())),
    }
}

/// One pod from RunPodSandbox to RemovePodSandbox, each step timed; ExecSync `true` on the
/// running container is timed too but left out of the lifecycle sum.
async fn lifecycle(side: &mut Side, work: &Path, s: &mut Samples) -> Result<()> {
    let kind = side.kind;
    let pod = side.pod_config(work, "life");
    let (r, t_run) = timed(
        "RunPodSandbox",
        side.cri().rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        }),
    )
    .await?;
    let pod_id = r.into_inner().pod_sandbox_id;
    let (r, t_create) = timed(
        "CreateContainer",
        side.cri().rt.create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config()),
            sandbox_config: Some(pod),
        }),
    )
    .await?;
    let id = r.into_inner().container_id;
    let (_, t_start) = timed(
        "StartContainer",
        side.cri().rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        }),
    )
    .await?;
    if side.exec_supported {
        let t = Instant::now();
        let r = side
            .cri()
            .rt
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                timeout: 10,
            })
            .await;
        match r {
            Ok(r) if r.get_ref().exit_code == 0 => s.add("ExecSync true", kind, ms(t.elapsed())),
            Ok(r) => bail!(
                "{}: ExecSync true exited {}",
                kind.name(),
                r.get_ref().exit_code
            ),
            Err(e) if e.code() == tonic::Code::Unimplemented => side.exec_supported = false,
            Err(e) => bail!("{}: ExecSync: {e}", kind.name()),
        }
    }
    let (_, t_stop) = timed(
        "StopContainer",
        side.cri().rt.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        }),
    )
    .await?;
    let (_, t_rm) = timed(
        "RemoveContainer",
        side.cri()
            .rt
            .remove_container(RemoveContainerRequest { container_id: id }),
    )
    .await?;
    let (_, t_stop_pod) = timed(
        "StopPodSandbox",
        side.cri().rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        }),
    )
    .await?;
    let (_, t_rm_pod) = timed(
        "RemovePodSandbox",
        side.cri().rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        }),
    )
    .await?;
    for (m, v) in [
        ("RunPodSandbox", t_run),
        ("CreateContainer", t_create),
        ("StartContainer", t_start),
        ("create+start", t_create + t_start),
        ("StopContainer", t_stop),
        ("RemoveContainer", t_rm),
        ("StopPodSandbox", t_stop_pod),
        ("RemovePodSandbox", t_rm_pod),
        (
            "pod lifecycle",
            t_run + t_create + t_start + t_stop + t_rm + t_stop_pod + t_rm_pod,
        ),
    ] {
        s.add(m, kind, v);
    }
    Ok(())
}

/// A pod with one running container, left running; returns the pod id.
async fn run_pod_with_container(side: &mut Side, work: &Path) -> Result<String> {
    let pod = side.pod_config(work, "held");
    let pod_id = side
        .cri()
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|e| anyhow!("{}: RunPodSandbox: {e}", side.kind.name()))?
        .into_inner()
        .pod_sandbox_id;
    let id = side
        .cri()
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config()),
            sandbox_config: Some(pod),
        })
        .await
        .map_err(|e| anyhow!("{}: CreateContainer: {e}", side.kind.name()))?
        .into_inner()
        .container_id;
    side.cri()
        .rt
        .start_container(StartContainerRequest { container_id: id })
        .await
        .map_err(|e| anyhow!("{}: StartContainer: {e}", side.kind.name()))?;
    Ok(pod_id)
}

/// Stop and remove a pod's containers, then the pod (kubelet's order).
async fn remove_pod(side: &mut Side, pod_id: &str) -> Result<()> {
    let cs = side
        .cri()
        .rt
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
        side.cri()
            .rt
            .stop_container(StopContainerRequest {
                container_id: c.id.clone(),
                timeout: 5,
            })
            .await?;
        side.cri()
            .rt
            .remove_container(RemoveContainerRequest { container_id: c.id })
            .await?;
    }
    side.cri()
        .rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        })
        .await?;
    side.cri()
        .rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        })
        .await?;
    Ok(())
}

/// The bridge + host-local + portmap conflist of one daemon, on its own bridge and /24.
fn conflist(name: &str, octet: u8, ipam_dir: Option<&Path>) -> String {
    let mut ipam = serde_json::json!({
        "type": "host-local",
        "routes": [{ "dst": "0.0.0.0/0" }],
        "ranges": [[{ "subnet": format!("10.215.{octet}.0/24") }]]
    });
    if let Some(d) = ipam_dir {
        ipam["dataDir"] = serde_json::json!(d);
    }
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            { "type": "bridge", "bridge": name, "isGateway": true, "ipMasq": true,
              "hairpinMode": true, "ipam": ipam },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    }))
    .unwrap_or_default()
}

/// The CNI floor's network, bridge and netns name.
fn floor_net(tag: &str) -> String {
    format!("fb{tag}n")
}

/// Three free 10.215.X.0/24 subnets (neither routed nor addressed on the host): ferrio's,
/// containerd's and the CNI floor's.
fn pick_octets() -> Result<(u8, u8, u8, u8)> {
    let out = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let used = out(&["-4", "-o", "route", "show"]) + &out(&["-4", "-o", "addr", "show"]);
    let free: Vec<u8> = (2..=250u8)
        .filter(|o| !used.contains(&format!("10.215.{o}.")))
        .collect();
    if free.len() < 4 {
        bail!("no four free 10.215.X.0/24 subnets");
    }
    let i = rand::random::<usize>() % (free.len() - 3);
    Ok((free[i], free[i + 1], free[i + 2], free[i + 3]))
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

// ---- /proc ----

fn status_field(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// VmRSS in KiB (0 if the process is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "status", "VmRSS:")
}

/// Proportional set size in KiB: shared pages (the binary's text) split between the sharers.
pub fn pss_kib(pid: u32) -> u64 {
    status_field(pid, "smaps_rollup", "Pss:")
}

fn kib_mib(k: u64) -> f64 {
    k as f64 / 1024.0
}

/// Processes whose `comm` is `comm` and whose command line names `dir`.
fn procs_matching(comm: &str, dir: &Path) -> Vec<u32> {
    let dir = dir.to_string_lossy();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            c.trim_end() == comm && cmdline(*pid).contains(dir.as_ref())
        })
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

// ---- floors ----

/// A busybox bundle unpacked with umoci from the test registry; `runc run` and conmon + runc of
/// `true`, one container each, from per-run bundle dirs sharing that rootfs.
struct Floor {
    dir: PathBuf,
    config: serde_json::Value,
    cgroup_parent: String,
    /// The CNI floor's network (bridge) name; its netns is named the same.
    net: String,
    /// The same bridge + host-local + portmap list the daemons get, on its own bridge.
    conflist: serde_json::Value,
    handler: Handler,
    /// crun on a hybrid cgroup host runs in the same private cgroup v1 view ferrio gives it, so
    /// the floor pays what ferrio pays.
    view: Option<std::sync::Arc<ferrio::sys::CgroupV1View>>,
}

impl Floor {
    fn prepare(
        work: &Path,
        registry: &str,
        tag: &str,
        octet: u8,
        handler: Handler,
    ) -> Result<Floor> {
        let dir = work.join("floor");
        let net = floor_net(tag);
        let conflist = serde_json::from_str(&conflist(&net, octet, Some(&dir.join("ipam"))))?;
        if !Path::new("/run/netns").join(&net).exists() {
            sh(Command::new("ip").args(["netns", "add", &net]))?;
        }
        std::fs::create_dir_all(dir.join("exits"))?;
        std::fs::create_dir_all(dir.join("runc"))?;
        // conmon fails silently (no container, exit 0) when its socket dir is missing.
        std::fs::create_dir_all(dir.join("sock"))?;
        sh(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{registry}/library/busybox:1.36"),
            &format!("oci:{}:bb", dir.join("oci").display()),
        ]))?;
        sh(Command::new("umoci").args([
            "unpack",
            "--image",
            &format!("{}:bb", dir.join("oci").display()),
            &dir.join("bundle").display().to_string(),
        ]))?;
        let text = std::fs::read_to_string(dir.join("bundle").join("config.json"))?;
        let mut config: serde_json::Value = serde_json::from_str(&text)?;
        config["process"]["terminal"] = serde_json::json!(false);
        config["process"]["args"] = serde_json::json!(["true"]);
        config["root"]["path"] = serde_json::json!(dir.join("bundle").join("rootfs"));
        config["root"]["readonly"] = serde_json::json!(true);
        let cgroup_parent = format!("/ferrio-bench-{tag}-floor");
        let view = match handler {
            Handler::Crun => ferrio::sys::CgroupV1View::of_host()?.map(std::sync::Arc::new),
            Handler::Runc => None,
        };
        Ok(Floor {
            dir,
            config,
            cgroup_parent,
            net,
            conflist,
            handler,
            view,
        })
    }

    /// `runc create` of `true`, then `runc start` (the two runtime calls CRI needs); each in
    /// ms. The delete after it is not timed.
    fn runc_create_start(&self, i: usize) -> Result<(f64, f64)> {
        let id = format!("create-{i}");
        let b = self.bundle(&id, &["true"])?;
        let create = self.runc_timed("create", &id, &b)?;
        let t = Instant::now();
        sh(self.runc().args(["start", &id]))?;
        let start = ms(t.elapsed());
        sh(self.runc().args(["delete", "--force", &id]))?;
        let _ = std::fs::remove_dir_all(&b);
        Ok((create, start))
    }

    /// The plugins of the daemons' conflist run by hand in the floor's netns: ADD in order, each
    /// given the previous result, then DEL in reverse with the final one; in ms.
    fn cni_add_del(&self, i: usize) -> Result<f64> {
        let id = format!("floor-cni-{i}");
        let plugins = self.conflist["plugins"]
            .as_array()
            .ok_or_else(|| anyhow!("conflist without plugins"))?;
        let t = Instant::now();
        let mut prev: Option<serde_json::Value> = None;
        for p in plugins {
            prev = Some(self.cni_call("ADD", &id, p, prev.as_ref())?);
        }
        for p in plugins.iter().rev() {
            self.cni_call("DEL", &id, p, prev.as_ref())?;
        }
        Ok(ms(t.elapsed()))
    }

    /// One plugin call as the CNI spec has runtimes make it; the plugin's result.
    fn cni_call(
        &self,
        command: &str,
        id: &str,
        plugin: &serde_json::Value,
        prev: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        use std::io::Write;
        let kind = plugin["type"].as_str().unwrap_or_default();
        let mut conf = plugin.clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let mut child = Command::new(Path::new(CNI_BIN).join(kind))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", Path::new("/run/netns").join(&self.net))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_BIN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin"))?
            .write_all(&serde_json::to_vec(&conf)?)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "cni {kind} {command}: {} {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(prev.cloned().unwrap_or_default());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// A bundle dir for container `id` running `args`.
    fn bundle(&self, id: &str, args: &[&str]) -> Result<PathBuf> {
        let b = self.dir.join("bundles").join(id);
        std::fs::create_dir_all(&b)?;
        let mut c = self.config.clone();
        c["process"]["args"] = serde_json::json!(args);
        c["linux"]["cgroupsPath"] = serde_json::json!(format!("{}/{id}", self.cgroup_parent));
        std::fs::write(b.join("config.json"), serde_json::to_vec(&c)?)?;
        Ok(b)
    }

    /// The handler's binary with the floor's state root (named `runc` whichever runtime it is).
    fn runc(&self) -> Command {
        let mut c = Command::new(self.handler.binary());
        self.in_view(&mut c);
        c.arg("--root").arg(self.dir.join("runc"));
        c
    }

    fn in_view(&self, c: &mut Command) {
        if let Some(view) = &self.view {
            view.apply(c);
        }
    }

    /// `runc <verb> --bundle <b> <id>` (create or run), timed in ms. No pipes: a created
    /// container's init inherits runc's stdio and would hold a pipe open until it runs; stderr
    /// goes to a file in the bundle, read when runc fails.
    fn runc_timed(&self, verb: &str, id: &str, b: &Path) -> Result<f64> {
        let err = b.join("runc.err");
        let t = Instant::now();
        let st = self
            .runc()
            .args([verb, "--bundle"])
            .arg(b)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err)?)
            .status()?;
        let el = ms(t.elapsed());
        if !st.success() {
            let msg = std::fs::read_to_string(&err).unwrap_or_default();
            bail!("runc {verb} {id}: {st}: {}", msg.trim());
        }
        Ok(el)
    }

    /// `runc run` of `true`: create, start, wait, delete; in ms.
    fn runc_run(&self, i: usize) -> Result<f64> {
        let id = format!("runc-{i}");
        let b = self.bundle(&id, &["true"])?;
        let el = self.runc_timed("run", &id, &b)?;
        let _ = std::fs::remove_dir_all(&b);
        Ok(el)
    }

    /// conmon starts and monitors the container; `runc start`, wait for conmon's exit file, `runc
    /// delete` (what CRI-O does, minus CRI-O); in ms.
    fn conmon_run(&self, i: usize) -> Result<f64> {
        let id = format!("conmon-{i}");
        let b = self.bundle(&id, &["true"])?;
        let t = Instant::now();
        self.conmon(&id, &b)?;
        sh(self.runc().args(["start", &id]))?;
        let exit = self.dir.join("exits").join(&id);
        wait_for(&exit, Duration::from_secs(10))?;
        sh(self.runc().args(["delete", &id]))?;
        let el = ms(t.elapsed());
        let _ = std::fs::remove_file(&exit);
        let _ = std::fs::remove_dir_all(&b);
        Ok(el)
    }

    /// Start conmon for `id` and wait until runc created the container (its pid file).
    fn conmon(&self, id: &str, b: &Path) -> Result<()> {
        let persist = self.dir.join("persist").join(id);
        std::fs::create_dir_all(&persist)?;
        let pidfile = b.join("pidfile");
        let mut cmd = Command::new("conmon");
        self.in_view(&mut cmd);
        cmd.args([
            "--api-version",
            "1",
            "-c",
            id,
            "-u",
            id,
            "-n",
            id,
            "-r",
            self.handler.binary(),
            "-b",
        ])
        .arg(b)
        .arg("-p")
        .arg(&pidfile)
        .arg("-P")
        .arg(b.join("conmon.pid"))
        .arg("-l")
        .arg(format!("k8s-file:{}", b.join("ctr.log").display()))
        .arg("--exit-dir")
        .arg(self.dir.join("exits"))
        .arg("--persist-dir")
        .arg(&persist)
        .arg("--socket-dir-path")
        .arg(self.dir.join("sock"))
        .arg("--runtime-arg")
        .arg(format!("--root={}", self.dir.join("runc").display()))
        .args(["--log-level", "error"]);
        // conmon's parent exits once it forked the monitor (which keeps any stdio we give it:
        // no pipes); the container exists when runc wrote its pid file.
        let st = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("conmon {id}: {st}");
        }
        wait_for(&pidfile, Duration::from_secs(10))
    }

    /// RSS and PSS of one conmon monitoring a running container, in MiB.
    fn conmon_memory(&self) -> Result<Option<(f64, f64)>> {
        let id = "conmon-mem";
        let b = self.bundle(id, &["sleep", "3600"])?;
        self.conmon(id, &b)?;
        sh(self.runc().args(["start", id]))?;
        std::thread::sleep(Duration::from_millis(300));
        let pid: Option<u32> = std::fs::read_to_string(b.join("conmon.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let m = pid.map(|p| (kib_mib(rss_kib(p)), kib_mib(pss_kib(p))));
        let _ = sh(self.runc().args(["kill", id, "KILL"]));
        let _ = wait_for(&self.dir.join("exits").join(id), Duration::from_secs(10));
        let _ = sh(self.runc().args(["delete", "--force", id]));
        Ok(m)
    }
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{:?}: {}: {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn wait_for(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear within {timeout:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

// ---- cleanup ----

/// Kill every process naming `work` (daemons, monitors, shims, conmons; never us), delete runc
/// containers left in the roots under it, unmount what is mounted under it, delete the bridges,
/// their iptables rules and the cgroups, then the dir.
fn hard_clean(work: &Path, bridges: &[String], cgroup_parents: &[String]) {
    let w = work.to_string_lossy().into_owned();
    let me = std::process::id();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for pid in rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            if pid != me && cmdline(pid).contains(&w) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    // Runc roots: ferrio's under its runroot, containerd's per-namespace dirs, the floor's.
    for root in [
        work.join("ferrio/run/oci/runc"),
        work.join("containerd/runc/k8s.io"),
        work.join("floor/runc"),
    ] {
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
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
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&w))
        .collect();
    for m in mounts.iter().rev() {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
    // The CNI floor's netns, named after the run.
    if let Some(tag) = work
        .file_name()
        .map(|n| n.to_string_lossy().replace("ferrio-bench-", ""))
    {
        let ns = floor_net(&tag[..8.min(tag.len())]);
        if Path::new("/run/netns").join(&ns).exists() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
    for b in bridges {
        clean_iptables(b);
        if Path::new("/sys/class/net").join(b).exists() {
            let _ = Command::new("ip").args(["link", "del", b]).status();
        }
    }
    for p in cgroup_parents {
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in rd.flatten() {
                rmdir_tree(&h.path().join(p.trim_start_matches('/')));
            }
        }
    }
    let _ = std::fs::remove_dir_all(work);
}

/// nat POSTROUTING rules whose comment names network `net`, and the chains they jump to
/// (the bridge plugin's masquerade chains).
fn clean_iptables(net: &str) {
    let Ok(out) = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", "POSTROUTING"])
        .output()
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let quoted = format!("\\\"{net}\\\"");
    let mut chains = Vec::new();
    // Rules are numbered from 1 after the policy line; delete from the end so numbers hold.
    let rules: Vec<&str> = text.lines().filter(|l| l.starts_with("-A ")).collect();
    for (i, l) in rules.iter().enumerate().rev() {
        if l.contains(&quoted) {
            if let Some(c) = l.split(" -j ").nth(1) {
                chains.push(c.trim().to_string());
            }
            let _ = Command::new("iptables")
                .args(["-w", "-t", "nat", "-D", "POSTROUTING", &(i + 1).to_string()])
                .status();
        }
    }
    for c in chains.iter().filter(|c| c.starts_with("CNI-")) {
        let _ = Command::new("iptables")
            .args(["-w", "-t", "nat", "-F", c])
            .status();
        let _ = Command::new("iptables")
            .args(["-w", "-t", "nat", "-X", c])
            .status();
    }
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

// ---- output ----

fn fmt_stat(s: Option<Stat>) -> String {
    s.map(|s| format!("{:.1} / {:.1}", s.p50, s.p95))
        .unwrap_or_else(|| "-".into())
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into())
}

pub fn to_table(rows: &[Row], notes: &[String], n: usize) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<38} {:>4} {:>17} {:>17} {:>8} {:>30} {:>8}",
        "metric (p50 / p95)", "unit", "ferrio", "containerd", "f/c", "floor", "f/floor"
    );
    for r in rows {
        let floor = r
            .floor
            .as_ref()
            .map(|(n, s)| format!("{n}: {:.1} / {:.1}", s.p50, s.p95))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            t,
            "{:<38} {:>4} {:>17} {:>17} {:>8} {:>30} {:>8}",
            r.metric,
            r.unit,
            fmt_stat(r.ferrio),
            fmt_stat(r.containerd),
            fmt_ratio(r.ratio()),
            floor,
            fmt_ratio(r.over_floor())
        );
    }
    let _ = writeln!(t, "N = {n} per runtime and metric (memory: one sample)");
    for note in notes {
        let _ = writeln!(t, "note: {note}");
    }
    t
}

pub fn to_csv(rows: &[Row]) -> String {
    let mut t = String::from(
        "metric,unit,ferrio_p50,ferrio_p95,containerd_p50,containerd_p95,ratio_ferrio_containerd,floor,floor_p50,floor_p95,ferrio_over_floor\n",
    );
    let num = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
    for r in rows {
        let _ = writeln!(
            t,
            "\"{}\",{},{},{},{},{},{},\"{}\",{},{},{}",
            r.metric,
            r.unit,
            num(r.ferrio.map(|s| s.p50)),
            num(r.ferrio.map(|s| s.p95)),
            num(r.containerd.map(|s| s.p50)),
            num(r.containerd.map(|s| s.p95)),
            num(r.ratio()),
            r.floor.as_ref().map(|f| f.0.as_str()).unwrap_or(""),
            num(r.floor.as_ref().map(|f| f.1.p50)),
            num(r.floor.as_ref().map(|f| f.1.p95)),
            num(r.over_floor()),
        );
    }
    t
}

fn to_png(rows: &[Row], n: usize) -> Result<Vec<u8>> {
    let groups: Vec<crate::chart::Group> = rows
        .iter()
        .map(|r| {
            let mut bars = Vec::new();
            if let Some(s) = r.ferrio {
                bars.push(("ferrio".to_string(), s.p50));
            }
            if let Some(s) = r.containerd {
                bars.push(("containerd".to_string(), s.p50));
            }
            if let Some((_, s)) = &r.floor {
                bars.push(("floor".to_string(), s.p50));
            }
            crate::chart::Group {
                label: format!("{} ({})", r.metric, r.unit),
                bars,
            }
        })
        .collect();
    Ok(crate::chart::render(
        &format!("ferrio vs containerd, p50, N={n}"),
        &["ferrio", "containerd", "floor"],
        &groups,
    )?)
}

/// Wait until the ferrio of `side` counts one registered NRI plugin (its metrics on `port`).
async fn wait_for_nri_plugin(port: u16, side: &Side) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut text = String::new();
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let _ = s
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await;
            let _ = s.read_to_string(&mut text).await;
        }
        if text.contains("\nferrio_nri_plugins 1\n") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the no-op NRI plugin did not register within 30s:\n{}",
                side.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
