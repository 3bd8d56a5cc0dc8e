//! Stats and metrics RPCs: ferrio's usage readings (see [`crate::container::stats`]) as CRI
//! messages, and the same numbers as Prometheus-style metrics for ListPodSandboxMetrics.

use super::batches::{in_batches, Batches};
use super::convert;
use super::{Daemon, Res};
use crate::container::lifecycle::Container;
use crate::container::stats::{
    self, CgroupDetail, ContainerUsage, DiskUsage, FsInfo, InterfaceUsage, PodUsage, Usage,
};
use crate::cri::v1 as cri;
use crate::error::Error;
use crate::oci::cgroups::{Pressure, PsiLine};
use crate::sandbox::lifecycle::{Sandbox, SandboxState};
use std::sync::Arc;
use tonic::{Request, Response};

fn u64v(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

/// The kernel counts stall time in microseconds; CRI's PsiData.Total is nanoseconds.
fn psi_line(l: &PsiLine) -> cri::PsiData {
    cri::PsiData {
        total: l.total_us.saturating_mul(1000),
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
    }
}

/// A pressure file as CRI's PsiStats; `None` where there is none (cgroup v1), never zeros.
fn psi(p: Option<&Pressure>) -> Option<cri::PsiStats> {
    p.map(|p| cri::PsiStats {
        full: Some(psi_line(&p.full)),
        some: Some(psi_line(&p.some)),
    })
}

fn cpu(u: &Usage) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: u.timestamp,
        usage_core_nano_seconds: u64v(u.cgroup.cpu_usage_ns),
        usage_nano_cores: u64v(u.cpu_nano_cores),
        psi: psi(u.cgroup.pressure.cpu.as_ref()),
    }
}

/// IO usage: CRI's IoUsage carries only IO pressure, so there is none without it.
fn io(u: &Usage) -> Option<cri::IoUsage> {
    let psi = psi(u.cgroup.pressure.io.as_ref())?;
    Some(cri::IoUsage {
        timestamp: u.timestamp,
        psi: Some(psi),
    })
}

fn memory(u: &Usage) -> cri::MemoryUsage {
    let c = &u.cgroup;
    cri::MemoryUsage {
        timestamp: u.timestamp,
        working_set_bytes: u64v(c.memory_working_set),
        available_bytes: u64v(c.memory_available()),
        usage_bytes: u64v(c.memory_usage),
        rss_bytes: u64v(c.memory_rss),
        page_faults: u64v(c.page_faults),
        major_page_faults: u64v(c.major_page_faults),
        psi: psi(c.pressure.memory.as_ref()),
    }
}

fn filesystem(ts: i64, d: &DiskUsage) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp: ts,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: d.mountpoint.display().to_string(),
        }),
        used_bytes: u64v(Some(d.used_bytes)),
        inodes_used: u64v(Some(d.inodes_used)),
    }
}

fn to_container_stats(u: &ContainerUsage) -> cri::ContainerStats {
    let c = &u.container;
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: c.meta.name.clone(),
                attempt: c.meta.attempt,
            }),
            labels: convert::map(&c.meta.labels),
            annotations: convert::map(&c.meta.annotations),
        }),
        cpu: Some(cpu(&u.usage)),
        memory: Some(memory(&u.usage)),
        writable_layer: u
            .writable_layer
            .as_ref()
            .map(|d| filesystem(u.usage.timestamp, d)),
        swap: None,
        io: io(&u.usage),
    }
}

fn interface(i: &InterfaceUsage) -> cri::NetworkInterfaceUsage {
    cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u64v(Some(i.rx_bytes)),
        rx_errors: u64v(Some(i.rx_errors)),
        tx_bytes: u64v(Some(i.tx_bytes)),
        tx_errors: u64v(Some(i.tx_errors)),
    }
}

