//! Objects read over the network: an object of an S3 bucket (through object_store) or any
//! `https://` URL (a presigned link, a web server), pinned to the version seen when opened.
//!
//! - [`RemoteStorage`]: a [`Storage`] of ranged GETs of whole blocks through a bounded block
//!   cache, with blocks fetched ahead of the reads in the background (several GETs at once) in
//!   the order [`Storage::will_read`] gave (an image's map), else front to back when the reads
//!   go that way. For random-access formats and stored images.
//! - [`RemoteStream`]: the object read front to back as one GET, for the formats that read
//!   that way (raw, streamOptimized VMDK, ZVHD); a connection lost mid-way is picked up where
//!   it stopped with a ranged GET, after a backoff.
//!
//! Every GET asks for the version (ETag) seen at the start; an object replaced while it is read
//! fails the read ("changed while read") rather than mixing two versions. GETs that fail on
//! the connection or with a server error are retried with backoff ([`RETRIES`]); a refusal
//! (missing, denied, changed) is not.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use tokio::runtime::Runtime;

use crate::cache::Lru;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Attempts of one GET (or of picking a stream up again) that fail on the connection or with
/// a server error, before the read fails.
pub(crate) const RETRIES: u32 = 6;

/// The wait before attempt `n` (from 1): 200 ms doubling, at most 5 s.
fn backoff(n: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << n.min(5).saturating_sub(1)))
        .min(Duration::from_secs(5))
}

/// Why a GET failed.
#[derive(Debug, Clone)]
pub(crate) enum GetError {
    /// The object is no longer the version opened.
    Changed(String),
    /// Refused for good: missing, denied, an expired link, a server that serves no ranges.
    Refused(String),
    /// The connection or the server failed: worth another try.
    Failed(String),
}

impl GetError {
    fn into_error(self) -> Error {
        match self {
            GetError::Changed(m) => Error::io(
                "read",
                std::io::Error::other(format!("{m} (the object changed while it was read)")),
            ),
            GetError::Refused(m) | GetError::Failed(m) => {
                Error::io("read", std::io::Error::other(m))
            }
        }
    }
}

/// A GET's body, in pieces.
pub(crate) type Body = BoxStream<'static, std::result::Result<Bytes, GetError>>;

/// One object, pinned to a version, that serves ranged GETs.
pub(crate) trait Remote: Send + Sync + 'static {
    /// The object's name for messages (without a presigned link's signature).
    fn name(&self) -> &str;

    /// A GET of `range` of the version opened.
    fn get(&self, range: Range<u64>) -> BoxFuture<'static, std::result::Result<Body, GetError>>;
}

/// How a [`RemoteStorage`] reads: blocks, cache and read-ahead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadOptions {
    pub(crate) block_size: u64,
    pub(crate) cache_blocks: usize,
    pub(crate) read_ahead: usize,
}

/// A GET of `range` of `remote`, its whole body, retried as [`RETRIES`] says.
async fn get_all(remote: &dyn Remote, range: Range<u64>) -> std::result::Result<Bytes, GetError> {
    let want = range.end - range.start;
    let mut attempt = 0;
    loop {
        let got = async {
            let mut body = remote.get(range.clone()).await?;
            let mut out = BytesMut::with_capacity(usize::try_from(want).unwrap_or(0));
            while let Some(piece) = body.next().await {
                out.extend_from_slice(&piece?);
                if out.len() as u64 > want {
                    break;
                }
            }
            Ok(out.freeze())
        }
        .await;
        let err = match got {
            Ok(data) if data.len() as u64 == want => return Ok(data),
            Ok(data) => GetError::Failed(format!(
                "{}: {} bytes at {} where {want} were asked for",
                remote.name(),
                data.len(),
                range.start
            )),
            Err(e) => e,
        };
        attempt += 1;
        match err {
            GetError::Failed(_) if attempt < RETRIES => tokio::time::sleep(backoff(attempt)).await,
            e => return Err(e),
        }
    }
}

