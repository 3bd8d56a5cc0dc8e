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

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use super::NetworkError;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const NLA_F_NESTED: u16 = 0x8000;
/// The stand-in link's ifindex, asked for at creation (the namespace is fresh: only `lo` exists),
/// so no lookup by name is needed.
const LINK_INDEX: i32 = 100;

/// A parked thread in a fresh netns with `ifname` carrying the pod's addresses.
pub(super) struct StandIn {
    path: PathBuf,
    done: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    /// Blocking: spawns the thread and waits until the link and its addresses exist.
    pub(super) fn new(ifname: &str, addrs: &[(IpAddr, u8)]) -> Result<StandIn, NetworkError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<PathBuf, std::io::Error>>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let (name, addrs) = (ifname.to_string(), addrs.to_vec());
        let thread = std::thread::Builder::new()
            .name("ferrio-standin".into())
            .spawn(move || {
                let setup = || -> std::io::Result<PathBuf> {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
                    let nl = Netlink::open()?;
                    nl.add_bridge_link(&name, LINK_INDEX)?;
                    for (ip, prefix) in &addrs {
                        nl.add_address(LINK_INDEX, *ip, *prefix)?;
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

/// A route netlink socket of the calling thread's netns; every request waits for its ack.
struct Netlink {
    fd: std::os::fd::OwnedFd,
}

impl Netlink {
    fn open() -> std::io::Result<Netlink> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Netlink { fd })
    }

    fn add_bridge_link(&self, name: &str, index: i32) -> std::io::Result<()> {
        // ifinfomsg: family, pad, type, index, flags, change
        let mut body = vec![0u8, 0u8];
        body.extend_from_slice(&0u16.to_ne_bytes());
        body.extend_from_slice(&index.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        push_attr(&mut body, IFLA_IFNAME, &cstr(name));
        let mut info = Vec::new();
        push_attr(&mut info, IFLA_INFO_KIND, b"bridge");
        push_attr(&mut body, IFLA_LINKINFO | NLA_F_NESTED, &info);
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &body)
    }

    fn add_address(&self, index: i32, ip: IpAddr, prefix: u8) -> std::io::Result<()> {
        let (family, octets) = match ip {
            IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
            IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
        };
        // ifaddrmsg: family, prefixlen, flags, scope, index
        let mut body = vec![family, prefix, IFA_F_NODAD, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        push_attr(&mut body, IFA_LOCAL, &octets);
        push_attr(&mut body, IFA_ADDRESS, &octets);
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &body)
    }

    fn request(&self, kind: u16, flags: u16, body: &[u8]) -> std::io::Result<()> {
        let seq: u32 = 1;
        let total = 16 + body.len();
        let mut msg = Vec::with_capacity(total);
        msg.extend_from_slice(&(total as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        if socket::send(self.fd.as_raw_fd(), &msg, MsgFlags::empty())? != msg.len() {
            return Err(std::io::Error::other("short netlink send"));
        }
        let mut buf = [0u8; 4096];
        loop {
            let n = socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(word(&buf, off)) as usize;
                let got = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                if len < 16 || off + len > n {
                    return Err(std::io::Error::other("malformed netlink reply"));
                }
                if got == NLMSG_ERROR && len >= 20 {
                    let errno = i32::from_ne_bytes(word(&buf, off + 16));
                    return if errno == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::from_raw_os_error(-errno))
                    };
                }
                off += (len + 3) & !3;
            }
        }
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Appends one rtattr (length, type, payload) padded to 4 bytes.
fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len() + ((len + 3) & !3) - len, 0);
}

fn word(buf: &[u8], at: usize) -> [u8; 4] {
    [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_in_holds_the_addresses_until_dropped() {
        let addrs = [
            ("10.77.0.5".parse().unwrap(), 24),
            ("fd00:77::5".parse().unwrap(), 64),
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
