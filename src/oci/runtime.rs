//! `runc`/`crun` verbs other than create: start, kill, delete, state, update.
//!
//! Every verb runs the runtime's binary: its command line is the runtime's interface, and its
//! state directory, exec fifo and cgroup layout are its own business (they change between
//! versions, and a verb may run OCI hooks). Nothing here opens, reads or removes them.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::oci::host::{needs_cgroup_v1_view, CgroupLayout};
use crate::sys::CgroupV1View;
use std::time::Duration;

/// How long one runtime verb may take before it is treated as hung.
const VERB_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{runtime} {verb} {id}: {message}")]
    Failed {
        runtime: String,
        verb: &'static str,
        id: String,
        message: String,
    },
    /// The runtime binary could not be started or waited for.
    #[error("{runtime} {verb} {id}: cannot run {}: {source}", path.display())]
    Spawn {
        runtime: String,
        verb: &'static str,
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{runtime} {verb} {id}: timed out after {secs}s")]
    Timeout {
        runtime: String,
        verb: &'static str,
        id: String,
        secs: u64,
    },
}

/// One configured runtime handler.
#[derive(Debug, Clone, PartialEq)]
pub struct OciRuntime {
    /// The handler name (`runc`, `crun`).
    pub name: String,
    pub path: PathBuf,
    /// The runtime's `--root`.
    pub root: PathBuf,
    /// Pass `--systemd-cgroup`: cgroups paths are `slice:prefix:name` and systemd makes them.
    pub systemd_cgroup: bool,
    /// Run every invocation in a private mount namespace whose /sys/fs/cgroup holds the v1
    /// hierarchies only (crun on a hybrid host); see [`OciRuntime::cgroup_view_for`].
    pub cgroup_view: Option<Arc<CgroupV1View>>,
    /// The binary can run a process in a user namespace it joins by path, with OCI id
    /// mappings: [`OciRuntime::probe_user_namespaces`] at handler setup.
    pub user_namespaces: bool,
    /// Containers are created in the runtime at StartContainer (`run --detach`), not at
    /// CreateContainer (the handler's `defer_create`).
    pub defer_create: bool,
}

/// How a runtime's binary is run by the processes that run it themselves: the monitor (for
/// `create`) and `exec`.
#[derive(Debug, Clone)]
pub struct RuntimeBinary {
    pub path: PathBuf,
    /// The runtime's `--root`.
    pub root: PathBuf,
    /// The private cgroup view the binary runs in (see [`OciRuntime::cgroup_view_for`]).
    pub cgroup_view: Option<Arc<CgroupV1View>>,
}

/// The part of `runc state` the daemon uses.
#[derive(Debug, Clone, Deserialize)]
pub struct OciState {
    pub status: String,
    #[serde(default)]
    pub pid: i32,
}

/// Whether an OCI runtime features document names the user namespace.
fn features_list_user_namespace(doc: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Features {
        #[serde(default)]
        linux: Option<LinuxFeatures>,
    }
    #[derive(Deserialize)]
    struct LinuxFeatures {
        #[serde(default)]
        namespaces: Vec<String>,
    }
    serde_json::from_slice::<Features>(doc)
        .ok()
        .and_then(|f| f.linux)
        .is_some_and(|l| l.namespaces.iter().any(|n| n == "user"))
}

/// Messages runc and crun print when the container is not there.
fn is_missing(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("does not exist") || m.contains("not found") || m.contains("no such file")
}

impl OciRuntime {
    /// The private cgroup view the runtime at `path` needs on this host, if any: on a hybrid
    /// host for crun (or as `configured`, the handler's `cgroup_v1_view`), never elsewhere.
    /// Reads the mount table; call it when the handler is set up, not per verb.
    pub fn cgroup_view_for(path: &Path, configured: Option<bool>) -> Option<Arc<CgroupV1View>> {
        if !needs_cgroup_v1_view(CgroupLayout::detect(), path, configured) {
            return None;
        }
        match CgroupV1View::of_host() {
            Ok(view) => view.map(Arc::new),
            // The runtime then runs as is and fails with its own message.
            Err(e) => {
                tracing::warn!(runtime = %path.display(), error = %e, "cannot prepare the v1 cgroup view");
                None
            }
        }
    }

