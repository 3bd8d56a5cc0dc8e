//! CNI integration tests with the real plugins from /usr/lib/cni (bridge + host-local + portmap +
//! loopback) on a bridge and /24 of their own. Root only; run with
//! `cargo test --test cni -- --test-threads=1`.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferrio::network::{Cni, NetworkError, PodNetwork, PortMapping};
use serde_json::json;

const PLUGIN_DIR: &str = "/usr/lib/cni";

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything one test creates on the host, removed on drop even when the test panics: the netns, the
/// bridge, the iptables rules and chains the plugins made for this network (found by its unique name in
/// their comments), and the temp dir holding conflists, cache and IPAM data.
struct Env {
    dir: tempfile::TempDir,
    netns: String,
    bridge: String,
    network: String,
    third_octet: u8,
}

impl Env {
    fn new() -> Env {
        let tag = rand::random::<u32>() % 1_000_000;
        let routes = run("ip", &["-4", "route"]);
        let third_octet = loop {
            let o = rand::random::<u8>();
            if !routes.contains(&format!("10.213.{o}.")) {
                break o;
            }
        };
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
            netns: format!("fcni{tag}"),
            bridge: format!("fcni{tag}"),
            network: format!("fcni-test-{tag}"),
            third_octet,
        };
        for sub in ["net", "cache", "ipam", "bin"] {
            std::fs::create_dir(env.dir.path().join(sub)).unwrap();
        }
        run("ip", &["netns", "add", &env.netns]);
        env
    }

    fn subnet(&self) -> String {
        format!("10.213.{}.0/24", self.third_octet)
    }

    fn netns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.netns)
    }

    fn conflist_path(&self) -> PathBuf {
        self.dir.path().join("net/10-test.conflist")
    }

    /// bridge + portmap + loopback, plus `extra` plugin types appended (fakes from bin/).
    fn write_conflist(&self, extra: &[&str]) {
        let mut plugins = vec![
            json!({
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.subnet()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.ipam_dir(),
                }
            }),
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            json!({"type": "loopback"}),
        ];
        plugins.extend(extra.iter().map(|t| json!({"type": t})));
        let list = json!({"cniVersion": "1.0.0", "name": self.network, "plugins": plugins});
        std::fs::write(self.conflist_path(), list.to_string()).unwrap();
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn fake_plugin(&self, name: &str, body: &str) {
        let p = self.dir.path().join("bin").join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn cni(&self) -> Cni {
        Cni::new(
            self.dir.path().join("net"),
            vec![PathBuf::from(PLUGIN_DIR), self.dir.path().join("bin")],
            self.dir.path().join("cache"),
        )
        .with_timeout(Duration::from_secs(20))
    }

    fn pod(&self) -> PodNetwork {
        PodNetwork {
            id: format!("sandbox{}", self.netns),
            name: "web".into(),
            namespace: "default".into(),
            uid: "0d3c8f0e-uid".into(),
            netns: self.netns_path(),
            ifname: "eth0".into(),
            port_mappings: vec![PortMapping {
                protocol: "tcp".into(),
                container_port: 80,
                host_port: 30000 + u16::from(self.third_octet) as i32,
                host_ip: "127.0.0.1".into(),
            }],
        }
    }

    fn cache_entry(&self) -> PathBuf {
        self.dir.path().join("cache/results").join(format!(
            "{}-{}-eth0",
            self.network,
            self.pod().id
        ))
    }

    /// Veths attached to the test bridge.
    fn bridge_ports(&self) -> Vec<String> {
        let dir = format!("/sys/class/net/{}/brif", self.bridge);
        match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// host-local reservation files (one per allocated IP) in this network's data dir.
    fn reservations(&self) -> Vec<String> {
        let dir = self.ipam_dir().join(&self.network);
        match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The per-pod chains (bridge masquerade, portmap DNAT) that this network's rules jump to; the
    /// shared CNI-HOSTPORT-* chains are left alone, as the plugins do.
    fn chains(&self) -> Vec<String> {
        let mut chains = Vec::new();
        for rule in self.nat_rules() {
            let args = shell_words(&rule);
            if let Some(pos) = args.iter().position(|a| a == "-j") {
                if let Some(target) = args.get(pos + 1) {
                    if target.starts_with("CNI-")
                        && !target.starts_with("CNI-HOSTPORT-")
                        && !chains.contains(target)
                    {
                        chains.push(target.clone());
                    }
                }
            }
        }
        chains
    }

    /// Whether a nat chain of this name exists.
    fn chain_exists(chain: &str) -> bool {
        run("iptables", &["-t", "nat", "-S"])
            .lines()
            .any(|l| l == format!("-N {chain}"))
    }

    /// nat rules that mention this network (bridge masquerade, portmap DNAT) by their comment.
    fn nat_rules(&self) -> Vec<String> {
        // No panic here: Drop calls this, maybe while a failed assertion unwinds.
        let out = Command::new("iptables").args(["-t", "nat", "-S"]).output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.contains(&self.network))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        // Remove the rules that mention this network, then the chains they jump to.
        let chains = self.chains();
        for rule in self.nat_rules() {
            let args = shell_words(&rule);
            if args.first().map(String::as_str) == Some("-A") {
                let mut del = vec!["-t".to_string(), "nat".into(), "-D".into()];
                del.extend(args[1..].iter().cloned());
                let _ = Command::new("iptables").args(&del).output();
            }
        }
        for chain in chains {
            let _ = Command::new("iptables")
                .args(["-t", "nat", "-F", &chain])
                .output();
            let _ = Command::new("iptables")
                .args(["-t", "nat", "-X", &chain])
                .output();
        }
    }
}

/// Splits an `iptables -S` line, honouring the double quotes around comments.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn in_subnet(ip: &IpAddr, third_octet: u8) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [10, 213, third_octet])
}

