//! The node-shape suite: what only a systemd + cgroup v2 node shows, checked against ferrio
//! installed from its package and run by systemd as `ferrio.service`.
//!
//! It runs inside the VM of `hack/vm/` (`make test-vm`), as root, once per cgroup driver. For
//! each driver it writes a drop-in (`/etc/ferrio/ferrio.d/90-node-shape.toml`: the driver and
//! mirrors onto the test registry), starts the service, and drives the daemon over its socket with
//! pod cgroup parents exactly as kubelet sends them for every QoS class. It ends with the line
//! `N passed, M failed` and exits non-zero on any failure. On a node that is not systemd + cgroup
//! v2 it refuses to run (exit 2) rather than pass.
//!
//! usage: node_shape --registry HOST:PORT [--driver systemd|cgroupfs]...

#[path = "../harness/client.rs"]
mod client;
mod node;
mod pods;
#[path = "../streaming_client.rs"]
mod streaming;

use client::Cri;
use ferrio::cri::v1::{
    security_profile::ProfileType, AttachRequest, ContainerFilter, ContainerState,
    ContainerStatsRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, ListContainersRequest, ListPodSandboxMetricsRequest,
    ListPodSandboxRequest, ListPodSandboxStatsRequest, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, PortForwardRequest, PullImageRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, RuntimeConfigRequest, SecurityProfile, StatusRequest,
    StopContainerRequest, StopPodSandboxRequest, UpdateContainerResourcesRequest,
    UpdatePodSandboxResourcesRequest, VersionRequest,
};
use node::Proc;
use pods::{Driver, Pod, Qos};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

const SOCKET: &str = "/run/ferrio/ferrio.sock";
const DROPIN: &str = "/etc/ferrio/ferrio.d/90-node-shape.toml";
const SERVICE: &str = "ferrio.service";
/// An image prefix no mirror maps until the reload check adds one.
const RELOAD_PREFIX: &str = "reload.invalid";
const MIB: i64 = 1024 * 1024;

/// State shared by the checks of one driver's run.
struct Run {
    driver: Driver,
    registry: String,
    cri: Option<Cri>,
    pods: Vec<Pod>,
    /// Containers of the QoS pods: (QoS, container id).
    sleepers: Vec<(Qos, String)>,
    /// Every container and monitor process the run saw, for the leak check.
    procs: Vec<Proc>,
    /// The ten containers of the restart checks.
    ten: Vec<(String, Proc, Proc)>,
}

type CheckFn = for<'a> fn(&'a mut Run) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

macro_rules! check {
    ($f:ident) => {
        (stringify!($f), (|r| Box::pin($f(r))) as CheckFn)
    };
}

