//! One test's private world: temp root/runroot/socket, a CNI network on a bridge and /24 of its
//! own, a registry mirror onto the local test registry, and the cleanup of all of it.

use super::leaks::{self, LearnedPids};
use super::sys;
use super::{monitor_bin, rand_hex};
use ferrio::config::{Config, LogLevel, MirrorConfig, RegistryConfig, RuntimeHandler};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The environment variable naming the test registry (`host:port`), set by `make test` from
/// `hack/test-registry.sh env`.
pub const REGISTRY_ENV: &str = "FERRIO_TEST_REGISTRY";

/// Subnet octets (10.214.<octet>.0/24) handed out in this process, so parallel tests differ.
static OCTETS: Mutex<Option<HashSet<u8>>> = Mutex::new(None);

/// A last edit of the generated config.
pub type Configure = Box<dyn Fn(&mut Config) + Send + Sync>;

/// How to set up an [`Env`].
pub struct Opts {
    /// Write a conflist into network_dir (false: an empty network_dir, NetworkReady false).
    pub network: bool,
    /// The daemon's log_level.
    pub log_level: LogLevel,
    /// Last word on the generated config (extra runtimes, registries, ...).
    pub configure: Option<Configure>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            network: true,
            log_level: LogLevel::Debug,
            configure: None,
        }
    }
}

impl Opts {
    /// The default set-up with one more runtime handler, `name`, in the config.
    pub fn with_handler(name: &str, handler: RuntimeHandler) -> Opts {
        let name = name.to_string();
        Opts {
            configure: Some(Box::new(move |c| {
                c.runtime.runtimes.insert(name.clone(), handler.clone());
            })),
            ..Default::default()
        }
    }
}

/// Temp dirs, network and config of one test; cleaned up on drop.
pub struct Env {
    dir: tempfile::TempDir,
    /// Network name and bridge name: `fe2e` + 10 hex characters (under IFNAMSIZ).
    name: String,
    octet: u8,
    network: bool,
    config: Config,
    cgroup_parents: Mutex<Vec<String>>,
}

impl Env {
    /// Create the dirs, the conflist and the config file. Panics if `FERRIO_TEST_REGISTRY` is
    /// unset: tests never pull from the internet.
    pub fn new(opts: Opts) -> Env {
        let registry = std::env::var(REGISTRY_ENV)
            .ok()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| {
            panic!(
                "{REGISTRY_ENV} is not set: start the test registry with `hack/test-registry.sh start` \
                 and export {REGISTRY_ENV}=127.0.0.1:5055 (or run `make test`)"
            )
        });
        // Under /var/tmp, not /tmp: overlay upper dirs need a real filesystem, not tmpfs.
        let dir = tempfile::Builder::new()
            .prefix("ferrio-e2e-")
            .tempdir_in("/var/tmp")
            .expect("create a temp dir under /var/tmp");
        let name = format!("fe2e{}", rand_hex(10));
        let octet = pick_octet();
        let mut env = Env {
            dir,
            name,
            octet,
            network: opts.network,
            config: Config::default(),
            cgroup_parents: Mutex::new(Vec::new()),
        };
        for d in [
            env.root(),
            env.runroot(),
            env.network_dir(),
            env.dropin_dir(),
            env.log_dir(),
            env.ipam_dir(),
        ] {
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }

