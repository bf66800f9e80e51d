//! The object-store image store: image data in an S3 bucket (AWS S3 or any S3-compatible store:
//! MinIO, Ceph RGW, Huawei OBS, Garage), under `PREFIX/REGION/ID.FORMAT`.
//!
//! A write is a multipart upload, streamed from the [`StoreWriter`]'s appends in parts (no local
//! copy), plus a small marker object `PREFIX/.ims-writes/REGION/ID.FORMAT.json` that names the
//! upload and carries a heartbeat its writer refreshes while it lives (S3 lists multipart
//! uploads, but object_store does not expose that call, and a list of uploads says nothing of
//! whether their owner is alive). A marker whose heartbeat is older than the lease belongs to a
//! dead process: [`ImageStore::discard`] aborts its upload and deletes it. formats/store.md has
//! the design.
//!
//! The store traits are synchronous; the store runs its own small tokio runtime and blocks on
//! it. Its methods must therefore not be called from inside another tokio runtime's worker
//! (they refuse with an error rather than panic).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::io::AppendSink;
use crate::storage::Storage;

use super::remote::{Body, GetError, ReadOptions, Remote, RemoteStorage};
use super::{ImageStore, StoreWriter, UnfinishedWrite};

/// S3 takes at most this many parts in one multipart upload.
const MAX_PARTS: usize = 10_000;
/// S3's smallest part (all but the last).
const MIN_PART: usize = 5 << 20;
/// S3's largest part.
const MAX_PART: usize = 5 << 30;
/// The largest object one server-side CopyObject makes.
const MAX_COPY_OBJECT: u64 = 5 << 30;
/// Parts after which the part size doubles, so that a 1 TiB image fits in 10,000 parts.
const PARTS_PER_STEP: usize = 2_500;
/// Part uploads running at once behind the one being filled, at most.
const PARTS_IN_FLIGHT: usize = 2;
/// The bytes of parts held by one write (filled and uploading) that more parts in flight may
/// not pass: as parts grow, fewer upload at once, so memory stays bounded.
const PARTS_MEMORY: usize = 128 << 20;
/// The longest lease a marker may give itself (an hour).
const MAX_LEASE_SECS: u64 = 3600;
/// The folder of the write markers, under the prefix.
const WRITES: &str = ".ims-writes";

/// The settings of an [`S3Store`] beyond its bucket and prefix.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct S3Options {
    /// The size of a multipart upload's first parts (at least 5 MiB); later parts double every
    /// 2,500 parts, so that a 32 MiB start (the default) keeps a 1 TiB image within S3's
    /// 10,000 parts (1,171 GiB at most; 586 GiB from 16 MiB, 2,343 GiB from 64 MiB).
    pub part_size: usize,
    /// How long a write marker stays live without a heartbeat; its writer refreshes it every
    /// quarter of this, and writes it in the marker: other processes judge the write by the
    /// writer's lease, whatever their own. The clocks of the processes sharing a store must agree to well within it.
    pub lease: Duration,
    /// The block of the read cache: one ranged GET each.
    pub block_size: u64,
    /// Blocks kept by the read cache of one opened object.
    pub cache_blocks: usize,
    /// Blocks fetched ahead of the reads, several GETs at once (at most half the cache): the
    /// next ones of the order [`Storage::will_read`] gave (an image's map), or the next ones
    /// of the object when reads go front to back.
    pub read_ahead: usize,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            part_size: 32 << 20,
            lease: Duration::from_secs(60),
            block_size: 1 << 20,
            cache_blocks: 64,
            read_ahead: 16,
        }
    }
}