fn main() {
    let mut registry = None;
    let mut drivers = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--registry" => registry = args.next(),
            "--driver" => match args.next().as_deref() {
                Some("systemd") => drivers.push(Driver::Systemd),
                Some("cgroupfs") => drivers.push(Driver::Cgroupfs),
                other => usage(&format!("unknown driver {other:?}")),
            },
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let Some(registry) = registry else {
        usage("--registry is required")
    };
    if drivers.is_empty() {
        drivers = vec![Driver::Systemd, Driver::Cgroupfs];
    }
    if let Err(e) = node::is_systemd_v2_node() {
        eprintln!("node_shape: not run: this is not a systemd + cgroup v2 node: {e}");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (mut passed, mut failed) = (0, 0);
    for driver in drivers {
        let (p, f) = rt.block_on(run_driver(driver, &registry));
        passed += p;
        failed += f;
    }
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

fn usage(why: &str) -> ! {
    eprintln!(
        "node_shape: {why}\nusage: node_shape --registry HOST:PORT [--driver systemd|cgroupfs]..."
    );
    std::process::exit(2);
}

async fn run_driver(driver: Driver, registry: &str) -> (usize, usize) {
    println!("== node_shape: cgroup_manager = {:?}", driver.name());
    let mut run = Run {
        driver,
        registry: registry.to_string(),
        cri: None,
        pods: Vec::new(),
        sleepers: Vec::new(),
        procs: Vec::new(),
        ten: Vec::new(),
    };
    let checks: &[(&str, CheckFn)] = &[
        check!(start_returns_when_the_socket_serves),
        check!(pods_of_every_qos_class_sit_where_kubelet_expects),
        check!(limits_land_in_the_v2_files),
        check!(stats_report_v2_values),
        check!(an_oom_kill_is_reported),
        check!(exec_attach_logs_and_port_forward),
        check!(apparmor_confines_by_default),
        check!(reload_applies_a_changed_mirror),
        check!(restart_keeps_containers_and_monitors),
        check!(stop_leaves_containers_running),
        check!(removing_every_pod_leaves_nothing),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in checks {
        let t = Instant::now();
        let res = match tokio::time::timeout(Duration::from_secs(300), f(&mut run)).await {
            Ok(r) => r,
            Err(_) => Err("timed out after 300 s".into()),
        };
        let ms = t.elapsed().as_millis();
        match res {
            Ok(()) => {
                passed += 1;
                println!("ok     {}/{name} ({ms} ms)", driver.name());
            }
            Err(e) => {
                failed += 1;
                println!("FAILED {}/{name} ({ms} ms): {e}", driver.name());
            }
        }
    }
    clean_up(&mut run).await;
    (passed, failed)
}

fn write_dropin(driver: Driver, registry: &str, extra_prefixes: &[&str]) -> Result<(), String> {
    let mut toml = format!(
        "# written by the node-shape suite; removed when it ends\n[runtime]\ncgroup_manager = \"{}\"\n",
        driver.name()
    );
    for prefix in ["registry.k8s.io", "docker.io"]
        .iter()
        .chain(extra_prefixes)
    {
        toml.push_str(&format!(
            "\n[[image.registry]]\nprefix = \"{prefix}\"\nfallback = false\n[[image.registry.mirror]]\nlocation = \"{registry}\"\ninsecure = true\n"
        ));
    }
    std::fs::create_dir_all(Path::new(DROPIN).parent().expect("a parent"))
        .and_then(|_| std::fs::write(DROPIN, toml))
        .map_err(|e| format!("{DROPIN}: {e}"))
}

async fn connect() -> Result<Cri, String> {
    Cri::connect(Path::new(SOCKET))
        .await
        .map_err(|e| format!("connect {SOCKET}: {e}"))
}

fn cri(run: &mut Run) -> Result<&mut Cri, String> {
    run.cri
        .as_mut()
        .ok_or_else(|| "no connection to the daemon (an earlier check failed)".to_string())
}

fn main_pid() -> i32 {
    node::unit_prop(SERVICE, "MainPID").parse().unwrap_or(0)
}

/// The pids in ferrio.service's own cgroup.
fn service_pids() -> Result<Vec<i32>, String> {
    let cg = node::unit_prop(SERVICE, "ControlGroup");
    ensure!(!cg.is_empty(), "{SERVICE} has no ControlGroup");
    Ok(node::read_cgroup(&cg, "cgroup.procs")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

async fn start_returns_when_the_socket_serves(run: &mut Run) -> Result<(), String> {
    write_dropin(run.driver, &run.registry, &[])?;
    node::systemctl(&["stop", SERVICE])?;
    node::systemctl(&["start", SERVICE])?;
    // Type=notify: `systemctl start` has returned, so the first call must succeed, no retry.
    let mut c = connect().await?;
    let v =
        c.rt.version(VersionRequest::default())
            .await
            .map_err(|e| format!("Version right after systemctl start: {e}"))?
            .into_inner();
    ensure!(
        v.runtime_name == "ferrio",
        "runtime_name {:?}",
        v.runtime_name
    );
    let st =
        c.rt.status(StatusRequest { verbose: false })
            .await
            .map_err(|e| format!("Status: {e}"))?
            .into_inner();
    let conditions = st.status.map(|s| s.conditions).unwrap_or_default();
    ensure!(
        conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status),
        "RuntimeReady not true: {conditions:?}"
    );
    let cfg =
        c.rt.runtime_config(RuntimeConfigRequest {})
            .await
            .map_err(|e| format!("RuntimeConfig: {e}"))?
            .into_inner();
    let want = match run.driver {
        Driver::Systemd => ferrio::cri::v1::CgroupDriver::Systemd,
        Driver::Cgroupfs => ferrio::cri::v1::CgroupDriver::Cgroupfs,
    };
    let got = cfg.linux.map(|l| l.cgroup_driver);
    ensure!(
        got == Some(want as i32),
        "RuntimeConfig cgroup_driver {got:?}, want {want:?}"
    );
    // kubelet pulls before it creates.
    pull(&mut c, pods::BUSYBOX)
        .await
        .map_err(|e| format!("PullImage {}: {e}", pods::BUSYBOX))?;
    run.cri = Some(c);
    Ok(())
}

fn resources_for(qos: Qos) -> Option<LinuxContainerResources> {
    match qos {
        Qos::Guaranteed => Some(LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 * MIB,
            ..Default::default()
        }),
        Qos::Burstable => Some(LinuxContainerResources {
            cpu_shares: 256,
            memory_limit_in_bytes: 128 * MIB,
            ..Default::default()
        }),
        Qos::BestEffort => None,
    }
}

async fn pods_of_every_qos_class_sit_where_kubelet_expects(run: &mut Run) -> Result<(), String> {
    let driver = run.driver;
    for qos in pods::ALL_QOS {
        let name = format!("qos-{qos:?}").to_lowercase();
        // The burstable pod also carries pod-level resources, which ferrio applies to the pod's
        // cgroup.
        let pod_resources = (qos == Qos::Burstable).then(|| LinuxContainerResources {
            memory_limit_in_bytes: 256 * MIB,
            ..Default::default()
        });
        let pod = pods::run_pod(cri(run)?, driver, qos, &name, pod_resources).await?;
        let mut c = pods::container("sleeper", &["sleep", "3600"]);
        if let Some(r) = resources_for(qos) {
            c = pods::with_resources(c, r);
        }
        let started = pods::start(cri(run)?, &pod, c).await;
        let pod_cgroup = pod.cgroup.clone();
        let pod_id = pod.id.clone();
        run.pods.push(pod);
        let id = started?;
        run.sleepers.push((qos, id.clone()));
        let (ctr, mon) = pods::running_procs(cri(run)?, &id).await?;
        run.procs.extend([ctr, mon]);

        // The container and the pause: scopes (or directories) of ferrio's under kubelet's pod cgroup.
        let want = pod_cgroup.container_dir(driver, &id);
        let got = node::proc_cgroup(ctr.pid);
        ensure!(
            got.as_deref() == Some(&want),
            "{qos:?} container in {got:?}, want {want}"
        );
        let pause = pause_pid(cri(run)?, &pod_id).await?;
        let want = pod_cgroup.container_dir(driver, &pod_id);
        let got = node::proc_cgroup(pause);
        ensure!(
            got.as_deref() == Some(&want),
            "{qos:?} pause in {got:?}, want {want}"
        );
        if let Some(slice) = &pod_cgroup.slice {
            for obj in [&id, &pod_id] {
                let unit = format!("ferrio-{obj}.scope");
                let s = node::unit_prop(&unit, "Slice");
                ensure!(&s == slice, "{unit} is in slice {s:?}, want {slice}");
                let a = node::unit_prop(&unit, "ActiveState");
                ensure!(a == "active", "{unit} is {a:?}");
            }
        }

        // The monitor: a scope of its own, never ferrio.service's cgroup (a stop or restart of
        // the service must not touch it), and inside the pod with the systemd driver.
        let mcg = node::proc_cgroup(mon.pid).unwrap_or_default();
        ensure!(
            !mcg.contains(SERVICE),
            "{qos:?} monitor {} is in ferrio.service's cgroup {mcg}",
            mon.pid
        );
        ensure!(
            mcg.ends_with(".scope"),
            "{qos:?} monitor {} in {mcg}, not a scope",
            mon.pid
        );
        if driver == Driver::Systemd {
            ensure!(
                mcg.starts_with(&format!("{}/", pod_cgroup.dir)),
                "{qos:?} monitor in {mcg}, not under the pod slice {}",
                pod_cgroup.dir
            );
        }
        let unit = mcg.rsplit('/').next().unwrap_or_default();
        let a = node::unit_prop(unit, "ActiveState");
        ensure!(a == "active", "monitor unit {unit} is {a:?}");
    }
    Ok(())
}

async fn pause_pid(cri: &mut Cri, pod_id: &str) -> Result<i32, String> {
    let r = cri
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        })
        .await
        .map_err(|e| format!("PodSandboxStatus {pod_id}: {e}"))?
        .into_inner();
    let info = pods::verbose_info(&r.info);
    info["pid"]
        .as_i64()
        .map(|p| p as i32)
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("PodSandboxStatus {pod_id}: no pause pid in {info}"))
}

