//! The per-pod `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`, written once under the pod's
//! runroot directory and bind-mounted into its containers (unless a request mounts its own).

use std::path::{Path, PathBuf};

/// DNS settings from the pod config; empty means "copy the host's resolv.conf".
#[derive(Debug, Clone, Default)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Paths of the written files.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Default)]
pub struct PodFilePaths {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

/// resolv.conf content: the pod's DNS config, or the host's file when the pod sets none.
pub fn resolv_conf(dns: &Dns, host_resolv: &str) -> String {
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return host_resolv.to_string();
    }
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for s in &dns.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

/// /etc/hosts content for a pod with `hostname` and its first IP (if any).
pub fn hosts(hostname: &str, ip: Option<&str>) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    out
}

/// Write the three files into `dir`.
pub fn write(
    dir: &Path,
    hostname: &str,
    ip: Option<&str>,
    dns: &Dns,
) -> std::io::Result<PodFilePaths> {
    std::fs::create_dir_all(dir)?;
    let paths = PodFilePaths {
        hostname: dir.join("hostname"),
        hosts: dir.join("hosts"),
        resolv_conf: dir.join("resolv.conf"),
    };
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(&paths.hostname, format!("{hostname}\n"))?;
    std::fs::write(&paths.hosts, hosts(hostname, ip))?;
    std::fs::write(&paths.resolv_conf, resolv_conf(dns, &host_resolv))?;
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = Dns {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns, "nameserver 1.1.1.1\n"),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        assert_eq!(
            resolv_conf(&Dns::default(), "nameserver 1.1.1.1\n"),
            "nameserver 1.1.1.1\n"
        );
    }

    #[test]
    fn writes_all_three() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "web-0", Some("10.1.2.3"), &Dns::default()).unwrap();
        assert_eq!(std::fs::read_to_string(&p.hostname).unwrap(), "web-0\n");
        assert!(std::fs::read_to_string(&p.hosts)
            .unwrap()
            .contains("10.1.2.3\tweb-0"));
        assert!(p.resolv_conf.exists());
    }
}
