//! The daemon's configuration: TOML, CRI-O's names where they exist.
//!
//! Owns parsing, defaults, drop-in merging and validation. Loading reads files; [`Config::validate`]
//! is pure so tests can check every rule without touching the disk. Nothing here starts or changes
//! anything on the host.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/ferrio/ferrio.toml";
/// Drop-ins next to the main file, applied in lexical order (later wins).
pub const DEFAULT_DROPIN_DIR: &str = "/etc/ferrio/ferrio.d";

/// An error loading or validating the config: always names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: {source}")]
    Invalid { file: String, source: InvalidValue },
}

/// A value [`Config::validate`] refuses: the key's dotted path and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct InvalidValue {
    /// `root`, `runtime.runtimes.runc.runtime_path`, `image.registry[0].mirror[1].timeout`, ...
    pub key: String,
    pub reason: InvalidReason,
}

impl InvalidValue {
    pub fn new(key: impl Into<String>, reason: InvalidReason) -> InvalidValue {
        InvalidValue {
            key: key.into(),
            reason,
        }
    }
}

/// Why a value is refused; the text says what was written and what is wanted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    #[error("{0:?} is not an absolute path")]
    NotAbsolute(PathBuf),
    /// A TLS file of the streaming server, which `stream_enable_tls` requires.
    #[error("{0:?} must be an absolute path when stream_enable_tls is set")]
    TlsFileNotAbsolute(PathBuf),
    #[error("{0:?} is not an IP address")]
    NotIpAddress(String),
    #[error("{0:?} is not an ip:port address")]
    NotSocketAddress(String),
    /// A name outside a closed set; `allowed` reads "one of a, b" or "\"a\" or \"b\"".
    #[error("{value:?} is not {allowed}")]
    NotOneOf {
        value: String,
        allowed: &'static str,
    },
    /// The duration parser's own text.
    #[error("{0}")]
    Duration(String),
    #[error("{name:?} is not a configured runtime (runtime.runtimes has {})", configured.join(", "))]
    UnknownRuntime {
        name: String,
        configured: Vec<String>,
    },
    #[error("must not be empty")]
    Empty,
    #[error("{0:?} must be host[:port][/path], without a scheme")]
    NotAMirrorLocation(String),
    /// A count or number of seconds below its minimum; `what` is the text after "at least".
    #[error("must be at least {0}")]
    TooSmall(&'static str),
    #[error("must name at least one directory")]
    NoDirectory,
    /// A runtime binary that is missing or not executable (a reload checks the host).
    #[error("{} is not an executable file", .0.display())]
    NotExecutable(PathBuf),
    /// Not an image reference; the reference parser's own text.
    #[error("{0}")]
    NotAReference(String),
}

/// The complete daemon configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent state: images, pod and container records. Survives reboots.
    pub root: PathBuf,
    /// Runtime state: bundles, sockets, exit files. Expected on tmpfs (empty after a reboot).
    pub runroot: PathBuf,
    /// error, warn, info, debug or trace.
    pub log_level: LogLevel,
    pub api: ApiConfig,
    pub runtime: RuntimeConfig,
    pub image: ImageConfig,
    pub network: NetworkConfig,
    pub metrics: MetricsConfig,
    pub nri: NriConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Path of the CRI gRPC unix socket.
    pub listen: PathBuf,
    /// Address the streaming server (exec/attach/port-forward) binds to.
    pub stream_address: String,
    /// Port of the streaming server; 0 picks a free port.
    pub stream_port: u16,
    /// Close a streaming connection after this long without traffic (`90s`, `4h`); "" never.
    pub stream_idle_timeout: String,
    /// How long an Exec/Attach/PortForward URL stays valid before its first use.
    pub stream_token_ttl: String,
    /// Serve the streaming server over HTTPS (kubelet connects to it directly on a real node).
    pub stream_enable_tls: bool,
    /// PEM certificate chain of the streaming server (with `stream_enable_tls`).
    pub stream_tls_cert: PathBuf,
    /// PEM private key of the streaming server (with `stream_enable_tls`).
    pub stream_tls_key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// The handler used when a pod names none (must be a key of `runtimes`).
    pub default_runtime: String,
    /// "cgroupfs" or "systemd"; reported to kubelet by RuntimeConfig.
    pub cgroup_manager: CgroupDriver,
    /// ferrio-monitor binary; "" means the one next to the ferrio binary, else the packaged one
    /// in /usr/libexec/ferrio.
    pub monitor_path: PathBuf,
    /// ferrio-envexec binary, which containers with an env value that is not UTF-8 run first;
    /// "" means the one next to the ferrio binary, else the packaged one in /usr/libexec/ferrio.
    pub envexec_path: PathBuf,
    /// Where pinned namespaces live (`netns/`, `ipcns/`, `utsns/` below it), as CRI-O's
    /// `namespaces_dir`. "" means `<runroot>/ns`.
    pub namespaces_dir: PathBuf,
    /// Largest `oom_score_adj` decrease the host allows: kubelet asks for -997/-998 and a host
    /// that refuses negative values makes runc fail. `true` clamps to the daemon's own value,
    /// as containerd's `restrict_oom_score_adj` does.
    pub restrict_oom_score_adj: bool,
    /// Directories of OCI hook files in CRI-O's JSON format (version 1.0.0), as CRI-O's
    /// `hooks_dir`: a file overrides one of the same name in an earlier directory; a missing
    /// directory has no hooks.
    pub hooks_dir: Vec<PathBuf>,
    /// Directories of CDI spec files (`.json`, `.yaml`), as CRI-O's `cdi_spec_dirs`: a device
    /// of a later directory overrides the same device of an earlier one.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// OCI runtimes by handler name (CRI `runtime_handler`).
    pub runtimes: BTreeMap<String, RuntimeHandler>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeHandler {
    /// The OCI runtime binary (runc or crun).
    pub runtime_path: PathBuf,
    /// The runtime's `--root` state dir; "" means `<runroot>/oci/<handler>`.
    pub runtime_root: PathBuf,
    /// On a cgroup v1 hybrid host, run this runtime in a private mount namespace whose
    /// /sys/fs/cgroup holds the v1 hierarchies only (crun refuses hybrid hosts). Unset: yes for
    /// crun, no for others. Ignored on cgroup v2 and pure v1 hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_v1_view: Option<bool>,
    /// Create a container in the runtime only at StartContainer, created and started by one
    /// `run --detach` (as containerd creates its task at start): CreateContainer prepares the
    /// rootfs, spec and bundle. false: CreateContainer runs `create`, StartContainer `start`.
    /// Unset: true. A pod with a user namespace always creates at CreateContainer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defer_create: Option<bool>,
    /// Accepted and ignored, so a config written for an earlier ferrio still loads: every verb
    /// now runs through the runtime's binary. The daemon warns when a file sets it.
    #[serde(default, skip_serializing)]
    pub runc_shortcuts: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// The pause image every pod sandbox runs.
    pub sandbox_image: String,
    /// Images kubelet's garbage collector must never remove (exact names or globs).
    pub pinned_images: Vec<String>,
    /// A docker `config.json`-style auth file used when a pull carries no credentials.
    pub global_auth_file: PathBuf,
    /// Registries with their mirrors, matched by longest prefix.
    pub registry: Vec<RegistryConfig>,
    /// Layers one pull downloads (and unpacks) at the same time.
    pub max_concurrent_downloads: usize,
}

/// One `[[image.registry]]` table, with registries.conf semantics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// The reference prefix this entry applies to (`docker.io`, `docker.io/library`).
    pub prefix: String,
    /// What `prefix` is rewritten to when pulling from the registry itself; "" = prefix.
    pub location: String,
    /// Plain HTTP or unverified TLS allowed.
    pub insecure: bool,
    /// After the mirrors, try `location` itself.
    pub fallback: bool,
    /// Mirrors tried in order before `location`.
    pub mirror: Vec<MirrorConfig>,
}

