//! The CNI front door the sandbox code uses: readiness, ADD of a pod (with rollback) and DEL from the cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::cache::{CacheEntry, ResultCache};
use super::conflist::{find_plugin, join_paths, load_network, NetworkConfigList};
use super::exec::{capability_args, cni_args, plugin_config, run_plugin, CniCommand, Invocation};
use super::standin::StandIn;
use super::{bring_loopback_up, result_addrs, result_ips, NetworkError, NetworkStatus, PodNetwork};

/// CNI configuration and plugin runner for a node. Cheap to share (held in an `Arc`); every call re-reads
/// the network directory so config changes apply without a restart.
#[derive(Debug, Clone)]
pub struct Cni {
    network_dir: PathBuf,
    plugin_dirs: Vec<PathBuf>,
    cache: ResultCache,
    /// Longest a single plugin invocation may run before it is killed.
    timeout: Duration,
    /// Network to use instead of the first valid one (CRI-O's `cni_default_network`).
    default_network: Option<String>,
}

impl Cni {
    /// Per-plugin timeout unless [`Cni::with_timeout`] says otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// `network_dir`: conflists (*.conflist, *.conf, *.json) tried in lexical order; `plugin_dirs`: where
    /// plugin binaries are searched; `cache_dir`: result cache in libcni's layout
    /// (`results/<net>-<containerid>-<ifname>`).
    pub fn new(network_dir: PathBuf, plugin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> Cni {
        Cni {
            network_dir,
            plugin_dirs,
            cache: ResultCache::new(&cache_dir),
            timeout: Cni::DEFAULT_TIMEOUT,
            default_network: None,
        }
    }

    /// Sets the per-plugin timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Cni {
        self.timeout = timeout;
        self
    }

    /// Uses the network with this name instead of the first valid one; `None` restores the default.
    pub fn with_default_network(mut self, name: Option<String>) -> Cni {
        self.default_network = name.filter(|n| !n.is_empty());
        self
    }

    /// The network a new pod would get: Ok(its name), or NotReady with the reason (every file skipped and
    /// why). Reads the directory each call; it holds a few small files.
    pub fn ready(&self) -> Result<String, NetworkError> {
        self.network().map(|list| list.name)
    }

    /// The config list a new pod would get, read from disk now.
    pub fn network(&self) -> Result<NetworkConfigList, NetworkError> {
        load_network(
            &self.network_dir,
            &self.plugin_dirs,
            self.default_network.as_deref(),
        )
    }

    /// Brings `lo` up in the pod's netns and runs ADD for each plugin of the network in order, each getting
    /// the previous one's result. The conflist and result are cached first, so DEL works after a config
    /// change, a daemon restart or a crash in the middle. On failure the plugins that ran are deleted again
    /// (reverse order) and the error carries the plugin's own message.
    pub async fn setup(&self, pod: &PodNetwork) -> Result<NetworkStatus, NetworkError> {
        let this = self.clone();
        let list = blocking(move || this.network()).await?;
        bring_loopback_up(&pod.netns).await?;

        let caps = capability_args(&pod.port_mappings);
        let inv = self.invocation(
            CniCommand::Add,
            pod,
            pod.netns.to_string_lossy().into_owned(),
        );
        let mut entry = CacheEntry::new(
            &list.name,
            &pod.id,
            &pod.ifname,
            &list.bytes,
            &inv.cni_args,
            caps.clone(),
        );
        let cache = self.cache.clone();
        let pending = entry.clone();
        let cache_path = blocking(move || cache.write(&pending)).await?;

        let mut prev: Option<Value> = None;
        for (i, plugin) in list.plugins.iter().enumerate() {
            match self.call(&list, plugin, &inv, prev.as_ref(), &caps).await {
                Ok(result) => prev = result,
                Err(err) => {
                    self.rollback(&list, i, pod, prev.as_ref(), &caps, &cache_path)
                        .await;
                    return Err(err);
                }
            }
        }
        let result = prev.unwrap_or_else(|| Value::Object(Map::new()));

        entry.result = Some(result.clone());
        let cache = self.cache.clone();
        if let Err(err) = blocking(move || cache.write(&entry).map(|_| ())).await {
            let last = list.plugins.len() - 1;
            self.rollback(&list, last, pod, Some(&result), &caps, &cache_path)
                .await;
            return Err(err);
        }
        tracing::debug!(sandbox = %pod.id, network = %list.name, "cni add done");
        Ok(NetworkStatus {
            ips: result_ips(&result, &pod.ifname),
            result,
        })
    }