fn sleeper(run: &Run, qos: Qos) -> Result<String, String> {
    run.sleepers
        .iter()
        .find(|(q, _)| *q == qos)
        .map(|(_, id)| id.clone())
        .ok_or_else(|| format!("no {qos:?} container (an earlier check failed)"))
}

fn pod_of(run: &Run, qos: Qos) -> Result<&Pod, String> {
    let name = format!("qos-{qos:?}").to_lowercase();
    run.pods
        .iter()
        .find(|p| p.config.metadata.as_ref().is_some_and(|m| m.name == name))
        .ok_or_else(|| format!("no {qos:?} pod (an earlier check failed)"))
}

async fn limits_land_in_the_v2_files(run: &mut Run) -> Result<(), String> {
    let driver = run.driver;
    let g = sleeper(run, Qos::Guaranteed)?;
    let gdir = pod_of(run, Qos::Guaranteed)?
        .cgroup
        .container_dir(driver, &g);
    let expect = |dir: &str, file: &str, want: &str| -> Result<(), String> {
        let got = node::read_cgroup(dir, file)?;
        ensure!(got == want, "{dir}/{file} = {got:?}, want {want:?}");
        Ok(())
    };
    expect(&gdir, "memory.max", &(64 * MIB).to_string())?;
    expect(&gdir, "cpu.max", "50000 100000")?;

    let b = sleeper(run, Qos::Burstable)?;
    let bpod = pod_of(run, Qos::Burstable)?.cgroup.clone();
    let bdir = bpod.container_dir(driver, &b);
    expect(&bdir, "memory.max", &(128 * MIB).to_string())?;
    // cpu.shares 256 as a cgroup v2 weight (the OCI runtimes' conversion).
    expect(
        &bdir,
        "cpu.weight",
        &(1 + ((256 - 2) * 9999) / 262142).to_string(),
    )?;
    // An in-place resize of the pod: kubelet has resized its pod cgroup before it calls this.
    let bpod_id = pod_of(run, Qos::Burstable)?.id.clone();
    let before = node::read_cgroup(&bpod.dir, "memory.max")?;
    cri(run)?
        .rt
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: bpod_id,
            overhead: None,
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 320 * MIB,
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| format!("UpdatePodSandboxResources: {e}"))?;
    match driver {
        // cgroupfs: ferrio writes the pod's own resources into the pod cgroup kubelet made.
        Driver::Cgroupfs => {
            ensure!(
                before == (256 * MIB).to_string(),
                "{}/memory.max = {before} after RunPodSandbox",
                bpod.dir
            );
            expect(&bpod.dir, "memory.max", &(320 * MIB).to_string())?
        }
        // systemd: kubelet's slice is kubelet's (it sets the slice's limits through systemd),
        // before and after a resize; a pod without a parent gets a slice of ferrio's carrying
        // the pod's limits.
        Driver::Systemd => {
            expect(&bpod.dir, "memory.max", &before)?;
            own_slice_carries_pod_limits(run).await?
        }
    }

    cri(run)?
        .rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: b.clone(),
            linux: Some(LinuxContainerResources {
                cpu_shares: 256,
                memory_limit_in_bytes: 192 * MIB,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("UpdateContainerResources: {e}"))?;
    expect(&bdir, "memory.max", &(192 * MIB).to_string())
}