/// One `[[image.registry.mirror]]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    /// host[:port][/path] that replaces the entry's prefix.
    pub location: String,
    /// Plain HTTP or unverified TLS allowed.
    pub insecure: bool,
    /// Longest this mirror may take to connect, to answer a request, or to stay silent while
    /// sending a blob (`500ms`, `10s`, `2m`); "" = the defaults (5s connect, 30s otherwise).
    /// A dead or stalled mirror costs at most this before the next one is tried.
    pub timeout: String,
    /// Which pulls use this mirror: every one, only pulls by digest, or only pulls by tag.
    pub pull_from_mirror: PullFromMirror,
}

/// `pull_from_mirror` of a mirror (registries.conf's names).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PullFromMirror {
    #[default]
    All,
    DigestOnly,
    TagOnly,
}

/// A closed set of lowercase names a key accepts: parsed from the config files and the command
/// line, written back as the same names.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $key:literal, $allowed:literal, { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order the docs list them.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// The config key that holds this setting.
            pub const KEY: &'static str = $key;

            /// The name as the config file spells it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(InvalidValue::new(
                        $key,
                        InvalidReason::NotOneOf {
                            value: s.to_string(),
                            allowed: $allowed,
                        },
                    )),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        // By hand rather than derived: an unknown name is refused with the allowed ones, in the
        // same words as every other invalid value.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(|e: InvalidValue| serde::de::Error::custom(e.reason))
            }
        }
    };
}

named_enum!(
    /// How much the daemon logs (`log_level`, `--log-level`).
    LogLevel, "log_level", "one of error, warn, info, debug, trace", {
        Error = "error",
        Warn = "warn",
        #[default]
        Info = "info",
        Debug = "debug",
        Trace = "trace",
    }
);

named_enum!(
    /// Who creates the cgroups (`runtime.cgroup_manager`): runc itself under absolute paths
    /// (`cgroupfs`), or systemd scopes inside slices (`systemd`, runc's `--systemd-cgroup`).
    /// Must match kubelet's cgroupDriver.
    CgroupDriver, "runtime.cgroup_manager", "\"cgroupfs\" or \"systemd\"", {
        #[default]
        Cgroupfs = "cgroupfs",
        Systemd = "systemd",
    }
);

/// A duration as written in the config: a number with `ms`, `s`, `m` or `h` (plain = seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    if !(secs > 0.0 && secs < 86_400.0) {
        return Err(format!("{s:?} must be more than 0 and less than a day"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Directory of CNI conflists, loaded in lexical order.
    pub network_dir: PathBuf,
    /// Directories searched for CNI plugin binaries.
    pub plugin_dirs: Vec<PathBuf>,
    /// The conflist (by its `name`) pods get; "" = the first valid one in lexical order.
    pub cni_default_network: String,
    /// Seconds one CNI plugin call may run before it is killed and the pod's create fails.
    pub cni_plugin_timeout: u64,
}

/// The `[nri]` table: node plugins (containerd/nri), with CRI-O's keys and defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NriConfig {
    /// Serve NRI: plugins see pod and container events and may adjust containers.
    pub enable: bool,
    /// The socket external plugins connect to.
    pub socket_path: PathBuf,
    /// Pre-installed plugins (`<index>-<name>` executables) the daemon starts itself.
    pub plugin_path: PathBuf,
    /// Plugin configuration files (`<index>-<name>.conf` or `<name>.conf`) handed to plugins.
    pub plugin_config_path: PathBuf,
    /// Refuse external plugins: only pre-installed ones run, and no socket is opened.
    pub disable_connections: bool,
    /// How long a plugin may take to register after it connected.
    pub plugin_registration_timeout: String,
    /// How long a plugin may take to answer one request before it is dropped.
    pub plugin_request_timeout: String,
}

impl Default for NriConfig {
    fn default() -> Self {
        NriConfig {
            enable: true,
            socket_path: "/var/run/nri/nri.sock".into(),
            plugin_path: "/opt/nri/plugins".into(),
            plugin_config_path: "/etc/nri/conf.d".into(),
            disable_connections: false,
            plugin_registration_timeout: "5s".into(),
            plugin_request_timeout: "2s".into(),
        }
    }
}

/// The `[metrics]` table: a Prometheus endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` over HTTP.
    pub enable: bool,
    /// ip:port to listen on; loopback by default so nothing is exposed by accident.
    pub address: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enable: false,
            address: "127.0.0.1:9537".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: "/var/lib/ferrio".into(),
            runroot: "/run/ferrio".into(),
            log_level: LogLevel::Info,
            api: ApiConfig::default(),
            runtime: RuntimeConfig::default(),
            image: ImageConfig::default(),
            network: NetworkConfig::default(),
            metrics: MetricsConfig::default(),
            nri: NriConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "/run/ferrio/ferrio.sock".into(),
            stream_address: "127.0.0.1".into(),
            stream_port: 0,
            stream_idle_timeout: String::new(),
            stream_token_ttl: "1m".into(),
            stream_enable_tls: false,
            stream_tls_cert: PathBuf::new(),
            stream_tls_key: PathBuf::new(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let mut runtimes = BTreeMap::new();
        runtimes.insert(
            "runc".to_string(),
            RuntimeHandler {
                runtime_path: "/usr/sbin/runc".into(),
                runtime_root: PathBuf::new(),
                cgroup_v1_view: None,
                defer_create: None,
                runc_shortcuts: None,
            },
        );
        runtimes.insert(
            "crun".to_string(),
            RuntimeHandler {
                runtime_path: "/usr/bin/crun".into(),
                runtime_root: PathBuf::new(),
                cgroup_v1_view: None,
                defer_create: None,
                runc_shortcuts: None,
            },
        );
        RuntimeConfig {
            default_runtime: "crun".into(),
            cgroup_manager: CgroupDriver::Cgroupfs,
            monitor_path: PathBuf::new(),
            envexec_path: PathBuf::new(),
            namespaces_dir: PathBuf::new(),
            hooks_dir: vec![PathBuf::from("/usr/share/containers/oci/hooks.d")],
            cdi_spec_dirs: vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")],
            restrict_oom_score_adj: true,
            runtimes,
        }
    }
}

impl Default for RuntimeHandler {
    fn default() -> Self {
        RuntimeHandler {
            runtime_path: "/usr/sbin/runc".into(),
            runtime_root: PathBuf::new(),
            cgroup_v1_view: None,
            defer_create: None,
            runc_shortcuts: None,
        }
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            sandbox_image: "registry.k8s.io/pause:3.10".into(),
            pinned_images: Vec::new(),
            global_auth_file: PathBuf::new(),
            registry: Vec::new(),
            max_concurrent_downloads: 3,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            network_dir: "/etc/cni/net.d".into(),
            // /opt/cni/bin is where kubelet-era tooling installs plugins; /usr/lib/cni is where
            // Debian's containernetworking-plugins puts them.
            plugin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            cni_default_network: String::new(),
            cni_plugin_timeout: 60,
        }
    }
}

impl RegistryConfig {
    /// The registry itself: `location`, or `prefix` when no location is set.
    pub fn effective_location(&self) -> &str {
        if self.location.is_empty() {
            &self.prefix
        } else {
            &self.location
        }
    }
}

