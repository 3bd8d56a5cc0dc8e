//! The image store under `<root>/images`:
//!
//! ```text
//! index.json                 images: tags, digests, config, chain ids (tmp + fsync + rename)
//! blobs/sha256/<hex>         manifests, indexes and configs, content-addressed
//! layers/<chain hex>/diff    one unpacked layer per chain id, shared by every image that has it
//! layers/<chain hex>/usage   its disk usage (bytes, inodes), counted once when it was unpacked
//! tmp/                       downloads and unpacks in progress; emptied on open
//! ```
//!
//! A layer is unpacked into `tmp/` while it downloads and renamed into `layers/` only after its
//! blob digest, size and diff id all checked out, so an interrupted or failed pull leaves nothing
//! that `open` does not sweep away.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::io_at;
use super::manifest::{self, ConfigBlob, Descriptor, Manifest, Platform};
use super::reference::{self, Reference};
use super::registry::{self, RegistryAuth, Session, Timeouts};
use super::usage::{self, FsUsage};
use super::{unpack, ImageError, ImageInfo};

const INDEX: &str = "index.json";
const BLOBS: &str = "blobs/sha256";
const LAYERS: &str = "layers";
const TMP: &str = "tmp";
const DIFF: &str = "diff";
const USAGE: &str = "usage";
/// How often a pull in progress logs its progress, unless changed.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// One stored image with what is needed to garbage-collect its blobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Record {
    info: ImageInfo,
    /// Digest of the single-platform manifest.
    manifest_digest: String,
    /// Digest of the index it was chosen from, if any.
    #[serde(default)]
    index_digest: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    images: Vec<Record>,
}

#[derive(Default)]
struct State {
    images: Vec<Record>,
    /// Chain ids that pulls in progress rely on; garbage collection leaves them alone.
    in_use: HashMap<String, usize>,
    /// Bumped by every change; the index file only ever moves to a newer generation.
    generation: u64,
    /// Disk usage per layer (by chain hex), so ImageFsInfo never walks the layers.
    layer_usage: HashMap<String, FsUsage>,
    /// Allocated bytes per blob (by hex).
    blob_usage: HashMap<String, u64>,
}

/// What [`ImageStore::remove`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Removed {
    /// Nothing matched the name.
    Absent,
    /// Only the tag went; the image keeps its other tags.
    Untagged(ImageInfo),
    /// The image went (its layers and blobs too, unless another image shares them).
    Deleted(ImageInfo),
}

impl State {
    fn snapshot(&mut self) -> Result<(u64, Vec<u8>), ImageError> {
        self.generation += 1;
        Ok((self.generation, serialize(&self.images)?))
    }
}

/// Content-addressed image store; cheap to share (`Arc<ImageStore>`), all methods take `&self`.
pub struct ImageStore {
    dir: PathBuf,
    client: reqwest::Client,
    timeouts: Timeouts,
    platform: Platform,
    state: Mutex<State>,
    /// Generation of the index file on disk, so a slow writer never replaces a newer snapshot.
    written: Arc<Mutex<u64>>,
    /// One lock per chain id being unpacked, so concurrent pulls unpack a layer once.
    layer_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// How often a pull in progress logs how far it got.
    progress_every: Mutex<std::time::Duration>,
}