fn pod_stats(p: &PodUsage) -> cri::PodSandboxStats {
    let s = &p.sandbox;
    // CNI names the pod's interface eth0; else the first one there is.
    let default_interface = p
        .interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or(p.interfaces.first())
        .map(interface);
    let network = (!p.interfaces.is_empty()).then(|| cri::NetworkUsage {
        timestamp: p.usage.timestamp,
        default_interface,
        interfaces: p.interfaces.iter().map(interface).collect(),
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: s.id.clone(),
            metadata: Some(convert::sandbox_metadata(s)),
            labels: convert::map(&s.meta.labels),
            annotations: convert::map(&s.meta.annotations),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu(&p.usage)),
            memory: Some(memory(&p.usage)),
            network,
            process: Some(cri::ProcessUsage {
                timestamp: p.usage.timestamp,
                process_count: u64v(p.usage.cgroup.pids),
            }),
            containers: p.containers.iter().map(to_container_stats).collect(),
            io: io(&p.usage),
        }),
        windows: None,
    }
}

async fn stats_of(d: &Arc<Daemon>, id: &str) -> Result<cri::ContainerStats, Error> {
    let c = d.containers.get(id)?;
    let u = d.containers.usage(vec![c]).await;
    u.first()
        .map(to_container_stats)
        .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
}

pub(super) async fn container_stats(
    d: &Arc<Daemon>,
    req: Request<cri::ContainerStatsRequest>,
) -> Res<cri::ContainerStatsResponse> {
    let id = req.into_inner().container_id;
    let stats = stats_of(d, &id).await?;
    Ok(Response::new(cri::ContainerStatsResponse {
        stats: Some(stats),
    }))
}

pub(super) async fn list_container_stats(
    d: &Arc<Daemon>,
    req: Request<cri::ListContainerStatsRequest>,
) -> Res<cri::ListContainerStatsResponse> {
    let f = req.into_inner().filter.unwrap_or_default();
    let stats = container_stats_of(d, measured_containers(d, &f)).await;
    Ok(Response::new(cri::ListContainerStatsResponse { stats }))
}

pub(super) async fn stream_container_stats(
    d: &Arc<Daemon>,
    req: Request<cri::StreamContainerStatsRequest>,
) -> Res<Batches<cri::StreamContainerStatsResponse>> {
    let f = req.into_inner().filter.unwrap_or_default();
    let selected = measured_containers(d, &f);
    let d = d.clone();
    let read = move |batch| {
        let d = d.clone();
        async move { Ok(container_stats_of(&d, batch).await) }
    };
    Ok(Response::new(in_batches(
        selected,
        read,
        |container_stats| cri::StreamContainerStatsResponse { container_stats },
    )))
}

/// The containers a statistics filter selects; only those that have (or had) a cgroup: created or
/// running, as cAdvisor sees them.
fn measured_containers(d: &Daemon, f: &cri::ContainerStatsFilter) -> Vec<Arc<Container>> {
    d.containers
        .list()
        .into_iter()
        .filter(|c| {
            use crate::container::lifecycle::ContainerState as S;
            matches!(c.status().state(), S::Created | S::Running)
        })
        .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
        .filter(|c| f.pod_sandbox_id.is_empty() || c.meta.sandbox_id.starts_with(&f.pod_sandbox_id))
        .filter(|c| convert::matches(&c.meta.labels, &f.label_selector))
        .collect()
}

async fn container_stats_of(d: &Daemon, cs: Vec<Arc<Container>>) -> Vec<cri::ContainerStats> {
    d.containers
        .usage(cs)
        .await
        .iter()
        .map(to_container_stats)
        .collect()
}

pub(super) async fn pod_sandbox_stats(
    d: &Arc<Daemon>,
    req: Request<cri::PodSandboxStatsRequest>,
) -> Res<cri::PodSandboxStatsResponse> {
    let id = req.into_inner().pod_sandbox_id;
    let s = d.pods.get(&id).map_err(Error::from)?;
    let u = d.containers.pod_usage(vec![s]).await;
    Ok(Response::new(cri::PodSandboxStatsResponse {
        stats: u.first().map(pod_stats),
    }))
}

pub(super) async fn list_pod_sandbox_stats(
    d: &Arc<Daemon>,
    req: Request<cri::ListPodSandboxStatsRequest>,
) -> Res<cri::ListPodSandboxStatsResponse> {
    let f = req.into_inner().filter.unwrap_or_default();
    let pods = ready_pods(d, &f.id, &f.label_selector);
    let stats = pod_stats_of(d, pods).await;
    Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
}

