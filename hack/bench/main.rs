//! `bench`: ferrio vs containerd (and the runc / conmon floors) over CRI, side by side.
//! Run it through `hack/bench/run.sh [N]`, which builds ferrio in release mode, starts the test
//! registry and installs containerd when it is missing.

// The smoke test (e2e/bench_smoke.rs) reads report fields this binary only prints.
#[allow(dead_code)]
mod bench;
mod chart;
// The no-op NRI plugin of the NRI row: ferrio starts this binary as its pre-installed plugin.
#[path = "../../e2e/nri_plugin.rs"]
mod nri_plugin;

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "ferrio vs containerd, conmon and runc, over CRI")]
struct Args {
    /// Iterations per runtime of each timed operation.
    #[arg(default_value_t = 50)]
    n: usize,
    /// Pods present while ListContainers / ListPodSandbox are timed.
    #[arg(long, default_value_t = 100)]
    list_pods: usize,
    /// Running-pod counts at which memory is sampled.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 50])]
    mem_pods: Vec<usize>,
    /// The ferrio binary (ferrio-monitor is taken from the same dir unless --monitor).
    #[arg(long, default_value = "target/release/ferrio")]
    ferrio: PathBuf,
    #[arg(long)]
    monitor: Option<PathBuf>,
    /// The test registry (hack/test-registry.sh start).
    #[arg(long, default_value = "127.0.0.1:5055")]
    registry: String,
    #[arg(long, default_value = "hack/bench/results")]
    results: PathBuf,
    /// Benchmark ferrio against the floors only.
    #[arg(long)]
    no_containerd: bool,
    /// ferrio's handler for the pods, and the runtime of the floors (containerd keeps runc).
    /// Default: the handler ferrio's default config names.
    #[arg(long, value_parser = ["runc", "crun"])]
    handler: Option<String>,
    /// Only the row of the pod lifecycle with NRI and a no-op plugin against NRI off.
    #[arg(long)]
    only_nri: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(plugin) = nri_plugin::Preinstalled::from_env() {
        return Ok(plugin.serve().await?);
    }
    let a = Args::parse();
    let monitor = a
        .monitor
        .unwrap_or_else(|| a.ferrio.with_file_name("ferrio-monitor"));
    let opts = bench::Opts {
        n: a.n,
        list_pods: a.list_pods,
        mem_pods: a.mem_pods,
        ferrio_bin: std::fs::canonicalize(&a.ferrio)?,
        monitor_bin: std::fs::canonicalize(&monitor)?,
        registry: a.registry,
        results_dir: a.results,
        containerd: !a.no_containerd,
        handler: match a
            .handler
            .unwrap_or_else(|| ferrio::config::Config::default().runtime.default_runtime)
            .as_str()
        {
            "crun" => bench::Handler::Crun,
            "runc" => bench::Handler::Runc,
            other => anyhow::bail!("no benchmark floor for the handler {other:?}: use --handler"),
        },
        nri_plugin: Some(vec![std::env::current_exe()?.display().to_string()]),
        only_nri: a.only_nri,
    };
    // On ^C the run future is dropped, and with it the daemons and everything they made.
    let report = tokio::select! {
        r = bench::run(opts) => r?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    };
    print!("{}", report.table);
    println!("csv: {}", report.csv.display());
    println!("png: {}", report.png.display());
    Ok(())
}
