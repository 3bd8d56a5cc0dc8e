//! Persistent records: one directory per object holding `meta.json` (written once) and
//! `status.json` (changed only through [`Record::update`], written tmp + rename, with fsync
//! where the caller asks for [`Durability::PowerLoss`]).
//!
//! A record appears and disappears whole: it is built in a hidden `.<id>.new` directory and
//! renamed into place, and removed by renaming it to `.<id>.del` first, so a daemon killed at
//! any instant never leaves half a record (leftover hidden directories are removed on open).
//!
//! Every record file carries the schema `version` of its type ([`Schema`]): a file without one
//! (written before records were versioned) or with an older one is migrated once, at load, and a
//! file that does not decode is an error naming it, never a default.
//!
//! [`write_atomic`] is the daemon's one atomic file write; [`names`] reserves CRI names and
//! [`create_once`] lets a retried create wait for the attempt already running.
//!
//! Owns the files under `<root>/sandboxes` and `<root>/containers` and the in-memory tables the
//! List RPCs read (kubelet calls them every second: no disk access there). Knows nothing of CRI
//! types or of what the records mean.

pub mod create_once;
pub mod names;

use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt record: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: record version {version} cannot be read: {reason}")]
    Version {
        path: PathBuf,
        version: u64,
        reason: String,
    },
    #[error("id {prefix:?} matches more than one object")]
    Ambiguous { prefix: String },
}

impl StateError {
    /// The error as an I/O error, for rooms whose errors carry one (the path is theirs to add).
    pub fn into_io(self) -> std::io::Error {
        match self {
            StateError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How far a write must get before it counts as done.
///
/// Both are atomic: a reader (a restarted daemon included) sees the old or the new content,
/// never a mix. They differ in what a power loss does; an fsync costs milliseconds on a real
/// disk (~4-9 ms here), several per request add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Temp file + rename. Survives the daemon being killed at any instant: once `write`
    /// returned, the kernel has the data. A power loss may undo the change (the previous
    /// content, or on filesystems that do not order data before a rename, an empty file).
    /// Right for facts about processes of the current boot, which a reboot ends anyway: the
    /// daemon re-derives them after one (see the boot-id check in `server`).
    Crash,
    /// Temp file + fsync + rename + fsync of the directory: survives a power loss too. For
    /// what outlives a reboot: resources on disk that only the record leads to.
    PowerLoss,
}

/// Write `bytes` to `path` so that a reader (a restarted daemon included) sees either the old or
/// the new content, never a mix: a temp file in the same directory renamed over `path`, with the
/// fsyncs `durability` asks for. The one atomic write of the daemon: every caller states how
/// durable its file must be.
pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A name of its own, so that concurrent writers of one path never share a temp file.
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    let written = write_file(&tmp, bytes, durability)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err(path)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if durability == Durability::PowerLoss {
        sync_dir(dir);
    }
    Ok(())
}

/// Create (or truncate) `path` with `bytes`, fsynced when `durability` asks for it.
fn write_file(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), StateError> {
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    if durability == Durability::PowerLoss {
        f.sync_all().map_err(io_err(path))?;
    }
    Ok(())
}

/// Make a rename or create in `dir` durable. Best effort: the entry itself is already written.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The on-disk shape of one kind of record file, versioned so that a change of the type never
/// silently misreads files written before it.
///
/// The version is stamped into the file's JSON object (key `version`) on every write; the type
/// itself does not carry it.
pub trait Schema: Serialize + DeserializeOwned {
    /// The version written now. Files without a version are version 0.
    const VERSION: u64;