/// A remote object as a [`Storage`]: see the module documentation.
pub(crate) struct RemoteStorage {
    rt: Arc<Runtime>,
    remote: Arc<dyn Remote>,
    len: u64,
    options: ReadOptions,
    cache: Arc<Lru<u64, Bytes>>,
    /// The blocks being fetched, for a read of one of them to wait on.
    fetching: Arc<Mutex<HashMap<u64, Arc<Fetch>>>>,
    /// The blocks the reads will want, in order.
    plan: Mutex<Plan>,
    /// The block read last: a read of the next one means the reads go front to back.
    last_block: AtomicU64,
    /// The furthest place in the plan the reads have reached: a run's GET stays within the
    /// read-ahead window past it.
    reached: Arc<AtomicUsize>,
    /// Whether a run of the plan is being read as one GET.
    streaming: Arc<AtomicBool>,
    /// Set when the storage goes: a run's GET stops.
    closed: Arc<AtomicBool>,
}

impl Drop for RemoteStorage {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// Blocks of the plan read as one GET when they follow each other in the object (in the
/// plan's order, with gaps of at most [`RUN_GAP`] blocks): at least this many...
const RUN_MIN: usize = 16;
/// ... at most this many (a GET of a few GiB at most; the next run follows).
const RUN_MAX: usize = 4096;
/// The most blocks a run's GET reads and drops between two blocks of the plan.
const RUN_GAP: u64 = 4;

/// The blocks a reader said it will read ([`Storage::will_read`]), in order, and where each
/// first is in that order.
#[derive(Default)]
struct Plan {
    order: Vec<u64>,
    at: HashMap<u64, usize>,
}

/// One block's GET, as the reads waiting for it see it.
#[derive(Default)]
struct Fetch {
    done: Mutex<Option<std::result::Result<Bytes, GetError>>>,
    ready: Condvar,
}

impl Fetch {
    fn finish(&self, result: std::result::Result<Bytes, GetError>) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
        self.ready.notify_all();
    }

