//! OCI hooks from hooks directories (`runtime.hooks_dir`), in CRI-O's (and podman's) JSON
//! format, version 1.0.0:
//!
//! ```json
//! { "version": "1.0.0",
//!   "hook": { "path": "/usr/libexec/oci/hooks.d/x", "args": ["x", "a"], "env": ["K=V"], "timeout": 5 },
//!   "when": { "always": true, "annotations": { "key regex": "value regex" },
//!             "commands": ["regex on process.args[0]"], "hasBindMounts": true, "or": false },
//!   "stages": ["createRuntime", "poststop"] }
//! ```
//!
//! The `when` conditions that are set must all hold (any one with `"or": true`); regexes are
//! unanchored, as Go's `regexp.MatchString`. Files are taken by name order; a file of a later
//! directory replaces the one of the same name in an earlier directory. A file that does not
//! parse or validate is logged and skipped, as CRI-O does, so one bad file never blocks every
//! container. The step adds the matching hooks to the spec's stages, in file order.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hook, HookBuilder, Hooks, Spec};
use regex::Regex;
use serde::Deserialize;

use super::annotations::annotation_map;
use super::watched::{file_name, Watched};
use super::{Input, SpecError};

/// The OCI lifecycle stages a hook can run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

/// The command a hook runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookCommand {
    pub path: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds; the runtime kills the hook after them.
    #[serde(default)]
    pub timeout: Option<i64>,
}

