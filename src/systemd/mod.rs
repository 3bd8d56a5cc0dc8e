//! systemd as the host's service manager, over its D-Bus API (`org.freedesktop.systemd1`).
//!
//! Owns the transient units ferrio itself asks for: one scope per monitor
//! (`ferrio-monitor-<id>.scope`), so that a monitor leaves `ferrio.service`'s cgroup, survives a
//! restart of the service under any `KillMode` and is accounted where its pod is; and the slice of
//! a pod whose config names no cgroup parent (`ferrio-pod<id>.slice`, systemd cgroup driver).
//! It never touches units of others: kubelet's pod slices are kubelet's, and the containers'
//! `ferrio-<id>.scope` units belong to the OCI runtime's systemd driver.
//!
//! Nothing here runs on a host where systemd is not PID 1 ([`Systemd::on_this_host`] answers
//! `None`), and the system bus is connected on first use only. The D-Bus calls sit behind the
//! small [`UnitControl`] seam so that unit tests fake it; what goes on the wire is built by
//! [`start_transient_message`], which the tests check against systemd's method signature.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::oci::cgroups::{shares_to_weight, CgroupLimits};

/// Exists exactly when systemd is the running init (what `sd_booted()` checks).
pub const BOOTED_MARKER: &str = "/run/systemd/system";

const DESTINATION: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
/// systemd's answer to a stop of a unit it does not know (already collected).
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// A D-Bus call that hangs (systemd busy or wedged) must not hang a create.
const CALL_TIMEOUT: Duration = Duration::from_secs(25);
/// How long a moved process may take to show up in its scope: the scope's start job runs after
/// the call returns. Generous for slow (emulated) nodes; only a failure waits this long.
const MOVE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
const MOVE_CONFIRM_INTERVAL: Duration = Duration::from_millis(5);

/// Why a request to systemd failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("connecting to the system bus: {0}")]
    Connect(#[source] zbus::Error),
    #[error("systemd {method} {unit}: {source}")]
    Call {
        method: &'static str,
        unit: String,
        #[source]
        source: zbus::Error,
    },
    #[error("process {pid} is not in {unit} {}ms after systemd started it", waited.as_millis())]
    NotMoved {
        pid: i32,
        unit: String,
        waited: Duration,
    },
}

/// One property of a transient unit, typed as systemd's D-Bus API wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyValue {
    /// `s`
    Str(String),
    /// `b`
    Bool(bool),
    /// `t`
    U64(u64),
    /// `au` (`PIDs`)
    U32Array(Vec<u32>),
}

impl PropertyValue {
    fn to_variant(&self) -> zbus::Variant<'_> {
        match self {
            PropertyValue::Str(s) => zbus::Variant::from(s.as_str()),
            PropertyValue::Bool(b) => zbus::Variant::from(*b),
            PropertyValue::U64(n) => zbus::Variant::from(*n),
            PropertyValue::U32Array(v) => zbus::Variant::from(v.clone()),
        }
    }
}

/// A transient unit to start: its name and its properties, in the order they are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransientUnit {
    pub name: String,
    pub properties: Vec<(&'static str, PropertyValue)>,
}

impl TransientUnit {
    /// The scope that monitor `pid` of object `id` is moved into, inside `slice`. Collected by
    /// systemd once the monitor exits (also when it failed), so nothing is left to stop; no
    /// default dependencies, so that no shutdown ordering or implicit slice other than `slice`
    /// is pulled in.
    pub fn monitor_scope(id: &str, pid: i32, slice: &str) -> TransientUnit {
        TransientUnit {
            name: monitor_scope_name(id),
            properties: vec![
                (
                    "Description",
                    PropertyValue::Str(format!("ferrio monitor of {id}")),
                ),
                ("PIDs", PropertyValue::U32Array(vec![pid.max(0) as u32])),
                ("Slice", PropertyValue::Str(slice.to_string())),
                (
                    "CollectMode",
                    PropertyValue::Str("inactive-or-failed".into()),
                ),
                ("DefaultDependencies", PropertyValue::Bool(false)),
            ],
        }
    }