/// Parse one TOML document into a table, naming the file on error.
fn parse_table(file: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        file: file.to_path_buf(),
        message: one_line(&e.to_string()),
    })
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Merge `over` into `base`: tables merge key by key, everything else (arrays included) is replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// Load `file` (it must exist when given explicitly) or the default file (optional), then the
    /// drop-ins of `dropin_dir` in lexical order, over the embedded defaults, and validate.
    pub fn load(file: Option<&Path>, dropin_dir: Option<&Path>) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::new();
        let mut sources: Vec<PathBuf> = Vec::new();
        let main = file.unwrap_or(Path::new(DEFAULT_CONFIG_FILE));
        match std::fs::read_to_string(main) {
            Ok(text) => {
                let t = parse_table(main, &text)?;
                Self::check_file(main, &t)?;
                merge(&mut merged, t);
                sources.push(main.to_path_buf());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.is_none() => {}
            Err(source) => {
                return Err(ConfigError::Read {
                    file: main.to_path_buf(),
                    source,
                })
            }
        }
        let dropins = dropin_dir.unwrap_or(Path::new(DEFAULT_DROPIN_DIR));
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(dropins) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect(),
            Err(_) => Vec::new(),
        };
        entries.sort();
        for p in entries {
            let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                file: p.clone(),
                source,
            })?;
            let t = parse_table(&p, &text)?;
            Self::check_file(&p, &t)?;
            merge(&mut merged, t);
            sources.push(p);
        }
        let names = if sources.is_empty() {
            "<defaults>".to_string()
        } else {
            sources
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cfg: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                file: names.clone().into(),
                message: one_line(&e.to_string()),
            })?;
        cfg.validate().map_err(|source| ConfigError::Invalid {
            file: names,
            source,
        })?;
        Ok(cfg)
    }

    /// Deserialize one file on its own so an unknown key or a wrong type is reported against the
    /// file that holds it, with the key's path in the message.
    fn check_file(file: &Path, t: &toml::Table) -> Result<(), ConfigError> {
        let _: Config =
            toml::Value::Table(t.clone())
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    file: file.to_path_buf(),
                    message: one_line(&e.to_string()),
                })?;
        Ok(())
    }

    /// Parse a config from a string with no drop-ins (tests, `ferrio config --check`).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file = Path::new("<string>");
        let t = parse_table(file, text)?;
        let cfg: Config = toml::Value::Table(t)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                file: file.to_path_buf(),
                message: one_line(&e.to_string()),
            })?;
        cfg.validate().map_err(|source| ConfigError::Invalid {
            file: "<string>".into(),
            source,
        })?;
        Ok(cfg)
    }

    /// Check every value; the first refused one is returned with its key. Pure.
    /// Keys a file sets that this version accepts but no longer uses, each with why: the daemon
    /// logs them at start.
    pub fn ignored_keys(&self) -> Vec<(String, &'static str)> {
        self.runtime
            .runtimes
            .iter()
            .filter(|(_, h)| h.runc_shortcuts.is_some())
            .map(|(name, _)| {
                (
                    format!("runtime.runtimes.{name}.runc_shortcuts"),
                    "every verb runs through the runtime's binary",
                )
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), InvalidValue> {
        use InvalidReason as R;
        let bad = |k: &str, r: InvalidReason| Err(InvalidValue::new(k, r));
        let absolute = |k: &str, p: &Path| {
            if p.is_absolute() {
                Ok(())
            } else {
                bad(k, R::NotAbsolute(p.to_path_buf()))
            }
        };
        absolute("root", &self.root)?;
        absolute("runroot", &self.runroot)?;
        absolute("api.listen", &self.api.listen)?;
        if self.api.stream_address.parse::<std::net::IpAddr>().is_err() {
            return bad(
                "api.stream_address",
                R::NotIpAddress(self.api.stream_address.clone()),
            );
        }
        for (key, value) in [
            ("api.stream_idle_timeout", &self.api.stream_idle_timeout),
            ("api.stream_token_ttl", &self.api.stream_token_ttl),
        ] {
            if let Err(reason) = crate::streaming::parse_duration(value) {
                return bad(key, R::Duration(reason));
            }
        }
        if self.api.stream_enable_tls {
            for (key, path) in [
                ("api.stream_tls_cert", &self.api.stream_tls_cert),
                ("api.stream_tls_key", &self.api.stream_tls_key),
            ] {
                if !path.is_absolute() {
                    return bad(key, R::TlsFileNotAbsolute(path.clone()));
                }
            }
        }
        if !self
            .runtime
            .runtimes
            .contains_key(&self.runtime.default_runtime)
        {
            return bad(
                "runtime.default_runtime",
                R::UnknownRuntime {
                    name: self.runtime.default_runtime.clone(),
                    configured: self.runtime.runtimes.keys().cloned().collect(),
                },
            );
        }
        for (name, h) in &self.runtime.runtimes {
            absolute(
                &format!("runtime.runtimes.{name}.runtime_path"),
                &h.runtime_path,
            )?;
        }
        if self.image.sandbox_image.trim().is_empty() {
            return bad("image.sandbox_image", R::Empty);
        }
        for (i, r) in self.image.registry.iter().enumerate() {
            if r.prefix.is_empty() {
                return bad(&format!("image.registry[{i}].prefix"), R::Empty);
            }
            for (j, m) in r.mirror.iter().enumerate() {
                if m.location.is_empty() || m.location.contains("://") {
                    return bad(
                        &format!("image.registry[{i}].mirror[{j}].location"),
                        R::NotAMirrorLocation(m.location.clone()),
                    );
                }
                if !m.timeout.is_empty() {
                    if let Err(reason) = parse_duration(&m.timeout) {
                        return bad(
                            &format!("image.registry[{i}].mirror[{j}].timeout"),
                            R::Duration(reason),
                        );
                    }
                }
            }
        }
        if self
            .metrics
            .address
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return bad(
                "metrics.address",
                R::NotSocketAddress(self.metrics.address.clone()),
            );
        }
        if self.network.cni_plugin_timeout == 0 {
            return bad("network.cni_plugin_timeout", R::TooSmall("1 second"));
        }
        if self.image.max_concurrent_downloads == 0 {
            return bad("image.max_concurrent_downloads", R::TooSmall("1"));
        }
        if self.network.plugin_dirs.is_empty() {
            return bad("network.plugin_dirs", R::NoDirectory);
        }
        absolute("nri.socket_path", &self.nri.socket_path)?;
        for (key, value) in [
            (
                "nri.plugin_registration_timeout",
                &self.nri.plugin_registration_timeout,
            ),
            (
                "nri.plugin_request_timeout",
                &self.nri.plugin_request_timeout,
            ),
        ] {
            if let Err(reason) = parse_duration(value) {
                return bad(key, R::Duration(reason));
            }
        }
        Ok(())
    }

    /// The directory pinned namespaces are kept in.
    pub fn namespaces_dir(&self) -> PathBuf {
        if self.runtime.namespaces_dir.as_os_str().is_empty() {
            self.runroot.join("ns")
        } else {
            self.runtime.namespaces_dir.clone()
        }
    }

    /// The runtime's `--root` for `handler`.
    pub fn runtime_root(&self, handler: &str) -> Option<PathBuf> {
        let h = self.runtime.runtimes.get(handler)?;
        Some(if h.runtime_root.as_os_str().is_empty() {
            self.runroot.join("oci").join(handler)
        } else {
            h.runtime_root.clone()
        })
    }

    /// The registry entry whose prefix is the longest match for `reference` (without scheme), if any.
    /// A prefix matches at a path or tag boundary only: `docker.io/lib` does not match
    /// `docker.io/library/busybox`.
    pub fn registry_for(&self, reference: &str) -> Option<&RegistryConfig> {
        self.image
            .registry
            .iter()
            .filter(|r| {
                reference == r.prefix
                    || reference
                        .strip_prefix(r.prefix.as_str())
                        .is_some_and(|rest| rest.starts_with(['/', ':', '@']))
            })
            .max_by_key(|r| r.prefix.len())
    }

    /// The effective config as commented TOML, like `crio config`: each table and key with its
    /// line from [`CONFIG_KEYS`] above it.
    pub fn to_commented_toml(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        let mut out = String::from(
            "# ferrio configuration (effective values).\n\
             # Loaded from /etc/ferrio/ferrio.toml, then /etc/ferrio/ferrio.d/*.toml in lexical order.\n\n",
        );
        let mut table: Vec<String> = Vec::new();
        let mut in_multiline_string = false;
        for line in body.lines() {
            let path = if in_multiline_string || line.starts_with([' ', '\t', '#', '"', ']']) {
                None
            } else if let Some(header) = line.strip_prefix('[') {
                let header = header.trim_start_matches('[');
                let header = header.trim_end().trim_end_matches(']');
                table = header_segments(header);
                Some(doc_path(&table))
            } else {
                line.split_once(" = ").map(|(k, _)| {
                    let mut segments = table.clone();
                    segments.push(k.trim().to_string());
                    doc_path(&segments)
                })
            };
            if let Some(doc) = path.as_deref().and_then(key_doc) {
                out.push_str(&comment_lines(doc.doc, 98));
            }
            out.push_str(line);
            out.push('\n');
            if (line.matches("\"\"\"").count() + line.matches("'''").count()) % 2 == 1 {
                in_multiline_string = !in_multiline_string;
            }
        }
        out
    }
}