/// Deregisters a pull's chain ids from `in_use` when the pull ends, however it ends.
struct InUse<'a> {
    store: &'a ImageStore,
    chains: Vec<String>,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.store.state);
        for c in &self.chains {
            if let Some(n) = st.in_use.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    st.in_use.remove(c);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data (every mutation is one assignment).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ImageStore {
    /// Open (creating) the store at `dir`, load the index and delete leftovers of interrupted
    /// pulls: everything in `tmp/`, layers and blobs no image refers to, and images whose layers
    /// are missing.
    pub fn open(dir: &Path) -> Result<ImageStore, ImageError> {
        Self::open_with(dir, Timeouts::default(), Platform::host())
    }

    /// `open` with explicit registry timeouts and target platform.
    pub fn open_with(
        dir: &Path,
        timeouts: Timeouts,
        platform: Platform,
    ) -> Result<ImageStore, ImageError> {
        for sub in [BLOBS, LAYERS, TMP] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        let tmp = dir.join(TMP);
        for e in fs::read_dir(&tmp).map_err(io_at(&tmp))? {
            let p = e.map_err(io_at(&tmp))?.path();
            remove_any(&p)?;
        }
        let index_path = dir.join(INDEX);
        let mut images = match fs::read(&index_path) {
            Ok(b) => {
                serde_json::from_slice::<IndexFile>(&b)
                    .map_err(|e| ImageError::Malformed {
                        blob: index_path.display().to_string(),
                        what: "image index".into(),
                        reason: e.to_string(),
                    })?
                    .images
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ImageError::io(&index_path, e)),
        };
        let before = images.len();
        images.retain(|r| {
            r.info
                .chain_ids
                .iter()
                .all(|c| dir.join(LAYERS).join(hex_of(c)).join(DIFF).is_dir())
        });
        let store = ImageStore {
            dir: dir.to_path_buf(),
            client: registry::build_client(timeouts)?,
            timeouts,
            platform,
            state: Mutex::new(State {
                images,
                ..Default::default()
            }),
            written: Arc::new(Mutex::new(0)),
            layer_locks: Mutex::new(HashMap::new()),
            progress_every: Mutex::new(PROGRESS_INTERVAL),
        };
        if store.list().len() != before {
            let (generation, bytes) = lock(&store.state).snapshot()?;
            write_index(&store.dir, &store.written, generation, &bytes)?;
        }
        store.collect_garbage()?;
        store.count_usage()?;
        Ok(store)
    }

    /// Load the usage of every layer (counting and recording it for layers made before usage
    /// files existed) and of every blob.
    fn count_usage(&self) -> Result<(), ImageError> {
        let layers_dir = self.dir.join(LAYERS);
        let blobs_dir = self.dir.join(BLOBS);
        let mut layer_usage = HashMap::new();
        for e in fs::read_dir(&layers_dir).map_err(io_at(&layers_dir))? {
            let e = e.map_err(io_at(&layers_dir))?;
            let file = e.path().join(USAGE);
            let known = fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice::<FsUsage>(&b).ok());
            let u = match known {
                Some(u) => u,
                None => {
                    let u = usage::dir_usage(&e.path()).map_err(io_at(&e.path()))?;
                    let bytes = serde_json::to_vec(&u).unwrap_or_default();
                    write_atomic(&file, &bytes)?;
                    u
                }
            };
            layer_usage.insert(e.file_name().to_string_lossy().into_owned(), u);
        }
        let mut blob_usage = HashMap::new();
        for e in fs::read_dir(&blobs_dir).map_err(io_at(&blobs_dir))? {
            let e = e.map_err(io_at(&blobs_dir))?;
            let m = e.metadata().map_err(io_at(&e.path()))?;
            blob_usage.insert(
                e.file_name().to_string_lossy().into_owned(),
                std::os::unix::fs::MetadataExt::blocks(&m) * 512,
            );
        }
        let mut st = lock(&self.state);
        st.layer_usage = layer_usage;
        st.blob_usage = blob_usage;
        Ok(())
    }

    /// Disk usage of the image file system (layers and blobs), from totals kept up to date
    /// by pulls and removals: cheap enough for kubelet's frequent ImageFsInfo calls.
    pub fn usage(&self) -> FsUsage {
        let st = lock(&self.state);
        let mut total = FsUsage::default();
        for u in st.layer_usage.values() {
            total += *u;
        }
        for b in st.blob_usage.values() {
            total += FsUsage {
                used_bytes: *b,
                inodes_used: 1,
            };
        }
        total
    }

    /// The image config blob (the OCI image config JSON) of a stored image.
    /// Blocking (disk): call it from `spawn_blocking` in async code.
    pub fn config_blob(&self, image: &ImageInfo) -> Result<Vec<u8>, ImageError> {
        let p = self.dir.join(BLOBS).join(hex_of(&image.id));
        fs::read(&p).map_err(io_at(&p))
    }

    /// The digests of the manifest an image was pulled by and of the index it came from, if any.
    pub fn manifest_digests(&self, id: &str) -> Option<(String, Option<String>)> {
        let st = lock(&self.state);
        st.images
            .iter()
            .find(|r| r.info.id == id)
            .map(|r| (r.manifest_digest.clone(), r.index_digest.clone()))
    }

    /// Log a pull's progress (bytes, layers) every `every` while it runs (default 10s).
    pub fn set_progress_interval(&self, every: std::time::Duration) {
        *lock(&self.progress_every) = every.max(std::time::Duration::from_millis(10));
    }

    fn progress_interval(&self) -> std::time::Duration {
        *lock(&self.progress_every)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn list(&self) -> Vec<ImageInfo> {
        lock(&self.state)
            .images
            .iter()
            .map(|r| r.info.clone())
            .collect()
    }

    /// Find by id (`sha256:<hex>`, bare hex or a unique hex prefix), by tag (normalised) or by
    /// digest reference.
    pub fn resolve(&self, name_or_id: &str) -> Option<ImageInfo> {
        let st = lock(&self.state);
        find(&st.images, name_or_id).map(|i| st.images[i].info.clone())
    }

    /// Unpacked layer directories, bottom layer first.
    pub fn layer_dirs(&self, image: &ImageInfo) -> Vec<PathBuf> {
        image.chain_ids.iter().map(|c| self.layer_dir(c)).collect()
    }

    fn layer_dir(&self, chain_id: &str) -> PathBuf {
        self.dir.join(LAYERS).join(hex_of(chain_id)).join(DIFF)
    }

    /// What `remove(name_or_id)` would do now: the image it names and whether the image itself
    /// would go (true) or only lose a tag (false). `None` when nothing matches.
    pub fn removal_target(&self, name_or_id: &str) -> Option<(ImageInfo, bool)> {
        let st = lock(&self.state);
        let (i, untag) = plan_removal(&st.images, name_or_id)?;
        Some((st.images[i].info.clone(), untag.is_none()))
    }

    /// Remove by id, tag or digest; `Absent` if nothing matches (idempotent). A tag of an image
    /// that has other tags is only untagged; otherwise the image goes and layers and blobs no
    /// other image uses are freed.
    /// Blocking (disk): call it from `spawn_blocking` in async code.
    pub fn remove(&self, name_or_id: &str) -> Result<Removed, ImageError> {
        let (removed, generation, bytes) = {
            let mut st = lock(&self.state);
            let Some((i, untag)) = plan_removal(&st.images, name_or_id) else {
                return Ok(Removed::Absent);
            };
            let removed = match untag {
                Some(t) => {
                    let rec = &mut st.images[i];
                    rec.info.repo_tags.retain(|x| x != &t);
                    Removed::Untagged(rec.info.clone())
                }
                None => Removed::Deleted(st.images.remove(i).info),
            };
            let (generation, bytes) = st.snapshot()?;
            (removed, generation, bytes)
        };
        write_index(&self.dir, &self.written, generation, &bytes)?;
        if matches!(removed, Removed::Deleted(_)) {
            self.collect_garbage()?;
        }
        Ok(removed)
    }

    /// Pull `reference` through the mirrors of `cfg` and store it.
    pub async fn pull(
        &self,
        reference: &str,
        cfg: &crate::config::ImageConfig,
        auth: Option<&RegistryAuth>,
    ) -> Result<ImageInfo, ImageError> {
        let r = reference::normalize(reference)?;
        let mut errors: Vec<ImageError> = Vec::new();
        // The pull's own credentials win; otherwise the global auth file's for each endpoint
        // (read per pull, so edits apply without a restart; a missing file means none).
        let auth_file = &cfg.global_auth_file;
        let auth_file_bytes = if auth.is_none() && !auth_file.as_os_str().is_empty() {
            match tokio::fs::read(auth_file).await {
                Ok(b) => Some(b),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(ImageError::io(auth_file, e)),
            }
        } else {
            None
        };
        for ep in registry::endpoints(&r, cfg) {
            let from_file = match &auth_file_bytes {
                Some(b) => registry::auth_from_file(auth_file, b, &ep)?,
                None => None,
            };
            let auth = auth.or(from_file.as_ref());
            let mut session = Session::new(&self.client, ep.clone(), auth, self.timeouts);
            match self
                .pull_from(&r, &mut session, cfg.max_concurrent_downloads)
                .await
            {
                Ok(info) => return Ok(info),
                Err(e) if next_endpoint_may_help(&e) => {
                    tracing::info!(reference = %r, endpoint = %ep, error = %e, "pull from endpoint failed, trying the next");
                    errors.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        let detail = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        if errors
            .iter()
            .any(|e| matches!(e, ImageError::NotFound { .. }))
        {
            return Err(ImageError::NotFound {
                reference: r.to_string(),
                detail: if detail.is_empty() {
                    "no registry to pull from".into()
                } else {
                    detail
                },
            });
        }
        match errors.len() {
            0 => Err(ImageError::NotFound {
                reference: r.to_string(),
                detail: "no registry to pull from".into(),
            }),
            1 => Err(errors.remove(0)),
            _ => Err(ImageError::Registry {
                endpoint: r.name(),
                reason: format!("every endpoint failed: {detail}"),
            }),
        }
    }

    async fn pull_from(
        &self,
        r: &Reference,
        s: &mut Session<'_>,
        parallel: usize,
    ) -> Result<ImageInfo, ImageError> {
        // The first answer (auth round trip included) within the endpoint's own timeout: a
        // dead, stalled or empty mirror costs no more than that before the next is tried.
        let first = s.timeouts().request;
        let top = match tokio::time::timeout(first, s.manifest(r.manifest_key())).await {
            Ok(res) => res?,
            Err(_) => {
                return Err(s.error(format!(
                    "manifest {}: no answer within {first:?} (timed out)",
                    r.manifest_key()
                )))
            }
        };
        let reference = r.to_string();
        let (index_digest, fetched, image_manifest) =
            match manifest::parse(&reference, &top.digest, &top.content_type, &top.body)? {
                Manifest::Image(m) => (None, top, m),
                Manifest::Index(entries) => {
                    let chosen =
                        manifest::select_platform(&entries, &self.platform).ok_or_else(|| {
                            ImageError::NoMatchingPlatform {
                                reference: reference.clone(),
                                platform: self.platform.to_string(),
                                available: manifest::platforms(&entries),
                            }
                        })?;
                    let child = s.manifest(&chosen.digest).await?;
                    match manifest::parse(
                        &reference,
                        &child.digest,
                        &child.content_type,
                        &child.body,
                    )? {
                        Manifest::Image(m) => (Some(top), child, m),
                        Manifest::Index(_) => {
                            return Err(ImageError::UnsupportedManifest {
                                reference,
                                media_type: chosen.media_type.clone(),
                                reason: "an index inside an index".into(),
                            })
                        }
                    }
                }
            };
        let config_desc = &image_manifest.config;
        reference::validate_digest(&config_desc.digest).map_err(|reason| {
            ImageError::Malformed {
                blob: fetched.digest.clone(),
                what: "manifest".into(),
                reason,
            }
        })?;
        let config_bytes = s.small_blob(&config_desc.digest, config_desc.size).await?;
        let config = ConfigBlob::parse(&config_desc.digest, &config_bytes)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != image_manifest.layers.len() {
            return Err(ImageError::Malformed {
                blob: config_desc.digest.clone(),
                what: "image config".into(),
                reason: format!(
                    "{} diff ids for {} layers in manifest {}",
                    diff_ids.len(),
                    image_manifest.layers.len(),
                    fetched.digest
                ),
            });
        }
        for d in image_manifest
            .layers
            .iter()
            .map(|l| &l.digest)
            .chain(diff_ids)
        {
            reference::validate_digest(d).map_err(|reason| ImageError::Malformed {
                blob: fetched.digest.clone(),
                what: "manifest".into(),
                reason,
            })?;
        }
        let chain_ids = chain_ids(diff_ids);
        let _in_use = self.hold(&chain_ids);

        // Layers in parallel (bounded); each is skipped if its chain is already unpacked.
        let session: &Session<'_> = s;
        let progress = Progress::default();
        let total_bytes: u64 = image_manifest.layers.iter().map(|l| l.size).sum();
        let total_layers = image_manifest.layers.len();
        let mut jobs = Vec::with_capacity(chain_ids.len());
        // A plain loop rather than `iter().map(..)`: a closure kept inside the future trips
        // rustc's higher-ranked lifetime check and makes `pull` not `Send`.
        for (i, desc) in image_manifest.layers.iter().enumerate() {
            jobs.push(self.ensure_layer(session, desc, &diff_ids[i], &chain_ids[i], &progress));
        }
        let started = std::time::Instant::now();
        let all = futures::stream::iter(jobs)
            .buffer_unordered(parallel.max(1))
            .try_collect::<Vec<()>>();
        tokio::pin!(all);
        // A long pull says how far it got, so a slow mirror is visible in the daemon's log.
        let every = self.progress_interval();
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                res = &mut all => {
                    res?;
                    break;
                }
                _ = ticks.tick() => {
                    let (bytes, layers) = progress.get();
                    tracing::info!(
                        reference = %r,
                        endpoint = %s.endpoint,
                        downloaded_bytes = bytes,
                        total_bytes,
                        layers_done = layers,
                        layers = total_layers,
                        elapsed_s = started.elapsed().as_secs(),
                        "pull in progress"
                    );
                }
            }
        }
        let (bytes, _) = progress.get();
        tracing::info!(
            reference = %r,
            endpoint = %s.endpoint,
            downloaded_bytes = bytes,
            layers = total_layers,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "layers ready"
        );

        let id = config_desc.digest.clone();
        let top_digest = index_digest
            .as_ref()
            .map_or(&fetched.digest, |i| &i.digest)
            .clone();
        let mut repo_digests = vec![r.with_digest(&top_digest)];
        if let Some(d) = &r.digest {
            if d != &top_digest {
                repo_digests.push(r.with_digest(d));
            }
        }
        let size = config_desc.size + image_manifest.layers.iter().map(|l| l.size).sum::<u64>();
        let info = ImageInfo {
            id: id.clone(),
            repo_tags: r.tagged().into_iter().collect(),
            repo_digests,
            size,
            config: config.image_config(),
            chain_ids: chain_ids.clone(),
        };
        let record = Record {
            info,
            manifest_digest: fetched.digest.clone(),
            index_digest: index_digest.as_ref().map(|i| i.digest.clone()),
        };
        let mut blobs = vec![
            (config_desc.digest.clone(), config_bytes),
            (fetched.digest, fetched.body),
        ];
        if let Some(i) = index_digest {
            blobs.push((i.digest, i.body));
        }
        let (info, generation, index_bytes) = self.commit(record)?;
        let dir = self.dir.clone();
        let written = self.written.clone();
        // Blob files and the index are small but fsync'd: keep them off the async threads.
        let sizes = tokio::task::spawn_blocking(move || {
            let mut sizes = Vec::with_capacity(blobs.len());
            for (digest, bytes) in &blobs {
                let p = dir.join(BLOBS).join(hex_of(digest));
                write_atomic(&p, bytes)?;
                let m = fs::metadata(&p).map_err(io_at(&p))?;
                sizes.push((
                    hex_of(digest).to_string(),
                    std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                ));
            }
            write_index(&dir, &written, generation, &index_bytes)?;
            Ok::<_, ImageError>(sizes)
        })
        .await
        .map_err(|e| ImageError::io(self.dir.join(INDEX), io::Error::other(e.to_string())))??;
        lock(&self.state).blob_usage.extend(sizes);
        Ok(info)
    }

    /// Make sure the layer `chain` is unpacked, downloading it from `s` if not.
    async fn ensure_layer(
        &self,
        s: &Session<'_>,
        desc: &Descriptor,
        diff_id: &str,
        chain: &str,
        progress: &Progress,
    ) -> Result<(), ImageError> {
        let chain_lock = {
            let mut locks = lock(&self.layer_locks);
            locks.entry(chain.to_string()).or_default().clone()
        };
        let result = {
            let _g = chain_lock.lock().await;
            if self.layer_dir(chain).is_dir() {
                // Unpacked already (by an earlier pull, or a concurrent one we waited for).
                progress.layer_done();
                Ok(())
            } else {
                // Each download gets its own session (credentials learnt so far included).
                let mut session = s.fork();
                self.download_layer(&mut session, desc, diff_id, chain, progress)
                    .await
            }
        };
        {
            let mut locks = lock(&self.layer_locks);
            // Two references: the map's and ours. Nobody else waits: forget the lock.
            if Arc::strong_count(&chain_lock) == 2 {
                locks.remove(chain);
            }
        }
        result
    }

    /// Stream a layer blob into the unpacker, verifying digest and size as it flows. The
    /// unpacker hears "end of stream" only after the blob checked out; only then does it check
    /// the diff id and rename the layer into `layers/`, all in one blocking task that runs to
    /// completion. A pull dropped halfway (client gone, daemon shutting down) closes the channel
    /// without that end, and the unpacker deletes its temporary directory.
    async fn download_layer(
        &self,
        s: &mut Session<'_>,
        desc: &Descriptor,
        diff_id: &str,
        chain: &str,
        progress: &Progress,
    ) -> Result<(), ImageError> {
        let resp = s.blob_stream(&desc.digest).await?;
        let tmp = self
            .dir
            .join(TMP)
            .join(format!("{}-{}", hex_of(chain), rand::random::<u64>()));
        let diff_dir = tmp.join(DIFF);
        fs::create_dir_all(&diff_dir).map_err(io_at(&diff_dir))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(64);
        let layer = LayerJob {
            name: desc.digest.clone(),
            diff_id: diff_id.to_string(),
            tmp,
            final_dir: self.dir.join(LAYERS).join(hex_of(chain)),
        };
        let unpacker = tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx,
                current: bytes::Bytes::new(),
            };
            let res = layer.unpack_and_commit(reader);
            if res.is_err() {
                let _ = remove_any(&layer.tmp);
            }
            res
        });

        let read_timeout = s.timeouts().read;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut stream = resp.bytes_stream();
        let mut stream_result: Result<(), ImageError> = Ok(());
        loop {
            let chunk = match tokio::time::timeout(read_timeout, stream.next()).await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(_) => {
                    stream_result = Err(s.error(format!(
                        "blob {}: nothing received for {read_timeout:?} (timed out)",
                        desc.digest
                    )));
                    break;
                }
            };
            match chunk {
                Ok(c) => {
                    received += c.len() as u64;
                    progress.add_bytes(c.len() as u64);
                    if received > desc.size {
                        stream_result = Err(ImageError::SizeMismatch {
                            blob: desc.digest.clone(),
                            expected: desc.size,
                            actual: received,
                        });
                        break;
                    }
                    hasher.update(&c);
                    if tx.send(Chunk::Data(c)).await.is_err() {
                        // The unpacker stopped early: its error says why.
                        break;
                    }
                }
                Err(e) => {
                    stream_result =
                        Err(s.error(format!("blob {}: {}", desc.digest, registry::describe(&e))));
                    break;
                }
            }
        }
        if stream_result.is_ok() && !tx.is_closed() {
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if received != desc.size {
                stream_result = Err(ImageError::SizeMismatch {
                    blob: desc.digest.clone(),
                    expected: desc.size,
                    actual: received,
                });
            } else if actual != desc.digest {
                stream_result = Err(ImageError::DigestMismatch {
                    blob: desc.digest.clone(),
                    actual,
                });
            }
        }
        // The end marker only for a verified blob; anything else makes the unpacker fail.
        let _ = tx
            .send(match &stream_result {
                Ok(()) => Chunk::End,
                Err(_) => Chunk::Abort,
            })
            .await;
        drop(tx);
        let unpacked = unpacker.await.map_err(|e| ImageError::Unpack {
            layer: desc.digest.clone(),
            entry: String::new(),
            source: std::io::Error::other(format!("unpack task: {e}")),
        });
        let layer_usage = match (stream_result, unpacked) {
            (Err(e), _) => return Err(e),
            (Ok(()), Err(e)) | (Ok(()), Ok(Err(e))) => return Err(e),
            (Ok(()), Ok(Ok(u))) => u,
        };
        progress.layer_done();
        lock(&self.state)
            .layer_usage
            .insert(hex_of(chain).to_string(), layer_usage);
        Ok(())
    }

    /// Mark `chains` as needed by a pull in progress.
    fn hold(&self, chains: &[String]) -> InUse<'_> {
        let mut st = lock(&self.state);
        for c in chains {
            *st.in_use.entry(c.clone()).or_insert(0) += 1;
        }
        InUse {
            store: self,
            chains: chains.to_vec(),
        }
    }

    /// Add or merge `rec` into the index: a tag moves to the new image; the same image pulled
    /// under another name gains that name.
    fn commit(&self, rec: Record) -> Result<(ImageInfo, u64, Vec<u8>), ImageError> {
        let (info, (generation, bytes)) = {
            let mut st = lock(&self.state);
            for other in st.images.iter_mut().filter(|o| o.info.id != rec.info.id) {
                other
                    .info
                    .repo_tags
                    .retain(|t| !rec.info.repo_tags.contains(t));
            }
            let info = match st.images.iter_mut().find(|o| o.info.id == rec.info.id) {
                Some(existing) => {
                    for t in &rec.info.repo_tags {
                        if !existing.info.repo_tags.contains(t) {
                            existing.info.repo_tags.push(t.clone());
                        }
                    }
                    for d in &rec.info.repo_digests {
                        if !existing.info.repo_digests.contains(d) {
                            existing.info.repo_digests.push(d.clone());
                        }
                    }
                    existing.info.clone()
                }
                None => {
                    st.images.push(rec.clone());
                    rec.info.clone()
                }
            };
            (info, st.snapshot()?)
        };
        Ok((info, generation, bytes))
    }

    /// Delete layers and blobs that no image (and no pull in progress) refers to. Unused layers
    /// are first renamed into `tmp/` under the state lock, so a pull that just found a layer
    /// present cannot lose it afterwards; the slow delete happens outside the lock.
    fn collect_garbage(&self) -> Result<(), ImageError> {
        let layers_dir = self.dir.join(LAYERS);
        let blobs_dir = self.dir.join(BLOBS);
        let mut doomed: Vec<PathBuf> = Vec::new();
        {
            let mut st = lock(&self.state);
            let keep_layers: BTreeSet<String> = st
                .images
                .iter()
                .flat_map(|r| r.info.chain_ids.iter().map(|c| hex_of(c).to_string()))
                .chain(st.in_use.keys().map(|c| hex_of(c).to_string()))
                .collect();
            for e in fs::read_dir(&layers_dir).map_err(io_at(&layers_dir))? {
                let e = e.map_err(io_at(&layers_dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep_layers.contains(&name) {
                    st.layer_usage.remove(&name);
                    let to = self
                        .dir
                        .join(TMP)
                        .join(format!("gc-{name}-{}", rand::random::<u64>()));
                    fs::rename(e.path(), &to).map_err(io_at(&e.path()))?;
                    doomed.push(to);
                }
            }
            let keep_blobs: BTreeSet<String> = st
                .images
                .iter()
                .flat_map(|r| {
                    [
                        Some(&r.info.id),
                        Some(&r.manifest_digest),
                        r.index_digest.as_ref(),
                    ]
                    .into_iter()
                    .flatten()
                    .map(|d| hex_of(d).to_string())
                })
                .collect();
            for e in fs::read_dir(&blobs_dir).map_err(io_at(&blobs_dir))? {
                let e = e.map_err(io_at(&blobs_dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep_blobs.contains(&name) {
                    st.blob_usage.remove(&name);
                    doomed.push(e.path());
                }
            }
        }
        for p in doomed {
            remove_any(&p)?;
        }
        Ok(())
    }
}

/// Whether an error from one endpoint is worth trying the next one for (availability and
/// content problems), as opposed to problems every copy of the image would have.
fn next_endpoint_may_help(e: &ImageError) -> bool {
    matches!(
        e,
        ImageError::Registry { .. }
            | ImageError::NotFound { .. }
            | ImageError::DigestMismatch { .. }
            | ImageError::SizeMismatch { .. }
            | ImageError::Malformed { .. }
    )
}

/// The image `q` names and, when `q` is one of several tags of it, the tag to drop instead of
/// deleting the image.
fn plan_removal(images: &[Record], q: &str) -> Option<(usize, Option<String>)> {
    let i = find(images, q)?;
    let tag = reference::normalize(q)
        .ok()
        .filter(|r| r.digest.is_none())
        .and_then(|r| r.tagged());
    let tags = &images[i].info.repo_tags;
    match tag {
        Some(t) if tags.len() > 1 && tags.contains(&t) => Some((i, Some(t))),
        _ => Some((i, None)),
    }
}

/// Index of the image `q` names: an id (full, bare or a unique hex prefix), a tag or a digest.
fn find(images: &[Record], q: &str) -> Option<usize> {
    let hex = q.strip_prefix("sha256:").unwrap_or(q);
    if !hex.is_empty()
        && hex.len() <= 64
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        let hits: Vec<usize> = images
            .iter()
            .enumerate()
            .filter(|(_, r)| hex_of(&r.info.id).starts_with(hex))
            .map(|(i, _)| i)
            .collect();
        if hits.len() == 1 {
            return Some(hits[0]);
        }
        if q.starts_with("sha256:") || hex.len() == 64 {
            return None;
        }
    }
    let r = reference::normalize(q).ok()?;
    if let Some(d) = &r.digest {
        let want = r.with_digest(d);
        return images
            .iter()
            .position(|x| x.info.repo_digests.contains(&want));
    }
    let tagged = r.tagged()?;
    images
        .iter()
        .position(|x| x.info.repo_tags.contains(&tagged))
}

/// Chain ids per the OCI image spec: chain[0] = diff[0]; chain[n] = sha256(chain[n-1] + " " + diff[n]).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => registry::sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The hex part of `algorithm:hex`.
fn hex_of(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, h)| h)
}