    fn wait(&self) -> std::result::Result<Bytes, GetError> {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(r) = done.as_ref() {
                return r.clone();
            }
            done = self
                .ready
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Runs `f` to its end on `rt` for a blocking call: on this thread, or on a short-lived thread
/// of its own when this one is in a tokio runtime already (a blocking task of a server, such as
/// `ims serve`'s handlers), since tokio enters no runtime from inside another.
pub(crate) fn block_on<F>(rt: &Runtime, f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return rt.block_on(f);
    }
    std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join())
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

impl RemoteStorage {
    /// `remote`, `len` bytes long, read on `rt`.
    pub(crate) fn new(
        rt: Arc<Runtime>,
        remote: Arc<dyn Remote>,
        len: u64,
        options: ReadOptions,
    ) -> RemoteStorage {
        RemoteStorage {
            rt,
            remote,
            len,
            options,
            cache: Arc::new(Lru::new(options.cache_blocks)),
            fetching: Arc::new(Mutex::new(HashMap::new())),
            plan: Mutex::new(Plan::default()),
            last_block: AtomicU64::new(u64::MAX),
            reached: Arc::new(AtomicUsize::new(0)),
            streaming: Arc::new(AtomicBool::new(false)),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn block_size(&self) -> u64 {
        self.options.block_size.max(1)
    }

    fn range(&self, block: u64) -> Range<u64> {
        let bs = self.block_size();
        let start = block.saturating_mul(bs);
        start..start.saturating_add(bs).min(self.len)
    }

    /// Blocks fetched ahead at most: within half the cache, so that none is evicted before
    /// it is read.
    fn window(&self) -> usize {
        self.options
            .read_ahead
            .min(self.options.cache_blocks / 2)
            .max(1)
    }

    /// Starts the GET of `block` unless it is cached or being fetched; the fetch, if any.
    fn start(&self, block: u64) -> Option<Arc<Fetch>> {
        let mut fetching = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = fetching.get(&block) {
            return Some(Arc::clone(f));
        }
        if self.cache.get(&block).is_some() {
            return None;
        }
        let fetch = Arc::new(Fetch::default());
        fetching.insert(block, Arc::clone(&fetch));
        drop(fetching);
        let range = self.range(block);
        // The task holds no runtime: the last one dropped on its own worker would panic.
        let (remote, cache, fetching, f) = (
            Arc::clone(&self.remote),
            Arc::clone(&self.cache),
            Arc::clone(&self.fetching),
            Arc::clone(&fetch),
        );
        self.rt.spawn(async move {
            let result = get_all(&*remote, range).await;
            if let Ok(data) = &result {
                cache.insert(block, data.clone());
            }
            fetching
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&block);
            f.finish(result);
        });
        Some(fetch)
    }

    /// Starts the GETs of the blocks to be read after `block`: the next ones of the plan, or
    /// of the object when the reads go front to back.
    fn ahead(&self, block: u64, sequential: bool) {
        let window = self.window();
        let next: Vec<u64> = {
            let plan = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
            match plan.at.get(&block) {
                Some(&p) => {
                    self.reached.fetch_max(p, Ordering::Relaxed);
                    if !self.streaming.load(Ordering::Relaxed) {
                        let run = run_after(&plan.order, p);
                        if run.len() >= RUN_MIN {
                            self.stream_run(run.iter().map(|&q| (plan.order[q], q)).collect());
                        }
                    }
                    plan.order
                        .iter()
                        .skip(p + 1)
                        .take(window)
                        .copied()
                        .collect()
                }
                None if sequential => {
                    let blocks = self.len.div_ceil(self.block_size());
                    (block.saturating_add(1)..block.saturating_add(1 + window as u64).min(blocks))
                        .collect()
                }
                None => Vec::new(),
            }
        };
        for b in next {
            self.start(b);
        }
    }

    /// Reads the plan's blocks `run` ((block, place in the plan), ascending in the object) as
    /// one GET, handing each out as it comes (reads of them wait for it, as for a block's own
    /// GET) and never more than the read-ahead window past the furthest read; a broken
    /// connection is picked up at the block it stopped in.
    fn stream_run(&self, run: Vec<(u64, usize)>) {
        // The blocks of the run are the GET's to fetch, but those already cached or fetched;
        // too few left, and they are fetched block by block.
        let mut mine: Vec<(u64, usize, Option<Arc<Fetch>>)> = {
            let mut fetching = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
            let todo: Vec<(u64, usize)> = run
                .into_iter()
                .filter(|(b, _)| !fetching.contains_key(b) && self.cache.get(b).is_none())
                .collect();
            if todo.len() < RUN_MIN {
                return;
            }
            todo.into_iter()
                .map(|(b, q)| {
                    let f = Arc::new(Fetch::default());
                    fetching.insert(b, Arc::clone(&f));
                    (b, q, Some(f))
                })
                .collect()
        };
        let (Some(&(first, _, _)), Some(&(last, _, _))) = (mine.first(), mine.last()) else {
            return;
        };
        self.streaming.store(true, Ordering::Relaxed);
        let bs = self.block_size();
        let len = self.len;
        let window = self.window();
        let (remote, cache, fetching, reached, streaming, closed) = (
            Arc::clone(&self.remote),
            Arc::clone(&self.cache),
            Arc::clone(&self.fetching),
            Arc::clone(&self.reached),
            Arc::clone(&self.streaming),
            Arc::clone(&self.closed),
        );
        self.rt.spawn(async move {
            let end = last.saturating_add(1).saturating_mul(bs).min(len);
            let mut at = first.saturating_mul(bs);
            let mut body: Option<Body> = None;
            let mut held = BytesMut::new();
            let mut failures = 0u32;
            let mut next = 0usize;
            let mut failed: Option<GetError> = None;
            while next < mine.len() && !closed.load(Ordering::Relaxed) {
                let (b, q, f) = &mut mine[next];
                let (b, q) = (*b, *q);
                let range = b * bs..(b * bs + bs).min(len);
                // Within the window past the furthest read, so none is evicted unread.
                if q > reached.load(Ordering::Relaxed) + window {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                // The bytes up to the block's end; the ones before it are dropped.
                if at + (held.len() as u64) < range.end {
                    if body.is_none() {
                        match remote.get(at + held.len() as u64..end).await {
                            Ok(got) => body = Some(got),
                            Err(e) => {
                                failures += 1;
                                if matches!(e, GetError::Failed(_)) && failures < RETRIES {
                                    tokio::time::sleep(backoff(failures)).await;
                                    continue;
                                }
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    let piece = match body.as_mut() {
                        Some(got) => got.next().await,
                        None => None,
                    };
                    match piece {
                        Some(Ok(piece)) => {
                            failures = 0;
                            held.extend_from_slice(&piece);
                        }
                        other => {
                            body = None;
                            failures += 1;
                            let e = match other {
                                Some(Err(e)) => e,
                                _ => GetError::Failed(format!(
                                    "{}: the GET ended before {}",
                                    remote.name(),
                                    range.end
                                )),
                            };
                            if matches!(e, GetError::Failed(_)) && failures < RETRIES {
                                tokio::time::sleep(backoff(failures)).await;
                                continue;
                            }
                            failed = Some(e);
                            break;
                        }
                    }
                    continue;
                }
                // Drop what comes before the block, hand the block out.
                let skip = usize::try_from(range.start.saturating_sub(at)).unwrap_or(usize::MAX);
                held.advance(skip.min(held.len()));
                // A block of its own: a piece of `held` would keep all of `held`'s buffer.
                let n = usize::try_from(range.end - range.start)
                    .unwrap_or(0)
                    .min(held.len());
                let data = Bytes::copy_from_slice(&held[..n]);
                held.advance(n);
                at = range.end;
                cache.insert(b, data.clone());
                fetching
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&b);
                // Handed out and let go: the block lives in the cache, and in the reads that
                // waited for it, not in the run.
                if let Some(f) = f.take() {
                    f.finish(Ok(data));
                }
                next += 1;
            }
            // What was not handed out: the reads waiting for it fail with the GET's error, or
            // (the storage gone) nobody waits.
            let e =
                failed.unwrap_or_else(|| GetError::Refused(format!("{}: closed", remote.name())));
            let mut fetching = fetching.lock().unwrap_or_else(PoisonError::into_inner);
            for (b, _, f) in &mine[next..] {
                fetching.remove(b);
                if let Some(f) = f {
                    f.finish(Err(e.clone()));
                }
            }
            drop(fetching);
            streaming.store(false, Ordering::Relaxed);
        });
    }

    /// Block `block`: from the cache, from a GET under way, or fetched now.
    fn block(&self, block: u64) -> Result<Bytes> {
        // Front to back once a read follows the block before (a probe's first block alone
        // starts no read-ahead).
        let last = self.last_block.swap(block, Ordering::Relaxed);
        let sequential = last.checked_add(1) == Some(block);
        if let Some(b) = self.cache.get(&block) {
            self.ahead(block, sequential || last == block);
            return Ok(b);
        }
        // Twice at most: a read ahead may end between the cache's answer and the start.
        for _ in 0..2 {
            let fetch = self.start(block);
            self.ahead(block, sequential);
            match fetch {
                Some(f) => return f.wait().map_err(GetError::into_error),
                None => {
                    if let Some(b) = self.cache.get(&block) {
                        return Ok(b);
                    }
                }
            }
        }
        Err(Error::Internal(format!(
            "{}: block {block} neither cached nor fetched",
            self.remote.name()
        )))
    }
}

impl Storage for RemoteStorage {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let bs = self.block_size();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset.saturating_add(done as u64);
            if at >= self.len {
                break;
            }
            let data = self.block(at / bs)?;
            let within = (at % bs) as usize;
            let src = data.get(within..).unwrap_or(&[]);
            if src.is_empty() {
                break;
            }
            let n = src.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&src[..n]);
            done += n;
        }
        Ok(done)
    }

    fn will_read(&self, ranges: &[Range<u64>]) {
        let bs = self.block_size();
        let mut plan = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
        for r in ranges {
            let end = r.end.min(self.len);
            if r.start >= end {
                continue;
            }
            for b in r.start / bs..=(end - 1) / bs {
                // A block once, where it is first wanted: the plan is bounded by the object.
                if !plan.at.contains_key(&b) {
                    let p = plan.order.len();
                    plan.order.push(b);
                    plan.at.insert(b, p);
                }
            }
        }
    }
}

/// The places in `order` after `p` whose blocks follow each other in the object (ascending,
/// with gaps of at most [`RUN_GAP`] blocks), at most [`RUN_MAX`] of them.
fn run_after(order: &[u64], p: usize) -> Vec<usize> {
    let mut run = Vec::new();
    let mut prev: Option<u64> = None;
    for (q, &b) in order.iter().enumerate().skip(p + 1).take(RUN_MAX) {
        if let Some(prev) = prev
            && !(b > prev && b - prev <= RUN_GAP + 1)
        {
            break;
        }
        run.push(q);
        prev = Some(b);
    }
    run
}

/// A remote object read front to back as one GET: see the module documentation.
pub(crate) struct RemoteStream {
    rt: Arc<Runtime>,
    remote: Arc<dyn Remote>,
    len: u64,
    /// Bytes handed out so far.
    pos: u64,
    body: Option<Body>,
    /// What is left of the last piece the body gave.
    piece: Bytes,
    /// Failures in a row.
    failures: u32,
}

impl RemoteStream {
    /// `remote`, `len` bytes long, from its first byte, on `rt`.
    pub(crate) fn new(rt: Arc<Runtime>, remote: Arc<dyn Remote>, len: u64) -> RemoteStream {
        RemoteStream {
            rt,
            remote,
            len,
            pos: 0,
            body: None,
            piece: Bytes::new(),
            failures: 0,
        }
    }