/// A value the daemon swaps on reload (SIGHUP) while requests keep running: the config itself,
/// and the parts built from it (the CNI network). Cloning shares the holder. A reader takes a
/// snapshot with [`Live::load`] and keeps it for the whole request, so one RPC sees one config.
pub struct Live<T>(std::sync::Arc<std::sync::RwLock<std::sync::Arc<T>>>);

/// The daemon's config as a reload may replace it.
pub type LiveConfig = Live<Config>;

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(value),
        )))
    }

    /// The current value; later swaps do not change the snapshot.
    pub fn load(&self) -> std::sync::Arc<T> {
        // A poisoned lock only means a writer panicked between two plain assignments: the
        // value inside is whole either way.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the value for every later [`Live::load`].
    pub fn store(&self, value: std::sync::Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(self.0.clone())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Live").field(&self.load()).finish()
    }
}

/// What a reload changes, key by key: the settings applied to the running daemon, and those
/// that only a restart can change (they stay as they were).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigChanges {
    /// Keys applied live (`image.sandbox_image`, `runtime.runtimes.kata`, ...).
    pub applied: Vec<String>,
    /// Keys that changed in the files but keep their old value until a restart.
    pub needs_restart: Vec<String>,
}

impl ConfigChanges {
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.needs_restart.is_empty()
    }
}

impl Config {
    /// The config a reload puts in force: `new`'s live settings over this config's settings that
    /// need a restart, with what changed on each side. Pure; `new` is already validated.
    ///
    /// Live: log level, sandbox image, pinned images, registries and mirrors (auth, insecure),
    /// download concurrency, runtime handlers and the default one, `restrict_oom_score_adj`,
    /// the CNI network dir, default network and plugin timeout, NRI's plugin and config dirs,
    /// timeouts and `disable_connections`. Everything a running part was
    /// built with at start (paths of state and sockets, the cgroup driver, the monitor, the
    /// streaming and metrics servers, CNI plugin dirs that running pods' teardown needs) needs a
    /// restart.
    pub fn reloaded(&self, new: &Config) -> (Config, ConfigChanges) {
        // Every key is sorted into live or restart below; a new field breaks these patterns
        // until it is.
        let Config {
            root: _,
            runroot: _,
            log_level: _,
            api: _,
            runtime: _,
            image: _,
            network: _,
            metrics: _,
            nri: _,
        } = new;
        let ApiConfig {
            listen: _,
            stream_address: _,
            stream_port: _,
            stream_idle_timeout: _,
            stream_token_ttl: _,
            stream_enable_tls: _,
            stream_tls_cert: _,
            stream_tls_key: _,
        } = &new.api;
        let RuntimeConfig {
            default_runtime: _,
            cgroup_manager: _,
            monitor_path: _,
            envexec_path: _,
            namespaces_dir: _,
            restrict_oom_score_adj: _,
            hooks_dir: _,
            cdi_spec_dirs: _,
            runtimes: _,
        } = &new.runtime;
        let ImageConfig {
            sandbox_image: _,
            pinned_images: _,
            global_auth_file: _,
            registry: _,
            max_concurrent_downloads: _,
        } = &new.image;
        let NetworkConfig {
            network_dir: _,
            plugin_dirs: _,
            cni_default_network: _,
            cni_plugin_timeout: _,
        } = &new.network;
        let MetricsConfig {
            enable: _,
            address: _,
        } = &new.metrics;
        let NriConfig {
            enable: _,
            socket_path: _,
            plugin_path: _,
            plugin_config_path: _,
            disable_connections: _,
            plugin_registration_timeout: _,
            plugin_request_timeout: _,
        } = &new.nri;
        let mut changes = ConfigChanges::default();
        let mut live = self.clone();
        macro_rules! apply {
            ($key:expr, $($f:ident).+) => {
                if self.$($f).+ != new.$($f).+ {
                    changes.applied.push($key.to_string());
                    live.$($f).+ = new.$($f).+.clone();
                }
            };
        }
        macro_rules! restart {
            ($key:expr, $($f:ident).+) => {
                if self.$($f).+ != new.$($f).+ {
                    changes.needs_restart.push($key.to_string());
                }
            };
        }
        apply!("log_level", log_level);
        apply!("image.sandbox_image", image.sandbox_image);
        apply!("image.pinned_images", image.pinned_images);
        apply!("image.global_auth_file", image.global_auth_file);
        apply!("image.registry", image.registry);
        apply!(
            "image.max_concurrent_downloads",
            image.max_concurrent_downloads
        );
        apply!("runtime.default_runtime", runtime.default_runtime);
        apply!(
            "runtime.restrict_oom_score_adj",
            runtime.restrict_oom_score_adj
        );
        // Read at each CreateContainer: a new list applies to the next one.
        apply!("runtime.hooks_dir", runtime.hooks_dir);
        apply!("runtime.cdi_spec_dirs", runtime.cdi_spec_dirs);
        let (old_h, new_h) = (&self.runtime.runtimes, &new.runtime.runtimes);
        for name in old_h
            .keys()
            .chain(new_h.keys().filter(|k| !old_h.contains_key(*k)))
        {
            if old_h.get(name) != new_h.get(name) {
                changes.applied.push(format!("runtime.runtimes.{name}"));
            }
        }
        live.runtime.runtimes = new_h.clone();
        apply!("network.network_dir", network.network_dir);
        apply!("network.cni_default_network", network.cni_default_network);
        apply!("network.cni_plugin_timeout", network.cni_plugin_timeout);
        // The NRI room takes these on reload: plugins found in the plugin dir then are started, the
        // timeouts hold for the next request, and the socket opens or closes.
        apply!("nri.plugin_path", nri.plugin_path);
        apply!("nri.plugin_config_path", nri.plugin_config_path);
        apply!("nri.disable_connections", nri.disable_connections);
        apply!(
            "nri.plugin_registration_timeout",
            nri.plugin_registration_timeout
        );
        apply!("nri.plugin_request_timeout", nri.plugin_request_timeout);

        restart!("root", root);
        restart!("runroot", runroot);
        restart!("api.listen", api.listen);
        restart!("api.stream_address", api.stream_address);
        restart!("api.stream_port", api.stream_port);
        restart!("api.stream_idle_timeout", api.stream_idle_timeout);
        restart!("api.stream_token_ttl", api.stream_token_ttl);
        restart!("api.stream_enable_tls", api.stream_enable_tls);
        restart!("api.stream_tls_cert", api.stream_tls_cert);
        restart!("api.stream_tls_key", api.stream_tls_key);
        restart!("runtime.cgroup_manager", runtime.cgroup_manager);
        restart!("runtime.monitor_path", runtime.monitor_path);
        restart!("runtime.envexec_path", runtime.envexec_path);
        restart!("runtime.namespaces_dir", runtime.namespaces_dir);
        restart!("network.plugin_dirs", network.plugin_dirs);
        restart!("metrics.enable", metrics.enable);
        restart!("metrics.address", metrics.address);
        restart!("nri.enable", nri.enable);
        restart!("nri.socket_path", nri.socket_path);
        (live, changes)
    }
}

