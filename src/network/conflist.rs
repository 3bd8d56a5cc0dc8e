//! Network configuration lists: parsing `.conflist` and single-plugin `.conf`/`.json` files, picking the
//! network from a directory, and finding plugin binaries.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::NetworkError;

/// File name extensions libcni loads from the network directory.
const EXTENSIONS: &[&str] = &["conflist", "conf", "json"];

/// Result versions we can parse; the plugins themselves are asked through the list's cniVersion.
const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A parsed network configuration list (a single-plugin conf is turned into a one-plugin list).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// Network name; part of the cache key.
    pub name: String,
    /// CNI version every plugin is called with.
    pub cni_version: String,
    /// Plugin configs in order, each an object with at least a "type".
    pub plugins: Vec<Map<String, Value>>,
    /// The list as JSON bytes, stored in the cache so DEL can run after the file changed.
    pub bytes: Vec<u8>,
    /// The file it came from (empty for a list read back from the cache).
    pub path: PathBuf,
}

impl NetworkConfigList {
    /// Parses a config list or a single plugin config. `path` only names the source in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<NetworkConfigList, NetworkError> {
        let invalid = |reason: String| NetworkError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not json: {e}")))?;
        let Value::Object(mut top) = value else {
            return Err(invalid("not a json object".into()));
        };
        let name = match top.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(invalid("missing network name".into())),
        };
        // The name becomes part of a cache file name.
        if name.contains('/') || name.contains('\0') || name == "." || name == ".." {
            return Err(invalid(format!("invalid network name {name:?}")));
        }
        let cni_version = match top.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(invalid("missing cniVersion".into())),
        };
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(invalid(format!("unsupported cniVersion {cni_version:?}")));
        }

        let (plugins, bytes) = match top.remove("plugins") {
            Some(Value::Array(items)) => {
                let mut plugins = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let Value::Object(plugin) = item else {
                        return Err(invalid(format!("plugin {i} is not an object")));
                    };
                    plugins.push(plugin);
                }
                (plugins, bytes.to_vec())
            }
            Some(_) => return Err(invalid("plugins is not a list".into())),
            None => {
                // A single plugin config: libcni wraps it into a list of one.
                let list = serde_json::json!({
                    "cniVersion": cni_version,
                    "name": name,
                    "plugins": [Value::Object(top.clone())],
                });
                (vec![top], list.to_string().into_bytes())
            }
        };
        if plugins.is_empty() {
            return Err(invalid("no plugins".into()));
        }
        for (i, plugin) in plugins.iter().enumerate() {
            match plugin.get("type") {
                Some(Value::String(t)) if !t.is_empty() && !t.contains('/') => {}
                _ => return Err(invalid(format!("plugin {i} has no valid type"))),
            }
        }
        Ok(NetworkConfigList {
            name,
            cni_version,
            plugins,
            bytes,
            path: path.to_path_buf(),
        })
    }

    /// Reads and parses one file.
    pub fn from_file(path: &Path) -> Result<NetworkConfigList, NetworkError> {
        let bytes = std::fs::read(path).map_err(|e| NetworkError::io("read", path, e))?;
        NetworkConfigList::from_bytes(&bytes, path)
    }

    /// The plugin types in order.
    pub fn plugin_types(&self) -> impl Iterator<Item = &str> {
        self.plugins
            .iter()
            .map(|p| p.get("type").and_then(Value::as_str).unwrap_or_default())
    }
}