    /// Counts a failure: waits before the next try, or gives up after [`RETRIES`].
    fn failed(&mut self, e: GetError) -> std::io::Result<()> {
        self.body = None;
        self.failures += 1;
        match e {
            GetError::Failed(_) if self.failures < RETRIES => {
                std::thread::sleep(backoff(self.failures));
                Ok(())
            }
            e => Err(std::io::Error::other(e.into_error())),
        }
    }
}

impl std::io::Read for RemoteStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos >= self.len || buf.is_empty() {
                return Ok(0);
            }
            if !self.piece.is_empty() {
                let n = self.piece.len().min(buf.len());
                buf[..n].copy_from_slice(&self.piece.split_to(n));
                self.pos += n as u64;
                return Ok(n);
            }
            if self.body.is_none() {
                let get = self.remote.get(self.pos..self.len);
                match block_on(&self.rt, get) {
                    Ok(body) => self.body = Some(body),
                    Err(e) => {
                        self.failed(e)?;
                        continue;
                    }
                }
            }
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            match block_on(&self.rt, body.next()) {
                Some(Ok(mut piece)) => {
                    // Never more than the object's length, whatever the server sends.
                    piece.truncate(usize::try_from(self.len - self.pos).unwrap_or(usize::MAX));
                    self.piece = piece;
                    self.failures = 0;
                }
                Some(Err(e)) => self.failed(e)?,
                // The connection ended before the object did: picked up where it stopped.
                None => self.failed(GetError::Failed(format!(
                    "{}: the GET ended at {} of {} bytes",
                    self.remote.name(),
                    self.pos,
                    self.len
                )))?,
            }
        }
    }
}