pub(super) async fn stream_pod_sandbox_stats(
    d: &Arc<Daemon>,
    req: Request<cri::StreamPodSandboxStatsRequest>,
) -> Res<Batches<cri::StreamPodSandboxStatsResponse>> {
    let f = req.into_inner().filter.unwrap_or_default();
    let selected = ready_pods(d, &f.id, &f.label_selector);
    let d = d.clone();
    let read = move |batch| {
        let d = d.clone();
        async move { Ok(pod_stats_of(&d, batch).await) }
    };
    Ok(Response::new(in_batches(
        selected,
        read,
        |pod_sandbox_stats| cri::StreamPodSandboxStatsResponse { pod_sandbox_stats },
    )))
}

async fn pod_stats_of(d: &Daemon, pods: Vec<Arc<Sandbox>>) -> Vec<cri::PodSandboxStats> {
    d.containers
        .pod_usage(pods)
        .await
        .iter()
        .map(pod_stats)
        .collect()
}

fn ready_pods(
    d: &Daemon,
    id_prefix: &str,
    labels: &std::collections::HashMap<String, String>,
) -> Vec<Arc<Sandbox>> {
    d.pods
        .list()
        .into_iter()
        .filter(|s| s.status().state == SandboxState::Ready)
        .filter(|s| id_prefix.is_empty() || s.id.starts_with(id_prefix))
        .filter(|s| convert::matches(&s.meta.labels, labels))
        .collect()
}

/// Kind of a metric: cumulative or a reading.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
}
use Kind::{Counter, Gauge};

/// The metrics ListPodSandboxMetrics reports, with cAdvisor's names, help, kind and the label
/// keys after the common (id, name, image).
const METRICS: &[(&str, &str, Kind, &[&str])] = &[
    ("container_blkio_device_usage_total", "Blkio device bytes usage", Counter, &["device", "major", "minor", "operation"]),
    ("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", Counter, &[]),
    ("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", Counter, &[]),
    ("container_cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled.", Counter, &[]),
    ("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", Counter, &[]),
    ("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", Counter, &["cpu"]),
    ("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", Counter, &[]),
    ("container_file_descriptors", "Number of open file descriptors for the container.", Gauge, &[]),
    ("container_fs_inodes_free", "Number of available Inodes", Gauge, &["device"]),
    ("container_fs_inodes_total", "Number of Inodes", Gauge, &["device"]),
    ("container_fs_limit_bytes", "Number of bytes that can be consumed by the container on this filesystem.", Gauge, &["device"]),
    ("container_fs_reads_bytes_total", "Cumulative count of bytes read", Counter, &["device"]),
    ("container_fs_reads_total", "Cumulative count of reads completed", Counter, &["device"]),
    ("container_fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.", Gauge, &["device"]),
    ("container_fs_writes_bytes_total", "Cumulative count of bytes written", Counter, &["device"]),
    ("container_fs_writes_total", "Cumulative count of writes completed", Counter, &["device"]),
    ("container_last_seen", "Last time a container was seen by the exporter", Gauge, &[]),
    ("container_memory_cache", "Number of bytes of page cache memory.", Gauge, &[]),
    ("container_memory_failcnt", "Number of memory usage hits limits", Counter, &[]),
    ("container_memory_failures_total", "Cumulative count of memory allocation failures.", Counter, &["failure_type", "scope"]),
    ("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", Gauge, &[]),
    ("container_memory_mapped_file", "Size of memory mapped files in bytes.", Gauge, &[]),
    ("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes", Gauge, &[]),
    ("container_memory_rss", "Size of RSS in bytes.", Gauge, &[]),
    ("container_memory_swap", "Container swap usage in bytes.", Gauge, &[]),
    ("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed", Gauge, &[]),
    ("container_memory_working_set_bytes", "Current working set in bytes.", Gauge, &[]),
    ("container_network_receive_bytes_total", "Cumulative count of bytes received", Counter, &["interface"]),
    ("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving", Counter, &["interface"]),
    ("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving", Counter, &["interface"]),
    ("container_network_receive_packets_total", "Cumulative count of packets received", Counter, &["interface"]),
    ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", Counter, &["interface"]),
    ("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting", Counter, &["interface"]),
    ("container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting", Counter, &["interface"]),
    ("container_network_transmit_packets_total", "Cumulative count of packets transmitted", Counter, &["interface"]),
    ("container_oom_events_total", "Count of out of memory events observed for the container", Counter, &[]),
    ("container_pressure_cpu_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to CPU congestion.", Counter, &[]),
    ("container_pressure_cpu_waiting_seconds_total", "Total time duration tasks in the container have waited due to CPU congestion.", Counter, &[]),
    ("container_pressure_io_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to IO congestion.", Counter, &[]),
    ("container_pressure_io_waiting_seconds_total", "Total time duration tasks in the container have waited due to IO congestion.", Counter, &[]),
    ("container_pressure_memory_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to memory congestion.", Counter, &[]),
    ("container_pressure_memory_waiting_seconds_total", "Total time duration tasks in the container have waited due to memory congestion.", Counter, &[]),
    ("container_processes", "Number of processes running inside the container.", Gauge, &[]),
    ("container_sockets", "Number of open sockets for the container.", Gauge, &[]),
    ("container_spec_cpu_period", "CPU period of the container.", Gauge, &[]),
    ("container_spec_cpu_quota", "CPU quota of the container.", Gauge, &[]),
    ("container_spec_cpu_shares", "CPU share of the container.", Gauge, &[]),
    ("container_spec_memory_limit_bytes", "Memory limit for the container.", Gauge, &[]),
    ("container_spec_memory_reservation_limit_bytes", "Memory reservation limit for the container.", Gauge, &[]),
    ("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.", Gauge, &[]),
    ("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", Gauge, &[]),
    ("container_threads", "Number of threads running inside the container", Gauge, &[]),
    ("container_threads_max", "Maximum number of threads allowed inside the container, infinity if value is zero", Gauge, &[]),
];