/// What a documented config path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A `[table]` of keys.
    Table,
    /// An `[[array]]` of tables.
    TableArray,
    /// A key with a value.
    Value,
    /// A key every table of its array must set.
    Required,
}

/// One table or key of the config file and what it means.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// Dotted path; the handler name of a `runtime.runtimes` table is written `<handler>`.
    pub path: &'static str,
    pub kind: KeyKind,
    pub doc: &'static str,
}

const fn table(path: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc {
        path,
        kind: KeyKind::Table,
        doc,
    }
}

const fn table_array(path: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc {
        path,
        kind: KeyKind::TableArray,
        doc,
    }
}

const fn key(path: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc {
        path,
        kind: KeyKind::Value,
        doc,
    }
}

const fn required(path: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc {
        path,
        kind: KeyKind::Required,
        doc,
    }
}

/// The tables keyed by a name the admin chooses, and how their docs spell that name.
const NAMED_TABLES: &[(&str, &str)] = &[("runtime.runtimes", "<handler>")];

/// Every table and key of the config file, in file order, documented once: `ferrio config`
/// prints these as comments and `ferrio man ferrio.toml` renders them with their defaults
/// (ferrio.toml(5)). A test checks that every key of [`Config`] is here.
pub const CONFIG_KEYS: &[KeyDoc] = &[
    key("root", "Persistent state: images, pod and container records. Survives reboots."),
    key("runroot", "Runtime state: bundles, sockets, exit files. Expected on tmpfs (empty after a reboot)."),
    key("log_level", "error, warn, info, debug or trace."),
    table("api", "The CRI endpoint and the streaming server."),
    key("api.listen", "Unix socket kubelet and crictl connect to (mode 0660; a second ferrio on it is refused)."),
    key("api.stream_address", "IP address the exec/attach/port-forward server binds to."),
    key("api.stream_port", "Port of the streaming server; 0 picks a free one."),
    key("api.stream_idle_timeout", "Close an idle exec/attach/port-forward connection after this long (\"90s\", \"4h\"); \"\" = never."),
    key("api.stream_token_ttl", "How long an Exec/Attach/PortForward URL stays valid before its first use."),
    key("api.stream_enable_tls", "Serve exec/attach/port-forward over HTTPS with stream_tls_cert and stream_tls_key (kubelet connects to it directly on a real node)."),
    key("api.stream_tls_cert", "PEM certificate chain of the streaming server."),
    key("api.stream_tls_key", "PEM private key of the streaming server."),
    table("runtime", "OCI runtimes and how containers are run."),
    key("runtime.default_runtime", "Handler used when a pod names none; a key of runtime.runtimes."),
    key("runtime.cgroup_manager", "\"cgroupfs\" or \"systemd\"; must match kubelet's cgroupDriver."),
    key("runtime.monitor_path", "ferrio-monitor binary; \"\" = next to the ferrio binary, else /usr/libexec/ferrio/ferrio-monitor."),
    key("runtime.envexec_path", "ferrio-envexec binary, run first by containers with an env value that is not UTF-8; \"\" = next to the ferrio binary, else /usr/libexec/ferrio/ferrio-envexec."),
    key("runtime.namespaces_dir", "Where pinned namespaces live (netns/, ipcns/, utsns/ below it); \"\" = <runroot>/ns."),
    key("runtime.restrict_oom_score_adj", "Clamp containers' oom_score_adj to what the host allows (kubelet asks for -997/-998)."),
    key("runtime.hooks_dir", "Directories of OCI hook files (CRI-O's JSON format); a file overrides one of the same name in an earlier directory."),
    key("runtime.cdi_spec_dirs", "Directories of CDI spec files (.json, .yaml); a device of a later directory overrides the same device of an earlier one."),
    table("runtime.runtimes.<handler>", "An OCI runtime, by the handler name pods ask for (CRI runtime_handler)."),
    key("runtime.runtimes.<handler>.runtime_path", "The OCI runtime binary (runc or crun)."),
    key("runtime.runtimes.<handler>.runtime_root", "The runtime's --root; \"\" = <runroot>/oci/<handler>."),
    key("runtime.runtimes.<handler>.cgroup_v1_view", "On a cgroup v1 hybrid host, hide the cgroup2 mount from this runtime (unset: on for crun, which refuses hybrid hosts, off for others)."),
    key("runtime.runtimes.<handler>.defer_create", "Create containers in the runtime at StartContainer, with one `run --detach` that also starts them (unset: true); false: `create` at CreateContainer, `start` at StartContainer."),
    table("image", "Images and registries."),
    key("image.sandbox_image", "The pause image every pod runs."),
    key("image.pinned_images", "Images kubelet's image garbage collector never removes (names or globs)."),
    key("image.global_auth_file", "docker config.json-style credentials for pulls that carry none."),
    key("image.max_concurrent_downloads", "Layers one pull downloads (and unpacks) at the same time."),
    table_array("image.registry", "A registry prefix (registries.conf semantics): rewritten to location; the mirrors are tried first."),
    required("image.registry.prefix", "Reference prefix matched (docker.io, docker.io/library); the longest match at a /, : or @ boundary wins."),
    key("image.registry.location", "What prefix is rewritten to when pulling from the registry itself; \"\" = prefix."),
    key("image.registry.insecure", "Allow plain HTTP or unverified TLS for location."),
    key("image.registry.fallback", "After the mirrors, try location itself."),
    table_array("image.registry.mirror", "A mirror of the registry entry, tried in order before location."),
    required("image.registry.mirror.location", "host[:port][/path], without a scheme, replacing the prefix."),
    key("image.registry.mirror.insecure", "Allow plain HTTP or unverified TLS for this mirror."),
    key("image.registry.mirror.timeout", "Longest this mirror may take to connect, answer, or stay silent mid-blob (\"500ms\", \"10s\"); \"\" = 5s connect, 30s otherwise."),
    key("image.registry.mirror.pull_from_mirror", "Which pulls use this mirror: \"all\", \"digest-only\" or \"tag-only\"."),
    table("network", "CNI: how pods get their network."),
    key("network.network_dir", "CNI conflists, loaded in lexical order."),
    key("network.plugin_dirs", "Directories searched for CNI plugin binaries, in order."),
    key("network.cni_default_network", "Network (conflist name) pods get; \"\" = the first valid one in lexical order."),
    key("network.cni_plugin_timeout", "Seconds a CNI plugin call may run before it is killed and the pod's create fails."),
    table("metrics", "Prometheus endpoint."),
    key("metrics.enable", "Serve /metrics over HTTP."),
    key("metrics.address", "ip:port of the metrics endpoint (loopback by default, so nothing is exposed by accident)."),
    table("nri", "NRI node plugins (containerd/nri): they see pod and container events and may adjust containers."),
    key("nri.enable", "Serve NRI plugins."),
    key("nri.socket_path", "Unix socket external plugins connect to."),
    key("nri.plugin_path", "Pre-installed plugins, <index>-<name> executables the daemon starts itself."),
    key("nri.plugin_config_path", "Plugin configuration: <index>-<name>.conf or <name>.conf, handed to the plugin."),
    key("nri.disable_connections", "Refuse external plugins (no socket); only pre-installed ones run."),
    key("nri.plugin_registration_timeout", "How long a plugin may take to register after connecting (\"5s\")."),
    key("nri.plugin_request_timeout", "How long a plugin may take to answer one event before it is dropped (\"2s\")."),
];

