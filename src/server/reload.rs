//! Live reload (SIGHUP): re-read the config files, check them, and swap what can change while
//! pods run. A refused config leaves everything as it was.

use super::{cni_for, Daemon};
use crate::config::{Config, ConfigChanges, ConfigError, InvalidReason, InvalidValue, LogLevel};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a reload was refused; the old config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    /// The tracing subscriber refused the new level.
    #[error("log_level: {0}")]
    SetLogLevel(String),
    /// NRI's socket cannot be opened again (connections were enabled).
    #[error("nri: {0}")]
    Nri(#[from] crate::nri::NriError),
}

/// Where the config came from at start, so a reload reads the same files.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--config`; None = the default file, optional.
    pub file: Option<PathBuf>,
    /// `--config-dir`.
    pub dropin_dir: Option<PathBuf>,
    /// `--log-level` as given: wins over the files on every reload too.
    pub log_level: Option<String>,
}

impl ConfigSource {
    /// Read and validate the files now.
    pub fn load(&self) -> Result<Config, ReloadError> {
        let mut c = Config::load(self.file.as_deref(), self.dropin_dir.as_deref())?;
        if let Some(level) = &self.log_level {
            c.log_level = level.parse()?;
        }
        Ok(c)
    }
}

/// Checks a reload adds to [`Config::validate`] (which is pure): what the new settings point at
/// must be usable, or the reload is refused before anything changes.
fn check_usable(old: &Config, new: &Config) -> Result<(), ReloadError> {
    let invalid = |key: String, reason| Err(InvalidValue::new(key, reason).into());
    for (name, h) in &new.runtime.runtimes {
        if old.runtime.runtimes.get(name) == Some(h) {
            continue;
        }
        let usable = std::fs::metadata(&h.runtime_path)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !usable {
            return invalid(
                format!("runtime.runtimes.{name}.runtime_path"),
                InvalidReason::NotExecutable(h.runtime_path.clone()),
            );
        }
    }
    if old.image.sandbox_image != new.image.sandbox_image {
        if let Err(e) = crate::image::reference::normalize(&new.image.sandbox_image) {
            return invalid(
                "image.sandbox_image".into(),
                InvalidReason::NotAReference(e.to_string()),
            );
        }
    }
    Ok(())
}

impl Daemon {
    /// Re-read `source` and apply it: see [`Config::reloaded`] for what is applied live and what
    /// needs a restart. `set_log_level` applies a new level (the tracing subscriber is the
    /// binary's). Counts the outcome in `ferrio_config_reloads_total`. Running pods and
    /// containers are not touched.
    pub fn reload(
        &self,
        source: &ConfigSource,
        set_log_level: &dyn Fn(LogLevel) -> Result<(), String>,
    ) -> Result<ConfigChanges, ReloadError> {
        let r = self.reload_inner(source, set_log_level);
        self.metrics.config_reload(r.is_ok());
        r
    }

    fn reload_inner(
        &self,
        source: &ConfigSource,
        set_log_level: &dyn Fn(LogLevel) -> Result<(), String>,
    ) -> Result<ConfigChanges, ReloadError> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let new = source.load()?;
        let old = self.config.load();
        let (live, changes) = old.reloaded(&new);
        // The mix of new live settings and old restart-only ones must hold together too
        // (a default_runtime of the new file names a handler of the new file: both are live).
        live.validate()?;
        check_usable(&old, &live)?;
        // NRI rescans plugin_path on every reload, changed or not: a plugin installed there since is started.
        let nri = match &self.nri {
            Some(nri) => Some((nri, nri.prepare_reload(super::nri_settings(&live))?)),
            None => None,
        };
        if old.log_level != live.log_level {
            set_log_level(live.log_level).map_err(ReloadError::SetLogLevel)?;
        }
        // Nothing can fail from here on. Handlers first, then the network, then the config, so a
        // request that sees the new default handler finds it in the table.
        if old.runtime.runtimes != live.runtime.runtimes {
            self.pods.set_runtimes(&live);
        }
        if old.network != live.network {
            self.cni.store(Arc::new(cni_for(&live)));
        }
        self.config.store(Arc::new(live));
        if let Some((nri, prepared)) = nri {
            nri.reload(prepared);
        }
        Ok(changes)
    }
}

/// The log line of a finished reload.
pub fn log_outcome(result: &Result<ConfigChanges, ReloadError>) {
    match result {
        Ok(c) if c.is_empty() => tracing::info!("config reloaded: nothing changed"),
        Ok(c) => {
            // The restart warning first: "config reloaded" is the last line of a reload.
            if !c.needs_restart.is_empty() {
                tracing::warn!(
                    keys = %c.needs_restart.join(", "),
                    "config reload: these settings changed but need a restart; the old values stay in force"
                );
            }
            if c.applied.is_empty() {
                tracing::info!("config reloaded: nothing applied");
            } else {
                tracing::info!(applied = %c.applied.join(", "), "config reloaded");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload refused; the old config stays in force")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuntimeHandler;

    fn handler(path: &str) -> RuntimeHandler {
        RuntimeHandler {
            runtime_path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_or_changed_handler_needs_its_binary() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("runc");
        std::fs::write(&bin, "").unwrap();
        let mode = |m| std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(m)).unwrap();
        let mut old = Config::default();
        // A handler the running daemon already has is not checked again (its pods need it).
        old.runtime
            .runtimes
            .insert("gone".into(), handler("/nonexistent/old"));
        let mut new = old.clone();
        new.runtime
            .runtimes
            .insert("fresh".into(), handler(&bin.display().to_string()));
        mode(0o644);
        let e = check_usable(&old, &new).unwrap_err().to_string();
        assert!(e.contains("runtime.runtimes.fresh.runtime_path"), "{e}");
        mode(0o755);
        check_usable(&old, &new).unwrap();

        new.runtime
            .runtimes
            .insert("ghost".into(), handler("/nonexistent/runc"));
        let e = check_usable(&old, &new).unwrap_err().to_string();
        assert!(e.contains("runtime.runtimes.ghost.runtime_path"), "{e}");
        new.runtime.runtimes.remove("ghost");

        // A directory is no runtime.
        new.runtime
            .runtimes
            .insert("fresh".into(), handler(&dir.path().display().to_string()));
        let e = check_usable(&old, &new).unwrap_err().to_string();
        assert!(e.contains("runtime.runtimes.fresh.runtime_path"), "{e}");
    }

    #[test]
    fn a_new_sandbox_image_must_be_a_reference() {
        let old = Config::default();
        let mut new = old.clone();
        new.image.sandbox_image = "example.com/pause:3.10".into();
        check_usable(&old, &new).unwrap();
        new.image.sandbox_image = "Not A Reference!".into();
        let e = check_usable(&old, &new).unwrap_err().to_string();
        assert!(e.contains("image.sandbox_image"), "{e}");
    }

    #[test]
    fn source_applies_the_log_level_override_on_every_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferrio.toml");
        std::fs::write(&file, "log_level = \"debug\"\n").unwrap();
        let mut source = ConfigSource {
            file: Some(file.clone()),
            dropin_dir: Some(dir.path().join("ferrio.d")),
            log_level: None,
        };
        assert_eq!(source.load().unwrap().log_level, LogLevel::Debug);
        source.log_level = Some("warn".into());
        assert_eq!(source.load().unwrap().log_level, LogLevel::Warn);
        source.log_level = Some("loud".into());
        assert!(source.load().unwrap_err().to_string().contains("log_level"));
        std::fs::write(&file, "log_level = \n").unwrap();
        assert!(matches!(source.load(), Err(ReloadError::Config(_))));
    }
}