    /// Runs DEL in reverse plugin order with the cached conflist, capability args and result, then drops
    /// the cache entry. No entry means nothing to do. Call it before the netns is deleted; when the netns
    /// is already gone the plugins still release what lives outside it (IPAM, host rules).
    pub async fn teardown(&self, pod: &PodNetwork) -> Result<(), NetworkError> {
        let cache = self.cache.clone();
        let (id, ifname) = (pod.id.clone(), pod.ifname.clone());
        let entries = blocking(move || {
            let mut entries = Vec::new();
            for path in cache.find(&id, &ifname)? {
                let entry = cache.read(&path)?;
                let list = NetworkConfigList::from_bytes(&entry.config_bytes(&path)?, &path)?;
                entries.push((path, entry, list));
            }
            Ok(entries)
        })
        .await?;

        // A pinned netns that was unmounted (or never pinned) is gone for the plugins: they get an empty
        // CNI_NETNS and release what lives outside it instead of failing on a plain file.
        let netns = if super::loopback::is_netns(&pod.netns) {
            pod.netns.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        for (path, entry, list) in entries {
            // The netns is gone: give the plugins a stand-in carrying the pod's cached addresses,
            // so the bridge plugin finds them and removes its masquerade rules too.
            let standin = if netns.is_empty() {
                self.stand_in(pod, entry.result.as_ref()).await
            } else {
                None
            };
            let ns = standin
                .as_ref()
                .map(|s| s.path().to_string_lossy().into_owned())
                .unwrap_or_else(|| netns.clone());
            let inv = self.invocation(CniCommand::Del, pod, ns);
            let mut first_err = None;
            // Keep going past a failing plugin so the others still release what they hold; the entry
            // stays on disk so a later teardown retries the whole list.
            for plugin in list.plugins.iter().rev() {
                let mut res = self
                    .call(
                        &list,
                        plugin,
                        &inv,
                        entry.result.as_ref(),
                        &entry.capability_args,
                    )
                    .await;
                if let (Err(err), Some(_)) = (&res, &standin) {
                    tracing::info!(sandbox = %pod.id, error = %err, "cni del in the stand-in netns failed; retrying without netns");
                    // After a reboot the rules the stand-in leads the plugin to are gone as well
                    // and it fails deleting them; a DEL without a netns still releases the rest.
                    let bare = self.invocation(CniCommand::Del, pod, String::new());
                    res = self
                        .call(
                            &list,
                            plugin,
                            &bare,
                            entry.result.as_ref(),
                            &entry.capability_args,
                        )
                        .await;
                }
                if let Err(e) = res {
                    first_err.get_or_insert(e);
                }
            }
            if let Some(s) = standin {
                // Joins the parked thread; its namespace dies with it.
                let _ = tokio::task::spawn_blocking(move || drop(s)).await;
            }
            if let Some(err) = first_err {
                return Err(err);
            }
            let cache = self.cache.clone();
            blocking(move || cache.remove(&path)).await?;
            tracing::debug!(sandbox = %pod.id, network = %list.name, "cni del done");
        }
        Ok(())
    }

    /// A stand-in netns with `pod.ifname` holding the addresses of `result`, or None when there are
    /// none or it cannot be made (DEL then runs with an empty CNI_NETNS, as before).
    async fn stand_in(&self, pod: &PodNetwork, result: Option<&Value>) -> Option<StandIn> {
        let addrs = result_addrs(result?, &pod.ifname);
        if addrs.is_empty() {
            return None;
        }
        let ifname = pod.ifname.clone();
        match blocking(move || StandIn::new(&ifname, &addrs)).await {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::warn!(sandbox = %pod.id, error = %err, "no stand-in netns for cni del");
                None
            }
        }
    }