/// Label keys of a metric: (id, name, image) then its own.
fn label_keys(extra: &[&str]) -> Vec<String> {
    ["id", "name", "image"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

pub(super) async fn list_metric_descriptors(
    _d: &Arc<Daemon>,
    _req: Request<cri::ListMetricDescriptorsRequest>,
) -> Res<cri::ListMetricDescriptorsResponse> {
    let descriptors = METRICS
        .iter()
        .map(|(name, help, _, extra)| cri::MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: label_keys(extra),
        })
        .collect();
    Ok(Response::new(cri::ListMetricDescriptorsResponse {
        descriptors,
    }))
}

/// Collects one object's metrics with its common labels.
struct Out<'a> {
    ts: i64,
    labels: &'a [String],
    metrics: Vec<cri::Metric>,
}

impl Out<'_> {
    /// `name` with `value` and the extra label values `extra` (as many as the descriptor's);
    /// nothing when the value is unknown or the name is not described.
    fn push(&mut self, name: &str, extra: &[&str], value: Option<u64>) {
        let Some((_, _, kind, keys)) = METRICS.iter().find(|(n, ..)| *n == name) else {
            return;
        };
        let Some(value) = value else { return };
        debug_assert_eq!(keys.len(), extra.len(), "{name}");
        let mut label_values = self.labels.to_vec();
        label_values.extend(extra.iter().map(|s| s.to_string()));
        self.metrics.push(cri::Metric {
            name: name.to_string(),
            timestamp: self.ts,
            metric_type: match kind {
                Counter => cri::MetricType::Counter,
                Gauge => cri::MetricType::Gauge,
            } as i32,
            label_values,
            value: Some(cri::UInt64Value { value }),
        });
    }
}

const NS: u64 = 1_000_000_000;