    /// `value`, the JSON of a file of version `from` (less than [`Schema::VERSION`]), turned into
    /// the current shape. An `Err` says why it cannot be, and the record is reported broken.
    fn migrate(from: u64, value: serde_json::Value) -> Result<serde_json::Value, String>;
}

/// The JSON of `value` with its schema version stamped in.
pub fn encode<T: Schema>(path: &Path, value: &T) -> Result<Vec<u8>, StateError> {
    let corrupt = |source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let mut json = serde_json::to_value(value).map_err(corrupt)?;
    if let serde_json::Value::Object(map) = &mut json {
        map.insert("version".into(), T::VERSION.into());
    }
    serde_json::to_vec_pretty(&json).map_err(corrupt)
}

/// `bytes` (the content of `path`) decoded as the current version of `T`, migrated first when
/// they are of an older one.
pub fn decode<T: Schema>(path: &Path, bytes: &[u8]) -> Result<T, StateError> {
    let corrupt = |source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let mut json: serde_json::Value = serde_json::from_slice(bytes).map_err(corrupt)?;
    let version = match json.as_object_mut().and_then(|m| m.remove("version")) {
        None => 0,
        Some(v) => v.as_u64().ok_or_else(|| StateError::Version {
            path: path.to_path_buf(),
            version: 0,
            reason: format!("version {v} is not a number"),
        })?,
    };
    let version_err = |reason: String| StateError::Version {
        path: path.to_path_buf(),
        version,
        reason,
    };
    if version > T::VERSION {
        return Err(version_err(format!(
            "written by a newer ferrio (this one reads up to {})",
            T::VERSION
        )));
    }
    if version < T::VERSION {
        json = T::migrate(version, json).map_err(version_err)?;
    }
    serde_json::from_value(json).map_err(corrupt)
}

/// Read and decode a record file; `Ok(None)` when it does not exist.
fn read_record<T: Schema>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => decode(path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// What happened to a record, for subscribers of [`Table::subscribe`] (container events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Inserted(String),
    Updated(String),
    Removed(String),
}

/// How many changes a slow subscriber may fall behind before it misses some.
const CHANGE_BUFFER: usize = 1024;

/// One persisted object: immutable metadata and a status changed only through closures.
#[derive(Debug)]
pub struct Record<M, S> {
    pub id: String,
    pub meta: M,
    dir: PathBuf,
    status: Mutex<S>,
    /// Serialises writers so two updates never race on the file; readers never take it.
    writer: tokio::sync::Mutex<()>,
    /// Bumped after every update so callers can wait for a status change (e.g. an exit).
    changed: tokio::sync::watch::Sender<u64>,
    /// The table's change feed; sending never blocks and never fails the update.
    feed: tokio::sync::broadcast::Sender<Change>,
}

impl<M, S> Record<M, S>
where
    M: Schema + Send + Sync + 'static,
    S: Schema + Clone + Send + Sync + 'static,
{
    fn new(
        id: String,
        dir: PathBuf,
        meta: M,
        status: S,
        feed: tokio::sync::broadcast::Sender<Change>,
    ) -> Self {
        Record {
            id,
            meta,
            dir,
            status: Mutex::new(status),
            writer: tokio::sync::Mutex::new(()),
            changed: tokio::sync::watch::channel(0).0,
            feed,
        }
    }

    /// The object's own directory (for files that belong to it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A snapshot of the current status.
    pub fn status(&self) -> S {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `f` applied to the current status in place, without a copy: for hot readers (the List
    /// RPCs) that need a field or two of a status whose whole clone would allocate (a pod's CNI
    /// result is a JSON tree). `f` runs under the status lock: keep it short.
    pub fn peek<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.status.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Apply `f` to a copy of the status, persist it atomically and durably (it survives a
    /// power loss), then publish it. If the write fails the in-memory status is left unchanged.
    pub async fn update<F: FnOnce(&mut S)>(&self, f: F) -> Result<S, StateError> {
        self.update_with(Durability::PowerLoss, f).await
    }

    /// [`Record::update`] with the given durability.
    pub async fn update_with<F: FnOnce(&mut S)>(
        &self,
        durability: Durability,
        f: F,
    ) -> Result<S, StateError> {
        let _w = self.writer.lock().await;
        let mut next = self.status();
        f(&mut next);
        let path = self.dir.join("status.json");
        let bytes = encode(&path, &next)?;
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes, durability))
            .await
            .map_err(|e| StateError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = next.clone();
        self.changed.send_modify(|n| *n += 1);
        let _ = self.feed.send(Change::Updated(self.id.clone()));
        Ok(next)
    }

    /// Wait until `pred` holds for the status (checked now and after every update).
    pub async fn wait_for<P: Fn(&S) -> bool>(&self, pred: P) -> S {
        let mut rx = self.changed.subscribe();
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            if rx.changed().await.is_err() {
                return self.status();
            }
        }
    }
}

/// All records of one kind, in memory, backed by `<dir>/<id>/`.
#[derive(Debug)]
pub struct Table<M, S> {
    dir: PathBuf,
    map: RwLock<BTreeMap<String, Arc<Record<M, S>>>>,
    feed: tokio::sync::broadcast::Sender<Change>,
}

impl<M, S> Table<M, S>
where
    M: Schema + Send + Sync + 'static,
    S: Schema + Clone + Send + Sync + 'static,
{
    /// Open the table, loading every record. Broken records are returned separately (reported
    /// and skipped by the caller), never blocking the rest. Half-made and half-removed records
    /// (hidden directories left by a daemon that was killed) are removed.
    pub fn open(dir: &Path) -> Result<(Self, Vec<(PathBuf, StateError)>), StateError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut map = BTreeMap::new();
        let mut broken = Vec::new();
        let feed = tokio::sync::broadcast::channel(CHANGE_BUFFER).0;
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let id = entry.file_name().to_string_lossy().into_owned();
            if id.starts_with('.') {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    broken.push((path, io_err(dir)(e)));
                }
                continue;
            }
            let meta = read_record::<M>(&path.join("meta.json"));
            let status = read_record::<S>(&path.join("status.json"));
            match (meta, status) {
                (Ok(Some(m)), Ok(Some(s))) => {
                    let rec = Record::new(id.clone(), path, m, s, feed.clone());
                    map.insert(id, Arc::new(rec));
                }
                (Err(e), _) | (_, Err(e)) => broken.push((path, e)),
                _ => broken.push((
                    path.clone(),
                    StateError::Io {
                        path,
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "meta.json or status.json missing",
                        ),
                    },
                )),
            }
        }
        Ok((
            Table {
                dir: dir.to_path_buf(),
                map: RwLock::new(map),
                feed,
            },
            broken,
        ))
    }

    /// Persist a new record durably (it survives a power loss) and add it to the table.
    pub async fn insert(
        &self,
        id: &str,
        meta: M,
        status: S,
    ) -> Result<Arc<Record<M, S>>, StateError> {
        self.insert_with(id, meta, status, Durability::PowerLoss)
            .await
    }

    /// [`Table::insert`] with the given durability. The record is written whole into a hidden
    /// directory and renamed into place: there is never a record with only one of its files.
    pub async fn insert_with(
        &self,
        id: &str,
        meta: M,
        status: S,
        durability: Durability,
    ) -> Result<Arc<Record<M, S>>, StateError> {
        let dir = self.dir.join(id);
        let rec = Arc::new(Record::new(
            id.to_string(),
            dir.clone(),
            meta,
            status,
            self.feed.clone(),
        ));
        let meta_json = encode(&dir.join("meta.json"), &rec.meta)?;
        let status_json = encode(&dir.join("status.json"), &rec.status())?;
        let table = self.dir.clone();
        let new = self.dir.join(format!(".{id}.new"));
        let write = move || -> Result<(), StateError> {
            // A leftover of an attempt that failed half-way must not leak into this one.
            let _ = std::fs::remove_dir_all(&new);
            std::fs::create_dir(&new).map_err(io_err(&new))?;
            write_file(&new.join("meta.json"), &meta_json, durability)?;
            write_file(&new.join("status.json"), &status_json, durability)?;
            if durability == Durability::PowerLoss {
                sync_dir(&new);
            }
            std::fs::rename(&new, &dir).map_err(io_err(&dir))?;
            if durability == Durability::PowerLoss {
                sync_dir(&table);
            }
            Ok(())
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| StateError::Io {
                path: self.dir.join(id),
                source: std::io::Error::other(e),
            })??;
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), rec.clone());
        let _ = self.feed.send(Change::Inserted(id.to_string()));
        Ok(rec)
    }

    /// Every insert, update and removal from now on. A subscriber that falls more than
    /// `CHANGE_BUFFER` changes behind is told how many it missed; the table never waits for it.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.feed.subscribe()
    }

    /// Forget a record and delete its directory. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<(), StateError> {
        let removed = self
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if removed.is_some() {
            let _ = self.feed.send(Change::Removed(id.to_string()));
        }
        let dir = self.dir.join(id);
        let gone = self.dir.join(format!(".{id}.del"));
        // Renamed away first: the rename is the removal, so a daemon killed while deleting finds
        // no half record (open() removes what is left). The files go in the background: each
        // unlink and rmdir costs milliseconds on a journaled disk.
        let renamed = tokio::task::spawn_blocking(move || {
            let mut renamed = std::fs::rename(&dir, &gone);
            if renamed.is_err() && dir.exists() && gone.exists() {
                // A leftover of a removal that failed half-way is in the way.
                let _ = std::fs::remove_dir_all(&gone);
                renamed = std::fs::rename(&dir, &gone);
            }
            match renamed {
                Ok(()) => Ok(Some(gone)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err(&dir)(e)),
            }
        })
        .await
        .map_err(|e| StateError::Io {
            path: self.dir.join(id),
            source: std::io::Error::other(e),
        })??;
        if let Some(gone) = renamed {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = std::fs::remove_dir_all(&gone) {
                    tracing::warn!(path = %gone.display(), error = %e, "cannot delete a removed record");
                }
            });
        }
        Ok(())
    }

    /// Look up by full id or unique prefix (crictl passes short ids).
    pub fn get(&self, id_or_prefix: &str) -> Result<Option<Arc<Record<M, S>>>, StateError> {
        if id_or_prefix.is_empty() {
            return Ok(None);
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get(id_or_prefix) {
            return Ok(Some(r.clone()));
        }
        let mut found = map
            .range(id_or_prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(id_or_prefix));
        let first = found.next().map(|(_, r)| r.clone());
        if found.next().is_some() {
            return Err(StateError::Ambiguous {
                prefix: id_or_prefix.to_string(),
            });
        }
        Ok(first)
    }

    /// Every record, in id order.
    pub fn list(&self) -> Vec<Arc<Record<M, S>>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// A new random 64-hex-character id, as CRI ids are.
pub fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    struct M {
        name: String,
    }
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
    struct S {
        n: u32,
    }

    impl Schema for M {
        const VERSION: u64 = 2;
        /// Version 0 called the name `title`; version 1 kept it upper case.
        fn migrate(from: u64, mut value: serde_json::Value) -> Result<serde_json::Value, String> {
            let m = value.as_object_mut().ok_or("not an object")?;
            if from == 0 {
                let title = m.remove("title").ok_or("no title")?;
                m.insert("name".into(), title);
            }
            let name = m.get("name").and_then(|n| n.as_str()).ok_or("no name")?;
            let lower = name.to_lowercase();
            m.insert("name".into(), lower.into());
            Ok(value)
        }
    }

    impl Schema for S {
        const VERSION: u64 = 1;
        fn migrate(_: u64, value: serde_json::Value) -> Result<serde_json::Value, String> {
            Ok(value)
        }
    }

    #[tokio::test]
    async fn records_carry_their_version_and_older_ones_are_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = Table::<M, S>::open(dir.path()).unwrap();
        t.insert("new", M { name: "n".into() }, S { n: 1 })
            .await
            .unwrap();
        let on_disk = |f: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(dir.path().join("new").join(f)).unwrap()).unwrap()
        };
        assert_eq!(on_disk("meta.json")["version"], 2);
        assert_eq!(on_disk("status.json")["version"], 1);
        for (id, meta) in [
            ("v0", r#"{"title": "OLD"}"#),
            ("v1", r#"{"version": 1, "name": "MID"}"#),
        ] {
            std::fs::create_dir(dir.path().join(id)).unwrap();
            std::fs::write(dir.path().join(id).join("meta.json"), meta).unwrap();
            std::fs::write(dir.path().join(id).join("status.json"), r#"{"n": 4}"#).unwrap();
        }
        drop(t);
        let (t, broken) = Table::<M, S>::open(dir.path()).unwrap();
        assert!(broken.is_empty(), "{broken:?}");
        assert_eq!(t.get("v0").unwrap().unwrap().meta.name, "old");
        assert_eq!(t.get("v1").unwrap().unwrap().meta.name, "mid");
        assert_eq!(t.get("v0").unwrap().unwrap().status().n, 4);
        assert_eq!(t.get("new").unwrap().unwrap().meta.name, "n");
    }

    #[tokio::test]
    async fn a_record_that_cannot_be_read_is_reported_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "corrupt",
                r#"{"version": 2, "name": 7}"#,
                "corrupt/meta.json",
            ),
            ("newer", r#"{"version": 3, "name": "x"}"#, "newer/meta.json"),
            (
                "unmigratable",
                r#"{"nothing": 1}"#,
                "unmigratable/meta.json",
            ),
        ];
        for (id, meta, _) in cases {
            std::fs::create_dir(dir.path().join(id)).unwrap();
            std::fs::write(dir.path().join(id).join("meta.json"), meta).unwrap();
            std::fs::write(dir.path().join(id).join("status.json"), "{}").unwrap();
        }
        let (t, broken) = Table::<M, S>::open(dir.path()).unwrap();
        assert!(t.list().is_empty(), "no record is defaulted");
        assert_eq!(broken.len(), cases.len());
        for (_, _, file) in cases {
            assert!(
                broken.iter().any(|(_, e)| e.to_string().contains(file)),
                "{file} is named in {broken:?}"
            );
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_and_updates_are_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let (t, broken) = Table::<M, S>::open(dir.path()).unwrap();
        assert!(broken.is_empty());
        let r = t
            .insert("abcdef", M { name: "x".into() }, S::default())
            .await
            .unwrap();
        r.update(|s| s.n = 7).await.unwrap();
        drop(t);
        let (t, _) = Table::<M, S>::open(dir.path()).unwrap();
        let r = t.get("abc").unwrap().unwrap();
        assert_eq!(r.meta.name, "x");
        assert_eq!(r.status().n, 7);
        t.remove("abcdef").await.unwrap();
        t.remove("abcdef").await.unwrap();
        assert!(t.get("abcdef").unwrap().is_none());
        assert!(!dir.path().join("abcdef").exists());
    }

    #[tokio::test]
    async fn ambiguous_prefix_is_an_error_and_broken_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = Table::<M, S>::open(dir.path()).unwrap();
        t.insert("ab1", M { name: "a".into() }, S::default())
            .await
            .unwrap();
        t.insert("ab2", M { name: "b".into() }, S::default())
            .await
            .unwrap();
        assert!(matches!(t.get("ab"), Err(StateError::Ambiguous { .. })));
        std::fs::create_dir(dir.path().join("zz")).unwrap();
        std::fs::write(dir.path().join("zz/meta.json"), "{not json").unwrap();
        std::fs::write(dir.path().join("zz/status.json"), "{}").unwrap();
        let (t, broken) = Table::<M, S>::open(dir.path()).unwrap();
        assert_eq!(t.list().len(), 2);
        assert_eq!(broken.len(), 1);
        assert!(broken[0].1.to_string().contains("zz"));
    }

    #[tokio::test]
    async fn wait_for_sees_a_later_update() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = Table::<M, S>::open(dir.path()).unwrap();
        let r = t
            .insert("a", M { name: "a".into() }, S::default())
            .await
            .unwrap();
        let r2 = r.clone();
        let h = tokio::spawn(async move { r2.wait_for(|s| s.n == 2).await });
        r.update(|s| s.n = 1).await.unwrap();
        assert_eq!(r.peek(|s| s.n), 1, "peek reads the published status");
        r.update(|s| s.n = 2).await.unwrap();
        assert_eq!(h.await.unwrap().n, 2);
        assert_eq!(r.peek(|s| s.n), 2);
    }

    #[tokio::test]
    async fn changes_are_published() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = Table::<M, S>::open(dir.path()).unwrap();
        let mut rx = t.subscribe();
        let r = t
            .insert("a", M { name: "a".into() }, S::default())
            .await
            .unwrap();
        r.update(|s| s.n = 1).await.unwrap();
        t.remove("a").await.unwrap();
        t.remove("a").await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Change::Inserted("a".into()));
        assert_eq!(rx.recv().await.unwrap(), Change::Updated("a".into()));
        assert_eq!(rx.recv().await.unwrap(), Change::Removed("a".into()));
        assert!(rx.try_recv().is_err(), "a second remove publishes nothing");
    }

    #[tokio::test]
    async fn records_appear_and_go_whole_and_leftovers_are_cleared_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = Table::<M, S>::open(dir.path()).unwrap();
        let r = t
            .insert_with(
                "c1",
                M { name: "c".into() },
                S::default(),
                Durability::Crash,
            )
            .await
            .unwrap();
        r.update_with(Durability::Crash, |s| s.n = 3).await.unwrap();
        let names = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(dir.path()), ["c1"], "no staging directory is left");
        assert_eq!(names(&dir.path().join("c1")), ["meta.json", "status.json"]);
        // What a daemon killed half-way through an insert or a remove leaves behind.
        std::fs::create_dir(dir.path().join(".c2.new")).unwrap();
        std::fs::write(dir.path().join(".c2.new/meta.json"), "{}").unwrap();
        std::fs::create_dir(dir.path().join(".c3.del")).unwrap();
        std::fs::write(dir.path().join(".c3.del/status.json"), "{}").unwrap();
        drop(t);
        let (t, broken) = Table::<M, S>::open(dir.path()).unwrap();
        assert!(broken.is_empty(), "{broken:?}");
        assert_eq!(names(dir.path()), ["c1"]);
        assert_eq!(t.get("c1").unwrap().unwrap().status().n, 3);
        t.remove("c1").await.unwrap();
        assert!(t.get("c1").unwrap().is_none());
        assert!(
            !dir.path().join("c1").exists(),
            "gone from its name at once"
        );
        // The files go in the background.
        for _ in 0..100 {
            if names(dir.path()).is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("left behind: {:?}", names(dir.path()));
    }

    #[test]
    fn ids_are_64_hex() {
        let id = new_id();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
