//! Folding the answers of several plugins to one CreateContainer into one adjustment, with NRI's ownership
//! rules: the first plugin (in call order) that sets a field owns it, and a later plugin that sets the same
//! field is a conflict that fails the create, unless it first removed the field itself (a key or destination
//! prefixed with `-`). Hooks accumulate instead of conflicting. Each plugin also sees the container as the
//! plugins before it left it, so the [`Collected::container`] view is updated as answers are folded in.

use super::api::{self, Field};
use std::collections::HashMap;

/// The prefix that marks a key, destination or owner as removed.
const REMOVAL: char = '-';

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugins {plugin:?} and {other:?} both tried to set {what}")]
pub struct Conflict {
    pub plugin: String,
    pub other: String,
    pub what: String,
}

fn removed(key: &str) -> Option<&str> {
    key.strip_prefix(REMOVAL)
}

/// Who set which field of one container.
#[derive(Debug, Default)]
pub struct Owners {
    simple: HashMap<i32, String>,
    compound: HashMap<(i32, String), String>,
}

impl Owners {
    fn check(
        field: Field,
        owner: Option<&String>,
        plugin: &str,
        key: Option<&str>,
    ) -> Result<(), Conflict> {
        let Some(other) = owner else { return Ok(()) };
        let other = match removed(other) {
            Some(clearer) if clearer == plugin => return Ok(()),
            Some(clearer) => clearer,
            None => other.as_str(),
        };
        let what = match key {
            Some(k) => format!("{} {k}", field.as_str_name()),
            None => format!("{} ", field.as_str_name()),
        };
        Err(Conflict {
            plugin: plugin.to_string(),
            other: other.to_string(),
            what,
        })
    }

    pub fn claim(&mut self, field: Field, plugin: &str) -> Result<(), Conflict> {
        Self::check(field, self.simple.get(&(field as i32)), plugin, None)?;
        self.simple.insert(field as i32, plugin.to_string());
        Ok(())
    }

    pub fn claim_key(&mut self, field: Field, key: &str, plugin: &str) -> Result<(), Conflict> {
        let k = (field as i32, key.to_string());
        Self::check(field, self.compound.get(&k), plugin, Some(key))?;
        self.compound.insert(k, plugin.to_string());
        Ok(())
    }

    pub fn clear(&mut self, field: Field, plugin: &str) {
        self.simple
            .insert(field as i32, format!("{REMOVAL}{plugin}"));
    }

    pub fn clear_key(&mut self, field: Field, key: &str, plugin: &str) {
        self.compound.insert(
            (field as i32, key.to_string()),
            format!("{REMOVAL}{plugin}"),
        );
    }

    /// Hooks from several plugins add up; the owner records all of them.
    pub fn accumulate(&mut self, field: Field, plugin: &str) {
        let entry = self.simple.entry(field as i32).or_default();
        if entry.is_empty() {
            *entry = plugin.to_string();
        } else {
            entry.push(',');
            entry.push_str(plugin);
        }
    }

    /// The plugin that set `field`, if one did.
    pub fn owner(&self, field: Field) -> Option<&str> {
        self.simple.get(&(field as i32)).map(String::as_str)
    }

    pub fn key_owner(&self, field: Field, key: &str) -> Option<&str> {
        self.compound
            .get(&(field as i32, key.to_string()))
            .map(String::as_str)
    }
}

/// The adjustment being built for one CreateContainer, and the container as the plugins so far left it.
#[derive(Debug)]
pub struct Collected {
    pub container: api::Container,
    pub adjust: api::ContainerAdjustment,
    pub owners: Owners,
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map(|(k, _)| k).unwrap_or(entry)
}

impl Collected {
    pub fn new(container: api::Container) -> Collected {
        Collected {
            container,
            adjust: api::ContainerAdjustment::default(),
            owners: Owners::default(),
        }
    }

    fn linux(&mut self) -> &mut api::LinuxContainerAdjustment {
        self.adjust.linux.get_or_insert_with(Default::default)
    }

    fn container_linux(&mut self) -> &mut api::LinuxContainer {
        self.container.linux.get_or_insert_with(Default::default)
    }

