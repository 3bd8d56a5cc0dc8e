//! AppArmor on the host: ferrio's default profile (its text, rendered for the host and loaded
//! once per daemon with `apparmor_parser`), and whether a profile a container names is loaded.
//!
//! What a CRI request asks for is decided in `spec::cri` (as an [`AppArmorRequest`]); this
//! module turns a request into the name that goes into the OCI spec's
//! `process.apparmorProfile`. The host fact (AppArmor enabled) comes in as a value and the
//! kernel is reached only through [`ProfileLoader`], so tests need neither AppArmor nor root.
//! Profiles the operator loads are theirs: nothing here unloads a profile.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// The name of ferrio's default profile.
pub const DEFAULT_PROFILE: &str = "ferrio-default";

/// The default profile's text with `{{name}}`, `{{abi}}`, `{{imports}}` and `{{inner_imports}}`
/// still to fill in; kept as data so the policy reads as a profile, not as code.
const DEFAULT_PROFILE_TEMPLATE: &str = include_str!("ferrio-default.apparmor");

/// Lists the loaded profiles, one `name (mode)` a line.
const PROFILES_FILE: &str = "/sys/kernel/security/apparmor/profiles";

/// Where the AppArmor userspace keeps its ABI files, tunables and abstractions.
const POLICY_DIR: &str = "/etc/apparmor.d";

/// The confinement a container asks for, read from the CRI request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppArmorRequest {
    /// ferrio's default profile where AppArmor is enabled, unconfined where it is not.
    RuntimeDefault,
    /// No profile.
    Unconfined,
    /// A profile the operator loaded, by name (without the `localhost/` prefix).
    Localhost(String),
}

/// Why a request's profile cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum AppArmorError {
    /// The named profile is not loaded into the kernel.
    #[error("apparmor profile {name:?} is not loaded on this host")]
    NotLoaded { name: String },
    /// A profile was named on a host where AppArmor is off.
    #[error("apparmor profile {name:?} requested, but AppArmor is not enabled on this host")]
    Disabled { name: String },
    /// `apparmor_parser` refused or could not load a profile.
    #[error("loading apparmor profile {name:?}: {reason}")]
    Load { name: String, reason: String },
    /// The list of loaded profiles could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which of the AppArmor userspace's policy files the default profile can include; a host
/// with the kernel side but without the apparmor package's files still gets a valid profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyFiles {
    /// `abi/3.0`: pins the policy ABI, so a newer kernel does not change what the rules mean.
    pub abi_3_0: bool,
    /// `tunables/global`: defines `@{PROC}` and friends.
    pub tunables_global: bool,
    /// `abstractions/base`: the rules every program needs (libc, locales, /dev/null).
    pub abstractions_base: bool,
}

impl PolicyFiles {
    /// Which files exist under `dir` (`/etc/apparmor.d` on a real host).
    pub fn detect(dir: &Path) -> PolicyFiles {
        PolicyFiles {
            abi_3_0: dir.join("abi/3.0").exists(),
            tunables_global: dir.join("tunables/global").exists(),
            abstractions_base: dir.join("abstractions/base").exists(),
        }
    }
}

/// The default profile's text, named `name`, for a host with `files`.
pub fn default_profile_text(name: &str, files: PolicyFiles) -> String {
    let abi = if files.abi_3_0 { "abi <abi/3.0>," } else { "" };
    let imports = if files.tunables_global {
        "#include <tunables/global>"
    } else {
        "@{PROC}=/proc/"
    };
    let inner = if files.abstractions_base {
        "  #include <abstractions/base>"
    } else {
        ""
    };
    DEFAULT_PROFILE_TEMPLATE
        .replace("{{abi}}", abi)
        .replace("{{imports}}", imports)
        .replace("{{inner_imports}}", inner)
        .replace("{{name}}", name)
}

/// The profile names in the kernel's list (`name (enforce)` a line; a name may hold spaces).
pub fn parse_loaded_profiles(list: &str) -> Vec<String> {
    list.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.rsplit_once(" (") {
            Some((name, _mode)) => name.to_string(),
            None => l.trim().to_string(),
        })
        .collect()
}

/// The kernel side of AppArmor: loading a profile and listing the loaded ones. Blocking.
pub trait ProfileLoader: Send + Sync {
    /// Loads `text` (a profile named `name`), replacing a loaded profile of that name.
    fn load(&self, name: &str, text: &str) -> Result<(), AppArmorError>;
    /// The names of the profiles loaded now.
    fn loaded(&self) -> Result<Vec<String>, AppArmorError>;
}