/// A URL's object: `https://` (or `http://` when allowed) read with plain GETs, as a
/// presigned link of an object store or a web server serves it.
pub(crate) struct HttpRemote {
    client: reqwest::Client,
    url: String,
    /// The URL without its query (a presigned link's signature stays out of messages).
    name: String,
    e_tag: Option<String>,
}

/// `bytes START-END/TOTAL` of a Content-Range header: `TOTAL`.
fn total_of_content_range(v: &str) -> Option<u64> {
    v.strip_prefix("bytes ")?.split_once('/')?.1.parse().ok()
}

/// What an HTTP status says of a GET of `name`.
fn status_error(name: &str, status: reqwest::StatusCode) -> GetError {
    let m = format!("{name}: the server answered {status}");
    match status.as_u16() {
        412 => GetError::Changed(m),
        408 | 429 | 500..=599 => GetError::Failed(m),
        403 => GetError::Refused(format!("{m} (denied, or a presigned link that expired)")),
        _ => GetError::Refused(m),
    }
}

/// What a failed request of `name` says, with its causes and without its URL (a presigned
/// link's signature stays out of messages). A TLS handshake that failed (a certificate not
/// trusted, for one) is refused at once; anything else may pass, and is retried.
fn request_error(name: &str, e: reqwest::Error) -> GetError {
    let mut causes = String::new();
    let mut tls = false;
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        tls |= is_tls_error(cause);
        causes.push_str(": ");
        causes.push_str(&cause.to_string());
        source = cause.source();
    }
    let m = format!("{name}: {}{causes}", e.without_url());
    if tls {
        GetError::Refused(m)
    } else {
        GetError::Failed(m)
    }
}

