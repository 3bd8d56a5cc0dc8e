//! The signal StopContainer sends first: the one the request names (a container's
//! `lifecycle.stopSignal`), else the image's STOPSIGNAL, else SIGTERM.

use super::lifecycle::parse_signal;

/// The stop signal a CreateContainer request asks for, in Linux terms (the server turns the
/// CRI enum into this).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RequestedSignal {
    /// None named: the image's STOPSIGNAL, else SIGTERM.
    #[default]
    ImageDefault,
    /// This Linux signal number.
    Number(i32),
    /// A signal this host cannot send, and why: the create refuses it.
    Unsupported(String),
}

/// The stop signal of a container whose request asks for `requested` on an image whose
/// STOPSIGNAL is `image_stop_signal` (empty when it sets none). Errors name a signal this host
/// has no number for.
pub fn resolve(requested: &RequestedSignal, image_stop_signal: &str) -> Result<i32, String> {
    match requested {
        RequestedSignal::Number(n) => Ok(*n),
        RequestedSignal::Unsupported(reason) => Err(reason.clone()),
        RequestedSignal::ImageDefault => {
            Ok(parse_signal(image_stop_signal).unwrap_or(libc::SIGTERM))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_wins_over_the_image_which_wins_over_sigterm() {
        assert_eq!(
            resolve(&RequestedSignal::Number(libc::SIGUSR1), "SIGQUIT"),
            Ok(libc::SIGUSR1)
        );
        assert_eq!(
            resolve(&RequestedSignal::ImageDefault, "SIGQUIT"),
            Ok(libc::SIGQUIT)
        );
        assert_eq!(
            resolve(&RequestedSignal::ImageDefault, ""),
            Ok(libc::SIGTERM)
        );
        assert!(resolve(&RequestedSignal::Unsupported("no".into()), "").is_err());
    }
}