impl HookCommand {
    /// The OCI hook.
    pub fn to_oci(&self) -> Result<Hook, SpecError> {
        let mut b = HookBuilder::default().path(self.path.clone());
        if !self.args.is_empty() {
            b = b.args(self.args.clone());
        }
        if !self.env.is_empty() {
            b = b.env(self.env.clone());
        }
        if let Some(t) = self.timeout {
            b = b.timeout(t);
        }
        Ok(b.build()?)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WhenFile {
    always: Option<bool>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    commands: Vec<String>,
    has_bind_mounts: Option<bool>,
    #[serde(default)]
    or: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HookFile {
    version: String,
    hook: HookCommand,
    when: WhenFile,
    stages: Vec<Stage>,
}

/// When a hook applies.
#[derive(Debug, Clone)]
pub struct When {
    always: Option<bool>,
    annotations: Vec<(Regex, Regex)>,
    commands: Vec<Regex>,
    has_bind_mounts: Option<bool>,
    or: bool,
}

/// What a container offers the `when` conditions.
pub struct HookSubject<'a> {
    pub annotations: &'a HashMap<String, String>,
    /// The process's `args[0]`.
    pub command: &'a str,
    pub has_bind_mounts: bool,
}

impl When {
    /// Whether the conditions hold for `c`.
    pub fn matches(&self, c: &HookSubject) -> bool {
        let mut results = Vec::new();
        if let Some(always) = self.always {
            results.push(always);
        }
        if let Some(want) = self.has_bind_mounts {
            results.push(want && c.has_bind_mounts);
        }
        for (k, v) in &self.annotations {
            results.push(
                c.annotations
                    .iter()
                    .any(|(key, value)| k.is_match(key) && v.is_match(value)),
            );
        }
        if !self.commands.is_empty() {
            results.push(self.commands.iter().any(|r| r.is_match(c.command)));
        }
        if self.or {
            results.iter().any(|&r| r)
        } else {
            !results.is_empty() && results.iter().all(|&r| r)
        }
    }
}

/// One hook definition file.
#[derive(Debug, Clone)]
pub struct HookDef {
    /// The file it came from (for logs).
    pub file: PathBuf,
    pub hook: HookCommand,
    pub when: When,
    pub stages: Vec<Stage>,
}

/// Parses one hook file; `hook_exists` checks the hook's path (a hook whose binary is missing
/// would fail every container at create).
pub fn parse_hook(
    file: &Path,
    text: &str,
    hook_exists: impl Fn(&Path) -> bool,
) -> Result<HookDef, String> {
    let f: HookFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if f.version != "1.0.0" {
        return Err(format!(
            "unsupported version {:?} (want \"1.0.0\")",
            f.version
        ));
    }
    if !f.hook.path.is_absolute() {
        return Err(format!(
            "hook.path {} is not absolute",
            f.hook.path.display()
        ));
    }
    if !hook_exists(&f.hook.path) {
        return Err(format!(
            "hook.path {} does not exist",
            f.hook.path.display()
        ));
    }
    if f.stages.is_empty() {
        return Err("no stages".into());
    }
    let w = f.when;
    if w.always.is_none()
        && w.annotations.is_empty()
        && w.commands.is_empty()
        && w.has_bind_mounts.is_none()
    {
        return Err("when has no condition".into());
    }
    let re = |s: &str| Regex::new(s).map_err(|e| format!("regex {s:?}: {e}"));
    let annotations = w
        .annotations
        .iter()
        .map(|(k, v)| Ok((re(k)?, re(v)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let commands = w
        .commands
        .iter()
        .map(|c| re(c))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(HookDef {
        file: file.to_path_buf(),
        hook: f.hook,
        when: When {
            always: w.always,
            annotations,
            commands,
            has_bind_mounts: w.has_bind_mounts,
            or: w.or,
        },
        stages: f.stages,
    })
}

/// Reads the hook files (in [`super::watched::files_in`] order); a later file of the same name
/// replaces an earlier one; invalid files are logged and skipped (an earlier file of the same
/// name then stays, as in CRI-O).
pub fn load_hooks(files: &[PathBuf]) -> Vec<HookDef> {
    let mut by_name: BTreeMap<String, HookDef> = BTreeMap::new();
    for file in files {
        let parsed = std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_hook(file, &text, |p| p.exists()));
        match parsed {
            Ok(def) => {
                by_name.insert(file_name(file), def);
            }
            Err(reason) => {
                tracing::warn!(file = %file.display(), %reason, "skipping invalid OCI hook file");
            }
        }
    }
    by_name.into_values().collect()
}

/// The hook files of the configured directories, read again when they change.
pub struct HookDirs(Watched<Vec<HookDef>>);

impl Default for HookDirs {
    fn default() -> Self {
        HookDirs(Watched::new(&[".json"]))
    }
}

impl HookDirs {
    /// The current hooks of `dirs`.
    pub fn hooks(&self, dirs: &[PathBuf]) -> std::sync::Arc<Vec<HookDef>> {
        self.0.get(dirs, load_hooks)
    }
}

/// Step: the hooks whose `when` holds for this container (its annotations as the spec gets
/// them, its command, whether it has volumes), added at their stages after the hooks earlier
/// steps set (CDI's).
pub fn oci_hooks(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    if input.hooks.is_empty() {
        return Ok(());
    }
    let annotations = annotation_map(&input.annotations);
    let args0 = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().as_ref())
        .and_then(|a| a.first().cloned())
        .unwrap_or_default();
    let subject = HookSubject {
        annotations: &annotations,
        command: &args0,
        has_bind_mounts: !input.mounts.mounts.is_empty(),
    };
    let mut hooks = spec.hooks().clone().unwrap_or_default();
    let mut added = false;
    for def in input.hooks.iter().filter(|d| d.when.matches(&subject)) {
        let hook = def.hook.to_oci()?;
        for stage in &def.stages {
            add_hook(&mut hooks, *stage, hook.clone());
            added = true;
        }
    }
    if added {
        spec.set_hooks(Some(hooks));
    }
    Ok(())
}

/// Appends `hook` to `stage` of `hooks`.
pub fn add_hook(hooks: &mut Hooks, stage: Stage, hook: Hook) {
    let list = match stage {
        Stage::Prestart => {
            #[allow(deprecated)] // CRI-O's format still offers it; runc runs it
            let l = hooks.prestart().clone();
            l
        }
        Stage::CreateRuntime => hooks.create_runtime().clone(),
        Stage::CreateContainer => hooks.create_container().clone(),
        Stage::StartContainer => hooks.start_container().clone(),
        Stage::Poststart => hooks.poststart().clone(),
        Stage::Poststop => hooks.poststop().clone(),
    };
    let mut list = list.unwrap_or_default();
    list.push(hook);
    match stage {
        Stage::Prestart => {
            #[allow(deprecated)]
            hooks.set_prestart(Some(list));
        }
        Stage::CreateRuntime => {
            hooks.set_create_runtime(Some(list));
        }
        Stage::CreateContainer => {
            hooks.set_create_container(Some(list));
        }
        Stage::StartContainer => {
            hooks.set_start_container(Some(list));
        }
        Stage::Poststart => {
            hooks.set_poststart(Some(list));
        }
        Stage::Poststop => {
            hooks.set_poststop(Some(list));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HookDef, String> {
        parse_hook(Path::new("/hooks/x.json"), text, |_| true)
    }

    fn subject<'a>(
        annotations: &'a HashMap<String, String>,
        command: &'a str,
        binds: bool,
    ) -> HookSubject<'a> {
        HookSubject {
            annotations,
            command,
            has_bind_mounts: binds,
        }
    }

    #[test]
    fn parses_crio_hook_files_and_refuses_bad_ones() {
        let d = parse(
            r#"{"version":"1.0.0","hook":{"path":"/bin/h","args":["h","-x"],"env":["A=1"],"timeout":3},
                "when":{"always":true},"stages":["createRuntime","poststop"]}"#,
        )
        .unwrap();
        assert_eq!(d.stages, vec![Stage::CreateRuntime, Stage::Poststop]);
        let hook = d.hook.to_oci().unwrap();
        assert_eq!(hook.path(), Path::new("/bin/h"));
        assert_eq!(
            hook.args().as_deref(),
            Some(&["h".to_string(), "-x".into()][..])
        );
        assert_eq!(hook.timeout(), Some(3));

        for (bad, why) in [
            (
                r#"{"version":"0.1.0","hook":{"path":"/bin/h"},"when":{"always":true},"stages":["poststop"]}"#,
                "version",
            ),
            (
                r#"{"version":"1.0.0","hook":{"path":"bin/h"},"when":{"always":true},"stages":["poststop"]}"#,
                "absolute",
            ),
            (
                r#"{"version":"1.0.0","hook":{"path":"/bin/h"},"when":{},"stages":["poststop"]}"#,
                "condition",
            ),
            (
                r#"{"version":"1.0.0","hook":{"path":"/bin/h"},"when":{"always":true},"stages":[]}"#,
                "stages",
            ),
            (
                r#"{"version":"1.0.0","hook":{"path":"/bin/h"},"when":{"always":true},"stages":["later"]}"#,
                "later",
            ),
            (
                r#"{"version":"1.0.0","hook":{"path":"/bin/h"},"when":{"commands":["("]},"stages":["poststop"]}"#,
                "regex",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = parse_hook(
            Path::new("/hooks/x.json"),
            r#"{"version":"1.0.0","hook":{"path":"/nowhere"},"when":{"always":true},"stages":["poststop"]}"#,
            |_| false,
        )
        .unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn when_conditions_all_hold_or_any_with_or() {
        let w = |when: &str| {
            parse(&format!(
                r#"{{"version":"1.0.0","hook":{{"path":"/bin/h"}},"when":{when},"stages":["poststop"]}}"#
            ))
            .unwrap()
            .when
        };
        let gpu: HashMap<String, String> =
            [("example.com/gpu".to_string(), "yes".to_string())].into();
        let none = HashMap::new();
        let ann = w(r#"{"annotations":{"^example\\.com/gpu$":"^yes$"}}"#);
        assert!(ann.matches(&subject(&gpu, "/bin/sh", false)));
        assert!(!ann.matches(&subject(&none, "/bin/sh", false)));
        let cmd = w(r#"{"commands":["sh$"]}"#);
        assert!(cmd.matches(&subject(&none, "/bin/sh", false)));
        assert!(!cmd.matches(&subject(&none, "/bin/sleep", false)));
        let binds = w(r#"{"hasBindMounts":true}"#);
        assert!(binds.matches(&subject(&none, "x", true)));
        assert!(!binds.matches(&subject(&none, "x", false)));
        assert!(!w(r#"{"always":false}"#).matches(&subject(&gpu, "x", true)));
        // both must hold, unless "or"
        let both = w(r#"{"commands":["sh$"],"hasBindMounts":true}"#);
        assert!(!both.matches(&subject(&none, "/bin/sh", false)));
        assert!(both.matches(&subject(&none, "/bin/sh", true)));
        let either = w(r#"{"commands":["sh$"],"hasBindMounts":true,"or":true}"#);
        assert!(either.matches(&subject(&none, "/bin/sh", false)));
        assert!(!either.matches(&subject(&none, "/bin/sleep", false)));
    }

    #[test]
    fn later_directories_override_files_of_the_same_name() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let hook = |path: &str, stage: &str| {
            format!(
                r#"{{"version":"1.0.0","hook":{{"path":"{path}"}},"when":{{"always":true}},"stages":["{stage}"]}}"#
            )
        };
        std::fs::write(a.path().join("10-x.json"), hook("/bin/sh", "poststop")).unwrap();
        std::fs::write(a.path().join("20-y.json"), hook("/bin/sh", "poststop")).unwrap();
        std::fs::write(a.path().join("30-bad.json"), "{").unwrap();
        std::fs::write(b.path().join("10-x.json"), hook("/bin/true", "prestart")).unwrap();
        std::fs::write(b.path().join("20-y.json"), hook("/nowhere", "prestart")).unwrap();
        let dirs = HookDirs::default();
        let hooks = dirs.hooks(&[a.path().to_path_buf(), b.path().to_path_buf()]);
        assert_eq!(hooks.len(), 2, "{hooks:?}");
        assert_eq!(hooks[0].hook.path, Path::new("/bin/true"));
        assert_eq!(hooks[0].stages, vec![Stage::Prestart]);
        assert_eq!(hooks[1].hook.path, Path::new("/bin/sh"));
        assert_eq!(hooks[1].stages, vec![Stage::Poststop]);
    }
}