        let mut c = Config {
            root: env.root(),
            runroot: env.runroot(),
            log_level: opts.log_level,
            ..Config::default()
        };
        c.api.listen = env.socket();
        c.api.stream_address = "127.0.0.1".into();
        c.api.stream_port = 0;
        c.runtime.monitor_path = monitor_bin();
        // The suite reads runc's state to check the daemon's (`runc list`, its state dir); the
        // tests of the default handler, crun, name it (crun.rs, userns.rs, the VM's node suite).
        c.runtime.default_runtime = "runc".into();
        c.runtime.namespaces_dir = env.runroot().join("ns");
        c.image.registry = ["registry.k8s.io", "docker.io"]
            .iter()
            .map(|prefix| RegistryConfig {
                prefix: prefix.to_string(),
                location: String::new(),
                insecure: false,
                // Never fall back to the real registry: tests must not touch the internet.
                fallback: false,
                mirror: vec![MirrorConfig {
                    location: registry.clone(),
                    insecure: true,
                    ..Default::default()
                }],
            })
            .collect();
        c.network.network_dir = env.network_dir();
        c.network.plugin_dirs = vec!["/opt/cni/bin".into()];
        // Each daemon its own NRI socket and no pre-installed plugins: tests run side by side.
        c.nri.socket_path = env.runroot().join("nri.sock");
        c.nri.plugin_path = env.dir().join("nri-plugins");
        c.nri.plugin_config_path = env.dir().join("nri-conf.d");
        if let Some(f) = &opts.configure {
            f(&mut c);
        }
        if let Err(e) = c.validate() {
            panic!("the test config is invalid: {e}");
        }
        let text = toml::to_string_pretty(&c).expect("serialize the test config");
        std::fs::write(env.config_path(), text).expect("write the test config");
        if opts.network {
            std::fs::write(
                env.network_dir().join("10-e2e.conflist"),
                serde_json::to_string_pretty(&env.conflist()).expect("conflist json"),
            )
            .expect("write the test conflist");
        }
        env.config = c;
        env
    }

    /// The conflist of this test: bridge + host-local (dataDir inside the temp dir) + portmap.
    fn conflist(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.name,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": self.ipam_dir(),
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "ranges": [[{ "subnet": self.subnet() }]]
                    }
                },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn root(&self) -> PathBuf {
        self.dir().join("root")
    }
    pub fn runroot(&self) -> PathBuf {
        self.dir().join("run")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir().join("ferrio.sock")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("ferrio.toml")
    }
    /// An empty drop-in dir, passed as `--config-dir` where the daemon supports it.
    pub fn dropin_dir(&self) -> PathBuf {
        self.dir().join("ferrio.d")
    }
    pub fn network_dir(&self) -> PathBuf {
        self.dir().join("net.d")
    }
    /// host-local's dataDir: one file per reserved IP below `<ipam_dir>/<network name>/`.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir().join("ipam")
    }
    /// Where pods' log_directory go.
    pub fn log_dir(&self) -> PathBuf {
        self.dir().join("pod-logs")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.dir().join("ferrio.log")
    }
    /// The daemon log's lines that say a stop signal went through the runtime's kill because
    /// the container's monitor could not send it (logged at debug, the harness's default level).
    pub fn stop_signal_fallbacks(&self) -> Vec<String> {
        std::fs::read_to_string(self.daemon_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("stop signal through the runtime instead of the monitor"))
            .map(str::to_string)
            .collect()
    }
    pub fn namespaces_dir(&self) -> PathBuf {
        self.config.namespaces_dir()
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The CNI network name, which is also the bridge's name.
    pub fn network_name(&self) -> &str {
        &self.name
    }
    pub fn bridge(&self) -> &str {
        &self.name
    }
    pub fn has_network(&self) -> bool {
        self.network
    }
    pub fn subnet(&self) -> String {
        format!("10.214.{}.0/24", self.octet)
    }
    /// Whether `ip` is an address of this test's subnet.
    pub fn in_subnet(&self, ip: &str) -> bool {
        match ip.parse::<std::net::Ipv4Addr>() {
            Ok(a) => {
                let o = a.octets();
                o[0] == 10 && o[1] == 214 && o[2] == self.octet
            }
            Err(_) => false,
        }
    }

    /// A new cgroup parent unique to this test (`/ferrio-e2e-<hex>`), remembered for the leak
    /// check and the cleanup.
    pub fn cgroup_parent(&self) -> String {
        let p = format!("/ferrio-e2e-{}", rand_hex(12));
        self.cgroup_parents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p.clone());
        p
    }

    pub fn cgroup_parents(&self) -> Vec<String> {
        self.cgroup_parents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A directory for one pod's logs (the pod's `log_directory`).
    pub fn pod_log_dir(&self, pod: &str) -> PathBuf {
        self.log_dir().join(pod)
    }

    /// Everything the test's objects left behind, one line each.
    pub fn leaks(&self, live_daemons: &[u32], learned: &LearnedPids) -> Vec<String> {
        leaks::find(self, live_daemons, learned)
    }

    /// Remove leftovers now (also done on drop): processes naming the temp dir, runtime state,
    /// the test's cgroups, mounts under the temp dir, the network's iptables rules, the bridge.
    pub fn clean_up(&self) {
        leaks::clean_up(self);
    }

    /// Panic listing everything the test's objects left behind. `live_daemons` are the pids of
    /// daemons still running on this env (their own cmdline names the temp dir).
    pub fn assert_no_leaks(&self, live_daemons: &[u32], learned: &LearnedPids) {
        let problems = leaks::find(self, live_daemons, learned);
        assert!(
            problems.is_empty(),
            "ferrio left things behind:\n  {}",
            problems.join("\n  ")
        );
    }
}

/// A free 10.214.X.0/24: not handed out in this process and not routed on the host.
fn pick_octet() -> u8 {
    let routes = sys::output("ip", &["-4", "-o", "route", "show"]).unwrap_or_default()
        + &sys::output("ip", &["-4", "-o", "addr", "show"]).unwrap_or_default();
    let mut guard = OCTETS.lock().unwrap_or_else(|e| e.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let o = (rand::random::<u8>() % 250) + 2;
        if used.contains(&o) || routes.contains(&format!("10.214.{o}.")) {
            continue;
        }
        used.insert(o);
        return o;
    }
    panic!("no free 10.214.X.0/24 subnet");
}

impl Drop for Env {
    fn drop(&mut self) {
        leaks::clean_up(self);
        if let Some(set) = OCTETS.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            set.remove(&self.octet);
        }
    }
}