/// [`ProfileLoader`] of a real host: `apparmor_parser` and securityfs.
pub struct ParserLoader {
    /// The `apparmor_parser` binary (found on `PATH` when relative).
    pub parser: PathBuf,
    /// The kernel's list of loaded profiles.
    pub profiles_file: PathBuf,
}

impl Default for ParserLoader {
    fn default() -> Self {
        ParserLoader {
            parser: PathBuf::from("apparmor_parser"),
            profiles_file: PathBuf::from(PROFILES_FILE),
        }
    }
}

impl ProfileLoader for ParserLoader {
    fn load(&self, name: &str, text: &str) -> Result<(), AppArmorError> {
        let failed = |reason: String| AppArmorError::Load {
            name: name.to_string(),
            reason,
        };
        // -K: no cache files written for a profile that is generated anyway; -r: replace a
        // loaded profile of the same name (a daemon restart after an upgrade gets the new text).
        let mut child = Command::new(&self.parser)
            .arg("-Kr")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(format!("{}: {e}", self.parser.display())))?;
        let written = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(text.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(|e| failed(format!("{}: {e}", self.parser.display())))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(failed(format!("{}: {}", out.status, stderr.trim())));
        }
        if let Some(Err(e)) = written {
            return Err(failed(format!("writing the profile to the parser: {e}")));
        }
        Ok(())
    }

    fn loaded(&self) -> Result<Vec<String>, AppArmorError> {
        let list =
            std::fs::read_to_string(&self.profiles_file).map_err(|source| AppArmorError::Io {
                path: self.profiles_file.clone(),
                source,
            })?;
        Ok(parse_loaded_profiles(&list))
    }
}

/// The daemon's AppArmor: turns requests into profile names, loading the default profile the
/// first time a container needs it.
pub struct AppArmor {
    enabled: bool,
    loader: Arc<dyn ProfileLoader>,
    default_text: String,
    /// Set once the default profile is loaded; a failed load leaves it empty, so the next
    /// container tries again.
    default_loaded: tokio::sync::OnceCell<()>,
}

impl AppArmor {
    /// `enabled`: the host's AppArmor is on (see `HostFeatures::apparmor`).
    pub fn new(enabled: bool, loader: Arc<dyn ProfileLoader>, default_text: String) -> AppArmor {
        AppArmor {
            enabled,
            loader,
            default_text,
            default_loaded: tokio::sync::OnceCell::new(),
        }
    }

    /// The real host's AppArmor; reads `/etc/apparmor.d` only where AppArmor is enabled.
    pub fn for_host(enabled: bool) -> AppArmor {
        let files = if enabled {
            PolicyFiles::detect(Path::new(POLICY_DIR))
        } else {
            PolicyFiles::default()
        };
        AppArmor::new(
            enabled,
            Arc::new(ParserLoader::default()),
            default_profile_text(DEFAULT_PROFILE, files),
        )
    }

    /// Whether the host's AppArmor is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The `process.apparmorProfile` for `request`; `None` leaves the field out (unconfined:
    /// runc fails on any profile where AppArmor is off).
    pub async fn profile_for(
        &self,
        request: &AppArmorRequest,
    ) -> Result<Option<String>, AppArmorError> {
        match request {
            AppArmorRequest::Unconfined => Ok(None),
            AppArmorRequest::RuntimeDefault if !self.enabled => Ok(None),
            AppArmorRequest::Localhost(name) if !self.enabled => {
                Err(AppArmorError::Disabled { name: name.clone() })
            }
            AppArmorRequest::RuntimeDefault => {
                self.ensure_default_loaded().await?;
                Ok(Some(DEFAULT_PROFILE.to_string()))
            }
            // Our own profile by name: loaded on demand like RuntimeDefault.
            AppArmorRequest::Localhost(name) if name == DEFAULT_PROFILE => {
                self.ensure_default_loaded().await?;
                Ok(Some(name.clone()))
            }
            AppArmorRequest::Localhost(name) => {
                let loader = self.loader.clone();
                let loaded = blocking(name, move || loader.loaded()).await?;
                if loaded.iter().any(|p| p == name) {
                    Ok(Some(name.clone()))
                } else {
                    Err(AppArmorError::NotLoaded { name: name.clone() })
                }
            }
        }
    }

    async fn ensure_default_loaded(&self) -> Result<(), AppArmorError> {
        self.default_loaded
            .get_or_try_init(|| async {
                let loader = self.loader.clone();
                let text = self.default_text.clone();
                blocking(DEFAULT_PROFILE, move || loader.load(DEFAULT_PROFILE, &text)).await?;
                tracing::info!(
                    profile = DEFAULT_PROFILE,
                    "loaded the default apparmor profile"
                );
                Ok(())
            })
            .await
            .map(|_| ())
    }
}

