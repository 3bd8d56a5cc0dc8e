//! Stats and metrics RPCs: ferrio's usage readings (see [`crate::container::stats`]) as CRI
//! messages, and the same numbers as Prometheus-style metrics for ListPodSandboxMetrics.

use super::convert;
use super::{Daemon, Res};
use crate::container::stats::{ContainerUsage, DiskUsage, InterfaceUsage, PodUsage, Usage};
use crate::error::Error;
use crate::sandbox::lifecycle::SandboxState;
use k8s_cri::v1 as cri;
use std::sync::Arc;
use tonic::{Request, Response};

fn u64v(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

fn cpu(u: &Usage) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: u.timestamp,
        usage_core_nano_seconds: u64v(u.cgroup.cpu_usage_ns),
        usage_nano_cores: u64v(u.cpu_nano_cores),
    }
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
    // Only containers that have (or had) a cgroup: created or running, as cAdvisor sees them.
    let cs = d
        .containers
        .table
        .list()
        .into_iter()
        .filter(|c| {
            use crate::container::lifecycle::ContainerState as S;
            matches!(c.status().state(), S::Created | S::Running)
        })
        .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
        .filter(|c| f.pod_sandbox_id.is_empty() || c.meta.sandbox_id.starts_with(&f.pod_sandbox_id))
        .filter(|c| convert::matches(&c.meta.labels, &f.label_selector))
        .collect();
    let stats = d
        .containers
        .usage(cs)
        .await
        .iter()
        .map(to_container_stats)
        .collect();
    Ok(Response::new(cri::ListContainerStatsResponse { stats }))
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
    let stats = d
        .containers
        .pod_usage(pods)
        .await
        .iter()
        .map(pod_stats)
        .collect();
    Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
}

fn ready_pods(
    d: &Arc<Daemon>,
    id_prefix: &str,
    labels: &std::collections::HashMap<String, String>,
) -> Vec<Arc<crate::sandbox::lifecycle::Sandbox>> {
    d.pods
        .table
        .list()
        .into_iter()
        .filter(|s| s.status().state == SandboxState::Ready)
        .filter(|s| id_prefix.is_empty() || s.id.starts_with(id_prefix))
        .filter(|s| convert::matches(&s.meta.labels, labels))
        .collect()
}

/// The metrics ListPodSandboxMetrics reports, with cAdvisor's names: (name, help, counter?).
const METRICS: [(&str, &str, bool); 8] = [
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        true,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        false,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        false,
    ),
    ("container_memory_rss", "Size of RSS in bytes.", false),
    (
        "container_processes",
        "Number of processes running inside the container.",
        false,
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        false,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        true,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        true,
    ),
];

/// Label keys of a metric: network metrics name the interface too.
fn label_keys(name: &str) -> Vec<String> {
    let mut v = vec!["id".to_string(), "name".into(), "image".into()];
    if name.starts_with("container_network_") {
        v.push("interface".into());
    }
    v
}

pub(super) async fn list_metric_descriptors(
    _d: &Arc<Daemon>,
    _req: Request<cri::ListMetricDescriptorsRequest>,
) -> Res<cri::ListMetricDescriptorsResponse> {
    let descriptors = METRICS
        .iter()
        .map(|(name, help, _)| cri::MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: label_keys(name),
        })
        .collect();
    Ok(Response::new(cri::ListMetricDescriptorsResponse {
        descriptors,
    }))
}

fn metric(name: &str, ts: i64, labels: Vec<String>, value: Option<u64>) -> Option<cri::Metric> {
    let (_, _, counter) = METRICS.iter().find(|(n, _, _)| *n == name)?;
    Some(cri::Metric {
        name: name.to_string(),
        timestamp: ts,
        metric_type: if *counter {
            cri::MetricType::Counter
        } else {
            cri::MetricType::Gauge
        } as i32,
        label_values: labels,
        value: Some(cri::UInt64Value { value: value? }),
    })
}

/// The cgroup metrics of one usage reading, labelled (id, name, image).
fn usage_metrics(u: &Usage, labels: &[String]) -> Vec<cri::Metric> {
    let c = &u.cgroup;
    let ts = u.timestamp;
    [
        (
            "container_cpu_usage_seconds_total",
            c.cpu_usage_ns.map(|n| n / 1_000_000_000),
        ),
        ("container_memory_usage_bytes", c.memory_usage),
        ("container_memory_working_set_bytes", c.memory_working_set),
        ("container_memory_rss", c.memory_rss),
        ("container_processes", c.pids),
    ]
    .into_iter()
    .filter_map(|(n, v)| metric(n, ts, labels.to_vec(), v))
    .collect()
}

fn pod_metrics(p: &PodUsage) -> cri::PodSandboxMetrics {
    let pod_labels = vec![p.sandbox.id.clone(), "POD".to_string(), String::new()];
    let mut metrics = usage_metrics(&p.usage, &pod_labels);
    for i in &p.interfaces {
        let mut l = pod_labels.clone();
        l.push(i.name.clone());
        metrics.extend(metric(
            "container_network_receive_bytes_total",
            p.usage.timestamp,
            l.clone(),
            Some(i.rx_bytes),
        ));
        metrics.extend(metric(
            "container_network_transmit_bytes_total",
            p.usage.timestamp,
            l,
            Some(i.tx_bytes),
        ));
    }
    let container_metrics = p
        .containers
        .iter()
        .map(|cu| {
            let c = &cu.container;
            let labels = vec![c.id.clone(), c.meta.name.clone(), c.meta.image_ref.clone()];
            let mut m = usage_metrics(&cu.usage, &labels);
            if let Some(d) = &cu.writable_layer {
                m.extend(metric(
                    "container_fs_usage_bytes",
                    cu.usage.timestamp,
                    labels,
                    Some(d.used_bytes),
                ));
            }
            cri::ContainerMetrics {
                container_id: c.id.clone(),
                metrics: m,
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
    let pod_metrics = d
        .containers
        .pod_usage(pods)
        .await
        .iter()
        .map(pod_metrics)
        .collect();
    Ok(Response::new(cri::ListPodSandboxMetricsResponse {
        pod_metrics,
    }))
}