/// A pod with no cgroup parent under the systemd driver: ferrio makes `ferrio-pod<id>.slice`
/// with the pod's limits as unit properties, and stops it with the pod.
async fn own_slice_carries_pod_limits(run: &mut Run) -> Result<(), String> {
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "own-slice".into(),
            uid: pods::uid(),
            namespace: "node-shape".into(),
            attempt: 0,
        }),
        linux: Some(LinuxPodSandboxConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 256 * MIB,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = cri(run)?
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox without a cgroup parent: {e}"))?
        .into_inner()
        .pod_sandbox_id;
    let pause = pause_pid(cri(run)?, &id).await?;
    let cg = node::proc_cgroup(pause).unwrap_or_default();
    let slice_dir = cg
        .rsplit_once('/')
        .map(|(d, _)| d.to_string())
        .unwrap_or_default();
    let slice = slice_dir.rsplit('/').next().unwrap_or_default().to_string();
    let checked = (|| {
        ensure!(
            slice.starts_with("ferrio-pod") && slice.ends_with(".slice"),
            "the pause of a pod without a parent is in {cg}"
        );
        let max = node::unit_prop(&slice, "MemoryMax");
        ensure!(max == (256 * MIB).to_string(), "{slice} MemoryMax={max}");
        let file = node::read_cgroup(&slice_dir, "memory.max")?;
        ensure!(
            file == (256 * MIB).to_string(),
            "{slice_dir}/memory.max = {file}"
        );
        Ok(())
    })();
    // Nothing of kubelet's to remove afterwards: ferrio made this pod's cgroup.
    let own = Pod {
        id,
        config: PodSandboxConfig::default(),
        cgroup: pods::PodCgroup {
            parent: String::new(),
            dir: String::new(),
            slice: None,
        },
    };
    let removed = pods::remove_pod(cri(run)?, &own).await;
    checked?;
    removed?;
    node::wait_for(&format!("{slice} to go"), Duration::from_secs(10), || {
        node::units_matching(&slice).is_empty()
    })
}