    /// Whether the runtime at `path` supports user namespaces, asked of the binary: its
    /// `features` document (OCI runtime features) lists the `user` namespace. crun releases
    /// without a `features` verb (1.8 and older) answer by their `--version`: crun has joined
    /// user namespaces with OCI mappings since its first release (1.8.1 measured). Anything
    /// else, or a binary that cannot be run, counts as no support. Runs the binary: call it when
    /// the handler is set up, not per request.
    pub fn probe_user_namespaces(path: &Path) -> bool {
        let run = |arg: &str| {
            let mut cmd = std::process::Command::new(path);
            crate::sys::without_daemon_notify(&mut cmd);
            cmd.arg(arg)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| o.stdout)
        };
        if let Some(out) = run("features") {
            return features_list_user_namespace(&out);
        }
        run("--version").is_some_and(|out| {
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .is_some_and(|l| l.starts_with("crun version "))
        })
    }

    /// The global flags every verb gets (`--root`, and `--systemd-cgroup` for the systemd driver);
    /// the monitor puts the same in front of `create`.
    pub fn global_args(&self) -> Vec<std::ffi::OsString> {
        let mut v = vec!["--root".into(), self.root.clone().into_os_string()];
        if self.systemd_cgroup {
            v.push("--systemd-cgroup".into());
        }
        v
    }

    async fn run(&self, verb: &'static str, id: &str, args: &[&str]) -> Result<Vec<u8>, OciError> {
        self.run_with_input(verb, id, args, None).await
    }

    async fn run_with_input(
        &self,
        verb: &'static str,
        id: &str,
        args: &[&str],
        input: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, OciError> {
        let mut cmd = tokio::process::Command::new(&self.path);
        crate::sys::without_daemon_notify(cmd.as_std_mut());
        cmd.args(self.global_args()).args(args);
        if let Some(view) = &self.cgroup_view {
            view.apply(cmd.as_std_mut());
        }
        cmd.stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
        cmd.stdout(std::process::Stdio::piped());
        cmd.stderr(std::process::Stdio::piped());
        cmd.kill_on_drop(true);
        let fut = async move {
            let mut child = cmd.spawn()?;
            if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
                use tokio::io::AsyncWriteExt;
                stdin.write_all(&data).await?;
                // Dropping stdin closes it: the runtime reads to EOF.
            }
            child.wait_with_output().await
        };
        let out = match tokio::time::timeout(VERB_TIMEOUT, fut).await {
            Err(_) => {
                return Err(OciError::Timeout {
                    runtime: self.name.clone(),
                    verb,
                    id: id.to_string(),
                    secs: VERB_TIMEOUT.as_secs(),
                })
            }
            Ok(Err(source)) => {
                return Err(OciError::Spawn {
                    runtime: self.name.clone(),
                    verb,
                    id: id.to_string(),
                    path: self.path.clone(),
                    source,
                })
            }
            Ok(Ok(o)) => o,
        };
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(OciError::Failed {
                runtime: self.name.clone(),
                verb,
                id: id.to_string(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// `start`: run the user process of a created container.
    pub async fn start(&self, id: &str) -> Result<(), OciError> {
        self.run("start", id, &["start", id]).await.map(drop)
    }

    /// Send `signal` (a number) to the container's init, or to all its processes.
    /// A container that is already gone is not an error.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), OciError> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        match self.run("kill", id, &args).await {
            Err(OciError::Failed { message, .. })
                if is_missing(&message)
                    || message.contains("not running")
                    || message.contains("process already finished") =>
            {
                Ok(())
            }
            r => r.map(drop),
        }
    }

    /// `delete --force`; idempotent.
    pub async fn delete(&self, id: &str) -> Result<(), OciError> {
        match self.run("delete", id, &["delete", "--force", id]).await {
            Err(OciError::Failed { message, .. }) if is_missing(&message) => Ok(()),
            r => r.map(drop),
        }
    }

    /// `update --resources -`: new cgroup limits (an OCI `LinuxResources` object) for a
    /// created or running container.
    pub async fn update(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), OciError> {
        let json = serde_json::to_vec(resources).map_err(|e| OciError::Failed {
            runtime: self.name.clone(),
            verb: "update",
            id: id.to_string(),
            message: format!("cannot encode resources: {e}"),
        })?;
        self.run_with_input(
            "update",
            id,
            &["update", "--resources", "-", id],
            Some(json),
        )
        .await
        .map(drop)
    }

    /// `state`; `None` when the runtime does not know the container.
    pub async fn state(&self, id: &str) -> Result<Option<OciState>, OciError> {
        match self.run("state", id, &["state", id]).await {
            Err(OciError::Failed { message, .. }) if is_missing(&message) => Ok(None),
            Err(e) => Err(e),
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|e| OciError::Failed {
                    runtime: self.name.clone(),
                    verb: "state",
                    id: id.to_string(),
                    message: format!("unparsable state: {e}"),
                }),
        }
    }
}

