//! The pull half of `hack/bench-pull.sh`: one cold pull + unpack of `FERRIO_BENCH_IMAGE` from a
//! plain-HTTP registry into a fresh store, printed as `ferrio_pull_seconds=<s>`. Ignored by
//! default (it needs the benchmark image); the script runs it with `--ignored --nocapture`.

use std::time::Instant;

use ferrio::config::{ImageConfig, RegistryConfig};
use ferrio::image::ImageStore;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run through hack/bench-pull.sh"]
async fn bench_cold_pull() {
    let image = std::env::var("FERRIO_BENCH_IMAGE").expect("FERRIO_BENCH_IMAGE=host:port/repo:tag");
    let host = image.split('/').next().unwrap_or_default().to_string();
    let parallel: usize = std::env::var("FERRIO_BENCH_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ImageConfig::default().max_concurrent_downloads);
    let cfg = ImageConfig {
        registry: vec![RegistryConfig {
            prefix: host,
            insecure: true,
            fallback: true,
            ..Default::default()
        }],
        max_concurrent_downloads: parallel,
        ..Default::default()
    };
    // Under /var/tmp like the other tools' output: a real disk, not tmpfs.
    let work = tempfile::Builder::new()
        .prefix("ferrio-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let store = ImageStore::open(&work.path().join("images")).unwrap();
    let started = Instant::now();
    let img = store.pull(&image, &cfg, None).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ferrio_pull_seconds={secs:.3} layers={} bytes={}",
        img.chain_ids.len(),
        img.size
    );
}
