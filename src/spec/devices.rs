//! Devices: the request's device nodes and their cgroup rules behind a deny-all rule, or every
//! host device for a privileged container.

use std::path::Path;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, Spec};

use super::security::linux_of;
use super::{Input, SpecError};

/// One device of the request.
#[derive(Debug, Clone, Default)]
pub struct DeviceRequest {
    pub container_path: String,
    pub host_path: String,
    /// `r`, `w`, `m`; empty = all three.
    pub permissions: String,
}

/// The devices a spec gets.
#[derive(Debug, Clone, Default)]
pub struct DevicesInput {
    /// Every host device, every access (a privileged container).
    pub all_host: bool,
    pub devices: Vec<DeviceRequest>,
}

/// Step: device nodes and the device cgroup rules.
pub fn devices(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    let req = &input.devices;
    let (mut nodes, mut rules) = requested_devices(input)?;
    if req.all_host {
        nodes = input.host.files.host_devices();
        rules = vec![LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwm")
            .build()?];
    } else {
        rules.insert(
            0,
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()?,
        );
    }
    let linux = linux_of(spec);
    if !nodes.is_empty() {
        linux.set_devices(Some(nodes));
    }
    linux
        .resources_mut()
        .get_or_insert_with(Default::default)
        .set_devices(Some(rules));
    Ok(())
}

fn device_rule(d: &LinuxDevice, access: &str) -> Result<LinuxDeviceCgroup, SpecError> {
    Ok(LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(d.typ())
        .major(d.major())
        .minor(d.minor())
        .access(access)
        .build()?)
}

/// The request's devices (a directory stands for every device below it) and their rules.
fn requested_devices(
    input: &Input,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut devs = Vec::new();
    let mut rules = Vec::new();
    for (i, d) in input.devices.devices.iter().enumerate() {
        let field = format!("devices[{i}]");
        let access = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(SpecError::invalid(
                field,
                format!("bad permissions {access:?}"),
            ));
        }
        if !d.container_path.starts_with('/') {
            return Err(SpecError::invalid(
                field,
                format!("container path {:?} is not absolute", d.container_path),
            ));
        }
        let found = input
            .host
            .files
            .devices_at(Path::new(&d.host_path), Path::new(&d.container_path))
            .map_err(|reason| SpecError::invalid(field.clone(), reason))?;
        for dev in found {
            rules.push(device_rule(&dev, access)?);
            devs.push(dev);
        }
    }
    Ok((devs, rules))
}