use futures::future::BoxFuture;

/// The OCI runtime's verbs that the lifecycle runs itself (`create` runs in the monitor, which
/// owns the container's stdio; `exec` in [`crate::oci::exec`]): the seam a lifecycle test
/// puts a fake behind. [`OciRuntime`], the runtime's command line, is the implementation.
pub trait Runtime: Send + Sync {
    /// The handler's name, for messages.
    fn name(&self) -> &str;
    /// The binary the monitor's `create` and `exec` run.
    fn binary(&self) -> RuntimeBinary;
    /// The runtime can run processes in a pod's user namespace (see
    /// [`OciRuntime::probe_user_namespaces`]).
    fn user_namespaces(&self) -> bool {
        false
    }
    /// Containers are created in the runtime at StartContainer, by the monitor's `run
    /// --detach`, rather than at CreateContainer (see the handler's `defer_create`).
    fn defer_create(&self) -> bool {
        false
    }
    /// Runs the user process of a created container.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), OciError>>;
    /// Signals the container's init, or all its processes; a container that is gone is fine.
    fn kill<'a>(
        &'a self,
        id: &'a str,
        signal: i32,
        all: bool,
    ) -> BoxFuture<'a, Result<(), OciError>>;
    /// Deletes the container, ending its processes first; idempotent.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), OciError>>;
    /// The runtime's view of the container; `None` when it does not know it.
    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<OciState>, OciError>>;
    /// New cgroup limits for a created or running container.
    fn update<'a>(
        &'a self,
        id: &'a str,
        resources: &'a oci_spec::runtime::LinuxResources,
    ) -> BoxFuture<'a, Result<(), OciError>>;
}