    /// DEL for plugins `0..=failed` in reverse after a failed ADD; errors are logged, the ADD error wins.
    async fn rollback(
        &self,
        list: &NetworkConfigList,
        failed: usize,
        pod: &PodNetwork,
        prev: Option<&Value>,
        caps: &Map<String, Value>,
        cache_path: &Path,
    ) {
        let inv = self.invocation(
            CniCommand::Del,
            pod,
            pod.netns.to_string_lossy().into_owned(),
        );
        let mut clean = true;
        for plugin in list.plugins[..=failed].iter().rev() {
            if let Err(err) = self.call(list, plugin, &inv, prev, caps).await {
                tracing::warn!(sandbox = %pod.id, error = %err, "cni del after failed add");
                clean = false;
            }
        }
        // A DEL that failed here is retried by teardown, which needs the entry.
        if clean {
            let cache = self.cache.clone();
            let path = cache_path.to_path_buf();
            if let Err(err) = blocking(move || cache.remove(&path)).await {
                tracing::warn!(sandbox = %pod.id, error = %err, "remove cni cache entry");
            }
        }
    }

    async fn call(
        &self,
        list: &NetworkConfigList,
        plugin: &Map<String, Value>,
        inv: &Invocation,
        prev: Option<&Value>,
        caps: &Map<String, Value>,
    ) -> Result<Option<Value>, NetworkError> {
        let plugin_type = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let binary =
            find_plugin(plugin_type, &self.plugin_dirs).ok_or_else(|| NetworkError::Plugin {
                plugin: plugin_type.to_string(),
                command: inv.command.as_str().to_string(),
                message: format!("plugin binary not found in {}", inv.cni_path),
            })?;
        let config = plugin_config(&list.name, &list.cni_version, plugin, prev, caps);
        run_plugin(&binary, plugin_type, inv, &config, self.timeout).await
    }

    fn invocation(&self, command: CniCommand, pod: &PodNetwork, netns: String) -> Invocation {
        Invocation {
            command,
            container_id: pod.id.clone(),
            netns,
            ifname: pod.ifname.clone(),
            cni_args: cni_args(pod),
            cni_path: join_paths(&self.plugin_dirs),
        }
    }
}

