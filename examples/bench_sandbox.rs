//! Times RunPodSandbox on a running ferrio: `--serial` pods one after another, then `--parallel`
//! pods at once. Each pod is stopped and removed after it was timed (not part of the time).
//! Prints one line per phase with p50/p95 in milliseconds; `hack/bench-sandbox.sh` runs it next
//! to the scripted floor (netns + CNI ADD + `runc run` of the pause bundle).
//!
//! `cargo run --release --example bench_sandbox -- --socket /run/ferrio/ferrio.sock`

use clap::Parser;
use ferrio::cri::v1::runtime_service_client::RuntimeServiceClient;
use ferrio::cri::v1::{
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest,
};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

type Client = RuntimeServiceClient<Channel>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Args {
    /// ferrio's CRI socket.
    #[arg(long)]
    socket: PathBuf,
    /// Pods created one after another.
    #[arg(long, default_value_t = 50)]
    serial: usize,
    /// Pods created at once.
    #[arg(long, default_value_t = 10)]
    parallel: usize,
    /// Pods get `<prefix>/pod<n>` as cgroup parent.
    #[arg(long, default_value = "/ferrio-bench")]
    cgroup_prefix: String,
}

async fn connect(socket: PathBuf) -> Result<Client, BoxError> {
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(RuntimeServiceClient::new(channel))
}

fn pod(args: &Args, n: usize) -> PodSandboxConfig {
    let uid = format!("{:032x}", rand::random::<u128>());
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("bench-{n}"),
            uid,
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("bench-{n}"),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("{}/pod{n}", args.cgroup_prefix),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// RunPodSandbox, returning the id and how long it took.
async fn run(c: &mut Client, config: PodSandboxConfig) -> Result<(String, Duration), BoxError> {
    let t = Instant::now();
    let id = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    Ok((id, t.elapsed()))
}

/// StopPodSandbox then RemovePodSandbox, returning how long each took.
async fn remove(c: &mut Client, id: &str) -> Result<(Duration, Duration), BoxError> {
    let t = Instant::now();
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await?;
    let stop = t.elapsed();
    let t = Instant::now();
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await?;
    Ok((stop, t.elapsed()))
}

/// The nearest-rank percentile `p` (0..=100) of `v`, in milliseconds.
fn percentile(v: &[Duration], p: usize) -> f64 {
    let mut s: Vec<Duration> = v.to_vec();
    s.sort();
    if s.is_empty() {
        return 0.0;
    }
    let rank = (p * s.len()).div_ceil(100).clamp(1, s.len());
    s[rank - 1].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let mut c = connect(args.socket.clone()).await?;

    // Warm-up (pulls the pause image), not timed.
    let (id, _) = run(&mut c, pod(&args, 0)).await?;
    remove(&mut c, &id).await?;

    let (mut serial, mut stops, mut removes) = (Vec::new(), Vec::new(), Vec::new());
    for n in 1..=args.serial {
        let (id, took) = run(&mut c, pod(&args, n)).await?;
        serial.push(took);
        let (stop, rm) = remove(&mut c, &id).await?;
        stops.push(stop);
        removes.push(rm);
    }
    println!(
        "ferrio serial   n={} p50_ms={:.1} p95_ms={:.1}",
        serial.len(),
        percentile(&serial, 50),
        percentile(&serial, 95)
    );
    // Not part of the goal; printed so the stop/remove path can be compared to containerd's.
    for (what, v) in [("stop  ", &stops), ("remove", &removes)] {
        println!(
            "ferrio {what}   n={} p50_ms={:.1} p95_ms={:.1}",
            v.len(),
            percentile(v, 50),
            percentile(v, 95)
        );
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..args.parallel {
        let mut c = c.clone();
        let config = pod(&args, 1000 + n);
        tasks.push(tokio::spawn(async move { run(&mut c, config).await }));
    }
    let mut parallel = Vec::new();
    let mut ids = Vec::new();
    for t in tasks {
        let (id, took) = t.await??;
        parallel.push(took);
        ids.push(id);
    }
    let wall = started.elapsed();
    for id in ids {
        remove(&mut c, &id).await?;
    }
    println!(
        "ferrio parallel n={} p50_ms={:.1} p95_ms={:.1} wall_ms={:.1}",
        parallel.len(),
        percentile(&parallel, 50),
        percentile(&parallel, 95),
        wall.as_secs_f64() * 1000.0
    );
    Ok(())
}