/// The cgroup metrics of one object: usage, the cAdvisor detail, open files.
fn cgroup_metrics(o: &mut Out, u: &Usage, d: &CgroupDetail, files: (u64, u64)) {
    let c = &u.cgroup;
    let secs = |v: Option<u64>| v.map(|n| n / NS);
    o.push(
        "container_cpu_usage_seconds_total",
        &["total"],
        secs(c.cpu_usage_ns),
    );
    o.push("container_cpu_user_seconds_total", &[], secs(d.cpu_user_ns));
    o.push(
        "container_cpu_system_seconds_total",
        &[],
        secs(d.cpu_system_ns),
    );
    o.push("container_cpu_cfs_periods_total", &[], d.cfs_periods);
    o.push(
        "container_cpu_cfs_throttled_periods_total",
        &[],
        d.cfs_throttled_periods,
    );
    o.push(
        "container_cpu_cfs_throttled_seconds_total",
        &[],
        secs(d.cfs_throttled_ns),
    );
    o.push("container_memory_usage_bytes", &[], c.memory_usage);
    o.push(
        "container_memory_working_set_bytes",
        &[],
        c.memory_working_set,
    );
    o.push("container_memory_rss", &[], c.memory_rss);
    o.push("container_memory_cache", &[], d.memory_cache);
    o.push("container_memory_failcnt", &[], d.memory_failcnt);
    o.push("container_memory_kernel_usage", &[], d.memory_kernel);
    o.push("container_memory_mapped_file", &[], d.memory_mapped_file);
    o.push("container_memory_max_usage_bytes", &[], d.memory_max_usage);
    // Without swap accounting nothing can be swapped out on the cgroup's behalf: 0, as cAdvisor.
    let swap = d.memory_swap.or(c.memory_usage.map(|_| 0));
    o.push("container_memory_swap", &[], swap);
    for (scope, faults) in [
        ("container", d.faults_container),
        ("hierarchy", d.faults_hierarchy),
    ] {
        if let Some((all, major)) = faults {
            o.push(
                "container_memory_failures_total",
                &["pgfault", scope],
                Some(all.saturating_sub(major)),
            );
            o.push(
                "container_memory_failures_total",
                &["pgmajfault", scope],
                Some(major),
            );
        }
    }
    o.push("container_oom_events_total", &[], d.oom_kills);
    o.push("container_processes", &[], c.pids);
    o.push("container_threads", &[], d.threads);
    o.push("container_threads_max", &[], d.threads_max);
    o.push("container_file_descriptors", &[], Some(files.0));
    o.push("container_sockets", &[], Some(files.1));
    o.push("container_spec_cpu_period", &[], d.cpu_period);
    o.push("container_spec_cpu_quota", &[], d.cpu_quota);
    o.push("container_spec_cpu_shares", &[], d.cpu_shares);
    o.push("container_spec_memory_limit_bytes", &[], d.memory_limit);
    o.push(
        "container_spec_memory_reservation_limit_bytes",
        &[],
        d.memory_reservation,
    );
    o.push(
        "container_spec_memory_swap_limit_bytes",
        &[],
        d.memory_swap_limit,
    );
    for (i, res) in ["cpu", "io", "memory"].iter().enumerate() {
        if let Some((some, full)) = d.pressure[i] {
            let us = |v: u64| Some(v / 1_000_000);
            o.push(
                &format!("container_pressure_{res}_waiting_seconds_total"),
                &[],
                us(some),
            );
            o.push(
                &format!("container_pressure_{res}_stalled_seconds_total"),
                &[],
                us(full),
            );
        }
    }
    for (major, minor, op, bytes) in &d.device_io {
        let dev = block_device_name(*major, *minor);
        o.push(
            "container_blkio_device_usage_total",
            &[&dev, &major.to_string(), &minor.to_string(), op],
            Some(*bytes),
        );
    }
    o.push(
        "container_last_seen",
        &[],
        Some((u.timestamp / NS as i64).max(0) as u64),
    );
}

/// `/dev/<name>` of a block device from sysfs, else `major:minor`.
fn block_device_name(major: u64, minor: u64) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(|n| format!("/dev/{n}")))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