/// The documentation of `path` (as [`CONFIG_KEYS`] spells it).
pub fn key_doc(path: &str) -> Option<&'static KeyDoc> {
    CONFIG_KEYS.iter().find(|k| k.path == path)
}

/// The documented path of a key given as its segments: the name of a named table becomes its
/// placeholder (`runtime.runtimes.runc.runtime_path` is `runtime.runtimes.<handler>.runtime_path`).
pub fn doc_path<S: AsRef<str>>(segments: &[S]) -> String {
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for s in segments {
        let parent = out.join(".");
        match NAMED_TABLES.iter().find(|(table, _)| *table == parent) {
            Some((_, placeholder)) => out.push(placeholder),
            None => out.push(s.as_ref()),
        }
    }
    out.join(".")
}

/// The default of a documented key: from [`Config::default`], or for a key of a named table or
/// a table array, from that table's own default. None for keys without one (unset options,
/// tables).
pub fn key_default(path: &str) -> Option<toml::Value> {
    let (base, rest) = if let Some(rest) = path.strip_prefix("runtime.runtimes.<handler>.") {
        (toml::Value::try_from(RuntimeHandler::default()), rest)
    } else if let Some(rest) = path.strip_prefix("image.registry.mirror.") {
        (toml::Value::try_from(MirrorConfig::default()), rest)
    } else if let Some(rest) = path.strip_prefix("image.registry.") {
        (toml::Value::try_from(RegistryConfig::default()), rest)
    } else {
        (toml::Value::try_from(Config::default()), path)
    };
    let mut value = base.ok()?;
    for segment in rest.split('.') {
        value = value.as_table()?.get(segment)?.clone();
    }
    Some(value)
}

/// The segments of a TOML table header's dotted key (`runtime.runtimes."a.b"` is `runtime`,
/// `runtimes`, `a.b`). Escapes inside quoted keys are kept as written: handler names are plain.
fn header_segments(header: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in header.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, '.') => segments.push(std::mem::take(&mut current)),
            (None, c) if c.is_whitespace() => {}
            (None, c) => current.push(c),
        }
    }
    segments.push(current);
    segments
}

/// `text` as `# ` comment lines of at most about `width` columns.
fn comment_lines(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(&format!("# {line}\n"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&format!("# {line}\n"));
    }
    out
}

