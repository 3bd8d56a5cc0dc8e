//! Prometheus metrics, named after CRI-O's `container_runtime_crio_*` as `ferrio_*`.
//!
//! Counters are bumped by the gRPC edge (one observation per RPC); object counts are read from
//! the in-memory tables at scrape time. This room reads state and never changes it.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Object counts taken from the daemon's tables when scraped.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// (state, count) for containers: created, running, exited.
    pub containers: Vec<(&'static str, i64)>,
    /// (state, count) for pod sandboxes: ready, notready.
    pub sandboxes: Vec<(&'static str, i64)>,
    /// Containers whose exit was an OOM kill, among those still known.
    pub oom_killed: i64,
    /// ferrio-monitor processes the daemon expects to be alive.
    pub monitors: i64,
    /// Registered NRI plugins (0 with NRI off).
    pub nri_plugins: i64,
}

pub struct Metrics {
    registry: Registry,
    operations: IntCounterVec,
    errors: IntCounterVec,
    latency: HistogramVec,
    image_pulls: IntCounterVec,
    containers: IntGaugeVec,
    sandboxes: IntGaugeVec,
    oom: IntGauge,
    monitors: IntGauge,
    events_dropped: prometheus::IntCounter,
    config_reloads: IntCounterVec,
    nri_plugins: IntGauge,
    nri_events: HistogramVec,
}

/// The RPCs whose outcome counts as an image pull.
const PULL: &str = "PullImage";

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let operations = IntCounterVec::new(
            Opts::new("ferrio_operations_total", "CRI operations by name"),
            &["operation"],
        )
        .expect("static metric definition");
        let errors = IntCounterVec::new(
            Opts::new(
                "ferrio_operations_errors_total",
                "CRI operations that returned an error, by name and gRPC code",
            ),
            &["operation", "code"],
        )
        .expect("static metric definition");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "ferrio_operations_latency_seconds",
                "CRI operation latency in seconds",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
            &["operation"],
        )
        .expect("static metric definition");
        let image_pulls = IntCounterVec::new(
            Opts::new("ferrio_image_pulls_total", "Image pulls by outcome"),
            &["outcome"],
        )
        .expect("static metric definition");
        let containers = IntGaugeVec::new(
            Opts::new("ferrio_containers", "Containers by state"),
            &["state"],
        )
        .expect("static metric definition");
        let sandboxes = IntGaugeVec::new(
            Opts::new("ferrio_sandboxes", "Pod sandboxes by state"),
            &["state"],
        )
        .expect("static metric definition");
        let oom = IntGauge::new(
            "ferrio_containers_oom_killed",
            "Known containers whose exit was an OOM kill",
        )
        .expect("static metric definition");
        let monitors = IntGauge::new(
            "ferrio_monitor_processes",
            "ferrio-monitor processes of live containers and pods",
        )
        .expect("static metric definition");
        let events_dropped = prometheus::IntCounter::new(
            "ferrio_container_events_dropped_total",
            "Container events a slow GetContainerEvents subscriber missed",
        )
        .expect("static metric definition");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "ferrio_config_reloads_total",
                "Config reloads (SIGHUP) by result: ok, or error when the new config was refused",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let nri_plugins = IntGauge::new("ferrio_nri_plugins", "Registered NRI plugins")
            .expect("static metric definition");
        let nri_events = HistogramVec::new(
            HistogramOpts::new(
                "ferrio_nri_event_duration_seconds",
                "Time an NRI event took through every plugin subscribed to it, by event",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            &["event"],
        )
        .expect("static metric definition");
        // Both series exist from the start, so a dashboard sees 0 rather than nothing.
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        for c in [
            Box::new(events_dropped.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(config_reloads.clone()),
            Box::new(operations.clone()),
            Box::new(errors.clone()),
            Box::new(latency.clone()),
            Box::new(image_pulls.clone()),
            Box::new(containers.clone()),
            Box::new(sandboxes.clone()),
            Box::new(oom.clone()),
            Box::new(monitors.clone()),
            Box::new(nri_plugins.clone()),
            Box::new(nri_events.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            operations,
            errors,
            latency,
            image_pulls,
            containers,
            sandboxes,
            oom,
            monitors,
            events_dropped,
            config_reloads,
            nri_plugins,
            nri_events,
        }
    }

    /// One NRI event (`CreateContainer`, ...) went through the plugins in `seconds`.
    pub fn nri_event(&self, event: &str, seconds: f64) {
        self.nri_events.with_label_values(&[event]).observe(seconds);
    }

    /// One config reload: applied (`ok`) or refused.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// A GetContainerEvents subscriber fell behind and missed `n` events.
    pub fn events_dropped(&self, n: u64) {
        self.events_dropped.inc_by(n);
    }

    /// One finished RPC; `code` is the gRPC status code (0 = OK).
    pub fn observe(&self, operation: &str, seconds: f64, code: i32) {
        self.operations.with_label_values(&[operation]).inc();
        self.latency
            .with_label_values(&[operation])
            .observe(seconds);
        if code != 0 {
            self.errors
                .with_label_values(&[operation, &code.to_string()])
                .inc();
        }
        if operation == PULL {
            let outcome = if code == 0 { "success" } else { "failure" };
            self.image_pulls.with_label_values(&[outcome]).inc();
        }
    }

    /// The text exposition of every metric, with object counts from `snap`.
    pub fn render(&self, snap: &Snapshot) -> String {
        self.containers.reset();
        for (state, n) in &snap.containers {
            self.containers.with_label_values(&[state]).set(*n);
        }
        self.sandboxes.reset();
        for (state, n) in &snap.sandboxes {
            self.sandboxes.with_label_values(&[state]).set(*n);
        }
        self.oom.set(snap.oom_killed);
        self.monitors.set(snap.monitors);
        self.nri_plugins.set(snap.nri_plugins);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serve `GET /metrics` on `listener` until the task is dropped. A deliberately tiny HTTP/1.0
/// responder: Prometheus sends one GET per scrape and needs nothing more.
pub async fn serve<F>(listener: TcpListener, render: F)
where
    F: Fn() -> String + Send + Sync + Clone + 'static,
{
    loop {
        let Ok((mut sock, peer)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read until the end of the request head (or the buffer is full).
            while n < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf[n..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if head.starts_with("GET ") && path == "/metrics" {
                ("200 OK", render())
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let resp = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = sock.write_all(resp.as_bytes()).await {
                tracing::debug!(%peer, error = %e, "metrics client went away");
            }
        });
    }
}

/// Bind the metrics address.
pub async fn bind(address: &str) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = address.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{address}: {e}"))
    })?;
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_operations() {
        let m = Metrics::new();
        m.observe("RunPodSandbox", 0.2, 0);
        m.observe("PullImage", 1.0, 5);
        let text = m.render(&Snapshot {
            containers: vec![("running", 3)],
            sandboxes: vec![("ready", 2)],
            oom_killed: 1,
            monitors: 5,
            nri_plugins: 2,
        });
        assert!(
            text.contains("ferrio_operations_total{operation=\"RunPodSandbox\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferrio_operations_errors_total{code=\"5\",operation=\"PullImage\"} 1")
        );
        assert!(text.contains("ferrio_image_pulls_total{outcome=\"failure\"} 1"));
        assert!(text.contains("ferrio_containers{state=\"running\"} 3"));
        assert!(text.contains("ferrio_sandboxes{state=\"ready\"} 2"));
        assert!(text.contains("ferrio_monitor_processes 5"));
        assert!(text.contains("ferrio_operations_latency_seconds_bucket"));
        assert!(text.contains("ferrio_nri_plugins 2"), "{text}");
    }

    #[test]
    fn renders_nri_event_latency_by_event() {
        let m = Metrics::new();
        let text = m.render(&Snapshot::default());
        assert!(text.contains("ferrio_nri_plugins 0"), "{text}");
        m.nri_event("CreateContainer", 0.003);
        m.nri_event("CreateContainer", 0.2);
        m.nri_event("RunPodSandbox", 0.0002);
        let text = m.render(&Snapshot::default());
        assert!(
            text.contains("# TYPE ferrio_nri_event_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("ferrio_nri_event_duration_seconds_count{event=\"CreateContainer\"} 2"),
            "{text}"
        );
        assert!(text.contains(
            "ferrio_nri_event_duration_seconds_bucket{event=\"CreateContainer\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "ferrio_nri_event_duration_seconds_bucket{event=\"CreateContainer\",le=\"0.25\"} 2"
        ));
        assert!(text.contains(
            "ferrio_nri_event_duration_seconds_bucket{event=\"RunPodSandbox\",le=\"0.00025\"} 1"
        ));
        assert!(
            text.contains("ferrio_nri_event_duration_seconds_sum{event=\"CreateContainer\"} 0.203")
        );
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let l = bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let m = std::sync::Arc::new(Metrics::new());
        m.observe("Version", 0.001, 0);
        let m2 = m.clone();
        let task = tokio::spawn(serve(l, move || m2.render(&Snapshot::default())));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.0 200 OK"), "{out}");
        assert!(out.contains("ferrio_operations_total{operation=\"Version\"} 1"));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /other HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.0 404"));
        task.abort();
    }
}