    /// The slice of a pod that named no cgroup parent, with the pod's limits as unit properties:
    /// systemd then writes `memory.max`, `cpu.weight` and `cpu.max` itself, and would overwrite
    /// values written into the files behind its back whenever it realizes the slice again.
    pub fn pod_slice(slice: &str, limits: Option<&CgroupLimits>) -> TransientUnit {
        let mut properties = vec![
            (
                "Description",
                PropertyValue::Str(format!("ferrio pod slice {slice}")),
            ),
            (
                "CollectMode",
                PropertyValue::Str("inactive-or-failed".into()),
            ),
        ];
        if let Some(l) = limits {
            if let Some(m) = l.memory_limit.filter(|m| *m > 0) {
                properties.push(("MemoryMax", PropertyValue::U64(m as u64)));
            }
            if let Some(s) = l.cpu_shares.filter(|s| *s > 0) {
                properties.push(("CPUWeight", PropertyValue::U64(shares_to_weight(s))));
            }
            let period = l.cpu_period.filter(|p| *p > 0).unwrap_or(100_000);
            if let Some(q) = l.cpu_quota.filter(|q| *q > 0) {
                // systemd takes the quota as CPU time per second and scales it back to the
                // period; rounding up keeps a tiny quota from becoming no quota.
                let per_sec = (q as u64).saturating_mul(1_000_000).div_ceil(period);
                properties.push(("CPUQuotaPerSecUSec", PropertyValue::U64(per_sec)));
                properties.push(("CPUQuotaPeriodUSec", PropertyValue::U64(period)));
            }
        }
        TransientUnit {
            name: slice.to_string(),
            properties,
        }
    }
}

/// The scope a monitor of object `id` runs in.
pub fn monitor_scope_name(id: &str) -> String {
    format!("ferrio-monitor-{id}.scope")
}

/// `StartTransientUnit(s name, s mode, a(sv) properties, a(sa(sv)) aux)` for `unit`, in mode
/// `fail` (a unit of that name that exists already is an error, never replaced), no aux units.
pub fn start_transient_message(unit: &TransientUnit) -> zbus::Result<zbus::Message> {
    zbus::Message::method_call(MANAGER_PATH, "StartTransientUnit")
        .destination(DESTINATION)
        .interface(MANAGER_INTERFACE)
        .build(&start_transient_body(unit))
}

type AuxUnits<'a> = Vec<(&'a str, Vec<(&'a str, zbus::Variant<'a>)>)>;

fn start_transient_body(
    unit: &TransientUnit,
) -> (&str, &str, Vec<(&str, zbus::Variant<'_>)>, AuxUnits<'_>) {
    let props = unit
        .properties
        .iter()
        .map(|(k, v)| (*k, v.to_variant()))
        .collect();
    (unit.name.as_str(), "fail", props, Vec::new())
}

/// What ferrio asks of systemd; the seam unit tests fake.
pub trait UnitControl: Send + Sync {
    /// Start `unit` as a transient unit (returns once systemd queued its start job).
    fn start_transient<'a>(
        &'a self,
        unit: &'a TransientUnit,
    ) -> BoxFuture<'a, Result<(), SystemdError>>;
    /// Stop unit `name`; one systemd no longer knows counts as stopped.
    fn stop<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), SystemdError>>;
}

/// The system bus connection to systemd, made on first use and kept; a connection that broke
/// (the bus restarted) is dropped and made again by the next call.
#[derive(Default)]
pub struct Systemd {
    conn: tokio::sync::Mutex<Option<zbus::Connection>>,
}

impl std::fmt::Debug for Systemd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Systemd")
    }
}

impl Systemd {
    /// A handle when systemd is PID 1 here, else `None`. Connects to nothing yet.
    pub fn on_this_host() -> Option<Arc<Systemd>> {
        booted().then(|| Arc::new(Systemd::default()))
    }

    async fn connection(&self) -> Result<zbus::Connection, SystemdError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = zbus::connection::Builder::system()
            .method_timeout(CALL_TIMEOUT)
            .build()
            .await
            .map_err(SystemdError::Connect)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn forget_broken(&self, e: &zbus::Error) {
        if matches!(e, zbus::Error::InputOutput(_)) {
            *self.conn.lock().await = None;
        }
    }