fn serialize(images: &[Record]) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec_pretty(&IndexFile {
        version: 1,
        images: images.to_vec(),
    })
    .map_err(|e| ImageError::Malformed {
        blob: INDEX.into(),
        what: "image index".into(),
        reason: e.to_string(),
    })
}

/// Write the index snapshot of `generation` (tmp + fsync + rename + fsync of the directory),
/// unless a newer one is already on disk.
fn write_index(
    dir: &Path,
    written: &Mutex<u64>,
    generation: u64,
    bytes: &[u8],
) -> Result<(), ImageError> {
    let path = dir.join(INDEX);
    let tmp = dir.join(format!(
        ".{INDEX}.tmp-{generation}-{}",
        rand::random::<u64>()
    ));
    let res = (|| -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        let mut w = lock(written);
        if generation > *w {
            fs::rename(&tmp, &path)?;
            *w = generation;
        } else {
            fs::remove_file(&tmp)?;
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(ImageError::io(path, e));
    }
    fsync_dir(dir)
}

/// tmp + fsync + rename + fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    crate::state::write_atomic(path, bytes, crate::state::Durability::PowerLoss)
        .map_err(|e| ImageError::io(path.to_path_buf(), e.into_io()))
}

fn fsync_dir(dir: &Path) -> Result<(), ImageError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_at(dir))
}