fn assert_clean_after_teardown(env: &Env) {
    assert!(
        env.bridge_ports().is_empty(),
        "veth left on bridge: {:?}",
        env.bridge_ports()
    );
    assert!(
        env.reservations().is_empty(),
        "ipam reservation left: {:?}",
        env.reservations()
    );
    assert!(!env.cache_entry().exists(), "cache entry left");
    assert!(
        env.nat_rules().is_empty(),
        "nat rules left: {:?}",
        env.nat_rules()
    );
}

#[tokio::test]
async fn setup_and_teardown_with_real_plugins() {
    let env = Env::new();
    env.write_conflist(&[]);
    let cni = env.cni();
    assert_eq!(cni.ready().unwrap(), env.network);

    let pod = env.pod();
    let status = cni.setup(&pod).await.unwrap();
    assert_eq!(status.ips.len(), 1, "{:?}", status.ips);
    let ip = status.ips[0];
    assert!(
        in_subnet(&ip, env.third_octet),
        "{ip} not in {}",
        env.subnet()
    );
    assert_eq!(status.result["cniVersion"], "1.0.0");

    let addrs = run("ip", &["-n", &env.netns, "-4", "addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("inet {ip}/24")), "{addrs}");
    let lo = run("ip", &["-n", &env.netns, "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "lo not up: {lo}");
    // ferrio's own netlink queries see the same as iproute2.
    let ours = ferrio::network::addresses(&pod.netns, "eth0")
        .await
        .unwrap();
    let v4: Vec<String> = ours
        .iter()
        .filter(|n| n.is_ipv4())
        .map(|n| n.to_string())
        .collect();
    assert_eq!(v4, [format!("{ip}/24")], "{ours:?}");
    let links = ferrio::network::links(&pod.netns).await.unwrap();
    assert!(
        links.iter().any(|l| l.name == "lo" && l.up),
        "lo not up: {links:?}"
    );
    assert_eq!(env.bridge_ports().len(), 1);
    assert_eq!(env.reservations(), [ip.to_string()]);
    assert!(env.cache_entry().exists());
    // portmap installed a DNAT for the host port, bridge a masquerade chain.
    let rules = env.nat_rules().join("\n");
    let dport = format!("--dports {}", pod.port_mappings[0].host_port);
    assert!(rules.contains(&dport), "{rules}");
    assert!(rules.contains("-j MASQUERADE"), "{rules}");
    let chains = env.chains();
    assert_eq!(chains.len(), 2, "masquerade and dnat chains: {chains:?}");

    cni.teardown(&pod).await.unwrap();
    assert_clean_after_teardown(&env);
    for chain in &chains {
        assert!(!Env::chain_exists(chain), "chain {chain} left");
    }
    // The netns itself is still there (DEL must not need to remove it), with eth0 gone.
    let links = run("ip", &["-n", &env.netns, "link", "show"]);
    assert!(!links.contains("eth0"), "{links}");

    cni.teardown(&pod).await.unwrap();
}

#[tokio::test]
async fn teardown_uses_the_cache_after_the_conflist_is_deleted() {
    let env = Env::new();
    env.write_conflist(&[]);
    let pod = env.pod();
    env.cni().setup(&pod).await.unwrap();
    assert_eq!(env.reservations().len(), 1);

    std::fs::remove_file(env.conflist_path()).unwrap();
    // A new Cni, as after a daemon restart.
    let cni = env.cni();
    assert!(matches!(cni.ready(), Err(NetworkError::NotReady { .. })));
    cni.teardown(&pod).await.unwrap();
    assert_clean_after_teardown(&env);
    cni.teardown(&pod).await.unwrap();
}

#[tokio::test]
async fn failing_plugin_rolls_back_the_real_ones() {
    let env = Env::new();
    env.fake_plugin(
        "fail",
        r#"cat >/dev/null
[ "$CNI_COMMAND" = DEL ] && exit 0
echo '{"cniVersion":"1.0.0","code":100,"msg":"policy says no","details":"test plugin"}'
exit 1"#,
    );
    env.write_conflist(&["fail"]);
    let cni = env.cni();
    let err = cni.setup(&env.pod()).await.unwrap_err();
    match &err {
        NetworkError::Plugin {
            plugin, message, ..
        } => {
            assert_eq!(plugin, "fail");
            assert_eq!(message, "policy says no; test plugin");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_clean_after_teardown(&env);
    cni.teardown(&env.pod()).await.unwrap();
}

#[tokio::test]
async fn hanging_plugin_times_out_and_the_real_ones_are_deleted() {
    let env = Env::new();
    env.fake_plugin(
        "hang",
        r#"cat >/dev/null
[ "$CNI_COMMAND" = DEL ] && exit 0
sleep 300"#,
    );
    env.write_conflist(&["hang"]);
    let cni = env.cni().with_timeout(Duration::from_secs(2));
    let err = cni.setup(&env.pod()).await.unwrap_err();
    assert!(
        matches!(&err, NetworkError::Timeout { plugin, .. } if plugin == "hang"),
        "{err:?}"
    );
    assert_clean_after_teardown(&env);
}

#[test]
fn shell_words_keeps_quoted_comments() {
    let w = shell_words(
        r#"-A POSTROUTING -s 10.0.0.2/32 -m comment --comment "name: \"n\" id: \"x\"" -j CNI-abc"#,
    );
    assert_eq!(w[7], r#"name: "n" id: "x""#);
    assert_eq!(w.last().unwrap(), "CNI-abc");
    let _ = Path::new(PLUGIN_DIR);
}

#[tokio::test]
async fn teardown_after_the_netns_vanished_releases_the_ip_and_the_nat_rules() {
    let env = Env::new();
    env.write_conflist(&[]);
    let cni = env.cni();
    let pod = env.pod();
    cni.setup(&pod).await.unwrap();
    assert_eq!(env.reservations().len(), 1);

    run("ip", &["netns", "del", &env.netns]);
    cni.teardown(&pod).await.unwrap();
    // The bridge plugin alone would leave its masquerade chain without the netns (environment.md);
    // teardown hands it a stand-in netns with the cached address, so nothing is left.
    assert_clean_after_teardown(&env);
}