    async fn call_start(&self, unit: &TransientUnit) -> Result<(), SystemdError> {
        let conn = self.connection().await?;
        let call_err = |source| SystemdError::Call {
            method: "StartTransientUnit",
            unit: unit.name.clone(),
            source,
        };
        let r = conn
            .call_method(
                Some(DESTINATION),
                MANAGER_PATH,
                Some(MANAGER_INTERFACE),
                "StartTransientUnit",
                &start_transient_body(unit),
            )
            .await;
        match r {
            Ok(_job) => Ok(()),
            Err(e) => {
                self.forget_broken(&e).await;
                Err(call_err(e))
            }
        }
    }

    async fn call_stop(&self, name: &str) -> Result<(), SystemdError> {
        let conn = self.connection().await?;
        let r = conn
            .call_method(
                Some(DESTINATION),
                MANAGER_PATH,
                Some(MANAGER_INTERFACE),
                "StopUnit",
                &(name, "replace"),
            )
            .await;
        match r {
            Ok(_job) => Ok(()),
            Err(zbus::Error::MethodError(err, _, _)) if err.as_str() == NO_SUCH_UNIT => Ok(()),
            Err(e) => {
                self.forget_broken(&e).await;
                Err(SystemdError::Call {
                    method: "StopUnit",
                    unit: name.to_string(),
                    source: e,
                })
            }
        }
    }
}

impl UnitControl for Systemd {
    fn start_transient<'a>(
        &'a self,
        unit: &'a TransientUnit,
    ) -> BoxFuture<'a, Result<(), SystemdError>> {
        Box::pin(self.call_start(unit))
    }

    fn stop<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), SystemdError>> {
        Box::pin(self.call_stop(name))
    }
}

/// Whether systemd is PID 1 on this host.
pub fn booted() -> bool {
    Path::new(BOOTED_MARKER).is_dir()
}

/// Moves monitor `pid` of object `id` into a scope of its own inside `slice`, and returns once
/// `/proc/<pid>/cgroup` shows it there.
pub async fn move_monitor(
    units: &dyn UnitControl,
    id: &str,
    pid: i32,
    slice: &str,
) -> Result<(), SystemdError> {
    move_monitor_with(
        units,
        Path::new("/proc"),
        id,
        pid,
        slice,
        MOVE_CONFIRM_TIMEOUT,
    )
    .await
}

async fn move_monitor_with(
    units: &dyn UnitControl,
    proc_root: &Path,
    id: &str,
    pid: i32,
    slice: &str,
    timeout: Duration,
) -> Result<(), SystemdError> {
    let unit = TransientUnit::monitor_scope(id, pid, slice);
    units.start_transient(&unit).await?;
    wait_in_unit(proc_root, pid, &unit.name, timeout).await
}

/// Whether process `pid` runs in unit `unit` now (blocking: one /proc read).
pub fn runs_in_unit(pid: i32, unit: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|t| in_unit(&t, unit))
}