/// Remove a file or a whole tree; absent is fine.
fn remove_any(p: &Path) -> Result<(), ImageError> {
    let res = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(p, e)),
    }
}

/// What the download task tells the unpacker.
enum Chunk {
    Data(bytes::Bytes),
    /// The whole blob arrived and its size and digest checked out.
    End,
    /// The download failed; the unpacker must not keep anything.
    Abort,
}

/// Feeds the blocking unpacker from the download task's chunks. End of file only after
/// [`Chunk::End`]: a channel closed without it (the pull was dropped) is an error.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Chunk::End) => return Ok(0),
                None => return Err(io::Error::other("download interrupted")),
                Some(Chunk::Abort) => return Err(io::Error::other("download aborted")),
                Some(Chunk::Data(b)) => self.current = b,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// One layer being unpacked on a blocking thread: where, and what it must hash to.
struct LayerJob {
    /// The blob digest, for errors.
    name: String,
    diff_id: String,
    /// `tmp/<chain hex>-<random>`, holding `diff/`.
    tmp: PathBuf,
    /// `layers/<chain hex>`.
    final_dir: PathBuf,
}

impl LayerJob {
    /// Unpack, check the diff id, count the usage, flush, and rename into place.
    fn unpack_and_commit(&self, reader: ChannelReader) -> Result<FsUsage, ImageError> {
        let got = unpack::unpack_layer(reader, &self.tmp.join(DIFF), &self.name)?;
        if got != self.diff_id {
            return Err(ImageError::DigestMismatch {
                blob: format!("{} (diff id {})", self.name, self.diff_id),
                actual: got,
            });
        }
        let t = &self.tmp;
        // Counted once here, so ImageFsInfo never walks the layers.
        let u = usage::dir_usage(t).map_err(io_at(t))?;
        let usage_file = t.join(USAGE);
        fs::write(&usage_file, serde_json::to_vec(&u).unwrap_or_default())
            .map_err(io_at(&usage_file))?;
        // Flush the layer's files before it becomes visible, so a crash cannot leave a
        // renamed but empty layer.
        let f = fs::File::open(t).map_err(io_at(t))?;
        nix::unistd::syncfs(f.as_raw_fd()).map_err(|e| ImageError::io(t, e.into()))?;
        fs::rename(t, &self.final_dir).map_err(io_at(&self.final_dir))?;
        fsync_dir(self.final_dir.parent().unwrap_or(&self.final_dir))?;
        Ok(u)
    }
}

