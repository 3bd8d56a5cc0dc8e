//! Resources: cpu, memory, hugepages and `unified` for a container's cgroup, with the host's
//! quirks (hugepages dropped without hugetlb, swap only where it can be limited, `unified` only
//! on cgroup v2); the same rules for `runc update`; the pod cgroup's limits.

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxResources,
    LinuxResourcesBuilder, Spec,
};

use super::security::linux_of;
use super::{Input, SpecError};
use crate::oci::cgroups::CgroupLimits;
use crate::oci::host::HostFeatures;

/// A container's resources (CRI's `LinuxContainerResources`, converted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub memory_swap_limit_in_bytes: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    /// (page size, limit in bytes)
    pub hugepage_limits: Vec<(String, u64)>,
    pub unified: std::collections::HashMap<String, String>,
}

/// Step: the container's cgroup limits (device rules are the devices step's).
pub fn resources(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    let Some(r) = &input.resources else {
        return Ok(());
    };
    let out = linux_of(spec)
        .resources_mut()
        .get_or_insert_with(Default::default);
    apply(out, r, input.host.features)
}

/// The OCI resources for `runc update`: the same rules and host quirks as at create, without
/// device rules, which update ignores.
pub fn update_resources(r: &Resources, host: &HostFeatures) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResourcesBuilder::default().build()?;
    apply(&mut out, r, host)?;
    out.set_devices(None);
    Ok(out)
}

fn apply(out: &mut LinuxResources, r: &Resources, host: &HostFeatures) -> Result<(), SpecError> {
    let mut cpu = LinuxCpuBuilder::default();
    let mut any_cpu = false;
    if r.cpu_shares > 0 {
        cpu = cpu.shares(r.cpu_shares as u64);
        any_cpu = true;
    }
    if r.cpu_quota != 0 {
        cpu = cpu.quota(r.cpu_quota);
        any_cpu = true;
    }
    if r.cpu_period > 0 {
        cpu = cpu.period(r.cpu_period as u64);
        any_cpu = true;
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
        any_cpu = true;
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
        any_cpu = true;
    }
    if any_cpu {
        out.set_cpu(Some(cpu.build()?));
    }
    let mut mem = LinuxMemoryBuilder::default();
    let mut any_mem = false;
    if r.memory_limit_in_bytes > 0 {
        mem = mem.limit(r.memory_limit_in_bytes);
        any_mem = true;
    }
    if r.memory_swap_limit_in_bytes > 0 && host.memory_swap {
        mem = mem.swap(r.memory_swap_limit_in_bytes);
        any_mem = true;
    }
    if any_mem {
        out.set_memory(Some(mem.build()?));
    }
    if host.hugetlb && !r.hugepage_limits.is_empty() {
        let limits = r
            .hugepage_limits
            .iter()
            .map(|(page_size, limit)| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(page_size.clone())
                    .limit(i64::try_from(*limit).unwrap_or(i64::MAX))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.set_hugepage_limits(Some(limits));
    }
    if host.cgroup_v2 && !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone()));
    }
    Ok(())
}

/// The pod cgroup's limits: the containers' sum (`resources`) plus the pod's `overhead`, as
/// kubelet sizes a pod cgroup. Quota and memory are limited only when `resources` limits them
/// (an overhead alone is no reason to throttle a pod whose containers are unlimited); shares
/// add up. `None` when the config asks for nothing.
pub fn pod_limits(
    resources: Option<&Resources>,
    overhead: Option<&Resources>,
) -> Option<CgroupLimits> {
    let none = Resources::default();
    let (r, o) = (resources, overhead.unwrap_or(&none));
    let r_or = r.unwrap_or(&none);
    let period = [r_or.cpu_period, o.cpu_period]
        .into_iter()
        .find(|p| *p > 0)
        .map(|p| p as u64);
    let shares = r_or.cpu_shares.max(0) + o.cpu_shares.max(0);
    let quota = (r_or.cpu_quota > 0).then(|| {
        // The overhead's quota is rescaled when it came with a period of its own.
        let extra = match (o.cpu_quota > 0, o.cpu_period > 0, period) {
            (false, _, _) => 0,
            (true, true, Some(p)) => o.cpu_quota * p as i64 / o.cpu_period,
            (true, _, _) => o.cpu_quota,
        };
        r_or.cpu_quota + extra
    });
    let memory = (r_or.memory_limit_in_bytes > 0)
        .then(|| r_or.memory_limit_in_bytes + o.memory_limit_in_bytes.max(0));
    let limits = CgroupLimits {
        cpu_shares: (shares > 0).then_some(shares as u64),
        cpu_quota: quota,
        cpu_period: quota.and(period.or(Some(100_000))),
        memory_limit: memory,
    };
    (!limits.is_empty()).then_some(limits)
}
