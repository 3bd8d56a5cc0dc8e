//! The benchmark (hack/bench) with N=2 and 3 pods, so it never rots: ferrio against containerd
//! when containerd is installed, against the runc / conmon floors only when it is not.

#[allow(dead_code)]
#[path = "../hack/bench/bench.rs"]
mod bench;
#[allow(dead_code)]
#[path = "../hack/bench/chart.rs"]
mod chart;

#[allow(dead_code)]
#[path = "../examples/bench_load.rs"]
mod bench_load;

#[path = "nri_plugin.rs"]
mod nri_plugin;

/// Not a test: the no-op NRI plugin of the benchmark's NRI row, which runs this test binary with this
/// test's name as ferrio's pre-installed plugin. Run as a test, it returns at once.
#[test]
#[ignore = "ferrio runs it as an NRI plugin"]
fn nri_plugin_process() {
    let Some(plugin) = nri_plugin::Preinstalled::from_env() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the plugin");
    rt.block_on(plugin.serve())
        .expect("the plugin serves ferrio");
}

use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_end_to_end_with_n_2() {
    let registry = std::env::var("FERRIO_TEST_REGISTRY")
        .ok()
        .filter(|r| !r.is_empty())
        .expect(
            "FERRIO_TEST_REGISTRY is not set: run `hack/test-registry.sh start` (or `make test`)",
        );
    let results = tempfile::tempdir().expect("results dir");
    let started = std::time::Instant::now();
    let report = bench::run(bench::Opts {
        n: 2,
        list_pods: 3,
        mem_pods: vec![2],
        ferrio_bin: PathBuf::from(env!("CARGO_BIN_EXE_ferrio")),
        monitor_bin: PathBuf::from(env!("CARGO_BIN_EXE_ferrio-monitor")),
        registry,
        results_dir: results.path().to_path_buf(),
        containerd: true,
        handler: bench::Handler::Runc,
        nri_plugin: Some(vec![
            std::env::current_exe().unwrap().display().to_string(),
            "nri_plugin_process".into(),
            "--exact".into(),
            "--ignored".into(),
        ]),
        only_nri: false,
    })
    .await
    .expect("the benchmark runs");
    eprintln!("{}", report.table);
    assert!(started.elapsed() < std::time::Duration::from_secs(120));

    let row = |m: &str| {
        report
            .rows
            .iter()
            .find(|r| r.metric == m)
            .unwrap_or_else(|| panic!("no row {m:?} in\n{}", report.table))
    };
    for m in [
        "PullImage (cold)",
        "create+start",
        "pod lifecycle",
        "ListPodSandbox, 3 pods",
    ] {
        let r = row(m);
        assert_eq!(r.ferrio.map(|s| s.n), Some(2), "{m}: ferrio samples");
        if report.containerd {
            assert_eq!(
                r.containerd.map(|s| s.n),
                Some(2),
                "{m}: containerd samples"
            );
            assert!(r.ratio().is_some_and(|x| x > 0.0));
        } else {
            assert!(r.containerd.is_none());
        }
    }
    // Lifecycle steps are parts of the lifecycle, and the floors ran in the same run.
    let life = row("pod lifecycle").ferrio.expect("ferrio lifecycle");
    let cs = row("create+start").ferrio.expect("ferrio create+start");
    assert!(cs.p50 <= life.p95);
    assert!(row("create+start").over_floor().is_some());
    for f in [
        "floor: conmon + runc",
        "floor: runc create",
        "floor: runc create + start",
        "floor: CNI ADD + DEL",
        "floor: pod: CNI + runc create + start",
    ] {
        assert_eq!(row(f).floor.as_ref().map(|f| f.1.n), Some(2), "{f}");
    }
    assert!(row("pod lifecycle").over_floor().is_some());
    let nri = row(bench::NRI_ROW);
    assert_eq!(nri.ferrio.map(|s| s.n), Some(2), "NRI + plugin samples");
    assert_eq!(
        nri.floor.as_ref().map(|(name, s)| (name.as_str(), s.n)),
        Some((bench::NRI_BASELINE, 2)),
        "NRI off samples"
    );
    assert!(row("daemon RSS idle").ferrio.is_some_and(|s| s.p50 > 1.0));
    assert!(row("helper RSS per pod, 2 pods")
        .ferrio
        .is_some_and(|s| s.p50 > 0.1));
    if !report.containerd {
        assert!(report.notes.iter().any(|n| n.contains("containerd")));
    }

    let csv = std::fs::read_to_string(&report.csv).expect("csv");
    assert!(csv.lines().count() > 15 && csv.contains("\"pod lifecycle\",ms,"));
    let png = std::fs::read(&report.png).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Nothing left: the work dir is gone and no process names it.
    assert!(
        !report.work.exists(),
        "{} left behind",
        report.work.display()
    );
    let w = report.work.to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(&w).then(|| format!("{p}: {c}"))
        })
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    // The CNI floor's netns is named after the run.
    let tag = w.rsplit("ferrio-bench-").next().unwrap_or_default();
    let ns = format!("fb{}n", &tag[..8.min(tag.len())]);
    assert!(
        !std::path::Path::new("/run/netns").join(&ns).exists(),
        "netns {ns} left"
    );
}