/// Runs small filesystem work off the reactor.
async fn blocking<T, F>(f: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetworkError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetworkError::Io {
            op: "run blocking cni task",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    /// A real network namespace (loopback is brought up in it by setup), deleted on drop.
    struct Netns(String);
    impl Netns {
        fn new() -> Netns {
            let name = format!("fcniu{}", rand::random::<u32>());
            let ok = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap();
            assert!(ok.success(), "ip netns add {name}");
            Netns(name)
        }
        fn path(&self) -> PathBuf {
            PathBuf::from("/var/run/netns").join(&self.0)
        }
    }
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// A temp dir with fake plugins that append "<COMMAND> <type> <stdin>" to `log` and answer with a
    /// result naming themselves, so tests can see the order, the chaining and the cached prevResult.
    struct Fixture {
        dir: tempfile::TempDir,
        netns: Netns,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            for sub in ["bin", "net", "cache"] {
                std::fs::create_dir(dir.path().join(sub)).unwrap();
            }
            let f = Fixture {
                dir,
                netns: Netns::new(),
            };
            for (name, ip) in [("a", "10.0.0.5/24"), ("b", "10.0.0.6/24")] {
                f.plugin(
                    name,
                    &format!(
                        r#"in=$(cat)
echo "$CNI_COMMAND {name} $in" >> {log}
[ "$CNI_COMMAND" = ADD ] && printf '{{"cniVersion":"1.0.0","by":"{name}","ips":[{{"address":"{ip}"}}]}}'
exit 0"#,
                        log = f.log().display()
                    ),
                );
            }
            f.plugin(
                "fail",
                &format!(
                    r#"in=$(cat)
echo "$CNI_COMMAND fail $in" >> {log}
[ "$CNI_COMMAND" = DEL ] && exit 0
echo '{{"cniVersion":"1.0.0","code":7,"msg":"bad things","details":"really"}}'
exit 1"#,
                    log = f.log().display()
                ),
            );
            f.plugin(
                "hang",
                &format!(
                    r#"in=$(cat)
echo "$CNI_COMMAND hang $in" >> {log}
[ "$CNI_COMMAND" = DEL ] && exit 0
sleep 300"#,
                    log = f.log().display()
                ),
            );
            f
        }

        fn plugin(&self, name: &str, body: &str) {
            let p = self.dir.path().join("bin").join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn log(&self) -> PathBuf {
            self.dir.path().join("calls.log")
        }

        /// (command, plugin, stdin json) per call, in order.
        fn calls(&self) -> Vec<(String, String, Value)> {
            let text = std::fs::read_to_string(self.log()).unwrap_or_default();
            text.lines()
                .map(|l| {
                    let mut parts = l.splitn(3, ' ');
                    let cmd = parts.next().unwrap().to_string();
                    let plugin = parts.next().unwrap().to_string();
                    let conf = serde_json::from_str(parts.next().unwrap()).unwrap();
                    (cmd, plugin, conf)
                })
                .collect()
        }

        fn conflist(&self, file: &str, name: &str, plugins: &[&str]) {
            let plugins: Vec<Value> = plugins
                .iter()
                .map(|p| json!({"type": p, "capabilities": {"portMappings": true}}))
                .collect();
            let list = json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins});
            std::fs::write(self.dir.path().join("net").join(file), list.to_string()).unwrap();
        }

        fn cni(&self) -> Cni {
            Cni::new(
                self.dir.path().join("net"),
                vec![self.dir.path().join("bin")],
                self.dir.path().join("cache"),
            )
        }

        fn pod(&self) -> PodNetwork {
            PodNetwork {
                id: "sb123".into(),
                name: "web".into(),
                namespace: "ns1".into(),
                uid: "uid-1".into(),
                netns: self.netns.path(),
                ifname: "eth0".into(),
                port_mappings: vec![super::super::PortMapping {
                    protocol: "tcp".into(),
                    container_port: 80,
                    host_port: 18080,
                    host_ip: String::new(),
                }],
            }
        }

        fn cache_entries(&self) -> Vec<String> {
            match std::fs::read_dir(self.dir.path().join("cache/results")) {
                Ok(rd) => rd
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(_) => Vec::new(),
            }
        }
    }

    fn summary(calls: &[(String, String, Value)]) -> Vec<String> {
        calls.iter().map(|(c, p, _)| format!("{c} {p}")).collect()
    }

    #[tokio::test]
    #[ignore = "needs root: network namespaces and CNI plugins"]
    async fn add_chains_results_and_del_uses_the_cache() {
        let f = Fixture::new();
        f.conflist("10-net.conflist", "net", &["a", "b"]);
        let cni = f.cni();
        assert_eq!(cni.ready().unwrap(), "net");

        let status = cni.setup(&f.pod()).await.unwrap();
        assert_eq!(status.result["by"], "b");
        assert_eq!(
            status.ips,
            ["10.0.0.6".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(f.cache_entries(), ["net-sb123-eth0"]);
        // No loopback plugin in this list: setup brought lo up itself over netlink.
        let lo = Command::new("ip")
            .args(["-n", &f.netns.0, "link", "show", "lo"])
            .output()
            .unwrap();
        let lo = String::from_utf8_lossy(&lo.stdout);
        assert!(lo.contains(",UP"), "lo not up: {lo}");

        let calls = f.calls();
        assert_eq!(summary(&calls), ["ADD a", "ADD b"]);
        assert!(calls[0].2.get("prevResult").is_none());
        assert_eq!(calls[1].2["prevResult"]["by"], "a");
        assert_eq!(calls[1].2["name"], "net");
        assert_eq!(calls[1].2["cniVersion"], "1.0.0");
        assert_eq!(
            calls[1].2["runtimeConfig"]["portMappings"],
            json!([{"hostPort": 18080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}])
        );

        // A config change after ADD must not change what DEL runs: DEL uses the cached list.
        std::fs::remove_file(f.dir.path().join("net/10-net.conflist")).unwrap();
        f.conflist("10-other.conflist", "other", &["fail"]);
        let mut pod = f.pod();
        pod.port_mappings.clear();
        cni.teardown(&pod).await.unwrap();
        let calls = f.calls();
        assert_eq!(summary(&calls), ["ADD a", "ADD b", "DEL b", "DEL a"]);
        for (_, _, conf) in &calls[2..] {
            assert_eq!(conf["prevResult"]["by"], "b");
            assert_eq!(conf["name"], "net");
            // Capability args come from the cache too.
            assert_eq!(conf["runtimeConfig"]["portMappings"][0]["hostPort"], 18080);
        }
        assert!(f.cache_entries().is_empty());

        // Idempotent.
        cni.teardown(&pod).await.unwrap();
        assert_eq!(f.calls().len(), 4);
    }

    #[tokio::test]
    #[ignore = "needs root: network namespaces and CNI plugins"]
    async fn failing_plugin_rolls_back_and_reports_its_message() {
        let f = Fixture::new();
        f.conflist("10-net.conflist", "net", &["a", "fail", "b"]);
        let err = f.cni().setup(&f.pod()).await.unwrap_err();
        match &err {
            NetworkError::Plugin {
                plugin,
                command,
                message,
            } => {
                assert_eq!((plugin.as_str(), command.as_str()), ("fail", "ADD"));
                assert_eq!(message, "bad things; really");
            }
            other => panic!("unexpected {other:?}"),
        }
        let calls = f.calls();
        assert_eq!(summary(&calls), ["ADD a", "ADD fail", "DEL fail", "DEL a"]);
        assert_eq!(calls[3].2["prevResult"]["by"], "a");
        assert!(f.cache_entries().is_empty());
    }

    #[tokio::test]
    #[ignore = "needs root: network namespaces and CNI plugins"]
    async fn hanging_plugin_times_out_and_earlier_plugins_are_deleted() {
        let f = Fixture::new();
        f.conflist("10-net.conflist", "net", &["a", "hang", "b"]);
        let cni = f.cni().with_timeout(Duration::from_millis(800));
        let started = std::time::Instant::now();
        let err = cni.setup(&f.pod()).await.unwrap_err();
        assert!(
            matches!(&err, NetworkError::Timeout { plugin, command } if plugin == "hang" && command == "ADD"),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(
            summary(&f.calls()),
            ["ADD a", "ADD hang", "DEL hang", "DEL a"]
        );
        assert!(f.cache_entries().is_empty());
    }

    #[tokio::test]
    #[ignore = "needs root: network namespaces and CNI plugins"]
    async fn teardown_after_netns_is_gone_uses_a_stand_in_with_the_cached_addresses() {
        let f = Fixture::new();
        f.conflist("10-net.conflist", "net", &["a"]);
        let cni = f.cni();
        let mut pod = f.pod();
        cni.setup(&pod).await.unwrap();
        pod.netns = f.dir.path().join("gone");
        f.plugin(
            "a",
            &format!(
                r#"cat >/dev/null; echo "$CNI_COMMAND a {{\"netns\":\"$CNI_NETNS\"}}" >> {}"#,
                f.log().display()
            ),
        );
        cni.teardown(&pod).await.unwrap();
        let calls = f.calls();
        assert_eq!(calls[1].0, "DEL");
        let netns = calls[1].2["netns"].as_str().unwrap().to_string();
        assert!(
            netns.starts_with("/proc/") && netns.contains("/task/"),
            "{netns}"
        );
        // Gone again once DEL is done.
        assert!(!Path::new(&netns).exists(), "{netns}");
    }

    #[tokio::test]
    #[ignore = "needs root: network namespaces and CNI plugins"]
    async fn a_del_failing_in_the_stand_in_is_retried_without_netns() {
        let f = Fixture::new();
        f.conflist("10-net.conflist", "net", &["a"]);
        let cni = f.cni();
        let mut pod = f.pod();
        cni.setup(&pod).await.unwrap();
        pod.netns = f.dir.path().join("gone");
        // Like the bridge plugin after a reboot: its rules are gone, so DEL fails in a netns.
        f.plugin(
            "a",
            &format!(
                r#"cat >/dev/null; echo "$CNI_COMMAND a {{\"netns\":\"$CNI_NETNS\"}}" >> {}
[ -n "$CNI_NETNS" ] && {{ echo '{{"code":999,"msg":"chain does not exist"}}'; exit 1; }}
exit 0"#,
                f.log().display()
            ),
        );
        cni.teardown(&pod).await.unwrap();
        let calls = f.calls();
        assert_eq!(summary(&calls), ["ADD a", "DEL a", "DEL a"]);
        assert_ne!(calls[1].2["netns"], "");
        assert_eq!(calls[2].2["netns"], "");
        assert!(f.cache_entries().is_empty());
    }

    #[tokio::test]
    #[ignore = "needs root: network namespaces and CNI plugins"]
    async fn teardown_without_netns_or_cached_addresses_passes_empty_netns() {
        let f = Fixture::new();
        f.plugin(
            "noip",
            &format!(
                r#"cat >/dev/null; echo "$CNI_COMMAND noip {{\"netns\":\"$CNI_NETNS\"}}" >> {}
[ "$CNI_COMMAND" = ADD ] && printf '{{"cniVersion":"1.0.0"}}'
exit 0"#,
                f.log().display()
            ),
        );
        f.conflist("10-net.conflist", "net", &["noip"]);
        let cni = f.cni();
        let mut pod = f.pod();
        cni.setup(&pod).await.unwrap();
        pod.netns = f.dir.path().join("gone");
        cni.teardown(&pod).await.unwrap();
        let calls = f.calls();
        assert_eq!(calls[1].0, "DEL");
        assert_eq!(calls[1].2["netns"], "");
    }

    #[tokio::test]
    #[ignore = "needs root: network namespaces and CNI plugins"]
    async fn failed_del_keeps_the_cache_entry_for_a_retry() {
        let f = Fixture::new();
        f.conflist("10-net.conflist", "net", &["a"]);
        let cni = f.cni();
        cni.setup(&f.pod()).await.unwrap();
        f.plugin(
            "a",
            "cat >/dev/null; echo '{\"code\":1,\"msg\":\"nope\"}'; exit 1",
        );
        let err = cni.teardown(&f.pod()).await.unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert_eq!(f.cache_entries(), ["net-sb123-eth0"]);
        f.plugin("a", "cat >/dev/null; exit 0");
        cni.teardown(&f.pod()).await.unwrap();
        assert!(f.cache_entries().is_empty());
    }

    #[tokio::test]
    #[ignore = "needs root: network namespaces and CNI plugins"]
    async fn not_ready_without_config() {
        let f = Fixture::new();
        let cni = f.cni();
        let err = cni.ready().unwrap_err();
        assert!(matches!(err, NetworkError::NotReady { .. }));
        let err = cni.setup(&f.pod()).await.unwrap_err();
        assert!(matches!(err, NetworkError::NotReady { .. }));
        assert!(f.calls().is_empty());
        assert!(f.cache_entries().is_empty());
    }

    #[tokio::test]
    #[ignore = "needs root: network namespaces and CNI plugins"]
    async fn default_network_picks_by_name() {
        let f = Fixture::new();
        f.conflist("10-first.conflist", "first", &["a"]);
        f.conflist("20-second.conflist", "second", &["b"]);
        assert_eq!(f.cni().ready().unwrap(), "first");
        let cni = f.cni().with_default_network(Some("second".into()));
        assert_eq!(cni.ready().unwrap(), "second");
        cni.setup(&f.pod()).await.unwrap();
        assert_eq!(summary(&f.calls()), ["ADD b"]);
        cni.teardown(&f.pod()).await.unwrap();
    }
}
