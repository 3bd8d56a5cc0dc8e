//! Running one CNI plugin binary: the stdin config, the `CNI_*` environment, a timeout that kills the
//! plugin's whole process group, and turning its output into a result or the plugin's own error message.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{NetworkError, PodNetwork, PortMapping};

/// The CNI operations ferrio performs (CHECK is deliberately never called: portmap's CHECK fails on
/// hosts without IPv6 nat tables, and CRI-O does not call it either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
        }
    }
}

/// The per-call environment shared by every plugin of one list.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: CniCommand,
    pub container_id: String,
    /// Empty when the netns is already gone (DEL only); plugins then clean up what they can.
    pub netns: String,
    pub ifname: String,
    pub cni_args: String,
    pub cni_path: String,
}

/// CNI_ARGS as kubelet-era runtimes pass them; IgnoreUnknown lets plugins that know none of these keys run.
pub fn cni_args(pod: &PodNetwork) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        pod.namespace, pod.name, pod.id, pod.uid
    )
}

/// Capability arguments offered to plugins (libcni's CapabilityArgs); cached so DEL sees the same ones.
pub fn capability_args(port_mappings: &[PortMapping]) -> Map<String, Value> {
    let mut caps = Map::new();
    // A mapping without a host port only documents the container port; nothing to forward.
    let mappings: Vec<Value> = port_mappings
        .iter()
        .filter(|m| m.host_port > 0)
        .map(|m| {
            serde_json::json!({
                "hostPort": m.host_port,
                "containerPort": m.container_port,
                "protocol": m.protocol.to_ascii_lowercase(),
                "hostIP": m.host_ip,
            })
        })
        .collect();
    if !mappings.is_empty() {
        caps.insert("portMappings".into(), Value::Array(mappings));
    }
    caps
}

/// The stdin config for one plugin: its own conf plus the list's name and cniVersion, the previous
/// result, and `runtimeConfig` holding each capability the plugin declares and the runtime has.
pub fn plugin_config(
    name: &str,
    cni_version: &str,
    plugin: &Map<String, Value>,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(name.into()));
    conf.insert("cniVersion".into(), Value::String(cni_version.into()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let mut runtime = match conf.remove("runtimeConfig") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    if let Some(Value::Object(caps)) = plugin.get("capabilities") {
        for (cap, enabled) in caps {
            if enabled.as_bool() == Some(true) {
                if let Some(v) = capability_args.get(cap) {
                    runtime.insert(cap.clone(), v.clone());
                }
            }
        }
    }
    if !runtime.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    Value::Object(conf)
}

/// Runs `binary` once. ADD returns the plugin's result object; DEL returns None.
pub async fn run_plugin(
    binary: &Path,
    plugin_type: &str,
    inv: &Invocation,
    config: &Value,
    timeout: Duration,
) -> Result<Option<Value>, NetworkError> {
    let command = inv.command.as_str();
    let plugin_err = |message: String| NetworkError::Plugin {
        plugin: plugin_type.to_string(),
        command: command.to_string(),
        message,
    };
    let mut child = tokio::process::Command::new(binary)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", &inv.cni_args)
        .env("CNI_PATH", &inv.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout kills whatever the plugin started too (iptables, a sleep, ...).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| NetworkError::io("exec cni plugin", binary, e))?;
    let pid = child.id();

    let stdin_bytes = config.to_string().into_bytes();
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let run = async {
        let write = async {
            if let Some(mut s) = stdin.take() {
                // A plugin may exit without reading stdin; its exit status tells the story then.
                let _ = s.write_all(&stdin_bytes).await;
            }
        };
        let read_out = async {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut buf).await;
            }
            buf
        };
        let read_err = async {
            let mut buf = Vec::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut buf).await;
            }
            buf
        };
        let ((), out, err, status) = tokio::join!(write, read_out, read_err, child.wait());
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(timeout, run).await {
        Ok(done) => done,
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            return Err(NetworkError::Timeout {
                plugin: plugin_type.to_string(),
                command: command.to_string(),
            });
        }
    };
    let status = status.map_err(|e| NetworkError::io("wait for cni plugin", binary, e))?;
    if !status.success() {
        return Err(plugin_err(error_message(&out, &err, status)));
    }
    match inv.command {
        CniCommand::Del => Ok(None),
        CniCommand::Add => match serde_json::from_slice::<Value>(&out) {
            Ok(v @ Value::Object(_)) => Ok(Some(v)),
            Ok(_) => Err(plugin_err("result is not a json object".into())),
            Err(e) => Err(plugin_err(format!("invalid result: {e}"))),
        },
    }
}