/// Every table and key a config can hold, as [`CONFIG_KEYS`] spells them, from a config with
/// every optional part filled in (a registry with a mirror, a handler with every option).
#[cfg(test)]
pub(crate) fn config_key_paths() -> Vec<(String, KeyKind)> {
    fn walk(table: &toml::Table, prefix: &mut Vec<String>, out: &mut Vec<(String, KeyKind)>) {
        for (k, v) in table {
            prefix.push(k.clone());
            let path = doc_path(prefix);
            match v {
                toml::Value::Table(t) => {
                    // A named table's map itself is documented by its entries' table.
                    if !NAMED_TABLES.iter().any(|(named, _)| *named == path) {
                        out.push((path, KeyKind::Table));
                    }
                    walk(t, prefix, out);
                }
                toml::Value::Array(a) if a.first().is_some_and(toml::Value::is_table) => {
                    out.push((path, KeyKind::TableArray));
                    if let Some(t) = a.first().and_then(toml::Value::as_table) {
                        walk(t, prefix, out);
                    }
                }
                _ => out.push((path, KeyKind::Value)),
            }
            prefix.pop();
        }
    }
    let mut full = Config::default();
    full.image.registry.push(RegistryConfig {
        prefix: "docker.io".into(),
        mirror: vec![MirrorConfig::default()],
        ..Default::default()
    });
    for h in full.runtime.runtimes.values_mut() {
        h.cgroup_v1_view = Some(true);
        h.defer_create = Some(true);
    }
    let mut out = Vec::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(&full) {
        walk(&t, &mut Vec::new(), &mut out);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_documented_names() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.api.listen, PathBuf::from("/run/ferrio/ferrio.sock"));
        assert_eq!(c.runtime.default_runtime, "crun");
        assert_eq!(c.image.sandbox_image, "registry.k8s.io/pause:3.10");
        assert_eq!(
            c.network.plugin_dirs,
            [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn a_key_this_version_no_longer_uses_still_loads_and_is_named() {
        let c = Config::from_toml(
            "[runtime]\ndefault_runtime = \"runc\"\n[runtime.runtimes.runc]\nruntime_path = \"/usr/sbin/runc\"\nrunc_shortcuts = false\n",
        )
        .unwrap();
        let ignored = c.ignored_keys();
        assert_eq!(ignored.len(), 1, "{ignored:?}");
        assert_eq!(ignored[0].0, "runtime.runtimes.runc.runc_shortcuts");
        assert!(Config::default().ignored_keys().is_empty());
        // Never written back: `ferrio config` shows only keys that do something.
        assert!(!c.to_commented_toml().contains("runc_shortcuts"));
    }

    #[test]
    fn full_example_parses() {
        let c = Config::from_toml(
            r#"
root = "/var/lib/ferrio"
runroot = "/run/ferrio"
log_level = "debug"
[api]
listen = "/run/ferrio/ferrio.sock"
stream_address = "127.0.0.1"
stream_port = 0
[runtime]
default_runtime = "runc"
cgroup_manager = "cgroupfs"
monitor_path = ""
[runtime.runtimes.runc]
runtime_path = "/usr/sbin/runc"
[runtime.runtimes.crun]
runtime_path = "/usr/bin/crun"
[image]
sandbox_image = "registry.k8s.io/pause:3.10"
[[image.registry]]
prefix = "registry.k8s.io"
location = "registry.k8s.io"
insecure = false
fallback = true
[[image.registry.mirror]]
location = "127.0.0.1:5000"
insecure = true
[network]
network_dir = "/etc/cni/net.d"
plugin_dirs = ["/opt/cni/bin"]
"#,
        )
        .unwrap();
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.image.registry[0].mirror[0].location, "127.0.0.1:5000");
        assert!(c.image.registry[0].fallback);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[api]\nlisten_on = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_on"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = Config::from_toml("[api]\nstream_port = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stream_port"), "{e}");
    }

    #[test]
    fn invalid_values_name_key_and_reason() {
        let e = Config::from_toml("log_level = \"loud\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_level") && e.contains("loud"), "{e}");
        let e = Config::from_toml("[runtime]\ndefault_runtime = \"kata\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtime.default_runtime"), "{e}");
        let e = Config::from_toml("[runtime]\ncgroup_manager = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtime.cgroup_manager"), "{e}");
        let e = Config::from_toml("root = \"rel\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("root"), "{e}");
        let e = Config::from_toml(
            "[[image.registry]]\nprefix = \"a\"\n[[image.registry.mirror]]\nlocation = \"http://x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("image.registry[0].mirror[0].location"), "{e}");
    }

    #[test]
    fn dropins_apply_in_lexical_order_and_later_wins() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("ferrio.toml");
        std::fs::write(&main, "log_level = \"warn\"\n[api]\nstream_port = 1000\n").unwrap();
        let d = dir.path().join("ferrio.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("20-b.toml"), "log_level = \"error\"\n").unwrap();
        std::fs::write(d.join("10-a.toml"), "log_level = \"debug\"\n").unwrap();
        std::fs::write(d.join("ignored.txt"), "garbage").unwrap();
        let c = Config::load(Some(&main), Some(&d)).unwrap();
        assert_eq!(c.log_level, LogLevel::Error);
        assert_eq!(
            c.api.stream_port, 1000,
            "a drop-in keeps keys it does not set"
        );
    }

    #[test]
    fn bad_dropin_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("ferrio.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("10-a.toml"), "[network]\nbogus = 1\n").unwrap();
        let e = Config::load(Some(&dir.path().join("none.toml")), Some(&d));
        assert!(e.is_err(), "an explicit missing main file is an error");
        std::fs::write(dir.path().join("m.toml"), "").unwrap();
        let e = Config::load(Some(&dir.path().join("m.toml")), Some(&d))
            .unwrap_err()
            .to_string();
        assert!(e.contains("10-a.toml") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn registry_matched_by_longest_prefix_at_a_boundary() {
        let c = Config::from_toml(
            "[[image.registry]]\nprefix = \"docker.io\"\n[[image.registry]]\nprefix = \"docker.io/library\"\n[[image.registry]]\nprefix = \"docker.io/lib\"\n",
        )
        .unwrap();
        assert_eq!(
            c.registry_for("docker.io/library/busybox:1")
                .unwrap()
                .prefix,
            "docker.io/library"
        );
        assert_eq!(
            c.registry_for("docker.io/other/x").unwrap().prefix,
            "docker.io"
        );
        assert!(c.registry_for("quay.io/x").is_none());
    }

    #[test]
    fn commented_output_round_trips() {
        let c = Config::default();
        let text = c.to_commented_toml();
        assert!(text.contains("# The pause image every pod runs.\nsandbox_image = "));
        assert_eq!(Config::from_toml(&text).unwrap(), c);
    }

    #[test]
    fn commented_output_documents_nested_tables_by_their_path() {
        let mut c = Config::from_toml(
            "[[image.registry]]\nprefix = \"docker.io\"\nlocation = \"registry-1.docker.io\"\n\
             [[image.registry.mirror]]\nlocation = \"m:5000\"\n\
             [runtime]\ndefault_runtime = \"my.kata\"\n\
             [runtime.runtimes.\"my.kata\"]\nruntime_path = \"/usr/bin/kata\"\n",
        )
        .unwrap();
        c.image.pinned_images = vec!["a = b".into(), "line\nbreak = x".into()];
        let text = c.to_commented_toml();
        let doc = |p: &str| comment_lines(key_doc(p).unwrap().doc, 98);
        assert!(text.contains(&format!(
            "{}location = \"registry-1.docker.io\"",
            doc("image.registry.location")
        )));
        assert!(text.contains(&format!(
            "{}location = \"m:5000\"",
            doc("image.registry.mirror.location")
        )));
        assert!(text.contains(&format!(
            "{}[runtime.runtimes.\"my.kata\"]",
            doc("runtime.runtimes.<handler>")
        )));
        assert_eq!(Config::from_toml(&text).unwrap(), c);
    }

    #[test]
    fn every_config_key_is_documented_and_every_doc_is_a_key() {
        let keys = config_key_paths();
        for (path, kind) in &keys {
            let doc = key_doc(path).unwrap_or_else(|| panic!("{path} has no entry in CONFIG_KEYS"));
            let doc_kind = match doc.kind {
                KeyKind::Required => KeyKind::Value,
                k => k,
            };
            assert_eq!(doc_kind, *kind, "{path}");
        }
        for doc in CONFIG_KEYS {
            assert!(
                keys.iter().any(|(p, _)| p == doc.path),
                "CONFIG_KEYS documents {}, which is no key of Config",
                doc.path
            );
        }
    }

    #[test]
    fn key_defaults_come_from_the_code() {
        assert_eq!(
            key_default("api.listen"),
            Some(toml::Value::String("/run/ferrio/ferrio.sock".into()))
        );
        assert_eq!(
            key_default("runtime.runtimes.<handler>.runtime_path"),
            Some(toml::Value::String("/usr/sbin/runc".into()))
        );
        assert_eq!(
            key_default("image.registry.mirror.pull_from_mirror"),
            Some(toml::Value::String("all".into()))
        );
        assert_eq!(
            key_default("runtime.runtimes.<handler>.cgroup_v1_view"),
            None
        );
        assert_eq!(
            doc_path(&["runtime", "runtimes", "runc", "runtime_root"]),
            "runtime.runtimes.<handler>.runtime_root"
        );
    }

    #[test]
    fn reload_applies_live_settings_and_keeps_restart_ones() {
        let old = Config::default();
        let mut new = old.clone();
        new.log_level = LogLevel::Debug;
        new.image.sandbox_image = "example.com/pause:9".into();
        new.image.pinned_images = vec!["x/*".into()];
        new.image.registry.push(RegistryConfig {
            prefix: "example.com".into(),
            mirror: vec![MirrorConfig {
                location: "127.0.0.1:5000".into(),
                insecure: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        // Handlers come and go live; the default one stays.
        new.runtime.runtimes.remove("runc");
        new.runtime.runtimes.insert(
            "kata".into(),
            RuntimeHandler {
                runtime_path: "/usr/bin/kata".into(),
                ..Default::default()
            },
        );
        new.runtime.runtimes.get_mut("crun").unwrap().runtime_root = "/run/x".into();
        new.network.network_dir = "/etc/cni/other".into();
        new.network.cni_default_network = "net2".into();
        new.root = "/var/lib/elsewhere".into();
        new.api.listen = "/run/other.sock".into();
        new.api.stream_port = 1234;
        new.network.plugin_dirs = vec!["/usr/lib/cni".into()];
        new.metrics.enable = true;

        let (live, changes) = old.reloaded(&new);
        assert_eq!(
            changes.applied,
            [
                "log_level",
                "image.sandbox_image",
                "image.pinned_images",
                "image.registry",
                "runtime.runtimes.crun",
                "runtime.runtimes.runc",
                "runtime.runtimes.kata",
                "network.network_dir",
                "network.cni_default_network",
            ]
        );
        assert_eq!(
            changes.needs_restart,
            [
                "root",
                "api.listen",
                "api.stream_port",
                "network.plugin_dirs",
                "metrics.enable"
            ]
        );
        // Live settings come from the new files...
        assert_eq!(live.log_level, LogLevel::Debug);
        assert_eq!(live.image, new.image);
        assert_eq!(live.runtime.runtimes, new.runtime.runtimes);
        assert_eq!(live.network.network_dir, new.network.network_dir);
        assert_eq!(live.network.cni_default_network, "net2");
        // ...the rest stays as the running daemon was built.
        assert_eq!(live.root, old.root);
        assert_eq!(live.api, old.api);
        assert_eq!(live.network.plugin_dirs, old.network.plugin_dirs);
        assert_eq!(live.metrics, old.metrics);
        live.validate().unwrap();
    }

    #[test]
    fn reload_of_the_same_config_changes_nothing() {
        let c =
            Config::from_toml("log_level = \"warn\"\n[image]\npinned_images = [\"a\"]\n").unwrap();
        let (live, changes) = c.reloaded(&c.clone());
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(live, c);
    }

    #[test]
    fn reload_only_of_restart_settings_applies_nothing() {
        let old = Config::default();
        let mut new = old.clone();
        new.runroot = "/run/elsewhere".into();
        new.runtime.cgroup_manager = CgroupDriver::Systemd;
        new.metrics.address = "127.0.0.1:1".into();
        let (live, changes) = old.reloaded(&new);
        assert!(changes.applied.is_empty());
        assert_eq!(
            changes.needs_restart,
            ["runroot", "runtime.cgroup_manager", "metrics.address"]
        );
        assert_eq!(live, old);
    }

    #[test]
    fn reload_of_nri_applies_dirs_timeouts_and_connections_but_not_enable_or_socket() {
        let old = Config::default();
        let mut new = old.clone();
        new.nri.enable = false;
        new.nri.socket_path = "/run/other/nri.sock".into();
        new.nri.plugin_path = "/srv/nri/plugins".into();
        new.nri.plugin_config_path = "/srv/nri/conf.d".into();
        new.nri.disable_connections = true;
        new.nri.plugin_registration_timeout = "9s".into();
        new.nri.plugin_request_timeout = "750ms".into();
        let (live, changes) = old.reloaded(&new);
        assert_eq!(
            changes.applied,
            [
                "nri.plugin_path",
                "nri.plugin_config_path",
                "nri.disable_connections",
                "nri.plugin_registration_timeout",
                "nri.plugin_request_timeout",
            ]
        );
        assert_eq!(changes.needs_restart, ["nri.enable", "nri.socket_path"]);
        assert!(live.nri.enable, "enable keeps its start value");
        assert_eq!(live.nri.socket_path, old.nri.socket_path);
        assert_eq!(live.nri.plugin_path, new.nri.plugin_path);
        assert_eq!(live.nri.plugin_config_path, new.nri.plugin_config_path);
        assert!(live.nri.disable_connections);
        assert_eq!(live.nri.plugin_registration_timeout, "9s");
        assert_eq!(live.nri.plugin_request_timeout, "750ms");
        live.validate().unwrap();
    }

    #[test]
    fn live_config_snapshots_survive_a_swap() {
        let live = LiveConfig::new(Config::default());
        let other = live.clone();
        let before = live.load();
        other.store(std::sync::Arc::new(Config {
            log_level: LogLevel::Trace,
            ..Config::default()
        }));
        assert_eq!(before.log_level, LogLevel::Info, "a snapshot never changes");
        assert_eq!(
            live.load().log_level,
            LogLevel::Trace,
            "clones share the holder"
        );
    }

    #[test]
    fn mirror_timeout_and_pull_from_mirror() {
        let c = Config::from_toml(
            "[image]\nmax_concurrent_downloads = 5\n[[image.registry]]\nprefix = \"docker.io\"\n\
             [[image.registry.mirror]]\nlocation = \"m:5000\"\ntimeout = \"1500ms\"\n\
             pull_from_mirror = \"digest-only\"\n",
        )
        .unwrap();
        let m = &c.image.registry[0].mirror[0];
        assert_eq!(m.pull_from_mirror, PullFromMirror::DigestOnly);
        assert_eq!(
            parse_duration(&m.timeout).unwrap(),
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(c.image.max_concurrent_downloads, 5);
        assert_eq!(parse_duration("2").unwrap().as_secs(), 2);
        assert_eq!(parse_duration("1m").unwrap().as_secs(), 60);
        let e = Config::from_toml(
            "[[image.registry]]\nprefix = \"a\"\n[[image.registry.mirror]]\nlocation = \"m\"\ntimeout = \"soon\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("image.registry[0].mirror[0].timeout"), "{e}");
        assert!(Config::from_toml(
            "[[image.registry]]\nprefix = \"a\"\n[[image.registry.mirror]]\nlocation = \"m\"\npull_from_mirror = \"never\"\n"
        )
        .is_err());
        assert!(Config::from_toml("[image]\nmax_concurrent_downloads = 0\n").is_err());
    }

    #[test]
    fn closed_sets_parse_their_lowercase_names() {
        for (text, level) in [
            ("error", LogLevel::Error),
            ("warn", LogLevel::Warn),
            ("info", LogLevel::Info),
            ("debug", LogLevel::Debug),
            ("trace", LogLevel::Trace),
        ] {
            let c = Config::from_toml(&format!("log_level = \"{text}\"\n")).unwrap();
            assert_eq!(c.log_level, level);
            assert_eq!(level.to_string(), text);
            assert_eq!(text.parse::<LogLevel>(), Ok(level));
        }
        assert_eq!(LogLevel::ALL.len(), 5);
        for (text, driver) in [
            ("cgroupfs", CgroupDriver::Cgroupfs),
            ("systemd", CgroupDriver::Systemd),
        ] {
            let c =
                Config::from_toml(&format!("[runtime]\ncgroup_manager = \"{text}\"\n")).unwrap();
            assert_eq!(c.runtime.cgroup_manager, driver);
            assert_eq!(driver.as_str(), text);
        }
        assert_eq!(Config::default().log_level, LogLevel::Info);
        assert_eq!(
            Config::default().runtime.cgroup_manager,
            CgroupDriver::Cgroupfs
        );
        // Written back under the same names: `ferrio config` and the man page's defaults.
        let text = Config::default().to_commented_toml();
        assert!(text.contains("log_level = \"info\"\n"), "{text}");
        assert!(text.contains("cgroup_manager = \"cgroupfs\"\n"), "{text}");
        assert_eq!(
            key_default("runtime.cgroup_manager"),
            Some(toml::Value::String("cgroupfs".into()))
        );
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_key_and_the_allowed_names() {
        let e = Config::from_toml("log_level = \"Debug\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("log_level")
                && e.contains("\"Debug\" is not one of error, warn, info, debug, trace"),
            "{e}"
        );
        let e = Config::from_toml("[runtime]\ncgroup_manager = \"systemd.slice\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cgroup_manager")
                && e.contains("\"systemd.slice\" is not \"cgroupfs\" or \"systemd\""),
            "{e}"
        );
        // A drop-in with a bad name is reported against that file.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.toml"), "").unwrap();
        let d = dir.path().join("ferrio.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("10-a.toml"), "log_level = \"loud\"\n").unwrap();
        let e = Config::load(Some(&dir.path().join("m.toml")), Some(&d))
            .unwrap_err()
            .to_string();
        assert!(e.contains("10-a.toml") && e.contains("\"loud\""), "{e}");
        // The command line's value goes through the same check.
        let e = "loud".parse::<LogLevel>().unwrap_err();
        assert_eq!(e.key, "log_level");
        assert_eq!(
            e.to_string(),
            "log_level: \"loud\" is not one of error, warn, info, debug, trace"
        );
    }

    #[test]
    fn validate_names_the_key_and_a_typed_reason() {
        let mut c = Config::default();
        c.runtime.default_runtime = "kata".into();
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "runtime.default_runtime");
        assert_eq!(
            e.reason,
            InvalidReason::UnknownRuntime {
                name: "kata".into(),
                configured: vec!["crun".into(), "runc".into()],
            }
        );
        assert_eq!(
            e.to_string(),
            "runtime.default_runtime: \"kata\" is not a configured runtime \
             (runtime.runtimes has crun, runc)"
        );
        let mut c = Config::default();
        c.runtime.runtimes.get_mut("runc").unwrap().runtime_path = "runc".into();
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "runtime.runtimes.runc.runtime_path");
        assert_eq!(e.reason, InvalidReason::NotAbsolute("runc".into()));
        let mut c = Config::default();
        c.network.cni_plugin_timeout = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "network.cni_plugin_timeout: must be at least 1 second"
        );
        let e = Config::from_toml("[metrics]\naddress = \"x\"\n").unwrap_err();
        match e {
            ConfigError::Invalid { file, source } => {
                assert_eq!(file, "<string>");
                assert_eq!(source.key, "metrics.address");
                assert_eq!(source.reason, InvalidReason::NotSocketAddress("x".into()));
            }
            e => panic!("{e:?}"),
        }
    }
}