/// Config files in `dir` that libcni would consider, in lexical order of their names.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, NetworkError> {
    let entries = std::fs::read_dir(dir).map_err(|e| NetworkError::io("read dir", dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| NetworkError::io("read dir", dir, e))?;
        let path = entry.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads the network to use: the one named `wanted`, else the first valid list in lexical order. A list is
/// valid when it parses and every plugin binary exists in `plugin_dirs`. The error explains every skip.
pub fn load_network(
    dir: &Path,
    plugin_dirs: &[PathBuf],
    wanted: Option<&str>,
) -> Result<NetworkConfigList, NetworkError> {
    let files = match config_files(dir) {
        Ok(files) => files,
        Err(NetworkError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => {
            return Err(NetworkError::NotReady {
                reason: e.to_string(),
            })
        }
    };
    let mut skipped = Vec::new();
    for file in &files {
        let list = match NetworkConfigList::from_file(file) {
            Ok(list) => list,
            Err(e) => {
                skipped.push(e.to_string());
                continue;
            }
        };
        if wanted.is_some_and(|w| w != list.name) {
            continue;
        }
        if let Some(missing) = list
            .plugin_types()
            .find(|t| find_plugin(t, plugin_dirs).is_none())
        {
            skipped.push(format!(
                "{}: plugin {missing} not found in {}",
                file.display(),
                join_paths(plugin_dirs)
            ));
            continue;
        }
        return Ok(list);
    }
    let mut reason = match wanted {
        Some(w) => format!("no valid network named {w:?} in {}", dir.display()),
        None => format!("no valid network config found in {}", dir.display()),
    };
    if !skipped.is_empty() {
        reason.push_str(" (");
        reason.push_str(&skipped.join("; "));
        reason.push(')');
    }
    Err(NetworkError::NotReady { reason })
}

/// The first executable file named `plugin_type` in `plugin_dirs`.
pub fn find_plugin(plugin_type: &str, plugin_dirs: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if plugin_type.is_empty() || plugin_type.contains('/') {
        return None;
    }
    plugin_dirs.iter().map(|d| d.join(plugin_type)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `plugin_dirs` joined with ':' as CNI_PATH wants them.
pub fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.to_string_lossy())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn plugin_dir(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for n in names {
            let p = dir.path().join(n);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    #[test]
    fn parses_conflist() {
        let bytes = br#"{"cniVersion":"1.0.0","name":"net1","plugins":[{"type":"bridge","bridge":"b0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
        let list = NetworkConfigList::from_bytes(bytes, Path::new("x.conflist")).unwrap();
        assert_eq!(list.name, "net1");
        assert_eq!(list.cni_version, "1.0.0");
        assert_eq!(
            list.plugin_types().collect::<Vec<_>>(),
            ["bridge", "portmap"]
        );
        assert_eq!(list.bytes, bytes.to_vec());
    }

    #[test]
    fn single_conf_becomes_list_of_one() {
        let bytes = br#"{"cniVersion":"0.3.1","name":"single","type":"bridge","bridge":"b1"}"#;
        let list = NetworkConfigList::from_bytes(bytes, Path::new("x.conf")).unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0]["bridge"], "b1");
        // The cached bytes parse back to the same list.
        let again = NetworkConfigList::from_bytes(&list.bytes, Path::new("")).unwrap();
        assert_eq!(again.plugins, list.plugins);
        assert_eq!(again.name, "single");
    }

    #[test]
    fn rejects_invalid_lists() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not json"),
            (b"[1]", "not a json object"),
            (
                br#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
                "missing network name",
            ),
            (
                br#"{"name":"n","plugins":[{"type":"bridge"}]}"#,
                "missing cniVersion",
            ),
            (
                br#"{"cniVersion":"9.9.9","name":"n","plugins":[{"type":"bridge"}]}"#,
                "unsupported cniVersion",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "no plugins",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}"#,
                "no valid type",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                "no valid type",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"a/b","plugins":[{"type":"x"}]}"#,
                "invalid network name",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":{}}"#,
                "plugins is not a list",
            ),
        ];
        for (bytes, want) in cases {
            let err = NetworkConfigList::from_bytes(bytes, Path::new("f.conflist")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(want), "{msg:?} should contain {want:?}");
            assert!(msg.contains("f.conflist"), "{msg:?} should name the file");
        }
    }

    #[test]
    fn loads_first_valid_in_lexical_order() {
        let plugins = plugin_dir(&["bridge", "portmap"]);
        let dirs = vec![plugins.path().to_path_buf()];
        let net = tempfile::tempdir().unwrap();
        let write = |n: &str, s: &str| std::fs::write(net.path().join(n), s).unwrap();
        write("05-broken.conflist", "{");
        write(
            "10-missing-plugin.conflist",
            r#"{"cniVersion":"1.0.0","name":"nope","plugins":[{"type":"absent"}]}"#,
        );
        write(
            "20-good.conf",
            r#"{"cniVersion":"1.0.0","name":"good","type":"bridge"}"#,
        );
        write(
            "30-later.conflist",
            r#"{"cniVersion":"1.0.0","name":"later","plugins":[{"type":"portmap"}]}"#,
        );
        write(
            "00-ignored.txt",
            r#"{"cniVersion":"1.0.0","name":"txt","type":"bridge"}"#,
        );
        let files = config_files(net.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "05-broken.conflist",
                "10-missing-plugin.conflist",
                "20-good.conf",
                "30-later.conflist"
            ]
        );

        let list = load_network(net.path(), &dirs, None).unwrap();
        assert_eq!(list.name, "good");
        let list = load_network(net.path(), &dirs, Some("later")).unwrap();
        assert_eq!(list.name, "later");

        let err = load_network(net.path(), &dirs, Some("other")).unwrap_err();
        assert!(matches!(err, NetworkError::NotReady { .. }));
        let msg = err.to_string();
        assert!(msg.contains("no valid network named \"other\""), "{msg}");
        assert!(msg.contains("05-broken.conflist"), "{msg}");
        let err = load_network(net.path(), &dirs, Some("nope")).unwrap_err();
        assert!(err.to_string().contains("plugin absent not found"), "{err}");
    }

    #[test]
    fn missing_or_empty_dir_is_not_ready() {
        let net = tempfile::tempdir().unwrap();
        let err = load_network(net.path(), &[], None).unwrap_err();
        assert!(
            err.to_string().contains("no valid network config found"),
            "{err}"
        );
        let err = load_network(&net.path().join("absent"), &[], None).unwrap_err();
        assert!(matches!(err, NetworkError::NotReady { .. }), "{err}");
    }

    #[test]
    fn finds_plugin_in_later_dir_and_skips_non_executables() {
        let a = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("bridge"), "").unwrap(); // not executable
        let b = plugin_dir(&["bridge"]);
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_plugin("bridge", &dirs), Some(b.path().join("bridge")));
        assert_eq!(find_plugin("absent", &dirs), None);
        assert_eq!(
            join_paths(&dirs),
            format!("{}:{}", a.path().display(), b.path().display())
        );
    }
}
