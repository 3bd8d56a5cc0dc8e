//! The process: args (Kubernetes' command/args over the image's entrypoint/cmd), env merged by
//! key, working directory, terminal, `oom_score_adj`, no rlimits of our own.

use std::collections::HashMap;

use oci_spec::runtime::{Spec, UserBuilder};

use super::{Input, SpecError};
use crate::image::ImageConfig;

/// `PATH` for processes whose image and request set none (what docker and CRI-O use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the process runs and how, decided from the request and the image.
#[derive(Debug, Clone, Default)]
pub struct ProcessInput {
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// The request's env values that are not UTF-8, by key, in the request's order; `env`
    /// holds each key with an empty value where it belongs (see [`super::envexec`]).
    pub binary_env: Vec<(String, Vec<u8>)>,
    pub cwd: String,
    pub terminal: bool,
    pub user: ProcessUser,
    pub no_new_privileges: bool,
    /// The requested `oom_score_adj`; `None` leaves the runtime's default.
    pub oom_score_adj: Option<i64>,
    /// Raise `oom_score_adj` to the host's floor (containerd's `restrict_oom_score_adj`).
    pub restrict_oom_score_adj: bool,
}

/// The process's ids as they go into the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    /// `None` leaves the field out of the spec.
    pub additional_gids: Option<Vec<u32>>,
}

/// Step: args, env, cwd, terminal, user, no_new_privs, `oom_score_adj`; no rlimits.
pub fn process(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    let p = &input.process;
    let mut user = UserBuilder::default().uid(p.user.uid).gid(p.user.gid);
    if let Some(gids) = &p.user.additional_gids {
        user = user.additional_gids(gids.clone());
    }
    let user = user.build()?;
    let oom = p.oom_score_adj.map(|v| {
        input
            .host
            .features
            .clamp_oom_score_adj(v, p.restrict_oom_score_adj)
    });
    let process = spec.process_mut().get_or_insert_with(Default::default);
    process.set_terminal(Some(p.terminal));
    process.set_user(user);
    process.set_args(Some(p.args.clone()));
    process.set_env(Some(p.env.clone()));
    process.set_cwd(p.cwd.clone().into());
    process.set_no_new_privileges(Some(p.no_new_privileges));
    process.set_oom_score_adj(oom);
    // oci-spec's `Default` carries a 1024 NOFILE rlimit: we decide none ourselves.
    process.set_rlimits(None);
    Ok(())
}

/// Kubernetes' rule: `command` replaces the entrypoint and drops the image's cmd; `args`
/// alone replaces the cmd.
pub fn process_args(
    command: &[String],
    args: &[String],
    image: &ImageConfig,
) -> Result<Vec<String>, SpecError> {
    let mut out = if !command.is_empty() {
        command.to_vec()
    } else {
        image.entrypoint.clone()
    };
    if !args.is_empty() {
        out.extend(args.iter().cloned());
    } else if command.is_empty() {
        out.extend(image.cmd.iter().cloned());
    }
    if out.is_empty() {
        return Err(SpecError::invalid(
            "command",
            "no command specified and the image has no entrypoint or cmd",
        ));
    }
    Ok(out)
}

/// The image's entrypoint and cmd; an image without either runs the conventional pause binary.
pub fn pause_args(image: &ImageConfig) -> Vec<String> {
    let mut args = image.entrypoint.clone();
    args.extend(image.cmd.iter().cloned());
    if args.is_empty() {
        args.push("/pause".to_string());
    }
    args
}

/// The request's working directory, else the image's, else `/`.
pub fn working_dir(requested: &str, image: &ImageConfig) -> Result<String, SpecError> {
    if !requested.is_empty() {
        if !requested.starts_with('/') {
            return Err(SpecError::invalid(
                "working_dir",
                format!("{requested:?} is not an absolute path"),
            ));
        }
        return Ok(requested.to_string());
    }
    if image.working_dir.is_empty() {
        Ok("/".into())
    } else if image.working_dir.starts_with('/') {
        Ok(image.working_dir.clone())
    } else {
        // Docker treats a relative WORKDIR as relative to /.
        Ok(format!("/{}", image.working_dir))
    }
}

/// The pause process's working directory: the image's as it is, else `/`.
pub fn pause_working_dir(image: &ImageConfig) -> String {
    if image.working_dir.is_empty() {
        "/".to_string()
    } else {
        image.working_dir.clone()
    }
}

/// A container's env: `HOSTNAME` and `TERM` (with a tty), the image's, then the request's by
/// key; `HOME` from the resolved user unless set.
pub fn container_env(
    hostname: &str,
    tty: bool,
    image_env: &[String],
    overrides: &[(String, String)],
    home: Option<&str>,
) -> Vec<String> {
    let mut base: Vec<String> = Vec::new();
    if !hostname.is_empty() {
        base.push(format!("HOSTNAME={hostname}"));
    }
    if tty {
        base.push("TERM=xterm".into());
    }
    base.extend(image_env.iter().cloned());
    let mut env = merge_env(&base, overrides);
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home.unwrap_or("/")));
    }
    env
}

/// Image env (`K=V`) then overrides, by key, keeping first-seen order; `PATH` added if absent.
pub fn merge_env(image_env: &[String], overrides: &[(String, String)]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let mut set = |k: &str, entry: String| {
        if !values.contains_key(k) {
            keys.push(k.to_string());
        }
        values.insert(k.to_string(), entry);
    };
    for e in image_env {
        let key = e.split_once('=').map(|(k, _)| k).unwrap_or(e.as_str());
        if !key.is_empty() {
            set(key, e.clone());
        }
    }
    for (k, v) in overrides {
        if !k.is_empty() {
            set(k, format!("{k}={v}"));
        }
    }
    if !values.contains_key("PATH") {
        keys.push("PATH".into());
        values.insert("PATH".into(), format!("PATH={DEFAULT_PATH}"));
    }
    keys.into_iter().filter_map(|k| values.remove(&k)).collect()
}