/// Whether `e` is rustls's, itself or wrapped in I/O errors (which name no source of their
/// own: their inner error is reached through `get_ref`).
fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = e;
    loop {
        if at.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        match at
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => at = inner,
            None => return false,
        }
    }
}

impl HttpRemote {
    /// Opens `url`: one GET of its first byte gives its length (Content-Range) and version
    /// (ETag). A presigned link allows GET only, so there is no HEAD.
    pub(crate) fn open(rt: &Runtime, url: &str) -> Result<(HttpRemote, u64)> {
        let name = url.split(['?', '#']).next().unwrap_or(url).to_string();
        let err = |m: String| Error::io("open", std::io::Error::other(m));
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| err(format!("{name}: {}", e.without_url())))?;
        let mut remote = HttpRemote {
            client,
            url: url.to_string(),
            name: name.clone(),
            e_tag: None,
        };
        let mut attempt = 0;
        let (len, e_tag) = loop {
            let head = block_on(rt, async {
                let resp = remote
                    .client
                    .get(&remote.url)
                    .header(reqwest::header::RANGE, "bytes=0-0")
                    .send()
                    .await
                    .map_err(|e| request_error(&name, e))?;
                let header = |h| {
                    resp.headers()
                        .get(h)
                        .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                        .map(str::to_string)
                };
                let e_tag = header(reqwest::header::ETAG);
                match resp.status().as_u16() {
                    206 => header(reqwest::header::CONTENT_RANGE)
                        .as_deref()
                        .and_then(total_of_content_range)
                        .map(|len| (len, e_tag))
                        .ok_or_else(|| {
                            GetError::Refused(format!(
                                "{name}: no length in the answer's Content-Range"
                            ))
                        }),
                    // An empty object has no first byte.
                    416 => Ok((0, e_tag)),
                    200 => Err(GetError::Refused(format!(
                        "{name}: the server does not serve byte ranges (it answered the whole \
                         object to a ranged GET)"
                    ))),
                    _ => Err(status_error(&name, resp.status())),
                }
            });
            match head {
                Ok(found) => break found,
                Err(GetError::Failed(_)) if attempt + 1 < RETRIES => {
                    attempt += 1;
                    std::thread::sleep(backoff(attempt));
                }
                Err(e) => return Err(e.into_error()),
            }
        };
        remote.e_tag = e_tag;
        Ok((remote, len))
    }
}

