//! Reading pod addresses out of CNI results of any version we call plugins with.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use serde_json::Value;

/// Pod addresses in a CNI result, IPv4 first, duplicates and loopback addresses dropped.
///
/// Understands 0.3.x/0.4.0/1.x results (`ips[].address` as "10.1.2.3/24") and the older 0.1/0.2 shape
/// (`ip4.ip`, `ip6.ip`). When an address names its interface (`ips[].interface` indexing `interfaces`),
/// only addresses on `ifname` count, so a chained plugin's extra interfaces do not leak into the pod IP.
pub fn result_ips(result: &Value, ifname: &str) -> Vec<IpAddr> {
    result_addrs(result, ifname)
        .into_iter()
        .map(|net| net.ip())
        .collect()
}

/// Like [`result_ips`], with each address's prefix length (32 or 128 where the result gives none).
pub fn result_addrs(result: &Value, ifname: &str) -> Vec<IpNetwork> {
    let mut found: Vec<IpNetwork> = Vec::new();
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        for entry in ips {
            let on_other_interface = entry
                .get("interface")
                .and_then(Value::as_u64)
                .and_then(|i| interfaces?.get(usize::try_from(i).ok()?))
                .and_then(|iface| iface.get("name").and_then(Value::as_str))
                .is_some_and(|name| name != ifname);
            if on_other_interface {
                continue;
            }
            if let Some(ip) = entry
                .get("address")
                .and_then(Value::as_str)
                .and_then(parse_cidr_ip)
            {
                found.push(ip);
            }
        }
    }
    for key in ["ip4", "ip6"] {
        if let Some(ip) = result
            .get(key)
            .and_then(|v| v.get("ip"))
            .and_then(Value::as_str)
            .and_then(parse_cidr_ip)
        {
            found.push(ip);
        }
    }
    let mut ips: Vec<IpNetwork> = Vec::new();
    for net in found {
        if !net.ip().is_loopback() && !ips.iter().any(|n| n.ip() == net.ip()) {
            ips.push(net);
        }
    }
    // Stable: keeps the plugin's order within each family.
    ips.sort_by_key(|n| n.is_ipv6());
    ips
}

/// "10.1.2.3/24" as address and prefix length (host bits kept: it is the pod's own address);
/// a bare address gets its family's full length.
fn parse_cidr_ip(s: &str) -> Option<IpNetwork> {
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_result() {
        let r = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "veth1", "mac": "aa:bb:cc:dd:ee:00"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:01", "sandbox": "/var/run/netns/x"}
            ],
            "ips": [
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
                {"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 2}
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        assert_eq!(result_ips(&r, "eth0"), [ip("10.1.2.3"), ip("fd00::5")]);
    }

    #[test]
    fn v04_and_v031_results_carry_version_field() {
        for v in ["0.4.0", "0.3.1"] {
            let r = json!({
                "cniVersion": v,
                "interfaces": [{"name": "eth0", "sandbox": "/proc/1/ns/net"}],
                "ips": [{"version": "4", "address": "10.88.0.7/16", "gateway": "10.88.0.1", "interface": 0}],
            });
            assert_eq!(result_ips(&r, "eth0"), [ip("10.88.0.7")], "version {v}");
        }
    }

    #[test]
    fn addresses_on_other_interfaces_and_loopback_are_dropped() {
        let r = json!({
            "interfaces": [{"name": "lo", "sandbox": "/x"}, {"name": "eth0", "sandbox": "/x"}, {"name": "net1", "sandbox": "/x"}],
            "ips": [
                {"address": "127.0.0.1/8", "interface": 0},
                {"address": "10.0.0.2/24", "interface": 1},
                {"address": "10.0.0.2/24"},
                {"address": "192.168.9.9/24", "interface": 2},
                {"address": "172.16.0.4/16", "interface": 99},
                {"address": "garbage"}
            ]
        });
        assert_eq!(result_ips(&r, "eth0"), [ip("10.0.0.2"), ip("172.16.0.4")]);
    }

    #[test]
    fn legacy_v02_result() {
        let r = json!({"cniVersion": "0.2.0", "ip6": {"ip": "fd00::9/64"}, "ip4": {"ip": "10.9.0.9/24"}});
        assert_eq!(result_ips(&r, "eth0"), [ip("10.9.0.9"), ip("fd00::9")]);
    }

    #[test]
    fn empty_or_odd_results_give_no_ips() {
        assert!(result_ips(&json!({}), "eth0").is_empty());
        assert!(result_ips(&json!({"ips": "no"}), "eth0").is_empty());
        assert!(result_ips(&json!(null), "eth0").is_empty());
    }

    #[test]
    fn addresses_keep_their_prefix() {
        let r = json!({"ips": [{"address": "10.1.2.3/24"}, {"address": "fd00::5"}, {"address": "10.1.2.4/33"}]});
        let got: Vec<String> = result_addrs(&r, "eth0")
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(got, ["10.1.2.3/24", "fd00::5/128"]);
    }
}
