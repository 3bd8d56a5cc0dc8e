//! Work inside a pod's network namespace over rtnetlink, without shelling out to `ip`.
//!
//! `setns` changes only the calling thread, so each job runs on a fresh thread that enters the netns and
//! exits afterwards; no runtime thread ever changes namespace.

use std::fs::File;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;

use super::netlink::{Link, Netlink};
use super::NetworkError;

/// Sets `lo` up inside the network namespace at `netns`.
pub async fn bring_loopback_up(netns: &Path) -> Result<(), NetworkError> {
    in_netns(netns, |path| {
        Netlink::open()
            .and_then(|mut nl| nl.set_up("lo"))
            .map_err(|e| NetworkError::io("set lo up in", path, e))
    })
    .await
}

/// The links inside the network namespace at `netns`.
pub async fn links(netns: &Path) -> Result<Vec<Link>, NetworkError> {
    in_netns(netns, |path| {
        Netlink::open()
            .and_then(|mut nl| nl.links())
            .map_err(|e| NetworkError::io("list links in", path, e))
    })
    .await
}

/// The addresses of link `ifname` inside the network namespace at `netns`; empty when there is
/// no such link.
pub async fn addresses(netns: &Path, ifname: &str) -> Result<Vec<IpNetwork>, NetworkError> {
    let ifname = ifname.to_string();
    in_netns(netns, move |path| {
        let query = || -> std::io::Result<Vec<IpNetwork>> {
            let mut nl = Netlink::open()?;
            match nl.links()?.into_iter().find(|l| l.name == ifname) {
                Some(link) => nl.addresses(link.index),
                None => Ok(Vec::new()),
            }
        };
        query().map_err(|e| NetworkError::io("list addresses in", path, e))
    })
    .await
}

/// Runs `job` on a new thread that has entered the network namespace at `netns`.
pub async fn in_netns<T, F>(netns: &Path, job: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce(&Path) -> Result<T, NetworkError> + Send + 'static,
{
    let path: PathBuf = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    std::thread::Builder::new()
        .name("ferrio-netns".into())
        .spawn(move || {
            let run = || -> Result<T, NetworkError> {
                let ns = File::open(&thread_path)
                    .map_err(|e| NetworkError::io("open netns", &thread_path, e))?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetworkError::io("enter netns", &thread_path, e.into()))?;
                job(&thread_path)
            };
            let _ = tx.send(run());
        })
        .map_err(|e| NetworkError::io("spawn netns thread for", &path, e))?;
    rx.await.map_err(|_| {
        NetworkError::io(
            "netns thread died in",
            &path,
            std::io::Error::other("thread panicked"),
        )
    })?
}

/// Whether `path` is a network namespace handle (a bind mount of nsfs or a /proc/<pid>/ns/net link).
pub fn is_netns(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, NSFS_MAGIC};
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_netns_handles() {
        assert!(is_netns(Path::new("/proc/self/ns/net")));
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(!is_netns(f.path()));
        assert!(!is_netns(Path::new("/nonexistent/netns/x")));
    }

    #[tokio::test]
    async fn missing_netns_is_an_io_error_naming_it() {
        let err = bring_loopback_up(Path::new("/nonexistent/netns/x"))
            .await
            .unwrap_err();
        assert!(matches!(err, NetworkError::Io { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/netns/x"), "{err}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_netns_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let err = bring_loopback_up(f.path()).await.unwrap_err();
        assert!(err.to_string().starts_with("enter netns"), "{err}");
    }

    #[tokio::test]
    #[ignore = "needs root: network namespaces and CNI plugins"]
    async fn loopback_comes_up_and_is_seen_with_its_address() {
        // A namespace of our own, on a thread that unshares and parks until dropped.
        let s = super::super::standin::StandIn::new("eth0", &["10.77.1.5/24".parse().unwrap()])
            .unwrap();
        let lo = |links: Vec<Link>| links.into_iter().find(|l| l.name == "lo").unwrap();
        assert!(!lo(links(s.path()).await.unwrap()).up, "lo starts down");
        bring_loopback_up(s.path()).await.unwrap();
        assert!(lo(links(s.path()).await.unwrap()).up);
        let lo_addrs = addresses(s.path(), "lo").await.unwrap();
        assert!(
            lo_addrs.iter().any(|n| n.to_string() == "127.0.0.1/8"),
            "{lo_addrs:?}"
        );
        let eth0 = addresses(s.path(), "eth0").await.unwrap();
        assert_eq!(eth0, ["10.77.1.5/24".parse::<IpNetwork>().unwrap()]);
        assert!(addresses(s.path(), "nope0").await.unwrap().is_empty());
    }
}