impl S3Options {
    /// The defaults, changed by `IMS_S3_PART_SIZE` (bytes), `IMS_S3_LEASE_SECS` and
    /// `IMS_S3_BLOCK_SIZE` (bytes, 64 KiB to 64 MiB; the cache stays at 64 MiB) where set.
    pub fn from_env() -> Result<S3Options> {
        let mut o = S3Options::default();
        let num = |var: &str| -> Result<Option<u64>> {
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => v
                    .parse()
                    .map(Some)
                    .map_err(|_| Error::InvalidArgument(format!("{var}={v}: not a number"))),
                _ => Ok(None),
            }
        };
        if let Some(p) = num("IMS_S3_PART_SIZE")? {
            o.part_size = usize::try_from(p).unwrap_or(usize::MAX);
        }
        if let Some(s) = num("IMS_S3_LEASE_SECS")? {
            o.lease = Duration::from_secs(s.max(1));
        }
        if let Some(b) = num("IMS_S3_BLOCK_SIZE")? {
            // The cache keeps its 64 MiB (at least 4 blocks), and reads ahead half of it at
            // most: bigger blocks mean fewer GETs, not more memory.
            o.block_size = b.clamp(64 << 10, 64 << 20);
            let blocks = usize::try_from((64 << 20) / o.block_size)
                .unwrap_or(4)
                .max(4);
            o.cache_blocks = blocks;
            o.read_ahead = o.read_ahead.min(blocks / 2);
        }
        Ok(o)
    }
}

impl S3Options {
    pub(super) fn read_options(&self) -> ReadOptions {
        ReadOptions {
            block_size: self.block_size,
            cache_blocks: self.cache_blocks,
            read_ahead: self.read_ahead,
        }
    }
}

/// How many parts of `part` bytes may upload behind the one being filled: two, fewer when
/// they are big (one of 64 MiB, none from 128 MiB: the part is sent before the next is filled).
fn parts_in_flight(part: usize) -> usize {
    (PARTS_MEMORY / part.max(1))
        .saturating_sub(1)
        .min(PARTS_IN_FLIGHT)
}

/// The size of part `index` (0-based) of an upload whose first parts are `base` bytes.
fn part_size(base: usize, index: usize) -> usize {
    let step = (index / PARTS_PER_STEP).min(16) as u32;
    base.clamp(MIN_PART, MAX_PART)
        .checked_shl(step)
        .unwrap_or(MAX_PART)
        .min(MAX_PART)
}

fn s3_error(action: &'static str, what: &str, e: object_store::Error) -> Error {
    Error::io(action, std::io::Error::other(format!("{what}: {e}")))
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a write marker holds.
#[derive(Serialize, Deserialize)]
struct Marker {
    /// The multipart upload of the write.
    upload_id: String,
    /// Who writes: `HOST:PID`, for people reading the bucket.
    owner: String,
    /// Seconds since the Unix epoch when the writer last said it lives.
    heartbeat: u64,
    /// The writer's lease in seconds: its marker is live this long after a heartbeat. Judged
    /// by the writer's own lease, a process with a shorter one never takes a live write for a
    /// dead one. 0 (a marker without it): the reader's lease.
    #[serde(default)]
    lease: u64,
}

/// Shared by the store and its writers and storages.
struct Inner {
    rt: Arc<Runtime>,
    /// Shared with the tasks on `rt`, which must hold no `Inner`: the last `Inner` dropped on a
    /// worker of its own runtime would drop the runtime there.
    s3: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    options: S3Options,
}

impl Inner {
    /// Runs `f` to its end on the store's runtime.
    fn block_on<F>(&self, f: F) -> Result<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        Ok(super::remote::block_on(&self.rt, f))
    }

    fn path(&self, key: &str) -> Result<Path> {
        check_key(key)?;
        Ok(Path::from(format!("{}{key}", self.prefix)))
    }

    fn marker_path(&self, key: &str) -> Result<Path> {
        check_key(key)?;
        Ok(Path::from(format!("{}{WRITES}/{key}.json", self.prefix)))
    }

    fn url(&self, path: &Path) -> String {
        format!("s3://{}/{path}", self.bucket)
    }
}

/// The body of a write marker for `upload_id`, with the heartbeat now and the writer's `lease`.
fn marker_bytes(upload_id: &str, lease: Duration) -> Bytes {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let m = Marker {
        upload_id: upload_id.to_string(),
        owner: format!("{}:{}", host.trim(), std::process::id()),
        heartbeat: now_secs(),
        lease: lease.as_secs().max(1),
    };
    Bytes::from(serde_json::to_vec(&m).unwrap_or_default())
}