async fn stats_report_v2_values(run: &mut Run) -> Result<(), String> {
    let g = sleeper(run, Qos::Guaranteed)?;
    let st = cri(run)?
        .rt
        .container_stats(ContainerStatsRequest {
            container_id: g.clone(),
        })
        .await
        .map_err(|e| format!("ContainerStats: {e}"))?
        .into_inner()
        .stats
        .ok_or("ContainerStats: no stats")?;
    let cpu_psi = st.cpu.as_ref().and_then(|c| c.psi);
    let mem_psi = st.memory.as_ref().and_then(|m| m.psi);
    let io_psi = st.io.as_ref().and_then(|i| i.psi);
    let cpu = st
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value);
    let mem = st.memory.and_then(|m| m.working_set_bytes).map(|v| v.value);
    ensure!(cpu.is_some_and(|v| v > 0), "cpu usage {cpu:?}");
    ensure!(mem.is_some_and(|v| v > 0), "memory working set {mem:?}");
    // Pressure (PSI) is a cgroup v2 fact: present for CPU, memory and IO.
    ensure!(
        cpu_psi.is_some() && mem_psi.is_some() && io_psi.is_some(),
        "PSI missing: cpu {cpu_psi:?} memory {mem_psi:?} io {io_psi:?}"
    );

    let pods = cri(run)?
        .rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
        .await
        .map_err(|e| format!("ListPodSandboxStats: {e}"))?
        .into_inner()
        .stats;
    let gpod = pod_of(run, Qos::Guaranteed)?.id.clone();
    let ps = pods
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == gpod))
        .ok_or("ListPodSandboxStats: the guaranteed pod is missing")?;
    let pmem = ps
        .linux
        .as_ref()
        .and_then(|l| l.memory.as_ref())
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value);
    ensure!(
        pmem.is_some_and(|v| v > 0),
        "pod memory working set {pmem:?}"
    );

    // Pressure (PSI) exists on cgroup v2 only: cAdvisor's metric names carry it.
    let metrics = cri(run)?
        .rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .map_err(|e| format!("ListPodSandboxMetrics: {e}"))?
        .into_inner()
        .pod_metrics;
    let names: Vec<&str> = metrics
        .iter()
        .filter(|p| p.pod_sandbox_id == gpod)
        .flat_map(|p| &p.container_metrics)
        .filter(|c| c.container_id == g)
        .flat_map(|c| &c.metrics)
        .map(|m| m.name.as_str())
        .collect();
    for want in [
        "container_pressure_cpu_waiting_seconds_total",
        "container_pressure_memory_stalled_seconds_total",
        "container_pressure_io_waiting_seconds_total",
        "container_spec_memory_limit_bytes",
    ] {
        ensure!(
            names.contains(&want),
            "no {want} among the container's metrics {names:?}"
        );
    }
    Ok(())
}

async fn an_oom_kill_is_reported(run: &mut Run) -> Result<(), String> {
    let pod = pod_of(run, Qos::BestEffort)?.clone();
    let script = "x=$(head -c 67108864 /dev/zero | tr '\\000' a); echo survived";
    let c = pods::with_resources(
        pods::container("hog", &["sh", "-c", script]),
        LinuxContainerResources {
            memory_limit_in_bytes: 16 * MIB,
            memory_swap_limit_in_bytes: 16 * MIB,
            ..Default::default()
        },
    );
    let id = pods::start(cri(run)?, &pod, c).await?;
    let o = pods::wait_state(
        cri(run)?,
        &id,
        ContainerState::ContainerExited,
        Duration::from_secs(60),
    )
    .await?;
    ensure!(
        o.status.reason == "OOMKilled",
        "reason {:?}: {:?}",
        o.status.reason,
        o.status
    );
    ensure!(
        o.status.exit_code == 137,
        "exit code {}",
        o.status.exit_code
    );
    Ok(())
}

