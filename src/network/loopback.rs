//! Work inside a pod's network namespace over rtnetlink, without shelling out to `ip`.
//!
//! `setns` changes only the calling thread, so each job runs on a fresh thread that enters the netns and
//! exits afterwards; no runtime thread ever changes namespace.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use super::NetworkError;

const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const IFF_UP: u32 = 0x1;
const IFLA_IFNAME: u16 = 3;

/// Sets `lo` up inside the network namespace at `netns`.
pub async fn bring_loopback_up(netns: &Path) -> Result<(), NetworkError> {
    in_netns(netns, |path| {
        set_link_up("lo").map_err(|e| NetworkError::io("set lo up in", path, e))
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

/// RTM_NEWLINK on an existing link picked by name, with IFF_UP set; waits for the kernel's ack.
fn set_link_up(name: &str) -> std::io::Result<()> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;

    let seq: u32 = 1;
    let mut attr_name = name.as_bytes().to_vec();
    attr_name.push(0);
    let rta_len = 4 + attr_name.len();
    let rta_padded = (rta_len + 3) & !3;
    let total = 16 + 16 + rta_padded;
    let mut msg = Vec::with_capacity(total);
    // nlmsghdr
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // ifinfomsg: family, pad, type, index 0 (look up by IFLA_IFNAME), flags, change mask
    msg.extend_from_slice(&[0u8, 0u8]);
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&0i32.to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes());
    // rtattr IFLA_IFNAME
    msg.extend_from_slice(&(rta_len as u16).to_ne_bytes());
    msg.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
    msg.extend_from_slice(&attr_name);
    msg.resize(total, 0);

    let sent = socket::send(fd.as_raw_fd(), &msg, MsgFlags::empty())?;
    if sent != msg.len() {
        return Err(std::io::Error::other("short netlink send"));
    }
    let mut buf = [0u8; 4096];
    loop {
        let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(word(&buf, off)) as usize;
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            let got_seq = u32::from_ne_bytes(word(&buf, off + 8));
            if len < 16 || off + len > n {
                return Err(std::io::Error::other("malformed netlink reply"));
            }
            if kind == NLMSG_ERROR && got_seq == seq && len >= 20 {
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

fn word(buf: &[u8], at: usize) -> [u8; 4] {
    [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
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
}