/// The writable layer's filesystem metrics of a container.
fn fs_metrics(o: &mut Out, d: &CgroupDetail, layer: Option<&DiskUsage>, fs: Option<&FsInfo>) {
    let Some(fs) = fs else { return };
    let dev: &[&str] = &[&fs.device];
    o.push("container_fs_limit_bytes", dev, Some(fs.limit_bytes));
    o.push("container_fs_inodes_total", dev, Some(fs.inodes_total));
    o.push("container_fs_inodes_free", dev, Some(fs.inodes_free));
    o.push("container_fs_usage_bytes", dev, layer.map(|l| l.used_bytes));
    o.push("container_fs_reads_total", dev, d.reads.map(|r| r.0));
    o.push("container_fs_reads_bytes_total", dev, d.reads.map(|r| r.1));
    o.push("container_fs_writes_total", dev, d.writes.map(|w| w.0));
    o.push(
        "container_fs_writes_bytes_total",
        dev,
        d.writes.map(|w| w.1),
    );
}

/// What the metrics need beyond [`PodUsage`], read on the blocking pool.
struct Detail {
    pod: CgroupDetail,
    pod_files: (u64, u64),
    containers: Vec<(CgroupDetail, (u64, u64))>,
    fs: Option<FsInfo>,
}

fn detail_of(p: &PodUsage, overlay_dir: &std::path::Path) -> Detail {
    let pod = stats::cgroup_detail(p.sandbox.meta.cgroup_fs_dir());
    let pod_files = stats::open_files(&pod.pids);
    let containers = p
        .containers
        .iter()
        .map(|c| {
            let d = stats::cgroup_detail(&c.container.cgroups_path());
            let f = stats::open_files(&d.pids);
            (d, f)
        })
        .collect();
    Detail {
        pod,
        pod_files,
        containers,
        fs: stats::fs_info(overlay_dir),
    }
}