    /// Fold in `plugin`'s adjustment, in call order.
    pub fn apply(
        &mut self,
        adjust: api::ContainerAdjustment,
        plugin: &str,
    ) -> Result<(), Conflict> {
        self.annotations(adjust.annotations, plugin)?;
        self.mounts(adjust.mounts, plugin)?;
        self.env(adjust.env, plugin)?;
        self.args(adjust.args, plugin)?;
        if let Some(hooks) = adjust.hooks {
            self.hooks(hooks, plugin);
        }
        if let Some(linux) = adjust.linux {
            self.devices(linux.devices, plugin)?;
            if let Some(r) = linux.resources {
                self.resources(r, plugin)?;
            }
            if !linux.cgroups_path.is_empty() {
                self.owners.claim(Field::CgroupsPath, plugin)?;
                self.container_linux().cgroups_path = linux.cgroups_path.clone();
                self.linux().cgroups_path = linux.cgroups_path;
            }
            if let Some(oom) = linux.oom_score_adj {
                self.owners.claim(Field::OomScoreAdj, plugin)?;
                self.container_linux().oom_score_adj = Some(oom);
                self.linux().oom_score_adj = Some(oom);
            }
            if let Some(policy) = linux.seccomp_policy {
                self.owners.claim(Field::SeccompPolicy, plugin)?;
                self.container_linux().seccomp_policy = Some(policy.clone());
                self.linux().seccomp_policy = Some(policy);
            }
            for (k, v) in linux.sysctl {
                if let Some(key) = removed(&k) {
                    self.owners.clear_key(Field::Sysctl, key, plugin);
                    self.container_linux().sysctl.remove(key);
                    self.linux().sysctl.remove(key);
                    self.linux().sysctl.insert(k.clone(), String::new());
                    continue;
                }
                self.owners.claim_key(Field::Sysctl, &k, plugin)?;
                self.container_linux().sysctl.insert(k.clone(), v.clone());
                self.linux().sysctl.insert(k, v);
            }
        }
        for l in adjust.rlimits {
            self.owners.claim_key(Field::Rlimits, &l.r#type, plugin)?;
            self.container.rlimits.push(l.clone());
            self.adjust.rlimits.push(l);
        }
        for d in adjust.cdi_devices {
            self.owners.claim_key(Field::CdiDevices, &d.name, plugin)?;
            self.adjust.cdi_devices.push(d);
        }
        Ok(())
    }

    fn annotations(
        &mut self,
        annotations: HashMap<String, String>,
        plugin: &str,
    ) -> Result<(), Conflict> {
        let mut del: Vec<String> = annotations
            .keys()
            .filter_map(|k| removed(k).map(str::to_string))
            .collect();
        let mut set: Vec<(String, String)> = annotations
            .into_iter()
            .filter(|(k, _)| removed(k).is_none())
            .collect();
        set.sort();
        for (k, v) in set {
            if let Some(i) = del.iter().position(|d| *d == k) {
                del.remove(i);
                self.owners.clear_key(Field::Annotations, &k, plugin);
                self.container.annotations.remove(&k);
            }
            self.owners.claim_key(Field::Annotations, &k, plugin)?;
            self.container.annotations.insert(k.clone(), v.clone());
            self.adjust.annotations.insert(k, v);
        }
        for k in del {
            self.owners.clear_key(Field::Annotations, &k, plugin);
            self.container.annotations.remove(&k);
            self.adjust.annotations.remove(&k);
            self.adjust
                .annotations
                .insert(format!("{REMOVAL}{k}"), String::new());
        }
        Ok(())
    }

    fn mounts(&mut self, mounts: Vec<api::Mount>, plugin: &str) -> Result<(), Conflict> {
        if mounts.is_empty() {
            return Ok(());
        }
        let (del, add): (Vec<api::Mount>, Vec<api::Mount>) = mounts
            .into_iter()
            .partition(|m| removed(&m.destination).is_some());
        let del_keys: Vec<String> = del
            .iter()
            .filter_map(|m| removed(&m.destination).map(str::to_string))
            .collect();
        let mod_keys: Vec<&str> = add.iter().map(|m| m.destination.as_str()).collect();
        let owners = &mut self.owners;
        self.adjust.mounts.retain(|m| {
            if del_keys.contains(&m.destination) {
                owners.clear_key(Field::Mounts, &m.destination, plugin);
                false
            } else {
                true
            }
        });
        self.container.mounts.retain(|m| {
            !del_keys.contains(&m.destination) && !mod_keys.contains(&m.destination.as_str())
        });
        for m in &add {
            self.owners
                .claim_key(Field::Mounts, &m.destination, plugin)?;
            self.adjust.mounts.push(m.clone());
        }
        for m in del {
            let key = removed(&m.destination).unwrap_or_default();
            if !mod_keys.contains(&key) {
                self.adjust.mounts.push(m);
            }
        }
        self.container.mounts.extend(add);
        Ok(())
    }

    fn env(&mut self, env: Vec<api::KeyValue>, plugin: &str) -> Result<(), Conflict> {
        if env.is_empty() {
            return Ok(());
        }
        let del: Vec<String> = env
            .iter()
            .filter_map(|e| removed(&e.key).map(str::to_string))
            .collect();
        let add: Vec<api::KeyValue> = env
            .into_iter()
            .filter(|e| removed(&e.key).is_none())
            .collect();
        let owners = &mut self.owners;
        self.adjust.env.retain(|e| {
            if del.contains(&e.key) {
                owners.clear_key(Field::Env, &e.key, plugin);
                false
            } else {
                true
            }
        });
        self.container.env.retain(|e| {
            let k = env_key(e);
            !del.iter().any(|d| d == k) && !add.iter().any(|a| a.key == k)
        });
        for e in &add {
            self.owners.claim_key(Field::Env, &e.key, plugin)?;
            self.adjust.env.push(e.clone());
        }
        for d in del {
            if !add.iter().any(|a| a.key == d) {
                self.adjust.env.push(api::KeyValue {
                    key: format!("{REMOVAL}{d}"),
                    value: String::new(),
                });
            }
        }
        self.container
            .env
            .extend(add.into_iter().map(|e| format!("{}={}", e.key, e.value)));
        Ok(())
    }

    fn args(&mut self, mut args: Vec<String>, plugin: &str) -> Result<(), Conflict> {
        if args.is_empty() {
            return Ok(());
        }
        // An empty first element clears what earlier plugins set before setting anew.
        if args[0].is_empty() {
            self.owners.clear(Field::Args, plugin);
            args.remove(0);
        }
        self.owners.claim(Field::Args, plugin)?;
        self.container.args = args.clone();
        self.adjust.args = args;
        Ok(())
    }

    fn hooks(&mut self, hooks: api::Hooks, plugin: &str) {
        let reply = self.adjust.hooks.get_or_insert_with(Default::default);
        let container = self.container.hooks.get_or_insert_with(Default::default);
        let mut any = false;
        for (from, reply, container) in [
            (hooks.prestart, &mut reply.prestart, &mut container.prestart),
            (
                hooks.create_runtime,
                &mut reply.create_runtime,
                &mut container.create_runtime,
            ),
            (
                hooks.create_container,
                &mut reply.create_container,
                &mut container.create_container,
            ),
            (
                hooks.start_container,
                &mut reply.start_container,
                &mut container.start_container,
            ),
            (
                hooks.poststart,
                &mut reply.poststart,
                &mut container.poststart,
            ),
            (hooks.poststop, &mut reply.poststop, &mut container.poststop),
        ] {
            if !from.is_empty() {
                any = true;
                reply.extend(from.iter().cloned());
                container.extend(from);
            }
        }
        if any {
            self.owners.accumulate(Field::OciHooks, plugin);
        }
    }

    fn devices(&mut self, devices: Vec<api::LinuxDevice>, plugin: &str) -> Result<(), Conflict> {
        if devices.is_empty() {
            return Ok(());
        }
        let del: Vec<String> = devices
            .iter()
            .filter_map(|d| removed(&d.path).map(str::to_string))
            .collect();
        let add: Vec<api::LinuxDevice> = devices
            .into_iter()
            .filter(|d| removed(&d.path).is_none())
            .collect();
        let owners = &mut self.owners;
        let linux = self.adjust.linux.get_or_insert_with(Default::default);
        linux.devices.retain(|d| {
            if del.contains(&d.path) {
                owners.clear_key(Field::Devices, &d.path, plugin);
                false
            } else {
                true
            }
        });
        let container = self.container.linux.get_or_insert_with(Default::default);
        container
            .devices
            .retain(|d| !del.contains(&d.path) && !add.iter().any(|a| a.path == d.path));
        for d in &add {
            self.owners.claim_key(Field::Devices, &d.path, plugin)?;
            linux.devices.push(d.clone());
        }
        for d in del {
            if !add.iter().any(|a| a.path == d) {
                linux.devices.push(api::LinuxDevice {
                    path: format!("{REMOVAL}{d}"),
                    ..Default::default()
                });
            }
        }
        container.devices.extend(add);
        Ok(())
    }

    fn resources(&mut self, r: api::LinuxResources, plugin: &str) -> Result<(), Conflict> {
        let owners = &mut self.owners;
        let reply = self
            .adjust
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default);
        let container = self
            .container
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default);
        macro_rules! set {
            ($field:expr, $group:ident . $name:ident) => {
                if let Some(v) = r.$group.as_ref().and_then(|g| g.$name.clone()) {
                    owners.claim($field, plugin)?;
                    container.$group.get_or_insert_with(Default::default).$name = Some(v.clone());
                    reply.$group.get_or_insert_with(Default::default).$name = Some(v);
                }
            };
        }
        set!(Field::MemLimit, memory.limit);
        set!(Field::MemReservation, memory.reservation);
        set!(Field::MemSwapLimit, memory.swap);
        set!(Field::MemKernelLimit, memory.kernel);
        set!(Field::MemTcpLimit, memory.kernel_tcp);
        set!(Field::MemSwappiness, memory.swappiness);
        set!(Field::MemDisableOomKiller, memory.disable_oom_killer);
        set!(Field::MemUseHierarchy, memory.use_hierarchy);
        set!(Field::CpuShares, cpu.shares);
        set!(Field::CpuQuota, cpu.quota);
        set!(Field::CpuPeriod, cpu.period);
        set!(Field::CpuRealtimeRuntime, cpu.realtime_runtime);
        set!(Field::CpuRealtimePeriod, cpu.realtime_period);
        if let Some(cpu) = &r.cpu {
            for (field, value, pick) in [
                (Field::CpuSetCpUs, &cpu.cpus, 0),
                (Field::CpuSetMems, &cpu.mems, 1),
            ] {
                if value.is_empty() {
                    continue;
                }
                owners.claim(field, plugin)?;
                for target in [
                    container.cpu.get_or_insert_with(Default::default),
                    reply.cpu.get_or_insert_with(Default::default),
                ] {
                    if pick == 0 {
                        target.cpus = value.clone();
                    } else {
                        target.mems = value.clone();
                    }
                }
            }
        }
        for l in r.hugepage_limits {
            owners.claim_key(Field::HugepageLimits, &l.page_size, plugin)?;
            container.hugepage_limits.push(l.clone());
            reply.hugepage_limits.push(l);
        }
        for d in r.devices {
            container.devices.push(d.clone());
            reply.devices.push(d);
        }
        let mut unified: Vec<_> = r.unified.into_iter().collect();
        unified.sort();
        for (k, v) in unified {
            owners.claim_key(Field::CgroupsUnified, &k, plugin)?;
            container.unified.insert(k.clone(), v.clone());
            reply.unified.insert(k, v);
        }
        if let Some(v) = r.blockio_class {
            owners.claim(Field::BlockioClass, plugin)?;
            container.blockio_class = Some(v.clone());
            reply.blockio_class = Some(v);
        }
        if let Some(v) = r.rdt_class {
            owners.claim(Field::RdtClass, plugin)?;
            container.rdt_class = Some(v.clone());
            reply.rdt_class = Some(v);
        }
        if let Some(v) = r.pids {
            owners.claim(Field::PidsLimit, plugin)?;
            container.pids = Some(v);
            reply.pids = Some(v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kvs: &[(&str, &str)]) -> api::ContainerAdjustment {
        api::ContainerAdjustment {
            env: kvs
                .iter()
                .map(|(k, v)| api::KeyValue {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn container() -> api::Container {
        api::Container {
            id: "c1".into(),
            env: vec!["PATH=/bin".into(), "A=0".into()],
            ..Default::default()
        }
    }

    #[test]
    fn two_plugins_setting_one_env_var_conflict_naming_both() {
        let mut c = Collected::new(container());
        c.apply(env(&[("A", "1")]), "10-first").unwrap();
        let err = c.apply(env(&[("A", "2")]), "20-second").unwrap_err();
        assert_eq!(err.plugin, "20-second");
        assert_eq!(err.other, "10-first");
        assert_eq!(
            err.to_string(),
            "plugins \"20-second\" and \"10-first\" both tried to set Env A"
        );
    }

    #[test]
    fn different_keys_from_two_plugins_add_up_and_replace_the_runtime_value() {
        let mut c = Collected::new(container());
        c.apply(env(&[("A", "1")]), "10-first").unwrap();
        c.apply(env(&[("B", "2")]), "20-second").unwrap();
        assert_eq!(c.container.env, vec!["PATH=/bin", "A=1", "B=2"]);
        let keys: Vec<_> = c.adjust.env.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["A", "B"]);
    }

    #[test]
    fn a_plugin_that_removes_first_may_set_what_another_set() {
        let mut c = Collected::new(container());
        c.apply(env(&[("A", "1")]), "10-first").unwrap();
        c.apply(env(&[("-A", ""), ("A", "2")]), "20-second")
            .unwrap();
        assert_eq!(c.container.env, vec!["PATH=/bin", "A=2"]);
        assert_eq!(c.adjust.env.len(), 1);
        assert_eq!(c.adjust.env[0].value, "2");
        // A third plugin now conflicts with the one that removed.
        let err = c.apply(env(&[("A", "3")]), "30-third").unwrap_err();
        assert_eq!(err.other, "20-second");
    }

    #[test]
    fn removal_alone_is_passed_on_as_a_marker() {
        let mut c = Collected::new(container());
        c.apply(env(&[("-A", "")]), "10-first").unwrap();
        assert_eq!(c.container.env, vec!["PATH=/bin"]);
        assert_eq!(c.adjust.env[0].key, "-A");
    }

    #[test]
    fn simple_fields_conflict_and_hooks_accumulate() {
        let mut c = Collected::new(container());
        let mem = |limit| api::ContainerAdjustment {
            linux: Some(api::LinuxContainerAdjustment {
                resources: Some(api::LinuxResources {
                    memory: Some(api::LinuxMemory {
                        limit: Some(api::OptionalInt64 { value: limit }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        c.apply(mem(100), "10-a").unwrap();
        let err = c.apply(mem(200), "20-b").unwrap_err();
        assert_eq!(err.what, "MemLimit ");
        let hook = |p: &str| api::ContainerAdjustment {
            hooks: Some(api::Hooks {
                prestart: vec![api::Hook {
                    path: p.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        c.apply(hook("/h1"), "10-a").unwrap();
        c.apply(hook("/h2"), "20-b").unwrap();
        assert_eq!(c.adjust.hooks.as_ref().unwrap().prestart.len(), 2);
        assert_eq!(c.owners.owner(Field::OciHooks), Some("10-a,20-b"));
    }

    #[test]
    fn mounts_by_destination_and_annotations_by_key() {
        let mut c = Collected::new(api::Container {
            mounts: vec![api::Mount {
                destination: "/data".into(),
                source: "/old".into(),
                ..Default::default()
            }],
            ..container()
        });
        let mount = |src: &str| api::ContainerAdjustment {
            mounts: vec![api::Mount {
                destination: "/data".into(),
                source: src.into(),
                r#type: "bind".into(),
                options: vec!["bind".into()],
            }],
            annotations: [("k".to_string(), src.to_string())].into(),
            ..Default::default()
        };
        c.apply(mount("/new"), "10-a").unwrap();
        assert_eq!(c.container.mounts.len(), 1);
        assert_eq!(c.container.mounts[0].source, "/new");
        let err = c.apply(mount("/other"), "20-b").unwrap_err();
        assert!(
            err.what.starts_with("Annotations k") || err.what.starts_with("Mounts /data"),
            "{err}"
        );
        assert_eq!(c.owners.key_owner(Field::Mounts, "/data"), Some("10-a"));
    }

    #[test]
    fn same_plugin_may_set_a_key_it_owns_only_once_per_call_order() {
        let mut c = Collected::new(container());
        let rlimit = |t: &str| api::ContainerAdjustment {
            rlimits: vec![api::PosixRlimit {
                r#type: t.into(),
                hard: 10,
                soft: 10,
            }],
            ..Default::default()
        };
        c.apply(rlimit("RLIMIT_NOFILE"), "10-a").unwrap();
        c.apply(rlimit("RLIMIT_NPROC"), "20-b").unwrap();
        assert!(c.apply(rlimit("RLIMIT_NOFILE"), "20-b").is_err());
        assert_eq!(c.adjust.rlimits.len(), 2);
    }
}