/// The plugin's own words: the CNI error JSON on stdout (`msg`, `details`), else stderr, else the status.
fn error_message(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    if let Ok(Value::Object(e)) = serde_json::from_slice::<Value>(stdout) {
        let msg = e.get("msg").and_then(Value::as_str).unwrap_or_default();
        let details = e.get("details").and_then(Value::as_str).unwrap_or_default();
        let text = match (msg.is_empty(), details.is_empty()) {
            (false, false) => format!("{msg}; {details}"),
            (false, true) => msg.to_string(),
            (true, false) => details.to_string(),
            (true, true) => String::new(),
        };
        if !text.is_empty() {
            return text;
        }
        if let Some(code) = e.get("code") {
            return format!("error code {code}");
        }
    }
    for stream in [stderr, stdout] {
        let text = String::from_utf8_lossy(stream);
        let text = text.trim();
        if !text.is_empty() {
            return text.to_string();
        }
    }
    status.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn pod() -> PodNetwork {
        PodNetwork {
            id: "sb1".into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: "u-1".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            port_mappings: vec![
                PortMapping {
                    protocol: "TCP".into(),
                    container_port: 80,
                    host_port: 8080,
                    host_ip: "127.0.0.1".into(),
                },
                PortMapping {
                    protocol: "udp".into(),
                    container_port: 53,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
        }
    }

    #[test]
    fn cni_args_carry_the_pod() {
        assert_eq!(
            cni_args(&pod()),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=u-1"
        );
    }

    #[test]
    fn port_mappings_become_runtime_config_only_for_capable_plugins() {
        let caps = capability_args(&pod().port_mappings);
        let portmap =
            json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true});
        let portmap = portmap.as_object().unwrap();
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let conf = plugin_config("net", "1.0.0", portmap, Some(&prev), &caps);
        assert_eq!(
            conf,
            json!({
                "type": "portmap", "capabilities": {"portMappings": true}, "snat": true,
                "name": "net", "cniVersion": "1.0.0", "prevResult": prev,
                "runtimeConfig": {"portMappings": [
                    {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}
                ]}
            })
        );

        let bridge = json!({"type": "bridge", "name": "ignored", "cniVersion": "0.1.0"});
        let conf = plugin_config("net", "0.4.0", bridge.as_object().unwrap(), None, &caps);
        assert_eq!(
            conf,
            json!({"type": "bridge", "name": "net", "cniVersion": "0.4.0"})
        );

        let disabled = json!({"type": "portmap", "capabilities": {"portMappings": false}});
        let conf = plugin_config("net", "1.0.0", disabled.as_object().unwrap(), None, &caps);
        assert!(conf.get("runtimeConfig").is_none());
    }

    #[test]
    fn no_host_ports_means_no_capability() {
        assert!(capability_args(&[]).is_empty());
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn inv(command: CniCommand) -> Invocation {
        Invocation {
            command,
            container_id: "sb1".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            cni_args: "IgnoreUnknown=1".into(),
            cni_path: "/nowhere".into(),
        }
    }

    #[tokio::test]
    async fn passes_env_and_stdin_and_parses_result() {
        let dir = tempfile::tempdir().unwrap();
        // Echo the environment and stdin back inside a result so the test can see what the plugin got.
        let bin = script(
            dir.path(),
            "echo",
            r#"in=$(cat)
printf '{"cniVersion":"1.0.0","env":"%s|%s|%s|%s|%s|%s","stdin":%s}' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$CNI_PATH" "$in""#,
        );
        let conf = json!({"type": "echo", "name": "n"});
        let res = run_plugin(
            &bin,
            "echo",
            &inv(CniCommand::Add),
            &conf,
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            res["env"],
            "ADD|sb1|/var/run/netns/x|eth0|IgnoreUnknown=1|/nowhere"
        );
        assert_eq!(res["stdin"], conf);

        let del = run_plugin(
            &bin,
            "echo",
            &inv(CniCommand::Del),
            &conf,
            Duration::from_secs(10),
        )
        .await;
        assert!(matches!(del, Ok(None)));
    }

    #[tokio::test]
    async fn plugin_error_json_becomes_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(
            dir.path(),
            "fail",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":11,"msg":"no more addresses","details":"range is full"}'; exit 1"#,
        );
        let err = run_plugin(
            &bin,
            "fail",
            &inv(CniCommand::Add),
            &json!({}),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        match &err {
            NetworkError::Plugin {
                plugin,
                command,
                message,
            } => {
                assert_eq!(plugin, "fail");
                assert_eq!(command, "ADD");
                assert_eq!(message, "no more addresses; range is full");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "cni plugin fail failed on ADD: no more addresses; range is full"
        );
    }

    #[tokio::test]
    async fn plain_stderr_and_bad_results_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "crash", "echo 'panic: boom' >&2; exit 2");
        let err = run_plugin(
            &bin,
            "crash",
            &inv(CniCommand::Del),
            &json!({}),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().ends_with("panic: boom"), "{err}");

        let bin = script(dir.path(), "silent", "exit 3");
        let err = run_plugin(
            &bin,
            "silent",
            &inv(CniCommand::Add),
            &json!({}),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("exit status: 3"), "{err}");

        let bin = script(dir.path(), "junk", "echo not-json");
        let err = run_plugin(
            &bin,
            "junk",
            &inv(CniCommand::Add),
            &json!({}),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("invalid result"), "{err}");

        let err = run_plugin(
            &dir.path().join("absent"),
            "absent",
            &inv(CniCommand::Add),
            &json!({}),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, NetworkError::Io { .. }), "{err}");
    }

    #[tokio::test]
    async fn hanging_plugin_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("sleep.pid");
        let bin = script(
            dir.path(),
            "hang",
            &format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
        );
        let started = std::time::Instant::now();
        let err = run_plugin(
            &bin,
            "hang",
            &inv(CniCommand::Add),
            &json!({}),
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, NetworkError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.to_string(), "cni plugin hang timed out on ADD");
        // The grandchild got the group SIGKILL too.
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for init to reap it.
            if stat.is_empty() || stat.contains(") Z ") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {pid} still alive: {stat}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
