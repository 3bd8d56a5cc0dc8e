//! The on-disk result cache in libcni's layout (`<cache_dir>/results/<network>-<containerid>-<ifname>`),
//! holding the conflist that ADD used and its result, so DEL uses the same plugins and prevResult after
//! the config changed or the daemon restarted. Entries are written atomically (tmp + fsync + rename).

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::NetworkError;

const KIND: &str = "cniCacheV1";

/// One cache file, field names as libcni writes them so other tools can read ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    pub kind: String,
    pub container_id: String,
    /// The conflist bytes, base64 (Go's encoding of a []byte).
    pub config: String,
    pub if_name: String,
    pub network_name: String,
    #[serde(default)]
    pub cni_args: Vec<[String; 2]>,
    #[serde(default)]
    pub capability_args: Map<String, Value>,
    /// Absent while ADD is in flight: the entry is written first so a crash mid-ADD still gets a DEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl CacheEntry {
    pub fn new(
        network_name: &str,
        container_id: &str,
        if_name: &str,
        config: &[u8],
        cni_args: &str,
        capability_args: Map<String, Value>,
    ) -> CacheEntry {
        let cni_args = cni_args
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| [k.to_string(), v.to_string()])
            .collect();
        CacheEntry {
            kind: KIND.into(),
            container_id: container_id.into(),
            config: base64::engine::general_purpose::STANDARD.encode(config),
            if_name: if_name.into(),
            network_name: network_name.into(),
            cni_args,
            capability_args,
            result: None,
        }
    }

    /// The cached conflist bytes.
    pub fn config_bytes(&self, path: &Path) -> Result<Vec<u8>, NetworkError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.config)
            .map_err(|e| NetworkError::Config {
                path: path.to_path_buf(),
                reason: format!("cached config is not base64: {e}"),
            })
    }
}

/// Where the entries of one cache directory live.
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    pub fn new(cache_dir: &Path) -> ResultCache {
        ResultCache {
            dir: cache_dir.join("results"),
        }
    }

    pub fn path(&self, network: &str, container_id: &str, if_name: &str) -> PathBuf {
        self.dir.join(format!("{network}-{container_id}-{if_name}"))
    }

    /// Every entry for one container and interface, whatever network it was added to (the network
    /// name is not known at teardown when the config changed since).
    pub fn find(&self, container_id: &str, if_name: &str) -> Result<Vec<PathBuf>, NetworkError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(NetworkError::io("read dir", &self.dir, e)),
        };
        let suffix = format!("-{container_id}-{if_name}");
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| NetworkError::io("read dir", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(&suffix) && name.len() > suffix.len() && !name.starts_with('.') {
                found.push(entry.path());
            }
        }
        found.sort();
        Ok(found)
    }

    pub fn read(&self, path: &Path) -> Result<CacheEntry, NetworkError> {
        let bytes = std::fs::read(path).map_err(|e| NetworkError::io("read", path, e))?;
        let entry: CacheEntry =
            serde_json::from_slice(&bytes).map_err(|e| NetworkError::Config {
                path: path.to_path_buf(),
                reason: format!("bad cache entry: {e}"),
            })?;
        Ok(entry)
    }

    pub fn write(&self, entry: &CacheEntry) -> Result<PathBuf, NetworkError> {
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        std::fs::create_dir_all(&self.dir).map_err(|e| NetworkError::io("create", &self.dir, e))?;
        let bytes = serde_json::to_vec(entry).map_err(|e| NetworkError::Config {
            path: path.clone(),
            reason: format!("encode cache entry: {e}"),
        })?;
        crate::state::write_atomic(&path, &bytes, crate::state::Durability::PowerLoss)
            .map_err(|e| NetworkError::io("write", &path, e.into_io()))?;
        Ok(path)
    }

    pub fn remove(&self, path: &Path) -> Result<(), NetworkError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetworkError::io("remove", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_in_libcni_layout() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([{"hostPort": 80}]));
        let mut entry = CacheEntry::new(
            "net",
            "abc",
            "eth0",
            b"{\"x\":1}",
            "IgnoreUnknown=1;K8S_POD_NAME=p",
            caps,
        );
        entry.result = Some(json!({"cniVersion": "1.0.0"}));
        let path = cache.write(&entry).unwrap();
        assert_eq!(path, dir.path().join("results/net-abc-eth0"));

        let raw: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["kind"], "cniCacheV1");
        assert_eq!(raw["containerId"], "abc");
        assert_eq!(raw["ifName"], "eth0");
        assert_eq!(raw["networkName"], "net");
        assert_eq!(raw["config"], "eyJ4IjoxfQ==");
        assert_eq!(
            raw["cniArgs"],
            json!([["IgnoreUnknown", "1"], ["K8S_POD_NAME", "p"]])
        );

        let back = cache.read(&path).unwrap();
        assert_eq!(back, entry);
        assert_eq!(back.config_bytes(&path).unwrap(), b"{\"x\":1}");

        // Found by container and interface without knowing the network.
        assert_eq!(
            cache.find("abc", "eth0").unwrap(),
            std::slice::from_ref(&path)
        );
        assert!(cache.find("ab", "eth0").unwrap().is_empty());
        assert!(cache.find("abc", "eth1").unwrap().is_empty());

        cache.remove(&path).unwrap();
        cache.remove(&path).unwrap();
        assert!(cache.find("abc", "eth0").unwrap().is_empty());
    }

    #[test]
    fn missing_dir_finds_nothing_and_corrupt_entry_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(&dir.path().join("absent"));
        assert!(cache.find("x", "eth0").unwrap().is_empty());
        let cache = ResultCache::new(dir.path());
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        let p = dir.path().join("results/n-x-eth0");
        std::fs::write(&p, "{").unwrap();
        assert!(matches!(cache.read(&p), Err(NetworkError::Config { .. })));
    }
}