fn pod_metrics(p: &PodUsage, d: &Detail) -> cri::PodSandboxMetrics {
    let pod_labels = vec![p.sandbox.id.clone(), "POD".to_string(), String::new()];
    let mut o = Out {
        ts: p.usage.timestamp,
        labels: &pod_labels,
        metrics: Vec::new(),
    };
    cgroup_metrics(&mut o, &p.usage, &d.pod, d.pod_files);
    o.push(
        "container_start_time_seconds",
        &[],
        Some((p.sandbox.meta.created_at / NS as i64).max(0) as u64),
    );
    for i in &p.interfaces {
        let n: &[&str] = &[&i.name];
        o.push("container_network_receive_bytes_total", n, Some(i.rx_bytes));
        o.push(
            "container_network_receive_packets_total",
            n,
            Some(i.rx_packets),
        );
        o.push(
            "container_network_receive_errors_total",
            n,
            Some(i.rx_errors),
        );
        o.push(
            "container_network_receive_packets_dropped_total",
            n,
            Some(i.rx_dropped),
        );
        o.push(
            "container_network_transmit_bytes_total",
            n,
            Some(i.tx_bytes),
        );
        o.push(
            "container_network_transmit_packets_total",
            n,
            Some(i.tx_packets),
        );
        o.push(
            "container_network_transmit_errors_total",
            n,
            Some(i.tx_errors),
        );
        o.push(
            "container_network_transmit_packets_dropped_total",
            n,
            Some(i.tx_dropped),
        );
    }
    let metrics = o.metrics;
    let container_metrics = p
        .containers
        .iter()
        .zip(&d.containers)
        .map(|(cu, (cd, files))| {
            let c = &cu.container;
            let labels = vec![c.id.clone(), c.meta.name.clone(), c.meta.image_ref.clone()];
            let mut o = Out {
                ts: cu.usage.timestamp,
                labels: &labels,
                metrics: Vec::new(),
            };
            cgroup_metrics(&mut o, &cu.usage, cd, *files);
            fs_metrics(&mut o, cd, cu.writable_layer.as_ref(), d.fs.as_ref());
            let started = c.status().started_at;
            let since = if started > 0 {
                started
            } else {
                c.meta.created_at
            };
            o.push(
                "container_start_time_seconds",
                &[],
                Some((since / NS as i64).max(0) as u64),
            );
            cri::ContainerMetrics {
                container_id: c.id.clone(),
                metrics: o.metrics,
            }
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: p.sandbox.id.clone(),
        metrics,
        container_metrics,
    }
}

pub(super) async fn list_pod_sandbox_metrics(
    d: &Arc<Daemon>,
    _req: Request<cri::ListPodSandboxMetricsRequest>,
) -> Res<cri::ListPodSandboxMetricsResponse> {
    let pods = ready_pods(d, "", &Default::default());
    let pod_metrics = pod_metrics_of(d, pods).await?;
    Ok(Response::new(cri::ListPodSandboxMetricsResponse {
        pod_metrics,
    }))
}

pub(super) async fn stream_pod_sandbox_metrics(
    d: &Arc<Daemon>,
    _req: Request<cri::StreamPodSandboxMetricsRequest>,
) -> Res<Batches<cri::StreamPodSandboxMetricsResponse>> {
    let selected = ready_pods(d, "", &Default::default());
    let d = d.clone();
    let read = move |batch| {
        let d = d.clone();
        async move { pod_metrics_of(&d, batch).await }
    };
    Ok(Response::new(in_batches(
        selected,
        read,
        |pod_sandbox_metrics| cri::StreamPodSandboxMetricsResponse {
            pod_sandbox_metrics,
        },
    )))
}

async fn pod_metrics_of(
    d: &Daemon,
    pods: Vec<Arc<Sandbox>>,
) -> Result<Vec<cri::PodSandboxMetrics>, tonic::Status> {
    let usage = d.containers.pod_usage(pods).await;
    let overlay_dir = d.config.load().root.join("overlay");
    tokio::task::spawn_blocking(move || {
        usage
            .iter()
            .map(|p| pod_metrics(p, &detail_of(p, &overlay_dir)))
            .collect()
    })
    .await
    .map_err(|e| tonic::Status::internal(format!("metrics task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_usage(v2: bool) -> Usage {
        let dir = if v2 { "cgroup-v2" } else { "cgroup-v1" };
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/oci/testdata")
            .join(dir);
        Usage {
            timestamp: 42,
            cgroup: crate::oci::cgroups::read_stats_under(&root, v2, "/pod/ctr"),
            cpu_nano_cores: None,
        }
    }

    /// cgroup v2: every pressure file becomes a PsiStats, both lines; the kernel's microsecond
    /// totals become CRI's nanoseconds.
    #[test]
    fn psi_and_io_from_cgroup_v2_files() {
        let u = fixture_usage(true);
        let cpu = cpu(&u).psi.unwrap();
        let some = cpu.some.unwrap();
        assert_eq!(some.total, 1_500_000_000);
        assert_eq!((some.avg10, some.avg60, some.avg300), (1.5, 0.75, 0.3));
        assert_eq!(cpu.full.unwrap().total, 500_000_000);
        let mem = memory(&u).psi.unwrap();
        assert_eq!(
            (mem.some.unwrap().total, mem.full.unwrap().total),
            (77_000, 33_000)
        );
        let io = io(&u).unwrap();
        assert_eq!(io.timestamp, 42);
        let psi = io.psi.unwrap();
        assert_eq!(
            (psi.some.unwrap().total, psi.full.unwrap().total),
            (4_000_000, 1_000_000)
        );
    }

    /// cgroup v1 has no pressure files: the fields are absent, not zero.
    #[test]
    fn no_psi_or_io_on_cgroup_v1() {
        let u = fixture_usage(false);
        assert_eq!(cpu(&u).psi, None);
        assert_eq!(memory(&u).psi, None);
        assert_eq!(io(&u), None);
    }

    /// The cAdvisor names critest (and kubelet's CRI metrics provider) expect, all described,
    /// each once, each with help and the common labels first.
    #[test]
    fn descriptors_cover_the_cadvisor_set() {
        let expected = [
            "container_blkio_device_usage_total",
            "container_cpu_cfs_periods_total",
            "container_cpu_cfs_throttled_periods_total",
            "container_cpu_cfs_throttled_seconds_total",
            "container_cpu_system_seconds_total",
            "container_cpu_usage_seconds_total",
            "container_cpu_user_seconds_total",
            "container_file_descriptors",
            "container_fs_inodes_free",
            "container_fs_inodes_total",
            "container_fs_limit_bytes",
            "container_fs_reads_bytes_total",
            "container_fs_reads_total",
            "container_fs_usage_bytes",
            "container_fs_writes_bytes_total",
            "container_fs_writes_total",
            "container_last_seen",
            "container_memory_cache",
            "container_memory_failcnt",
            "container_memory_failures_total",
            "container_memory_kernel_usage",
            "container_memory_mapped_file",
            "container_memory_max_usage_bytes",
            "container_memory_rss",
            "container_memory_swap",
            "container_memory_usage_bytes",
            "container_memory_working_set_bytes",
            "container_network_receive_bytes_total",
            "container_network_receive_errors_total",
            "container_network_receive_packets_dropped_total",
            "container_network_receive_packets_total",
            "container_network_transmit_bytes_total",
            "container_network_transmit_errors_total",
            "container_network_transmit_packets_dropped_total",
            "container_network_transmit_packets_total",
            "container_oom_events_total",
            "container_processes",
            "container_sockets",
            "container_spec_cpu_period",
            "container_spec_cpu_shares",
            "container_spec_memory_limit_bytes",
            "container_spec_memory_swap_limit_bytes",
            "container_start_time_seconds",
            "container_threads",
            "container_threads_max",
        ];
        let names: Vec<&str> = METRICS.iter().map(|m| m.0).collect();
        for e in expected {
            assert!(names.contains(&e), "{e} is not described");
        }
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "a name described twice");
        for (name, help, _, extra) in METRICS {
            assert!(!help.is_empty(), "{name}");
            assert_eq!(label_keys(extra)[..3], ["id", "name", "image"]);
        }
    }

    /// Every metric a reading produces has as many label values as its descriptor has keys.
    #[test]
    fn metrics_carry_their_descriptors_labels() {
        let labels = vec!["id".to_string(), "n".into(), "i".into()];
        let mut o = Out {
            ts: 1,
            labels: &labels,
            metrics: Vec::new(),
        };
        let u = Usage {
            timestamp: 5 * NS as i64,
            cgroup: crate::oci::cgroups::CgroupStats {
                cpu_usage_ns: Some(3 * NS),
                memory_usage: Some(10),
                pids: Some(2),
                ..Default::default()
            },
            cpu_nano_cores: None,
        };
        let d = CgroupDetail {
            faults_container: Some((7, 2)),
            device_io: vec![(8, 0, "Read".into(), 4096)],
            reads: Some((1, 4096)),
            pressure: [Some((3_000_000, 1_000_000)), None, None],
            ..Default::default()
        };
        cgroup_metrics(&mut o, &u, &d, (4, 1));
        let fs = FsInfo {
            device: "/dev/sda1".into(),
            limit_bytes: 9,
            inodes_total: 8,
            inodes_free: 7,
        };
        fs_metrics(&mut o, &d, None, Some(&fs));
        for m in &o.metrics {
            let (_, _, _, extra) = METRICS.iter().find(|x| x.0 == m.name).unwrap();
            assert_eq!(m.label_values.len(), 3 + extra.len(), "{m:?}");
        }
        let value = |name: &str| {
            o.metrics
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.value)
                .map(|v| v.value)
        };
        assert_eq!(value("container_cpu_usage_seconds_total"), Some(3));
        assert_eq!(value("container_memory_swap"), Some(0));
        assert_eq!(value("container_file_descriptors"), Some(4));
        assert_eq!(
            value("container_pressure_cpu_waiting_seconds_total"),
            Some(3)
        );
        assert_eq!(value("container_last_seen"), Some(5));
        assert_eq!(value("container_fs_reads_bytes_total"), Some(4096));
        assert_eq!(
            value("container_fs_usage_bytes"),
            None,
            "no layer, no usage"
        );
        let pgfault = o
            .metrics
            .iter()
            .find(|m| m.name == "container_memory_failures_total")
            .unwrap();
        assert_eq!(pgfault.label_values[3..], ["pgfault", "container"]);
        assert_eq!(pgfault.value.unwrap().value, 5);
    }
}