/// Bytes and layers of one pull so far, for its progress log lines.
#[derive(Default)]
struct Progress {
    bytes: std::sync::atomic::AtomicU64,
    layers: std::sync::atomic::AtomicUsize,
}

impl Progress {
    fn add_bytes(&self, n: u64) {
        self.bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    fn layer_done(&self) {
        self.layers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn get(&self) -> (u64, usize) {
        (
            self.bytes.load(std::sync::atomic::Ordering::Relaxed),
            self.layers.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_formula() {
        let d = vec!["sha256:aa".to_string(), "sha256:bb".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:aa");
        assert_eq!(c[1], registry::sha256_digest(b"sha256:aa sha256:bb"));
    }

    fn rec(id: &str, tags: &[&str]) -> Record {
        Record {
            info: ImageInfo {
                id: format!("sha256:{id}"),
                repo_tags: tags.iter().map(|s| s.to_string()).collect(),
                repo_digests: vec![format!(
                    "docker.io/library/busybox@sha256:{}",
                    "d".repeat(64)
                )],
                ..Default::default()
            },
            manifest_digest: String::new(),
            index_digest: None,
        }
    }

    #[test]
    fn find_by_id_tag_and_digest() {
        let a = "a1".repeat(32);
        let b = "a2".repeat(32);
        let images = vec![
            rec(&a, &["docker.io/library/busybox:1.36"]),
            rec(&b, &["quay.io/x/y:latest"]),
        ];
        assert_eq!(find(&images, &format!("sha256:{a}")), Some(0));
        assert_eq!(find(&images, &b), Some(1));
        assert_eq!(find(&images, "a2a2"), Some(1));
        assert_eq!(find(&images, "a"), None, "ambiguous prefix");
        assert_eq!(find(&images, "busybox:1.36"), Some(0));
        assert_eq!(find(&images, "quay.io/x/y"), Some(1));
        assert_eq!(
            find(&images, &format!("busybox@sha256:{}", "d".repeat(64))),
            Some(0)
        );
        assert_eq!(find(&images, "busybox"), None);
        assert_eq!(find(&images, "sha256:ffff"), None);
    }
}