/// The load benchmark (hack/bench-load.sh) with 3 pods x 2 containers: every row measured, the
/// restart keeps monitors and containers, the CSV is written and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_bench_runs_end_to_end_with_3_pods() {
    let registry = std::env::var("FERRIO_TEST_REGISTRY")
        .ok()
        .filter(|r| !r.is_empty())
        .expect(
            "FERRIO_TEST_REGISTRY is not set: run `hack/test-registry.sh start` (or `make test`)",
        );
    let results = tempfile::tempdir().expect("results dir");
    let report = bench_load::run(bench_load::Opts {
        pods: 3,
        calls: 20,
        idle: std::time::Duration::from_secs(2),
        parallel: 2,
        ferrio_bin: PathBuf::from(env!("CARGO_BIN_EXE_ferrio")),
        monitor_bin: PathBuf::from(env!("CARGO_BIN_EXE_ferrio-monitor")),
        registry,
        results_dir: results.path().to_path_buf(),
    })
    .await
    .expect("the load benchmark runs");
    eprintln!("{}", report.table);

    let row = |m: &str| {
        report
            .row(m)
            .unwrap_or_else(|| panic!("no row {m:?} in\n{}", report.table))
    };
    for m in [
        "ListPodSandbox, 3 pods",
        "ListContainers, 3 pods",
        "ListContainerStats, 3 pods",
    ] {
        let r = row(m);
        let p99 = r.p99.expect("a latency has a p99");
        assert!(r.value > 0.0 && p99 >= r.value, "{m}: {r:?}");
    }
    // The daemon's own timing of the same calls, from its metrics endpoint.
    for op in ["ListPodSandbox", "ListContainers", "ListContainerStats"] {
        let r = row(&format!("{op} p99 in the daemon, at most"));
        assert!(r.value > 0.0, "{r:?}");
    }
    // Goals are not asserted (a loaded CI box), the measurements are.
    assert!(row("daemon CPU idle, 2 s").value >= 0.0);
    // A pause and two containers per pod, each with its monitor.
    let mons = row("monitors RSS total, 9 monitors");
    assert!(mons.value > 1.0, "{mons:?}");
    assert!(row("daemon RSS").value > 1.0);
    assert!(row("PSS per monitor").value > 0.0);
    assert_eq!(row("monitors alive across the restart").value, 9.0);
    assert!(
        row("monitors alive across the restart")
            .goal
            .as_ref()
            .is_some_and(|g| g.1),
        "the same monitors serve the containers after a restart:\n{}",
        report.table
    );
    assert_eq!(row("containers running after the restart").value, 6.0);

    let csv = std::fs::read_to_string(&report.csv).expect("csv");
    assert!(csv.starts_with("pods,metric,"), "{csv}");
    assert!(csv.contains("\"ListContainers, 3 pods\",ms,"), "{csv}");
    assert!(
        report.leftovers.is_empty(),
        "left behind: {:?}",
        report.leftovers
    );
    assert!(!report.work.exists());
}