async fn exec_attach_logs_and_port_forward(run: &mut Run) -> Result<(), String> {
    let pod = pod_of(run, Qos::BestEffort)?.clone();
    let (pod_id, log_dir) = (pod.id.clone(), pod.config.log_directory.clone());
    let web = pods::start(
        cri(run)?,
        &pod,
        pods::container(
            "web",
            &[
                "sh",
                "-c",
                "mkdir -p /www; echo hello-from-pod > /www/index.html; echo log-line; \
                 (while true; do echo tick; sleep 0.2; done) & exec httpd -f -p 127.0.0.1:8080 -h /www",
            ],
        ),
    )
    .await?;
    let (ctr, mon) = pods::running_procs(cri(run)?, &web).await?;
    run.procs.extend([ctr, mon]);

    // ExecSync.
    let r = cri(run)?
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: web.clone(),
            cmd: vec!["cat".into(), "/www/index.html".into()],
            timeout: 10,
        })
        .await
        .map_err(|e| format!("ExecSync: {e}"))?
        .into_inner();
    ensure!(
        r.exit_code == 0 && String::from_utf8_lossy(&r.stdout) == "hello-from-pod\n",
        "ExecSync: exit {} stdout {:?}",
        r.exit_code,
        String::from_utf8_lossy(&r.stdout)
    );

    // The log file, in CRI format.
    let log = Path::new(&log_dir).join("web/0.log");
    node::wait_for("the log line", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains(" stdout F log-line"))
    })
    .map_err(|e| format!("{}: {e}", log.display()))?;

    // Attach over SPDY: the ticks the container writes.
    let url = cri(run)?
        .rt
        .attach(AttachRequest {
            container_id: web.clone(),
            stdin: false,
            tty: false,
            stdout: true,
            stderr: false,
        })
        .await
        .map_err(|e| format!("Attach: {e}"))?
        .into_inner()
        .url;
    let mut conn = streaming::spdy_connect(&url, &["v4.channel.k8s.io"])
        .await
        .map_err(|e| format!("attach upgrade: {e:?}"))?;
    let _err = conn.open(&[("streamtype", "error")]).await;
    let mut out = conn.open(&[("streamtype", "stdout")]).await;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains("tick") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), out.next()).await {
            Ok(Some(b)) => text.push_str(&String::from_utf8_lossy(&b)),
            _ => break,
        }
    }
    conn.kill().await;
    ensure!(text.contains("tick"), "attach read {text:?}");

    // Port-forward to the pod's loopback.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = cri(run)?
            .rt
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod_id.clone(),
                port: vec![8080],
            })
            .await
            .map_err(|e| format!("PortForward: {e}"))?
            .into_inner()
            .url;
        let mut conn = streaming::spdy_connect(&url, &["portforward.k8s.io"])
            .await
            .map_err(|e| format!("port-forward upgrade: {e:?}"))?;
        let mut err = conn
            .open(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ])
            .await;
        let mut data = conn
            .open(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")])
            .await;
        conn.write(data.id, b"GET /index.html HTTP/1.0\r\n\r\n")
            .await;
        let (body, e) = tokio::join!(data.read_to_end(), err.read_to_end());
        let body = String::from_utf8_lossy(&body).to_string();
        if body.contains("hello-from-pod") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "port-forward got {body:?}, error stream {:?}",
                String::from_utf8_lossy(&e)
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// AppArmor, on this node's enabled AppArmor: RuntimeDefault runs under ferrio's own
/// profile (loaded by the daemon), and a Localhost profile that is not loaded is refused at
/// CreateContainer, naming the profile.
async fn apparmor_confines_by_default(run: &mut Run) -> Result<(), String> {
    let enabled =
        std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").unwrap_or_default();
    ensure!(
        enabled.trim() == "Y",
        "AppArmor is not enabled on this node"
    );
    let pod = pod_of(run, Qos::BestEffort)?.clone();
    let mut confined = pods::container("confined", &["sleep", "3600"]);
    confined.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            apparmor: Some(SecurityProfile {
                profile_type: ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = pods::start(cri(run)?, &pod, confined).await?;
    let (ctr, mon) = pods::running_procs(cri(run)?, &id).await?;
    run.procs.extend([ctr, mon]);
    let attr = format!("/proc/{}/attr/current", ctr.pid);
    let label = std::fs::read_to_string(&attr).map_err(|e| format!("{attr}: {e}"))?;
    ensure!(
        label.trim() == "ferrio-default (enforce)",
        "{attr} = {label:?}, want \"ferrio-default (enforce)\""
    );
    cri(run)?
        .rt
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .map_err(|e| format!("StopContainer {id}: {e}"))?;

    let missing = "ferrio-node-shape-not-loaded";
    let mut refused = pods::container("unloaded-profile", &["true"]);
    refused.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            apparmor: Some(SecurityProfile {
                profile_type: ProfileType::Localhost as i32,
                localhost_ref: format!("localhost/{missing}"),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let r = cri(run)?
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(refused),
            sandbox_config: Some(pod.config.clone()),
        })
        .await;
    match r {
        Ok(c) => Err(format!(
            "CreateContainer with profile {missing} succeeded: {}",
            c.into_inner().container_id
        )),
        Err(e) if e.code() == tonic::Code::FailedPrecondition && e.message().contains(missing) => {
            Ok(())
        }
        Err(e) => Err(format!("CreateContainer with profile {missing}: {e}")),
    }
}

async fn pull(cri: &mut Cri, image: &str) -> Result<String, tonic::Status> {
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

async fn reload_applies_a_changed_mirror(run: &mut Run) -> Result<(), String> {
    let image = format!("{RELOAD_PREFIX}/library/busybox:1.36");
    let pid = main_pid();
    if let Ok(r) = pull(cri(run)?, &image).await {
        return Err(format!("{image} pulled before any mirror maps it: {r}"));
    }
    write_dropin(run.driver, &run.registry, &[RELOAD_PREFIX])?;
    node::systemctl(&["reload", SERVICE])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let pulled = loop {
        match pull(cri(run)?, &image).await {
            Ok(r) => break Ok(r),
            Err(e) if Instant::now() > deadline => break Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    write_dropin(run.driver, &run.registry, &[])?;
    node::systemctl(&["reload", SERVICE])?;
    pulled.map_err(|e| format!("{image} after the reload: {e}"))?;
    ensure!(
        main_pid() == pid,
        "the reload restarted the daemon ({pid} -> {})",
        main_pid()
    );
    Ok(())
}

/// Every container of `pod` ferrio lists as running.
async fn running_in(cri: &mut Cri, pod: &str) -> Result<Vec<String>, String> {
    Ok(cri
        .rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.into(),
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| format!("ListContainers: {e}"))?
        .into_inner()
        .containers
        .into_iter()
        .filter(|c| c.state == ContainerState::ContainerRunning as i32)
        .map(|c| c.id)
        .collect())
}

async fn ten_still_running(run: &mut Run, pod: &str) -> Result<(), String> {
    ensure!(
        run.ten.len() == 10,
        "{} of ten containers started (an earlier check failed)",
        run.ten.len()
    );
    for (id, ctr, mon) in run.ten.clone() {
        ensure!(ctr.alive(), "container {id}'s process {} is gone", ctr.pid);
        ensure!(mon.alive(), "container {id}'s monitor {} is gone", mon.pid);
    }
    let running = running_in(cri(run)?, pod).await?;
    for (id, _, _) in &run.ten {
        ensure!(running.contains(id), "{id} not listed running: {running:?}");
    }
    // The new daemon still knows each monitor by the same process.
    for (id, ctr, mon) in run.ten.clone() {
        let o = pods::observe(cri(run)?, &id).await?;
        ensure!(
            o.pid == ctr.pid && o.monitor_pid == mon.pid,
            "{id}: daemon reports pid {} monitor {}, was {} / {}",
            o.pid,
            o.monitor_pid,
            ctr.pid,
            mon.pid
        );
    }
    Ok(())
}

async fn restart_keeps_containers_and_monitors(run: &mut Run) -> Result<(), String> {
    let driver = run.driver;
    let pod = pods::run_pod(cri(run)?, driver, Qos::Burstable, "ten", None).await?;
    let pod_id = pod.id.clone();
    let pod_ref = pod.clone();
    run.pods.push(pod);
    for i in 0..10 {
        let id = pods::start(
            cri(run)?,
            &pod_ref,
            pods::container(&format!("sleeper-{i}"), &["sleep", "3600"]),
        )
        .await?;
        let (ctr, mon) = pods::running_procs(cri(run)?, &id).await?;
        run.procs.extend([ctr, mon]);
        run.ten.push((id, ctr, mon));
    }
    let before = main_pid();
    let since = node::run("date", &["+%Y-%m-%d %H:%M:%S"])?
        .trim()
        .to_string();
    node::systemctl(&["restart", SERVICE])?;
    let after = main_pid();
    ensure!(before != after && after > 0, "MainPID {before} -> {after}");
    run.cri = Some(connect().await?);
    ten_still_running(run, &pod_id).await?;
    let in_service = service_pids()?;
    ensure!(
        in_service == vec![after],
        "ferrio.service's cgroup holds {in_service:?}, want only the daemon {after}"
    );
    let journal = node::run(
        "journalctl",
        &["-u", SERVICE, "--since", &since, "--no-pager", "-o", "cat"],
    )
    .unwrap_or_default();
    ensure!(
        !journal.contains("remains running after unit stopped"),
        "systemd saw processes left in the unit: {}",
        journal
            .lines()
            .filter(|l| l.contains("remains running"))
            .take(3)
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(())
}

async fn stop_leaves_containers_running(run: &mut Run) -> Result<(), String> {
    let pod_id = run
        .pods
        .iter()
        .find(|p| p.config.metadata.as_ref().is_some_and(|m| m.name == "ten"))
        .map(|p| p.id.clone())
        .ok_or("no pod of ten containers (an earlier check failed)")?;
    run.cri = None;
    node::systemctl(&["stop", SERVICE])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (id, ctr, mon) in &run.ten {
        ensure!(ctr.alive(), "container {id} died with the daemon's stop");
        ensure!(mon.alive(), "monitor of {id} died with the daemon's stop");
    }
    node::systemctl(&["start", SERVICE])?;
    run.cri = Some(connect().await?);
    ten_still_running(run, &pod_id).await
}

async fn removing_every_pod_leaves_nothing(run: &mut Run) -> Result<(), String> {
    let pods = std::mem::take(&mut run.pods);
    for pod in &pods {
        pods::remove_pod(cri(run)?, pod).await?;
    }
    let listed = cri(run)?
        .rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .map_err(|e| format!("ListPodSandbox: {e}"))?
        .into_inner()
        .items;
    ensure!(listed.is_empty(), "pods still listed: {}", listed.len());
    let mut left = Vec::new();
    for p in &run.procs {
        if p.alive() {
            left.push(format!("process {}", p.pid));
        }
    }
    // systemd drops a scope once it is empty; give it a moment.
    let ferrio_units = || {
        let mut u = node::units_matching("ferrio-*.scope");
        u.extend(node::units_matching("ferrio-*.slice"));
        u
    };
    let _ = node::wait_for("ferrio's scopes to go", Duration::from_secs(10), || {
        ferrio_units().is_empty()
    });
    left.extend(ferrio_units().into_iter().map(|u| format!("unit {u}")));
    left.extend(
        node::cgroups_named("ferrio-")
            .into_iter()
            .map(|p| format!("cgroup {}", p.display())),
    );
    for pod in &pods {
        if node::cgroup_dir(&pod.cgroup.dir).exists() {
            left.push(format!("pod cgroup {}", pod.cgroup.dir));
        }
    }
    for needle in ["/var/lib/ferrio", "/run/ferrio"] {
        left.extend(
            node::mounts_containing(needle)
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
    }
    let veths = node::run("ip", &["-o", "link", "show", "type", "veth"]).unwrap_or_default();
    left.extend(veths.lines().map(|l| format!("veth {}", l.trim())));
    let in_service = service_pids()?;
    if in_service != vec![main_pid()] {
        left.push(format!("ferrio.service's cgroup holds {in_service:?}"));
    }
    ensure!(left.is_empty(), "left behind: {}", left.join(", "));
    Ok(())
}

/// Whatever a failed check left: pods, kubelet-style cgroups, the drop-in; the service stopped.
async fn clean_up(run: &mut Run) {
    if run.cri.is_none() {
        run.cri = connect().await.ok();
    }
    if let Some(c) = run.cri.as_mut() {
        if let Ok(r) =
            c.rt.list_pod_sandbox(ListPodSandboxRequest::default())
                .await
        {
            for p in r.into_inner().items {
                let _ =
                    c.rt.stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: p.id.clone(),
                    })
                    .await;
                let _ =
                    c.rt.remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: p.id,
                    })
                    .await;
            }
        }
    }
    for pod in std::mem::take(&mut run.pods) {
        let _ = pod.cgroup.remove();
    }
    match run.driver {
        Driver::Systemd => {
            let _ = node::systemctl(&["stop", "kubepods.slice"]);
        }
        Driver::Cgroupfs => {
            for d in ["/kubepods/burstable", "/kubepods/besteffort", "/kubepods"] {
                let _ = std::fs::remove_dir(node::cgroup_dir(d));
            }
        }
    }
    run.cri = None;
    let _ = node::systemctl(&["stop", SERVICE]);
    let _ = std::fs::remove_file(DROPIN);
}