/// Polls `<proc>/<pid>/cgroup` until the process's cgroup is unit `unit` (every hierarchy line
/// that names a path: the unified one on v2, `name=systemd` on v1), or `timeout` passed.
pub async fn wait_in_unit(
    proc_root: &Path,
    pid: i32,
    unit: &str,
    timeout: Duration,
) -> Result<(), SystemdError> {
    let file = proc_root.join(pid.to_string()).join("cgroup");
    let start = tokio::time::Instant::now();
    loop {
        let text = tokio::fs::read_to_string(&file).await.unwrap_or_default();
        if in_unit(&text, unit) {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(SystemdError::NotMoved {
                pid,
                unit: unit.to_string(),
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(MOVE_CONFIRM_INTERVAL).await;
    }
}

/// Whether a `/proc/<pid>/cgroup` text puts the process in unit `unit`: the unified line
/// (`0::<path>`) on a v2 or hybrid host, else systemd's own v1 hierarchy (`name=systemd`).
fn in_unit(proc_cgroup: &str, unit: &str) -> bool {
    let path_of = |prefix: &str| {
        proc_cgroup.lines().find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (ctrl, path) = rest.split_once(':')?;
            (ctrl == prefix).then_some(path)
        })
    };
    let path = path_of("name=systemd").or_else(|| path_of(""));
    path.and_then(|p| p.rsplit('/').next()) == Some(unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The header's body signature, as sent (a `g`: length, text, NUL): exactly
    /// StartTransientUnit's four arguments, not one structure holding them.
    fn assert_wire_signature(msg: &zbus::Message) {
        let want = b"\x10ssa(sv)a(sa(sv))\0";
        let bytes = msg.data().bytes();
        assert!(
            bytes.windows(want.len()).any(|w| w == want),
            "no signature ssa(sv)a(sa(sv)) in the header"
        );
    }

    #[test]
    fn the_monitor_scope_has_systemds_property_types() {
        let unit = TransientUnit::monitor_scope("abc", 4242, "kubepods-pod1.slice");
        assert_eq!(unit.name, "ferrio-monitor-abc.scope");
        let msg = start_transient_message(&unit).unwrap();
        let header = msg.header();
        assert_eq!(header.member().unwrap().as_str(), "StartTransientUnit");
        assert_eq!(
            header.interface().unwrap().as_str(),
            "org.freedesktop.systemd1.Manager"
        );
        assert_eq!(
            header.destination().unwrap().as_str(),
            "org.freedesktop.systemd1"
        );
        assert_eq!(header.path().unwrap().as_str(), "/org/freedesktop/systemd1");
        assert_wire_signature(&msg);
        let body = msg.body();
        type Body = (
            String,
            String,
            Vec<(String, zbus::OwnedVariant)>,
            Vec<(String, Vec<(String, zbus::OwnedVariant)>)>,
        );
        let (name, mode, props, aux): Body = body.deserialize().unwrap();
        assert_eq!(name, "ferrio-monitor-abc.scope");
        assert_eq!(mode, "fail");
        assert!(aux.is_empty());
        let sig: Vec<(String, String)> = props
            .iter()
            .map(|(k, v)| (k.clone(), v.value_signature().to_string()))
            .collect();
        let want = [
            ("Description", "s"),
            ("PIDs", "au"),
            ("Slice", "s"),
            ("CollectMode", "s"),
            ("DefaultDependencies", "b"),
        ];
        assert_eq!(
            sig,
            want.map(|(k, s)| (k.to_string(), s.to_string())).to_vec()
        );
        let pids: Vec<u32> = props[1].1.try_clone().unwrap().try_into().unwrap();
        assert_eq!(pids, [4242]);
        let slice: String = props[2].1.try_clone().unwrap().try_into().unwrap();
        assert_eq!(slice, "kubepods-pod1.slice");
        let collect: String = props[3].1.try_clone().unwrap().try_into().unwrap();
        assert_eq!(collect, "inactive-or-failed");
        let deps: bool = props[4].1.try_clone().unwrap().try_into().unwrap();
        assert!(!deps);
    }

    #[test]
    fn a_pod_slice_carries_the_pods_limits() {
        let limits = CgroupLimits {
            cpu_shares: Some(1024),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(64 << 20),
        };
        let unit = TransientUnit::pod_slice("ferrio-podabc.slice", Some(&limits));
        assert_eq!(unit.name, "ferrio-podabc.slice");
        let get = |k: &str| {
            unit.properties
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("MemoryMax"), Some(PropertyValue::U64(64 << 20)));
        assert_eq!(
            get("CPUWeight"),
            Some(PropertyValue::U64(shares_to_weight(1024)))
        );
        // 50 ms per 100 ms is 500 ms per second.
        assert_eq!(get("CPUQuotaPerSecUSec"), Some(PropertyValue::U64(500_000)));
        assert_eq!(get("CPUQuotaPeriodUSec"), Some(PropertyValue::U64(100_000)));
        let msg = start_transient_message(&unit).unwrap();
        assert_wire_signature(&msg);
        type Props = Vec<(String, zbus::OwnedVariant)>;
        let (_, _, props, _): (String, String, Props, Vec<(String, Props)>) =
            msg.body().deserialize().unwrap();
        for (k, v) in &props {
            let want = if k == "Description" || k == "CollectMode" {
                "s"
            } else {
                "t"
            };
            assert_eq!(v.value_signature().to_string(), want, "{k}");
        }
        // No limits, or "unlimited" ones: only the name and the collection.
        let bare = TransientUnit::pod_slice(
            "ferrio-podabc.slice",
            Some(&CgroupLimits {
                memory_limit: Some(0),
                cpu_quota: Some(-1),
                ..Default::default()
            }),
        );
        assert_eq!(bare, TransientUnit::pod_slice("ferrio-podabc.slice", None));
        assert_eq!(bare.properties.len(), 2);
    }

    #[test]
    fn proc_cgroup_lines_name_the_unit() {
        let v2 = "0::/kubepods.slice/kubepods-pod1.slice/ferrio-monitor-abc.scope\n";
        assert!(in_unit(v2, "ferrio-monitor-abc.scope"));
        assert!(!in_unit(v2, "ferrio-monitor-ab.scope"));
        assert!(!in_unit(
            "0::/system.slice/ferrio.service\n",
            "ferrio-monitor-abc.scope"
        ));
        // Hybrid: systemd's own v1 hierarchy decides, whatever the unified line says.
        let hybrid = "12:memory:/system.slice/ferrio.service\n\
                      1:name=systemd:/system.slice/ferrio-monitor-abc.scope\n\
                      0::/system.slice/ferrio.service\n";
        assert!(in_unit(hybrid, "ferrio-monitor-abc.scope"));
        assert!(!in_unit("", "ferrio-monitor-abc.scope"));
    }

    /// Records what it is asked and "moves" the process by rewriting a fake /proc.
    struct FakeSystemd {
        proc_root: std::path::PathBuf,
        started: Mutex<Vec<TransientUnit>>,
        stopped: Mutex<Vec<String>>,
        move_it: bool,
    }

    impl UnitControl for FakeSystemd {
        fn start_transient<'a>(
            &'a self,
            unit: &'a TransientUnit,
        ) -> BoxFuture<'a, Result<(), SystemdError>> {
            Box::pin(async move {
                self.started.lock().unwrap().push(unit.clone());
                if let Some((_, PropertyValue::U32Array(pids))) =
                    unit.properties.iter().find(|(k, _)| *k == "PIDs")
                {
                    if self.move_it {
                        let dir = self.proc_root.join(pids[0].to_string());
                        std::fs::write(dir.join("cgroup"), format!("0::/x.slice/{}\n", unit.name))
                            .unwrap();
                    }
                }
                Ok(())
            })
        }

        fn stop<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), SystemdError>> {
            Box::pin(async move {
                self.stopped.lock().unwrap().push(name.to_string());
                Ok(())
            })
        }
    }

    fn fake(move_it: bool) -> (tempfile::TempDir, FakeSystemd) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("77");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup"), "0::/system.slice/ferrio.service\n").unwrap();
        let f = FakeSystemd {
            proc_root: root.path().to_path_buf(),
            started: Mutex::default(),
            stopped: Mutex::default(),
            move_it,
        };
        (root, f)
    }

    #[tokio::test]
    async fn a_moved_monitor_is_confirmed_in_its_scope() {
        let (root, f) = fake(true);
        move_monitor_with(
            &f,
            root.path(),
            "abc",
            77,
            "system.slice",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        let unit = TransientUnit::monitor_scope("abc", 77, "system.slice");
        assert_eq!(f.started.lock().unwrap().as_slice(), [unit]);
        f.stop("ferrio-podabc.slice").await.unwrap();
        assert_eq!(
            f.stopped.lock().unwrap().as_slice(),
            ["ferrio-podabc.slice"]
        );
    }

    #[tokio::test]
    async fn a_monitor_left_in_place_is_an_error_after_the_timeout() {
        let (root, f) = fake(false);
        let e = move_monitor_with(
            &f,
            root.path(),
            "abc",
            77,
            "system.slice",
            Duration::from_millis(30),
        )
        .await
        .unwrap_err();
        let unit = TransientUnit::monitor_scope("abc", 77, "system.slice");
        assert!(
            matches!(&e, SystemdError::NotMoved { pid: 77, unit, .. } if unit == "ferrio-monitor-abc.scope"),
            "{e}"
        );
        // A process that is gone is never found either.
        assert!(wait_in_unit(root.path(), 78, &unit.name, Duration::ZERO)
            .await
            .is_err());
    }

    #[test]
    fn this_process_is_in_no_monitor_scope() {
        assert!(!runs_in_unit(
            std::process::id() as i32,
            "ferrio-monitor-x.scope"
        ));
        assert!(!runs_in_unit(-1, "ferrio-monitor-x.scope"));
    }

    #[test]
    fn no_systemd_here_means_no_handle() {
        // This test host runs without systemd as PID 1; on one with it, a handle is made
        // without connecting anywhere.
        assert_eq!(Systemd::on_this_host().is_some(), booted());
    }
}