impl Inner {
    /// The marker of `key`, if there is one.
    fn read_marker(&self, key: &str) -> Result<Option<Marker>> {
        let path = self.marker_path(key)?;
        let got = self.block_on(async {
            match self.s3.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let Some(bytes) = got.map_err(|e| s3_error("read", &self.url(&path), e))? else {
            return Ok(None);
        };
        // A marker is at most a few hundred bytes; an unreadable one counts as dead with no
        // upload to abort.
        Ok(Some(serde_json::from_slice(&bytes).unwrap_or(Marker {
            upload_id: String::new(),
            owner: String::new(),
            heartbeat: 0,
            lease: 0,
        })))
    }

    fn live(&self, m: &Marker) -> bool {
        marker_live(m, self.options.lease, now_secs())
    }
}

/// Whether the writer of marker `m` still lives at `now` (seconds since the epoch): its last
/// heartbeat is younger than its own lease (`default` for a marker that gives none).
fn marker_live(m: &Marker, default: Duration, now: u64) -> bool {
    let lease = match m.lease {
        0 => default.as_secs().max(1),
        // Bounded, so that a wrong marker cannot keep a dead write for days.
        n => n.min(MAX_LEASE_SECS),
    };
    now.saturating_sub(m.heartbeat) < lease
}

/// `REGION/NAME` with both parts plain names, as the local store takes them.
fn check_key(key: &str) -> Result<()> {
    let plain = |s: &str| {
        !s.is_empty() && !s.starts_with('.') && !s.contains(['/', '\\', '\0']) && s.len() <= 512
    };
    match key.split_once('/') {
        Some((region, name)) if plain(region) && plain(name) => Ok(()),
        _ => Err(Error::InvalidArgument(format!(
            "store key '{key}' is not REGION/NAME"
        ))),
    }
}

/// Image data in an S3 bucket. See the module documentation.
pub struct S3Store {
    inner: Arc<Inner>,
}

impl S3Store {
    /// The store at `s3://BUCKET/PREFIX`, with the endpoint, region and credentials of the
    /// `AWS_*` variables (`AWS_ENDPOINT`, `AWS_REGION` or `AWS_DEFAULT_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...) and the options of
    /// [`S3Options::from_env`]. Plain HTTP is allowed when `AWS_ENDPOINT` is an `http://`
    /// address (a local test server) or `AWS_ALLOW_HTTP=true`.
    pub fn open(url: &str) -> Result<S3Store> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::InvalidArgument(format!("store address '{url}' is not s3://BUCKET/PREFIX"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        S3Store::with_builder(builder_from_env(), bucket, prefix, S3Options::from_env()?)
    }

    /// The store in `bucket` under `prefix` (may be empty), through `builder` (endpoint,
    /// region, credentials already set).
    pub fn with_builder(
        builder: AmazonS3Builder,
        bucket: &str,
        prefix: &str,
        options: S3Options,
    ) -> Result<S3Store> {
        if bucket.is_empty() {
            return Err(Error::InvalidArgument("an S3 store needs a bucket".into()));
        }
        let s3 = builder
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| s3_error("configure", &format!("s3://{bucket}"), e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ims-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the S3 runtime", e))?;
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Ok(S3Store {
            inner: Arc::new(Inner {
                rt: Arc::new(rt),
                s3: Arc::new(s3),
                bucket: bucket.to_string(),
                prefix,
                options,
            }),
        })
    }

    /// The object at `path` of version `e_tag`, for GETs.
    fn remote(&self, path: Path, e_tag: Option<String>) -> S3Remote {
        S3Remote {
            s3: Arc::clone(&self.inner.s3),
            name: self.inner.url(&path),
            path,
            e_tag,
        }
    }

    /// Any object of the bucket, by its full path, as a [`Storage`] of ranged GETs.
    fn open_path(&self, path: Path) -> Result<Arc<dyn Storage>> {
        let inner = &self.inner;
        let meta = inner
            .block_on(inner.s3.head(&path))?
            .map_err(|e| s3_error("open", &inner.url(&path), e))?;
        Ok(Arc::new(RemoteStorage::new(
            Arc::clone(&inner.rt),
            Arc::new(self.remote(path, meta.e_tag)),
            meta.size,
            inner.options.read_options(),
        )))
    }
}

/// The object `s3://BUCKET/KEY` (an uploaded image to register), with the endpoint, region and
/// credentials of the `AWS_*` variables as [`S3Store::open`] takes them, as a [`Storage`] of
/// ranged GETs through a bounded block cache with read-ahead. Every GET asks for the ETag seen
/// at the start, so an object replaced while it is read fails the read; object_store retries
/// requests that fail on the connection, with backoff.
pub fn open_object(url: &str) -> Result<Arc<dyn Storage>> {
    let (rt, remote, len) = S3Store::object(url, None)?;
    let read = S3Options::from_env()?.read_options();
    Ok(Arc::new(RemoteStorage::new(
        rt,
        Arc::new(remote),
        len,
        read,
    )))
}

impl S3Store {
    /// The object `s3://BUCKET/KEY` through `builder` (`None`: the client of the `AWS_*`
    /// variables): the runtime of its GETs, the object pinned to its ETag now, and its length.
    pub(super) fn object(
        url: &str,
        builder: Option<AmazonS3Builder>,
    ) -> Result<(Arc<Runtime>, S3Remote, u64)> {
        let bad = || Error::InvalidArgument(format!("'{url}' is not s3://BUCKET/KEY"));
        let rest = url.strip_prefix("s3://").ok_or_else(bad)?;
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(bad)?;
        let builder = builder.unwrap_or_else(builder_from_env);
        let store = S3Store::with_builder(builder, bucket, "", S3Options::from_env()?)?;
        let inner = &store.inner;
        let path = Path::from(key);
        let meta = inner
            .block_on(inner.s3.head(&path))?
            .map_err(|e| s3_error("open", &inner.url(&path), e))?;
        Ok((
            Arc::clone(&inner.rt),
            store.remote(path, meta.e_tag),
            meta.size,
        ))
    }
}

/// Parts of an export's upload: 16 MiB (S3's limit of 10,000 parts then allows 160 GiB, more
/// than an export may be).
const EXPORT_PART: usize = 16 << 20;

impl S3Store {
    /// Whether the object at `path` (in the bucket, outside the prefix) exists.
    pub(super) fn object_exists(&self, path: &Path) -> Result<bool> {
        let inner = &self.inner;
        match inner.block_on(inner.s3.head(path))? {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(s3_error("look up", &inner.url(path), e)),
        }
    }

    /// Stores the local file `file` as the object at `path` with a multipart upload streamed
    /// from the file (an export's target).
    pub(super) fn put_file(&self, path: &Path, file: &std::path::Path) -> Result<()> {
        use std::io::Read;
        let inner = &self.inner;
        let mut f = std::fs::File::open(file).map_err(|e| Error::io("open", e).in_file(file))?;
        let target = inner.url(path);
        inner.block_on(async {
            let upload = inner
                .s3
                .put_multipart(path)
                .await
                .map_err(|e| s3_error("start upload", &target, e))?;
            let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, EXPORT_PART);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(Error::io("read", e).in_file(file));
                    }
                };
                if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    return Err(s3_error("upload", &target, e));
                }
                w.write(&buf[..n]);
            }
            w.finish()
                .await
                .map(|_| ())
                .map_err(|e| s3_error("finish upload", &target, e))
        })?
    }
}