impl Runtime for OciRuntime {
    fn name(&self) -> &str {
        &self.name
    }
    fn user_namespaces(&self) -> bool {
        self.user_namespaces
    }
    fn defer_create(&self) -> bool {
        self.defer_create
    }
    fn binary(&self) -> RuntimeBinary {
        RuntimeBinary {
            path: self.path.clone(),
            root: self.root.clone(),
            cgroup_view: self.cgroup_view.clone(),
        }
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), OciError>> {
        Box::pin(OciRuntime::start(self, id))
    }
    fn kill<'a>(
        &'a self,
        id: &'a str,
        signal: i32,
        all: bool,
    ) -> BoxFuture<'a, Result<(), OciError>> {
        Box::pin(OciRuntime::kill(self, id, signal, all))
    }
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), OciError>> {
        Box::pin(OciRuntime::delete(self, id))
    }
    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<OciState>, OciError>> {
        Box::pin(OciRuntime::state(self, id))
    }
    fn update<'a>(
        &'a self,
        id: &'a str,
        resources: &'a oci_spec::runtime::LinuxResources,
    ) -> BoxFuture<'a, Result<(), OciError>> {
        Box::pin(OciRuntime::update(self, id, resources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_container_is_absent_not_an_error() {
        let root = tempfile::tempdir().unwrap();
        let rt = OciRuntime {
            name: "runc".into(),
            path: "/usr/sbin/runc".into(),
            root: root.path().into(),
            systemd_cgroup: false,
            cgroup_view: None,
            user_namespaces: false,
            defer_create: false,
        };
        if !rt.path.exists() {
            panic!("runc is required: run hack/install-deps.sh");
        }
        assert!(rt.state("nope").await.unwrap().is_none());
        rt.delete("nope").await.unwrap();
        rt.kill("nope", 15, false).await.unwrap();
        let e = rt.start("nope").await.unwrap_err().to_string();
        assert!(e.contains("runc start nope"), "{e}");
        let e = rt
            .update("nope", &Default::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("runc update nope"), "{e}");
    }

    /// Every verb runs in the view when the runtime has one: a stand-in runtime reports as its
    /// "state" whether it sees the cgroup2 mount.
    #[tokio::test]
    #[ignore = "needs root: mount namespaces and the runtime"]
    async fn verbs_run_in_the_cgroup_view() {
        let Some(view) = CgroupV1View::of_host().unwrap() else {
            eprintln!("skipped: not a hybrid cgroup host");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-crun");
        std::fs::write(
            &script,
            "#!/bin/sh\n\
             if [ -e /sys/fs/cgroup/unified ]; then s=hybrid; else s=v1; fi\n\
             printf '{\"status\":\"%s\"}\\n' $s\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut rt = OciRuntime {
            name: "crun".into(),
            path: script,
            root: dir.path().into(),
            systemd_cgroup: false,
            cgroup_view: None,
            user_namespaces: false,
            defer_create: false,
        };
        assert_eq!(rt.state("x").await.unwrap().unwrap().status, "hybrid");
        rt.cgroup_view = Some(Arc::new(view));
        assert_eq!(rt.state("x").await.unwrap().unwrap().status, "v1");
    }

    #[test]
    fn features_document_names_the_user_namespace() {
        let runc = br#"{"ociVersionMin":"1.0.0","linux":{"namespaces":["cgroup","ipc","mount","network","pid","user","uts"]}}"#;
        assert!(features_list_user_namespace(runc));
        assert!(!features_list_user_namespace(
            br#"{"linux":{"namespaces":["mount","pid"]}}"#
        ));
        assert!(!features_list_user_namespace(
            br#"{"ociVersionMin":"1.0.0"}"#
        ));
        assert!(!features_list_user_namespace(b"unknown command features"));
    }

    #[test]
    fn installed_runtimes_answer_the_user_namespace_probe() {
        for bin in ["/usr/sbin/runc", "/usr/bin/crun"] {
            if Path::new(bin).exists() {
                assert!(OciRuntime::probe_user_namespaces(Path::new(bin)), "{bin}");
            }
        }
        assert!(!OciRuntime::probe_user_namespaces(Path::new(
            "/nonexistent/runc"
        )));
        assert!(!OciRuntime::probe_user_namespaces(Path::new("/bin/true")));
    }

    #[test]
    fn systemd_flag_is_global() {
        let mut rt = OciRuntime {
            name: "runc".into(),
            path: "/usr/sbin/runc".into(),
            root: "/run/x".into(),
            systemd_cgroup: false,
            cgroup_view: None,
            user_namespaces: false,
            defer_create: false,
        };
        assert_eq!(rt.global_args(), ["--root", "/run/x"]);
        rt.systemd_cgroup = true;
        assert_eq!(rt.global_args(), ["--root", "/run/x", "--systemd-cgroup"]);
    }
}
