//! The signal StopContainer sends first: the CRI config's `stop_signal` (a container's
//! `lifecycle.stopSignal`), else the image's STOPSIGNAL, else SIGTERM; and the same number as the CRI enum
//! ContainerStatus reports.

use super::lifecycle::parse_signal;
use crate::cri::v1::Signal;

/// The stop signal of a container created from `config` on an image whose STOPSIGNAL is
/// `image_stop_signal` (empty when it sets none). Errors name a CRI signal this host has no number for.
pub fn resolve(config_signal: i32, image_stop_signal: &str) -> Result<i32, String> {
    let requested = Signal::try_from(config_signal)
        .map_err(|_| format!("{config_signal} is not a CRI signal"))?;
    if requested != Signal::RuntimeDefault {
        return number(requested)
            .ok_or_else(|| format!("{} has no number on this host", requested.as_str_name()));
    }
    Ok(parse_signal(image_stop_signal).unwrap_or(libc::SIGTERM))
}

/// The Linux number of a CRI signal; `None` for RUNTIME_DEFAULT.
pub fn number(signal: Signal) -> Option<i32> {
    let name = signal.as_str_name();
    if let Some(n) = name.strip_prefix("SIGRTMINPLUS") {
        return Some(libc::SIGRTMIN() + n.parse::<i32>().ok()?);
    }
    if let Some(n) = name.strip_prefix("SIGRTMAXMINUS") {
        return Some(libc::SIGRTMAX() - n.parse::<i32>().ok()?);
    }
    match signal {
        Signal::RuntimeDefault => None,
        Signal::Sigrtmin => Some(libc::SIGRTMIN()),
        Signal::Sigrtmax => Some(libc::SIGRTMAX()),
        // Linux's other names for SIGCHLD, SIGIO and SIGABRT.
        Signal::Sigcld => Some(libc::SIGCHLD),
        Signal::Sigpoll => Some(libc::SIGIO),
        Signal::Sigiot => Some(libc::SIGABRT),
        _ => parse_signal(name),
    }
}

/// The CRI enum value of a Linux signal number, as ContainerStatus reports it; RUNTIME_DEFAULT for a
/// number no CRI name stands for.
pub fn cri_signal(number: i32) -> Signal {
    // The canonical names first, so SIGCHLD wins over SIGCLD and SIGABRT over SIGIOT.
    let aliases = [Signal::Sigcld, Signal::Sigpoll, Signal::Sigiot];
    (1..=65)
        .filter_map(|v| Signal::try_from(v).ok())
        .filter(|s| !aliases.contains(s))
        .find(|s| self::number(*s) == Some(number))
        .unwrap_or(Signal::RuntimeDefault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_wins_over_the_image_which_wins_over_sigterm() {
        assert_eq!(
            resolve(Signal::Sigusr1 as i32, "SIGQUIT"),
            Ok(libc::SIGUSR1)
        );
        assert_eq!(
            resolve(Signal::RuntimeDefault as i32, "SIGQUIT"),
            Ok(libc::SIGQUIT)
        );
        assert_eq!(
            resolve(Signal::RuntimeDefault as i32, ""),
            Ok(libc::SIGTERM)
        );
        assert!(resolve(99, "").is_err());
    }

    #[test]
    fn every_cri_signal_has_its_linux_number_and_back() {
        assert_eq!(number(Signal::Sigkill), Some(9));
        assert_eq!(number(Signal::Sigterm), Some(15));
        assert_eq!(number(Signal::Sigcld), Some(libc::SIGCHLD));
        assert_eq!(number(Signal::Sigrtmin), Some(libc::SIGRTMIN()));
        assert_eq!(number(Signal::Sigrtminplus3), Some(libc::SIGRTMIN() + 3));
        assert_eq!(number(Signal::Sigrtmaxminus2), Some(libc::SIGRTMAX() - 2));
        assert_eq!(number(Signal::Sigrtmax), Some(libc::SIGRTMAX()));
        for v in 1..=65 {
            let s = Signal::try_from(v).unwrap();
            let n = number(s).unwrap_or_else(|| panic!("{s:?} has no number"));
            let back = cri_signal(n);
            assert_eq!(number(back), Some(n), "{s:?}");
        }
        assert_eq!(cri_signal(libc::SIGCHLD), Signal::Sigchld);
        assert_eq!(cri_signal(0), Signal::RuntimeDefault);
    }
}