/// A builder with the `AWS_*` variables; plain HTTP when the endpoint is `http://`.
pub(super) fn builder_from_env() -> AmazonS3Builder {
    let builder = AmazonS3Builder::from_env();
    if std::env::var("AWS_ENDPOINT").is_ok_and(|e| e.starts_with("http://")) {
        builder.with_allow_http(true)
    } else {
        builder
    }
}

impl ImageStore for S3Store {
    fn begin(&self, key: &str) -> Result<Box<dyn StoreWriter>> {
        let inner = &self.inner;
        let path = inner.path(key)?;
        let marker = inner.marker_path(key)?;
        let upload = inner
            .block_on(inner.s3.create_multipart(&path))?
            .map_err(|e| s3_error("start upload", &inner.url(&path), e))?;
        let body = marker_bytes(&upload, inner.options.lease);
        if let Err(e) = inner.block_on(inner.s3.put(&marker, PutPayload::from(body)))? {
            let _ = inner.block_on(inner.s3.abort_multipart(&path, &upload));
            return Err(s3_error("write", &inner.url(&marker), e));
        }
        // The heartbeat: the marker rewritten every quarter lease while the writer lives.
        let beat = {
            let s3 = Arc::clone(&inner.s3);
            let marker = marker.clone();
            let upload = upload.clone();
            let lease = inner.options.lease;
            let every = (lease / 4).max(Duration::from_millis(250));
            inner.rt.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let body = marker_bytes(&upload, lease);
                    let _ = s3.put(&marker, PutPayload::from(body)).await;
                }
            })
        };
        Ok(Box::new(S3Writer {
            inner: Arc::clone(inner),
            path,
            marker,
            upload,
            buf: Vec::new(),
            parts: Vec::new(),
            in_flight: VecDeque::new(),
            next_part: 0,
            position: 0,
            finished: false,
            committed: false,
            beat: Some(beat),
        }))
    }

    fn open(&self, key: &str) -> Result<Arc<dyn Storage>> {
        self.open_path(self.inner.path(key)?)
    }

    fn remove(&self, key: &str) -> Result<()> {
        let inner = &self.inner;
        let path = inner.path(key)?;
        match inner.block_on(inner.s3.delete(&path))? {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(s3_error("remove", &inner.url(&path), e)),
        }
    }

    fn copy(&self, from: &str, to: &str, cancel: &CancelToken) -> Result<u64> {
        let inner = &self.inner;
        let src = inner.path(from)?;
        let dest = inner.path(to)?;
        cancel.check()?;
        let meta = inner
            .block_on(inner.s3.head(&src))?
            .map_err(|e| s3_error("open", &inner.url(&src), e))?;
        if meta.size <= MAX_COPY_OBJECT {
            // In the server: one CopyObject, which makes the copy whole or not at all.
            inner
                .block_on(inner.s3.copy(&src, &dest))?
                .map_err(|e| s3_error("copy", &inner.url(&src), e))?;
        } else {
            // Past CopyObject's 5 GiB: read and re-upload in parts, through this process.
            let source = self.open(from)?;
            let mut w = self.begin(to)?;
            let mut buf = vec![0u8; 8 << 20];
            let mut at = 0;
            while at < source.len() {
                cancel.check()?;
                let n = source.read_at(&mut buf, at)?;
                if n == 0 {
                    return Err(Error::truncated("stored image", at, 1, source.len()));
                }
                w.append(&buf[..n])?;
                at += n as u64;
            }
            w.finish()?;
            cancel.check()?;
            w.commit()?;
        }
        if cancel.is_cancelled() {
            let _ = self.remove(to);
            return Err(Error::Cancelled);
        }
        Ok(meta.size)
    }

    fn unfinished(&self) -> Result<Vec<UnfinishedWrite>> {
        let inner = &self.inner;
        let dir = Path::from(format!("{}{WRITES}", inner.prefix));
        let listed: Vec<_> = inner.block_on(inner.s3.list(Some(&dir)).collect::<Vec<_>>())?;
        let mut out = Vec::new();
        let head = format!("{dir}/");
        for meta in listed {
            let meta = meta.map_err(|e| s3_error("list", &inner.url(&dir), e))?;
            let name = meta.location.as_ref();
            let Some(key) = name
                .strip_prefix(&head)
                .and_then(|k| k.strip_suffix(".json"))
            else {
                continue;
            };
            if check_key(key).is_err() {
                continue;
            }
            let Some(m) = inner.read_marker(key)? else {
                continue;
            };
            out.push(UnfinishedWrite::new(key, inner.live(&m)));
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn discard(&self, key: &str) -> Result<()> {
        let inner = &self.inner;
        let Some(m) = inner.read_marker(key)? else {
            return Ok(());
        };
        if inner.live(&m) {
            return Ok(());
        }
        let path = inner.path(key)?;
        if !m.upload_id.is_empty() {
            // A completed upload, or one aborted already, is no longer known: that is fine.
            match inner.block_on(inner.s3.abort_multipart(&path, &m.upload_id))? {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                // Some servers answer other than 404 for an upload completed before its
                // writer died: its committed object says the upload is over.
                Err(e) => {
                    if inner.block_on(inner.s3.head(&path))?.is_err() {
                        return Err(s3_error("abort upload", &inner.url(&path), e));
                    }
                }
            }
        }
        let marker = inner.marker_path(key)?;
        match inner.block_on(inner.s3.delete(&marker))? {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(s3_error("remove", &inner.url(&marker), e)),
        }
    }
}

/// A write of the S3 store: a multipart upload fed a part at a time, and its marker.
struct S3Writer {
    inner: Arc<Inner>,
    path: Path,
    marker: Path,
    upload: String,
    /// The part being filled.
    buf: Vec<u8>,
    /// The parts uploaded, in order.
    parts: Vec<PartId>,
    /// Part uploads running, oldest first.
    in_flight: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    next_part: usize,
    position: u64,
    finished: bool,
    committed: bool,
    beat: Option<JoinHandle<()>>,
}

impl S3Writer {
    fn writable(&self) -> Result<()> {
        if self.committed || self.finished {
            return Err(Error::Internal(format!(
                "{}: appended to after its end",
                self.inner.url(&self.path)
            )));
        }
        Ok(())
    }

    /// Waits for the oldest part upload.
    fn wait_one(&mut self) -> Result<()> {
        if let Some(h) = self.in_flight.pop_front() {
            let id = self
                .inner
                .block_on(h)?
                .map_err(|e| Error::Internal(format!("part upload: {e}")))?
                .map_err(|e| s3_error("upload part", &self.inner.url(&self.path), e))?;
            self.parts.push(id);
        }
        Ok(())
    }

    /// Sends the part filled so far.
    fn send(&mut self) -> Result<()> {
        let part = part_size(self.inner.options.part_size, self.next_part);
        while self.in_flight.len() >= parts_in_flight(part) {
            self.wait_one()?;
        }
        if self.next_part >= MAX_PARTS {
            return Err(Error::unsupported(format!(
                "{}: more than {MAX_PARTS} parts",
                self.inner.url(&self.path)
            )));
        }
        let data = Bytes::from(std::mem::take(&mut self.buf));
        let (s3, path, upload, idx) = (
            Arc::clone(&self.inner.s3),
            self.path.clone(),
            self.upload.clone(),
            self.next_part,
        );
        self.next_part += 1;
        let h = self.inner.rt.spawn(async move {
            s3.put_part(&path, &upload, idx, PutPayload::from(data))
                .await
        });
        self.in_flight.push_back(h);
        Ok(())
    }

    fn room(&self) -> usize {
        part_size(self.inner.options.part_size, self.next_part).saturating_sub(self.buf.len())
    }
}

impl AppendSink for S3Writer {
    fn append(&mut self, mut data: &[u8]) -> Result<()> {
        self.writable()?;
        while !data.is_empty() {
            let n = self.room().min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.position += n as u64;
            if self.room() == 0 {
                self.send()?;
            }
        }
        Ok(())
    }

    fn append_zeros(&mut self, mut len: u64) -> Result<()> {
        self.writable()?;
        while len > 0 {
            let n = (self.room() as u64).min(len) as usize;
            self.buf.resize(self.buf.len() + n, 0);
            len -= n as u64;
            self.position += n as u64;
            if self.room() == 0 {
                self.send()?;
            }
        }
        Ok(())
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.writable()?;
        // The last part, which may be short. An empty object has none: some servers (Garage)
        // refuse an empty part, and `commit` writes it with one PUT.
        if !self.buf.is_empty() {
            self.send()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_one()?;
        }
        self.finished = true;
        Ok(())
    }
}

impl StoreWriter for S3Writer {
    fn commit(&mut self) -> Result<u64> {
        if self.committed {
            return Err(Error::Internal(format!(
                "{}: committed twice",
                self.inner.url(&self.path)
            )));
        }
        self.finish()?;
        let parts = std::mem::take(&mut self.parts);
        let inner = &self.inner;
        if parts.is_empty() {
            // Nothing was appended: the upload has no part to complete with.
            let _ = inner.block_on(inner.s3.abort_multipart(&self.path, &self.upload));
            inner
                .block_on(inner.s3.put(&self.path, PutPayload::new()))?
                .map_err(|e| s3_error("write an empty object", &inner.url(&self.path), e))?;
        } else {
            inner
                .block_on(inner.s3.complete_multipart(&self.path, &self.upload, parts))?
                .map_err(|e| s3_error("complete upload", &inner.url(&self.path), e))?;
        }
        self.committed = true;
        Ok(self.position)
    }

    fn abort(self: Box<Self>) {
        drop(self);
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if let Some(b) = self.beat.take() {
            b.abort();
        }
        for h in self.in_flight.drain(..) {
            h.abort();
        }
        let inner = &self.inner;
        if !self.committed {
            let _ = inner.block_on(inner.s3.abort_multipart(&self.path, &self.upload));
        }
        // The marker goes last: until then recovery elsewhere sees the write (live, as the
        // heartbeat is fresh) and never takes it for a dead one.
        let _ = inner.block_on(inner.s3.delete(&self.marker));
    }
}

/// An object of the bucket as a [`Remote`]: ranged GETs pinned to its ETag.
pub(super) struct S3Remote {
    s3: Arc<AmazonS3>,
    path: Path,
    e_tag: Option<String>,
    name: String,
}

impl Remote for S3Remote {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, range: Range<u64>) -> BoxFuture<'static, std::result::Result<Body, GetError>> {
        let options = GetOptions {
            if_match: self.e_tag.clone(),
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        let (s3, path, name) = (Arc::clone(&self.s3), self.path.clone(), self.name.clone());
        async move {
            let classify = move |e: object_store::Error| match e {
                object_store::Error::Precondition { .. } => {
                    GetError::Changed(format!("{name}: {e}"))
                }
                object_store::Error::NotFound { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => {
                    GetError::Refused(format!("{name}: {e}"))
                }
                // object_store has retried what it retries already; a body cut short is
                // picked up again by the reader.
                e => GetError::Failed(format!("{name}: {e}")),
            };
            let got = s3
                .get_opts(&path, options)
                .await
                .map_err(classify.clone())?;
            let body: Body = got
                .into_stream()
                .map(move |p| p.map_err(classify.clone()))
                .boxed();
            Ok(body)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tebibyte_fits_in_the_part_limit() {
        for base in [32 << 20, 64 << 20] {
            let total: u64 = (0..MAX_PARTS).map(|i| part_size(base, i) as u64).sum();
            assert!(total >= 1 << 40, "base {base}: {total}");
        }
        // The default keeps parts small for the images most registrations are.
        let base = S3Options::default().part_size;
        assert_eq!(part_size(base, 0), 32 << 20);
        assert_eq!(part_size(base, PARTS_PER_STEP), 64 << 20);
        assert_eq!(part_size(1, 0), MIN_PART);
        // Parts held by a write: 96 MiB with 32 MiB parts, 128 MiB with 64 and 128 MiB ones.
        assert_eq!(parts_in_flight(32 << 20), 2);
        assert_eq!(parts_in_flight(64 << 20), 1);
        assert_eq!(parts_in_flight(128 << 20), 0);
        assert_eq!(parts_in_flight(256 << 20), 0);
        assert_eq!(parts_in_flight(MIN_PART), 2);
        assert_eq!(part_size(usize::MAX, 9_999), MAX_PART);
    }

    #[test]
    fn a_write_is_judged_by_its_writers_lease() {
        let m = |heartbeat, lease| Marker {
            upload_id: String::new(),
            owner: String::new(),
            heartbeat,
            lease,
        };
        let reader = Duration::from_secs(60);
        // The writer's 3 s lease, whatever the reader's.
        assert!(marker_live(&m(100, 3), reader, 102));
        assert!(!marker_live(&m(100, 3), reader, 103));
        // A writer with a longer lease than the reader's is still live.
        assert!(marker_live(&m(100, 600), Duration::from_secs(4), 500));
        // No lease in the marker: the reader's; a huge one is cut to an hour.
        assert!(marker_live(&m(100, 0), reader, 159));
        assert!(!marker_live(&m(100, 0), reader, 160));
        assert!(!marker_live(&m(0, u64::MAX), reader, MAX_LEASE_SECS));
        // A heartbeat from the future (another clock ahead) is live.
        assert!(marker_live(&m(200, 3), reader, 100));
    }

    #[test]
    fn keys_are_region_and_name() {
        assert!(check_key("r1/abc.zvhd2").is_ok());
        for bad in ["r1", "../x", "r1/.hidden", "r1/a/b", "/x", "r1/"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