/// Runs a loader call on the blocking pool (it execs a process or reads securityfs).
async fn blocking<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T, AppArmorError> + Send + 'static,
) -> Result<T, AppArmorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppArmorError::Load {
            name: name.to_string(),
            reason: e.to_string(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records loads; `loaded` lists what was loaded plus `preloaded`.
    #[derive(Default)]
    struct FakeLoader {
        preloaded: Vec<String>,
        loads: Mutex<Vec<(String, String)>>,
        fail_loads: Mutex<usize>,
    }

    impl ProfileLoader for FakeLoader {
        fn load(&self, name: &str, text: &str) -> Result<(), AppArmorError> {
            let mut fail = self.fail_loads.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(AppArmorError::Load {
                    name: name.into(),
                    reason: "parser says no".into(),
                });
            }
            self.loads
                .lock()
                .unwrap()
                .push((name.to_string(), text.to_string()));
            Ok(())
        }
        fn loaded(&self) -> Result<Vec<String>, AppArmorError> {
            let mut names = self.preloaded.clone();
            names.extend(self.loads.lock().unwrap().iter().map(|(n, _)| n.clone()));
            Ok(names)
        }
    }

    fn apparmor(enabled: bool, preloaded: &[&str]) -> (AppArmor, Arc<FakeLoader>) {
        let loader = Arc::new(FakeLoader {
            preloaded: preloaded.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        });
        let aa = AppArmor::new(enabled, loader.clone(), "profile text".into());
        (aa, loader)
    }

    fn localhost(name: &str) -> AppArmorRequest {
        AppArmorRequest::Localhost(name.into())
    }

    #[tokio::test]
    async fn enabled_host_runtime_default_loads_the_default_profile_once() {
        let (aa, loader) = apparmor(true, &[]);
        for _ in 0..3 {
            let p = aa.profile_for(&AppArmorRequest::RuntimeDefault).await;
            assert_eq!(p.unwrap().as_deref(), Some(DEFAULT_PROFILE));
        }
        let loads = loader.loads.lock().unwrap().clone();
        assert_eq!(
            loads,
            vec![(DEFAULT_PROFILE.to_string(), "profile text".to_string())]
        );
    }

    #[tokio::test]
    async fn a_failed_default_load_is_an_error_and_retried() {
        let (aa, loader) = apparmor(true, &[]);
        *loader.fail_loads.lock().unwrap() = 1;
        let e = aa
            .profile_for(&AppArmorRequest::RuntimeDefault)
            .await
            .unwrap_err();
        assert!(matches!(e, AppArmorError::Load { .. }), "{e}");
        assert!(e.to_string().contains(DEFAULT_PROFILE), "{e}");
        let p = aa.profile_for(&AppArmorRequest::RuntimeDefault).await;
        assert_eq!(p.unwrap().as_deref(), Some(DEFAULT_PROFILE));
        assert_eq!(loader.loads.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn enabled_host_localhost_needs_a_loaded_profile() {
        let (aa, loader) = apparmor(true, &["k8s-nginx", "with space"]);
        let p = aa.profile_for(&localhost("k8s-nginx")).await.unwrap();
        assert_eq!(p.as_deref(), Some("k8s-nginx"));
        let p = aa.profile_for(&localhost("with space")).await.unwrap();
        assert_eq!(p.as_deref(), Some("with space"));
        let e = aa.profile_for(&localhost("k8s")).await.unwrap_err();
        assert!(
            matches!(&e, AppArmorError::NotLoaded { name } if name == "k8s"),
            "{e}"
        );
        assert!(e.to_string().contains("\"k8s\""), "{e}");
        assert!(loader.loads.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn localhost_naming_the_default_profile_loads_it() {
        let (aa, loader) = apparmor(true, &[]);
        let p = aa.profile_for(&localhost(DEFAULT_PROFILE)).await.unwrap();
        assert_eq!(p.as_deref(), Some(DEFAULT_PROFILE));
        assert_eq!(loader.loads.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn unconfined_sets_no_profile_on_any_host() {
        for enabled in [true, false] {
            let (aa, loader) = apparmor(enabled, &[]);
            let p = aa.profile_for(&AppArmorRequest::Unconfined).await.unwrap();
            assert_eq!(p, None);
            assert!(loader.loads.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn disabled_host_runtime_default_is_unconfined_and_localhost_an_error() {
        let (aa, loader) = apparmor(false, &["k8s-nginx"]);
        let p = aa.profile_for(&AppArmorRequest::RuntimeDefault).await;
        assert_eq!(p.unwrap(), None);
        let e = aa.profile_for(&localhost("k8s-nginx")).await.unwrap_err();
        assert!(matches!(e, AppArmorError::Disabled { .. }), "{e}");
        assert!(e.to_string().contains("k8s-nginx"), "{e}");
        assert!(loader.loads.lock().unwrap().is_empty());
    }

    #[test]
    fn loaded_profiles_are_parsed_from_the_kernel_list() {
        let list = "ferrio-default (enforce)\n/usr/bin/man (enforce)\n\
                    a profile with spaces (complain)\nlsb_release (enforce)\n\n";
        assert_eq!(
            parse_loaded_profiles(list),
            vec![
                "ferrio-default",
                "/usr/bin/man",
                "a profile with spaces",
                "lsb_release"
            ]
        );
    }

    #[test]
    fn the_default_profile_is_rendered_for_the_host() {
        let full = default_profile_text(
            "ferrio-default",
            PolicyFiles {
                abi_3_0: true,
                tunables_global: true,
                abstractions_base: true,
            },
        );
        assert!(!full.contains("{{"), "{full}");
        assert!(full.contains("abi <abi/3.0>,"));
        assert!(full.contains("#include <tunables/global>"));
        assert!(full.contains("#include <abstractions/base>"));
        assert!(!full.contains("@{PROC}=/proc/"));
        assert!(
            full.contains("profile ferrio-default flags=(attach_disconnected,mediate_deleted) {")
        );
        assert!(full.contains("ptrace (trace,read,tracedby,readby) peer=ferrio-default,"));
        for rule in [
            "deny mount,",
            "deny @{PROC}/sys/[^k]** w,",
            "deny /sys/kernel/security/** rwklx,",
            "deny @{PROC}/sysrq-trigger rwklx,",
        ] {
            assert!(full.contains(rule), "{rule} missing");
        }

        let bare = default_profile_text("other", PolicyFiles::default());
        assert!(!bare.contains("{{"), "{bare}");
        assert!(!bare.contains("abi <"));
        assert!(!bare.contains("#include"));
        assert!(bare.contains("@{PROC}=/proc/"));
        assert!(bare.contains("profile other flags="));
        assert!(!bare.contains("ferrio-default flags"));
    }

    #[test]
    fn policy_files_are_detected_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(PolicyFiles::detect(dir.path()), PolicyFiles::default());
        std::fs::create_dir_all(dir.path().join("tunables")).unwrap();
        std::fs::write(dir.path().join("tunables/global"), "").unwrap();
        let files = PolicyFiles::detect(dir.path());
        assert!(files.tunables_global && !files.abi_3_0 && !files.abstractions_base);
    }

    #[test]
    fn parser_failures_name_the_profile() {
        let loader = ParserLoader {
            parser: PathBuf::from("/nonexistent/apparmor_parser"),
            profiles_file: PathBuf::from("/nonexistent/profiles"),
        };
        let e = loader.load("p1", "text").unwrap_err();
        assert!(e.to_string().contains("\"p1\""), "{e}");
        let e = loader.loaded().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/profiles"), "{e}");
    }

    /// A shell script standing in for apparmor_parser.
    fn fake_parser(dir: &Path, body: &str) -> ParserLoader {
        use std::os::unix::fs::PermissionsExt;
        let fake = dir.join("apparmor_parser");
        std::fs::write(&fake, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        ParserLoader {
            parser: fake,
            profiles_file: dir.join("profiles"),
        }
    }

    /// `load`, retried while another test's fork still holds the fresh script open (ETXTBSY).
    fn load_retrying(loader: &ParserLoader, name: &str, text: &str) -> Result<(), AppArmorError> {
        let busy = std::io::Error::from_raw_os_error(libc::ETXTBSY).to_string();
        for _ in 0..500 {
            match loader.load(name, text) {
                Err(e) if e.to_string().contains(&busy) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                r => return r,
            }
        }
        loader.load(name, text)
    }

    #[test]
    fn the_parser_gets_the_profile_on_stdin_with_kr() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got");
        let loader = fake_parser(
            dir.path(),
            &format!("echo \"$@\" > {0}; cat >> {0}", out.display()),
        );
        load_retrying(&loader, "p1", "profile p1 {}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "-Kr\nprofile p1 {}\n"
        );
        std::fs::write(dir.path().join("profiles"), "p1 (enforce)\n").unwrap();
        assert_eq!(loader.loaded().unwrap(), vec!["p1"]);
    }

    #[test]
    fn parser_errors_carry_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let loader = fake_parser(
            dir.path(),
            "cat >/dev/null; echo 'syntax error' >&2; exit 1",
        );
        let e = load_retrying(&loader, "p1", "profile p1 {}").unwrap_err();
        assert!(e.to_string().contains("syntax error"), "{e}");
        assert!(e.to_string().contains("\"p1\""), "{e}");
    }
}
