//! Live reload (SIGHUP): re-read the config files, check them, and swap what can change while
//! pods run. A refused config leaves everything as it was.

use super::{cni_for, runtimes_for, Daemon};
use crate::config::{Config, ConfigChanges, ConfigError};
use std::path::PathBuf;
use std::sync::Arc;

/// Why a reload was refused; the old config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

/// Where the config came from at start, so a reload reads the same files.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--config`; None = the default file, optional.
    pub file: Option<PathBuf>,
    /// `--config-dir`.
    pub dropin_dir: Option<PathBuf>,
    /// `--log-level`: wins over the files on every reload too.
    pub log_level: Option<String>,
}

impl ConfigSource {
    /// Read and validate the files now.
    pub fn load(&self) -> Result<Config, ReloadError> {
        let mut c = Config::load(self.file.as_deref(), self.dropin_dir.as_deref())?;
        if let Some(level) = &self.log_level {
            c.log_level = level.clone();
            c.validate()
                .map_err(|(key, reason)| ReloadError::Invalid { key, reason })?;
        }
        Ok(c)
    }
}

/// Checks a reload adds to [`Config::validate`] (which is pure): what the new settings point at
/// must be usable, or the reload is refused before anything changes.
fn check_usable(old: &Config, new: &Config) -> Result<(), ReloadError> {
    let invalid = |key: String, reason: String| Err(ReloadError::Invalid { key, reason });
    for (name, h) in &new.runtime.runtimes {
        if old.runtime.runtimes.get(name) == Some(h) {
            continue;
        }
        let usable = std::fs::metadata(&h.runtime_path)
            .map(|m| m.is_file())
            .unwrap_or(false);
        if !usable {
            return invalid(
                format!("runtime.runtimes.{name}.runtime_path"),
                format!("{} is not an executable file", h.runtime_path.display()),
            );
        }
    }
    if old.image.sandbox_image != new.image.sandbox_image {
        if let Err(e) = crate::image::reference::normalize(&new.image.sandbox_image) {
            return invalid("image.sandbox_image".into(), e.to_string());
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
        set_log_level: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<ConfigChanges, ReloadError> {
        let r = self.reload_inner(source, set_log_level);
        self.metrics.config_reload(r.is_ok());
        r
    }

    fn reload_inner(
        &self,
        source: &ConfigSource,
        set_log_level: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<ConfigChanges, ReloadError> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let new = source.load()?;
        let old = self.config.load();
        let (live, changes) = old.reloaded(&new);
        // The mix of new live settings and old restart-only ones must hold together too
        // (a default_runtime of the new file names a handler of the new file: both are live).
        live.validate()
            .map_err(|(key, reason)| ReloadError::Invalid { key, reason })?;
        check_usable(&old, &live)?;
        if old.log_level != live.log_level {
            set_log_level(&live.log_level).map_err(|reason| ReloadError::Invalid {
                key: "log_level".into(),
                reason,
            })?;
        }
        // Nothing can fail from here on. Handlers first, then the network, then the config, so a
        // request that sees the new default handler finds it in the table.
        if old.runtime.runtimes != live.runtime.runtimes {
            self.pods.set_runtimes(runtimes_for(&live));
        }
        if old.network != live.network {
            self.cni.store(Arc::new(cni_for(&live)));
        }
        self.config.store(Arc::new(live));
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
