//! A throwaway network namespace for a DEL whose pod netns is already gone.
//!
//! The bridge plugin (1.1.x) learns which masquerade rules to delete from the addresses on the
//! pod's interface inside the netns; with the netns gone it releases the IP but leaves the
//! pod's NAT chain behind. A stand-in namespace holding a link named like the pod's interface
//! with the cached result's addresses lets it find them and clean up. The link is a bridge
//! device: it needs no peer and no module beyond what the bridge plugin itself uses.
//!
//! The namespace belongs to one parked thread (`unshare` is per thread) and is reached through
//! `/proc/<pid>/task/<tid>/ns/net`; it dies when the thread exits on drop. Nothing is mounted.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use ipnetwork::IpNetwork;

use super::netlink::Netlink;
use super::NetworkError;

/// The stand-in link's ifindex, asked for at creation (the namespace is fresh: only `lo` exists),
/// so no lookup by name is needed.
const LINK_INDEX: u32 = 100;

/// A parked thread in a fresh netns with `ifname` carrying the pod's addresses.
pub(super) struct StandIn {
    path: PathBuf,
    done: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    /// Blocking: spawns the thread and waits until the link and its addresses exist.
    pub(super) fn new(ifname: &str, addrs: &[IpNetwork]) -> Result<StandIn, NetworkError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<PathBuf, std::io::Error>>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let (name, addrs) = (ifname.to_string(), addrs.to_vec());
        let thread = std::thread::Builder::new()
            .name("ferrio-standin".into())
            .spawn(move || {
                let setup = || -> std::io::Result<PathBuf> {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
                    let mut nl = Netlink::open()?;
                    nl.add_bridge(&name, LINK_INDEX)?;
                    for net in &addrs {
                        nl.add_address(LINK_INDEX, *net)?;
                    }
                    Ok(PathBuf::from(format!(
                        "/proc/{}/task/{}/ns/net",
                        std::process::id(),
                        nix::unistd::gettid()
                    )))
                };
                let ok = setup();
                let failed = ok.is_err();
                let _ = ready_tx.send(ok);
                if !failed {
                    // Keep the namespace alive until the DEL is done.
                    let _ = done_rx.recv();
                }
            })
            .map_err(|e| NetworkError::io("spawn stand-in netns thread", "", e))?;
        let path = match ready_rx.recv() {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(NetworkError::io("set up stand-in netns for", ifname, e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(NetworkError::io(
                    "set up stand-in netns for",
                    ifname,
                    std::io::Error::other("thread died"),
                ));
            }
        };
        Ok(StandIn {
            path,
            done: Some(done_tx),
            thread: Some(thread),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root: network namespaces and CNI plugins"]
    fn stand_in_holds_the_addresses_until_dropped() {
        let addrs: [IpNetwork; 2] = [
            "10.77.0.5/24".parse().unwrap(),
            "fd00:77::5/64".parse().unwrap(),
        ];
        let s = StandIn::new("eth0", &addrs).unwrap();
        assert!(super::super::is_netns(s.path()));
        let ours = nix::sys::stat::stat("/proc/self/ns/net").unwrap().st_ino;
        let its = nix::sys::stat::stat(s.path()).unwrap().st_ino;
        assert_ne!(ours, its, "a namespace of its own");
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", s.path().display()))
            .args(["ip", "-o", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("10.77.0.5/24"), "{text}");
        assert!(text.contains("fd00:77::5/64"), "{text}");
        let path = s.path().to_path_buf();
        drop(s);
        assert!(!path.exists(), "the thread and its namespace are gone");
    }
}