impl Remote for HttpRemote {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, range: Range<u64>) -> BoxFuture<'static, std::result::Result<Body, GetError>> {
        let mut req = self.client.get(&self.url).header(
            reqwest::header::RANGE,
            format!("bytes={}-{}", range.start, range.end.saturating_sub(1)),
        );
        if let Some(tag) = &self.e_tag {
            req = req.header(reqwest::header::IF_MATCH, tag);
        }
        let (name, e_tag) = (self.name.clone(), self.e_tag.clone());
        async move {
            let resp = req.send().await.map_err(|e| request_error(&name, e))?;
            if resp.status().as_u16() != 206 {
                return Err(status_error(&name, resp.status()));
            }
            // A server that ignores If-Match still names the version it serves.
            let served = resp
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok());
            if let (Some(want), Some(got)) = (&e_tag, served)
                && want != got
            {
                return Err(GetError::Changed(format!(
                    "{name}: ETag {got}, opened as {want}"
                )));
            }
            let body: Body = resp
                .bytes_stream()
                .map(move |piece| piece.map_err(|e| request_error(&name, e)))
                .boxed();
            Ok(body)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::atomic::AtomicU32;

    /// An object in memory behind the `Remote` interface: records every GET, breaks the first
    /// `broken` bodies half-way (a lost connection), and can be "replaced".
    struct Fake {
        data: Bytes,
        gets: Mutex<Vec<Range<u64>>>,
        broken: AtomicU32,
        /// Only GETs from this offset break (any, when `None`).
        break_only: Option<u64>,
        replaced: std::sync::atomic::AtomicBool,
    }

    impl Fake {
        fn new(len: usize, broken: u32, break_only: Option<u64>) -> Arc<Fake> {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            Arc::new(Fake {
                data: Bytes::from(data),
                gets: Mutex::new(Vec::new()),
                broken: AtomicU32::new(broken),
                break_only,
                replaced: Default::default(),
            })
        }

        fn gets(&self) -> Vec<Range<u64>> {
            self.gets.lock().unwrap().clone()
        }
    }

    impl Remote for Fake {
        fn name(&self) -> &str {
            "fake"
        }

        fn get(
            &self,
            range: Range<u64>,
        ) -> BoxFuture<'static, std::result::Result<Body, GetError>> {
            self.gets.lock().unwrap().push(range.clone());
            let data = self.data.slice(range.start as usize..range.end as usize);
            let replaced = self.replaced.load(Ordering::Relaxed);
            let broken = self.break_only.is_none_or(|at| at == range.start)
                && self
                    .broken
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
            async move {
                if replaced {
                    return Err(GetError::Changed("fake: replaced".into()));
                }
                let mut pieces: Vec<std::result::Result<Bytes, GetError>> = data
                    .chunks(10_000)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                if broken {
                    pieces.truncate(pieces.len().div_ceil(2));
                    pieces.push(Err(GetError::Failed("fake: connection reset".into())));
                }
                let body: Body = futures_util::stream::iter(pieces).boxed();
                Ok(body)
            }
            .boxed()
        }
    }

    fn rt() -> Arc<Runtime> {
        Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        )
    }

    #[test]
    fn a_stream_is_one_get_picked_up_where_the_connection_broke() {
        let fake = Fake::new(100_000, 2, None);
        let mut stream = RemoteStream::new(rt(), fake.clone(), 100_000);
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        assert!(out == fake.data);
        // One GET, then one from where each broken body stopped.
        let gets = fake.gets();
        assert_eq!(gets.len(), 3, "{gets:?}");
        assert_eq!(gets[0], 0..100_000);
        assert!(
            gets[1].start > 0 && gets[2].start > gets[1].start,
            "{gets:?}"
        );
        assert!(gets.iter().all(|g| g.end == 100_000));
    }

    #[test]
    fn a_stream_of_a_replaced_object_fails_at_once() {
        let fake = Fake::new(50_000, 0, None);
        fake.replaced.store(true, Ordering::Relaxed);
        let mut stream = RemoteStream::new(rt(), fake.clone(), 50_000);
        let e = stream.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("changed"), "{e}");
        assert_eq!(fake.gets().len(), 1, "a change is not retried");
    }

    #[test]
    fn ranged_reads_retry_and_read_ahead_in_the_plans_order() {
        const BS: u64 = 4096;
        let fake = Fake::new(32 * BS as usize, 1, Some(20 * BS));
        let options = ReadOptions {
            block_size: BS,
            cache_blocks: 16,
            read_ahead: 3,
        };
        let storage = RemoteStorage::new(rt(), fake.clone(), 32 * BS, options);
        // The map's order: blocks 20, 3, 11, 7, 29 (a range over 11 and 12 gives both).
        let plan = [20, 3, 11, 7, 29].map(|b: u64| b * BS + 10..b * BS + 20);
        storage.will_read(&plan);
        storage.will_read(std::slice::from_ref(&(11 * BS..13 * BS)));
        let mut buf = vec![0u8; 100];
        // The first GET breaks: retried, and the bytes are right.
        assert_eq!(storage.read_at(&mut buf, 20 * BS).unwrap(), 100);
        assert!(buf[..] == fake.data[20 * BS as usize..20 * BS as usize + 100]);
        // Then the next three blocks of the plan come, not the object's next ones.
        let want = [3 * BS..4 * BS, 11 * BS..12 * BS, 7 * BS..8 * BS];
        let start = std::time::Instant::now();
        while !want.iter().all(|w| fake.gets().contains(w)) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{:?}",
                fake.gets()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !fake.gets().contains(&(21 * BS..22 * BS)),
            "{:?}",
            fake.gets()
        );
        // Reading them sends no GET of its own.
        let before = fake.gets().len();
        for b in [3u64, 11, 7] {
            assert_eq!(storage.read_at(&mut buf, b * BS).unwrap(), 100);
            assert!(buf[..] == fake.data[(b * BS) as usize..(b * BS) as usize + 100]);
        }
        let after: Vec<_> = fake.gets()[before..].to_vec();
        assert!(
            after
                .iter()
                .all(|g| [12 * BS..13 * BS, 29 * BS..30 * BS].contains(g)),
            "{after:?}"
        );
        // Whole and past the end.
        let mut all = vec![0u8; 32 * BS as usize + 5];
        assert_eq!(storage.read_at(&mut all, 0).unwrap(), 32 * BS as usize);
        assert!(all[..32 * BS as usize] == fake.data[..]);
    }

    #[test]
    fn a_run_of_the_plan_is_one_get_within_the_window() {
        const BS: u64 = 4096;
        let fake = Fake::new(64 * BS as usize, 1, Some(2 * BS));
        let options = ReadOptions {
            block_size: BS,
            cache_blocks: 8,
            read_ahead: 3,
        };
        let storage = RemoteStorage::new(rt(), fake.clone(), 64 * BS, options);
        // Block 0, then 2 to 41 but 10 (a gap the run reads through), then 50 and 45 (out of
        // the object's order: block by block).
        let blocks: Vec<u64> = std::iter::once(0)
            .chain((2..42).filter(|b| *b != 10))
            .chain([50, 45])
            .collect();
        let plan: Vec<Range<u64>> = blocks.iter().map(|b| b * BS..b * BS + BS).collect();
        storage.will_read(&plan);
        let mut buf = vec![0u8; BS as usize];
        for b in &blocks {
            assert_eq!(storage.read_at(&mut buf, b * BS).unwrap(), buf.len());
            assert!(
                buf[..] == fake.data[(b * BS) as usize..((b + 1) * BS) as usize],
                "{b}"
            );
        }
        // Block 0's GET, the run's (broken once, picked up where it stopped), then 50 and 45.
        let gets = fake.gets();
        assert_eq!(gets[0], 0..BS, "{gets:?}");
        assert_eq!(gets[1], 2 * BS..42 * BS, "{gets:?}");
        assert!(gets[2].start > 2 * BS && gets[2].end == 42 * BS, "{gets:?}");
        assert_eq!(gets.len(), 5, "{gets:?}");
        assert!(gets[3..].contains(&(50 * BS..51 * BS)) && gets[3..].contains(&(45 * BS..46 * BS)));
        // The run never ran more than the window ahead: nothing was evicted unread and fetched
        // again (the cache holds 8 blocks for 39).
        assert!(
            !gets
                .iter()
                .any(|g| g.end - g.start == BS && g.start >= 2 * BS && g.start < 42 * BS)
        );
    }

    #[test]
    fn backoff_doubles_to_five_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(6), Duration::from_millis(3200));
        assert!(backoff(u32::MAX) <= Duration::from_secs(5));
    }

    #[test]
    fn a_tls_error_is_found_inside_io_errors() {
        let tls = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::General("bad certificate".into()),
        ));
        assert!(is_tls_error(&tls));
        let reset =
            std::io::Error::other(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!is_tls_error(&reset));
    }

    #[test]
    fn content_range_gives_the_length() {
        assert_eq!(total_of_content_range("bytes 0-0/1234"), Some(1234));
        assert_eq!(total_of_content_range("bytes 0-0/*"), None);
        assert_eq!(total_of_content_range("0-0/12"), None);
    }
}
