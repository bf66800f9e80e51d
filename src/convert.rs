//! The conversion pipeline: one planner, N workers, one ordered writer.
//!
//! The planner walks the source's map (zero ranges are never read) or its chunk stream and cuts
//! the disk into jobs aligned to the writer's unit. Workers read a job's data (random-access
//! sources), find the zero units and run the writer's encoder (compression) on the rest. The
//! writer, on the calling thread, takes the results strictly in order, so the output is the same
//! whatever the number of workers. At most `queue_depth` jobs exist at once: memory is bounded
//! by the queue, not by the disk.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};

pub use crate::block::Source;
use crate::block::{
    BlockReader, BlockWriter, Chunk, ChunkStream, ExtentState, Piece, UnitAligner, UnitEncoder,
    check_map, is_zero, usize_len,
};
use crate::cancel::CancelToken;
use crate::error::{Error, Result};

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// Largest read, in bytes (rounded up to a whole number of the writer's units).
    pub piece_size: usize,
    /// Jobs in flight at once; 0 means four per worker.
    pub queue_depth: usize,
    /// Stops the conversion when cancelled: the planner checks it between jobs, the workers
    /// before each unit they encode and the writer before each piece, so every thread stops
    /// within a unit's work and [`run`] returns [`Error::Cancelled`]. Never cancelled by
    /// default.
    pub cancel: CancelToken,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            threads: 0,
            piece_size: 2 << 20,
            queue_depth: 0,
            cancel: CancelToken::default(),
        }
    }
}

impl PipelineOptions {
    fn workers(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// How far the conversion has got, in bytes of the virtual disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the virtual disk written so far.
    pub done: u64,
    /// The virtual disk's size.
    pub total: u64,
}

/// What a worker is given.
enum JobInput {
    Zero,
    Read,
    Have(Bytes),
}

struct Job {
    index: u64,
    offset: u64,
    length: u64,
    input: JobInput,
}

type JobResult = (u64, Result<Vec<Piece>>);

/// Copies the whole of `source` into `writer` and finishes it. On an error or a cancel
/// ([`PipelineOptions::cancel`]: [`Error::Cancelled`]) every thread is stopped and `writer` is
/// dropped unfinished before this returns, which removes the output of a writer made by
/// Converts `image` into `writer` (made by [`create`](crate::create())) through the parallel pipeline.
pub fn convert(
    image: crate::open::Image,
    writer: Box<dyn BlockWriter>,
    options: &PipelineOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    if image.format() == crate::formats::Format::Iso {
        // qemu-img would read the ISO as a raw disk; an installation medium converted to a
        // disk format is almost always a mistake, so the caller says so by naming raw.
        return Err(Error::unsupported(format!(
            "converting an iso image ({}): an ISO 9660 image is an installation medium, not a \
             virtual disk; register it with `ims register FILE --type iso`, or name its format \
             raw (-f raw) to convert its bytes as a raw disk",
            image.path().display()
        )));
    }
    run(image.into_source(), writer, options, progress)
}

/// [`create`](fn@crate::create) for a file.
pub fn run(
    source: Source,
    writer: Box<dyn BlockWriter>,
    options: &PipelineOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let size = source.virtual_size();
    if writer.virtual_size() != size {
        return Err(Error::InvalidArgument(format!(
            "writer is for {} bytes, the source has {size}",
            writer.virtual_size()
        )));
    }
    let unit = writer.unit_size().max(1);
    let piece = (options.piece_size.max(1) as u64).div_ceil(unit) * unit;
    let workers = options.workers();
    let depth = if options.queue_depth > 0 {
        options.queue_depth
    } else {
        workers * 4
    };
    let encoder = writer.encoder();
    let reader = match &source {
        Source::Random(r) => Some(r.clone()),
        Source::Stream(_) => None,
    };

    let (tokens_tx, tokens_rx) = bounded::<()>(depth);
    for _ in 0..depth {
        let _ = tokens_tx.send(());
    }
    let (jobs_tx, jobs_rx) = bounded::<Job>(depth);
    let (results_tx, results_rx) = bounded::<JobResult>(depth);
    let abort = AtomicBool::new(false);
    // Every job in flight may hold one read buffer; the writer gives them back.
    let pool = Arc::new(BufferPool::new(depth + workers));
    let planner_error: Mutex<Option<Error>> = Mutex::new(None);
    let cancel = &options.cancel;

    let result = std::thread::scope(|scope| {
        let abort = &abort;
        let planner_error = &planner_error;
        scope.spawn(move || {
            let mut planner = Planner {
                jobs: jobs_tx,
                tokens: tokens_rx,
                abort,
                cancel,
                next_index: 0,
                pos: 0,
                stopped: false,
            };
            // Stopping because the writer or a worker failed is not the planner's error: theirs
            // is the one to report.
            if let Err(e) = planner.plan(source, unit, piece)
                && !planner.stopped
            {
                if let Ok(mut slot) = planner_error.lock() {
                    *slot = Some(e);
                }
                abort.store(true, Ordering::Relaxed);
            }
        });
        for _ in 0..workers {
            let jobs = jobs_rx.clone();
            let results = results_tx.clone();
            let context = WorkerContext {
                reader: reader.clone(),
                encoder: encoder.clone(),
                unit,
                pool: pool.clone(),
            };
            scope.spawn(move || worker(jobs, results, context, abort, cancel));
        }
        drop(jobs_rx);
        drop(results_tx);
        let written = write_in_order(writer, results_rx, tokens_tx, size, progress, cancel);
        if written.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        let planned = planner_error.lock().ok().and_then(|mut e| e.take());
        match (written, planned) {
            // The planner's error explains why the writer saw the stream end early.
            (Err(_), Some(e)) | (Ok(()), Some(e)) => Err(e),
            (result, None) => result,
        }
    });
    // Whatever stopped first (a worker's unit, the planner, the writer), a cancel is the cause.
    match result {
        Err(_) if cancel.is_cancelled() => Err(Error::Cancelled),
        result => result,
    }
}

/// Cuts the source into jobs, in order.
struct Planner<'a> {
    jobs: Sender<Job>,
    tokens: Receiver<()>,
    abort: &'a AtomicBool,
    cancel: &'a CancelToken,
    next_index: u64,
    /// Everything before `pos` has been handed out.
    pos: u64,
    /// The rest of the pipeline stopped taking jobs.
    stopped: bool,
}

impl Planner<'_> {
    fn plan(&mut self, source: Source, unit: u64, piece: u64) -> Result<()> {
        match source {
            Source::Random(reader) => self.plan_random(&*reader, unit, piece),
            Source::Stream(stream) => {
                let mut aligned = UnitAligner::new(stream, unit, piece);
                while let Some(chunk) = aligned.next_chunk()? {
                    let Chunk {
                        offset,
                        length,
                        data,
                    } = chunk;
                    let input = match data {
                        Some(d) => JobInput::Have(d),
                        None => JobInput::Zero,
                    };
                    self.send(offset, length, input)?;
                }
                Ok(())
            }
        }
    }

    /// Walks the map a window at a time; data extents are widened to whole units and read in
    /// pieces aligned to multiples of `piece`.
    fn plan_random(&mut self, reader: &dyn BlockReader, unit: u64, piece: u64) -> Result<()> {
        const WINDOW: u64 = 1 << 30;
        let size = reader.virtual_size();
        let mut pending: Option<(u64, u64)> = None;
        let mut window_start = 0;
        while window_start < size {
            // A sparse disk's map may be walked for long before a job is sent.
            self.cancel.check()?;
            let len = WINDOW.min(size - window_start);
            let extents = reader.map(window_start, len)?;
            check_map(&extents, window_start, len)?;
            for e in extents.iter().filter(|e| e.state == ExtentState::Data) {
                let start = e.start / unit * unit;
                let end = e.end().div_ceil(unit).saturating_mul(unit).min(size);
                pending = match pending {
                    Some((a, b)) if start <= b => Some((a, b.max(end))),
                    Some((a, b)) => {
                        self.emit_data(a, b, piece)?;
                        Some((start.max(b), end))
                    }
                    None => Some((start.max(self.pos), end)),
                };
            }
            window_start += len;
        }
        if let Some((a, b)) = pending {
            self.emit_data(a, b, piece)?;
        }
        if self.pos < size {
            self.send(self.pos, size - self.pos, JobInput::Zero)?;
        }
        Ok(())
    }

    /// Hands out the zeros before `start`, then `[start, end)` as read jobs.
    fn emit_data(&mut self, start: u64, end: u64, piece: u64) -> Result<()> {
        if start > self.pos {
            self.send(self.pos, start - self.pos, JobInput::Zero)?;
        }
        let mut pos = start;
        while pos < end {
            let next = ((pos / piece + 1) * piece).min(end);
            self.send(pos, next - pos, JobInput::Read)?;
            pos = next;
        }
        Ok(())
    }

    fn send(&mut self, offset: u64, length: u64, input: JobInput) -> Result<()> {
        if self.abort.load(Ordering::Relaxed)
            || self.cancel.is_cancelled()
            || self.tokens.recv().is_err()
        {
            return Err(self.stop());
        }
        let job = Job {
            index: self.next_index,
            offset,
            length,
            input,
        };
        self.next_index += 1;
        self.pos = offset + length;
        self.jobs.send(job).map_err(|_| self.stop())
    }

    fn stop(&mut self) -> Error {
        self.stopped = true;
        Error::Internal("conversion stopped".into())
    }
}

/// What a worker needs besides its channels.
struct WorkerContext {
    reader: Option<Arc<dyn BlockReader>>,
    encoder: Option<Arc<dyn UnitEncoder>>,
    unit: u64,
    pool: Arc<BufferPool>,
}

fn worker(
    jobs: Receiver<Job>,
    results: Sender<JobResult>,
    context: WorkerContext,
    abort: &AtomicBool,
    cancel: &CancelToken,
) {
    for job in jobs {
        if abort.load(Ordering::Relaxed) {
            return;
        }
        let index = job.index;
        // A job taken is always answered, cancelled or not: the writer may be waiting for it.
        let result = match cancel.check() {
            Ok(()) => process(job, &context, cancel),
            Err(e) => Err(e),
        };
        if results.send((index, result)).is_err() {
            return;
        }
    }
}

/// Reads a job's data if needed, then cuts it into zero runs, data runs and encoded units.
fn process(job: Job, context: &WorkerContext, cancel: &CancelToken) -> Result<Vec<Piece>> {
    let data = match job.input {
        JobInput::Zero => {
            return Ok(vec![Piece::Zero {
                offset: job.offset,
                length: job.length,
            }]);
        }
        JobInput::Have(d) => d,
        JobInput::Read => {
            let reader = context
                .reader
                .as_deref()
                .ok_or_else(|| Error::Internal("read job without a reader".into()))?;
            let mut buf = context.pool.take(usize_len(job.length)?);
            reader.read_at(buf.as_mut(), job.offset)?;
            Bytes::from_owner(buf)
        }
    };
    split_units(
        job.offset,
        data,
        context.encoder.as_deref(),
        context.unit,
        cancel,
    )
}

/// Read buffers, reused: a fresh allocation for every piece would cost page faults and zeroing
/// on every read. A buffer comes back when the last piece slicing it is written.
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl BufferPool {
    fn new(keep: usize) -> Self {
        BufferPool {
            free: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// A buffer of `len` bytes (its content is whatever the last user left: the reader
    /// overwrites all of it).
    fn take(self: &Arc<Self>, len: usize) -> PooledBuffer {
        let mut buf = self
            .free
            .lock()
            .ok()
            .and_then(|mut f| f.pop())
            .unwrap_or_default();
        buf.resize(len, 0);
        PooledBuffer {
            buf,
            pool: self.clone(),
        }
    }
}

/// A buffer that returns to its pool when dropped.
struct PooledBuffer {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Ok(mut free) = self.pool.free.lock()
            && free.len() < self.pool.keep
        {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Splits data starting at `offset` into pieces at unit boundaries: zero units become zero runs,
/// other units are encoded when there is an encoder, and neighbours of the same kind are joined.
/// Fails with [`Error::Cancelled`] before any unit once `cancel` is cancelled.
pub fn split_units(
    offset: u64,
    data: Bytes,
    encoder: Option<&dyn UnitEncoder>,
    unit: u64,
    cancel: &CancelToken,
) -> Result<Vec<Piece>> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        cancel.check()?;
        let abs = offset + pos as u64;
        let unit_end = usize_len((abs / unit + 1) * unit - offset)?.min(data.len());
        let bytes = &data[pos..unit_end];
        let piece = if is_zero(bytes) {
            Piece::Zero {
                offset: abs,
                length: bytes.len() as u64,
            }
        } else if let Some(payload) = match encoder {
            Some(e) => e.encode(abs, bytes)?,
            None => None,
        } {
            Piece::Encoded {
                offset: abs,
                length: bytes.len() as u64,
                payload,
            }
        } else {
            Piece::Data {
                offset: abs,
                data: data.slice(pos..unit_end),
            }
        };
        match (pieces.last_mut(), piece) {
            (Some(Piece::Zero { length, .. }), Piece::Zero { length: more, .. }) => *length += more,
            (
                Some(Piece::Data {
                    offset: start,
                    data: run,
                }),
                Piece::Data { data: more, .. },
            ) => {
                let from = usize_len(*start - offset)?;
                *run = data.slice(from..from + run.len() + more.len());
            }
            (_, piece) => pieces.push(piece),
        }
        pos = unit_end;
    }
    Ok(pieces)
}

/// Takes results in job order, hands their pieces to the writer and returns a token per job.
fn write_in_order(
    mut writer: Box<dyn BlockWriter>,
    results: Receiver<JobResult>,
    tokens: Sender<()>,
    size: u64,
    progress: &mut dyn FnMut(Progress),
    cancel: &CancelToken,
) -> Result<()> {
    let mut waiting: BTreeMap<u64, Vec<Piece>> = BTreeMap::new();
    let mut next = 0u64;
    let mut done = 0u64;
    progress(Progress { done, total: size });
    for (index, result) in results {
        waiting.insert(index, result?);
        while let Some(pieces) = waiting.remove(&next) {
            for piece in pieces {
                cancel.check()?;
                done = piece.offset() + piece.length();
                writer.write_piece(piece)?;
            }
            next += 1;
            let _ = tokens.send(());
            progress(Progress { done, total: size });
        }
        // The progress callback may have cancelled: stop before waiting for the next result.
        cancel.check()?;
    }
    cancel.check()?;
    if done != size || !waiting.is_empty() {
        return Err(Error::Internal(format!(
            "conversion stopped at {done} of {size} bytes"
        )));
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::ReaderChunks;
    use crate::block::{Extent, check_range, push_extent};
    use proptest::prelude::*;

    /// A disk in memory whose map follows its bytes per 4 KiB block: zero blocks are `Zero`.
    struct Mem(Vec<u8>);
    impl BlockReader for Mem {
        fn virtual_size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            check_range(offset, buf.len() as u64, self.virtual_size())?;
            buf.copy_from_slice(&self.0[offset as usize..][..buf.len()]);
            Ok(())
        }
        fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
            let mut out = Vec::new();
            let end = (offset + len).min(self.virtual_size());
            let mut pos = offset;
            while pos < end {
                let next = ((pos / 4096 + 1) * 4096).min(end);
                let state = if is_zero(&self.0[pos as usize..next as usize]) {
                    ExtentState::Zero
                } else {
                    ExtentState::Data
                };
                push_extent(&mut out, Extent::new(pos, next - pos, state));
                pos = next;
            }
            Ok(out)
        }
    }

    /// Records every piece; encodes a unit as its first byte and length.
    struct Recorder {
        size: u64,
        unit: u64,
        encode: bool,
        log: Arc<Mutex<Vec<Piece>>>,
    }
    struct FirstByte;
    impl UnitEncoder for FirstByte {
        fn encode(&self, _offset: u64, unit: &[u8]) -> Result<Option<Vec<u8>>> {
            Ok((unit[0] != 0x55).then(|| vec![unit[0], unit.len() as u8]))
        }
    }
    impl BlockWriter for Recorder {
        fn virtual_size(&self) -> u64 {
            self.size
        }
        fn unit_size(&self) -> u64 {
            self.unit
        }
        fn encoder(&self) -> Option<Arc<dyn UnitEncoder>> {
            self.encode
                .then(|| Arc::new(FirstByte) as Arc<dyn UnitEncoder>)
        }
        fn write_piece(&mut self, piece: Piece) -> Result<()> {
            self.log.lock().unwrap().push(piece);
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<()> {
            Ok(())
        }
    }

    fn disk(blocks: &[u8], block: usize, tail: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &b) in blocks.iter().enumerate() {
            let fill = match b {
                0 => 0u8,
                1 => 0x55,
                _ => i as u8 | 1,
            };
            out.extend(std::iter::repeat_n(fill, block));
        }
        out.truncate(out.len().saturating_sub(tail).max(1));
        out
    }

    fn convert(
        data: &[u8],
        unit: u64,
        encode: bool,
        threads: usize,
        piece: usize,
        stream: bool,
    ) -> Vec<Piece> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = Box::new(Recorder {
            size: data.len() as u64,
            unit,
            encode,
            log: log.clone(),
        });
        let reader: Arc<dyn BlockReader> = Arc::new(Mem(data.to_vec()));
        let source = if stream {
            Source::Stream(Box::new(ReaderChunks::new(reader, 3000)))
        } else {
            Source::Random(reader)
        };
        let options = PipelineOptions {
            threads,
            piece_size: piece,
            queue_depth: 3,
            ..Default::default()
        };
        let mut last = 0;
        run(source, writer, &options, &mut |p| {
            assert!(p.done >= last);
            last = p.done;
        })
        .unwrap();
        assert_eq!(last, data.len() as u64);
        Arc::try_unwrap(log).unwrap().into_inner().unwrap()
    }

    fn rebuild(pieces: &[Piece], size: usize) -> Vec<u8> {
        let mut out = vec![0u8; size];
        let mut pos = 0;
        for p in pieces {
            assert_eq!(p.offset(), pos);
            match p {
                Piece::Data { offset, data } => {
                    out[*offset as usize..][..data.len()].copy_from_slice(data)
                }
                Piece::Zero { .. } => {}
                Piece::Encoded {
                    offset,
                    length,
                    payload,
                } => {
                    assert_eq!(payload[1], *length as u8);
                    out[*offset as usize..][..*length as usize].fill(payload[0]);
                }
            }
            pos += p.length();
        }
        assert_eq!(pos, size as u64);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn output_is_the_source_whatever_the_threads(blocks in prop::collection::vec(0u8..3, 1..40),
                                                     tail in 0usize..4096, unit_k in 0u32..4,
                                                     piece in 1usize..40000, encode: bool, stream: bool) {
            let data = disk(&blocks, 4096, tail);
            let unit = 512u64 << unit_k;
            let one = convert(&data, unit, encode, 1, piece, stream);
            prop_assert_eq!(rebuild(&one, data.len()), data.clone());
            for p in &one {
                if let Piece::Encoded { offset, length, .. } = p {
                    prop_assert!(offset % unit == 0);
                    prop_assert!(*length == unit || offset + length == data.len() as u64);
                }
                if let Piece::Zero { offset, .. } = p {
                    prop_assert!(offset % unit == 0);
                }
            }
            let three = convert(&data, unit, encode, 3, piece, stream);
            prop_assert_eq!(one, three);
        }
    }

    /// An encoder that takes `delay` per unit, as a slow compressor does.
    struct Slow(std::time::Duration);
    impl UnitEncoder for Slow {
        fn encode(&self, _offset: u64, unit: &[u8]) -> Result<Option<Vec<u8>>> {
            std::thread::sleep(self.0);
            Ok(Some(unit[..1].to_vec()))
        }
    }
    struct SlowWriter {
        size: u64,
        written: Arc<Mutex<u64>>,
    }
    impl BlockWriter for SlowWriter {
        fn virtual_size(&self) -> u64 {
            self.size
        }
        fn unit_size(&self) -> u64 {
            64 << 10
        }
        fn encoder(&self) -> Option<Arc<dyn UnitEncoder>> {
            Some(Arc::new(Slow(std::time::Duration::from_millis(5))))
        }
        fn write_piece(&mut self, piece: Piece) -> Result<()> {
            *self.written.lock().unwrap() = piece.offset() + piece.length();
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<()> {
            Ok(())
        }
    }

    /// Cancels from another thread after `after` and returns the error and how long `run`
    /// took to return after the cancel.
    fn cancel_after(
        after: std::time::Duration,
        threads: usize,
        stream: bool,
    ) -> (Error, std::time::Duration, u64) {
        let size = 64u64 << 20;
        let written = Arc::new(Mutex::new(0));
        let writer = Box::new(SlowWriter {
            size,
            written: written.clone(),
        });
        let reader: Arc<dyn BlockReader> = Arc::new(Mem(vec![1u8; size as usize]));
        let source = if stream {
            Source::Stream(Box::new(ReaderChunks::new(reader, 1 << 20)))
        } else {
            Source::Random(reader)
        };
        let options = PipelineOptions {
            threads,
            ..Default::default()
        };
        let cancel = options.cancel.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(after);
            cancel.cancel();
            tx.send(std::time::Instant::now()).unwrap();
        });
        let e = run(source, writer, &options, &mut |_| {}).unwrap_err();
        let returned = std::time::Instant::now();
        canceller.join().unwrap();
        let at = rx.recv().unwrap();
        let done = *written.lock().unwrap();
        (e, returned - at, done)
    }

    #[test]
    fn a_cancel_from_another_thread_stops_every_thread_within_a_unit() {
        // A 2 MiB job is 32 units of 5 ms: a check per job would take up to 160 ms, a check
        // per unit 5 ms (plus scheduling on a loaded machine); the promise is 100 ms.
        for (threads, stream) in [(1, false), (3, false), (2, true)] {
            let (e, latency, done) =
                cancel_after(std::time::Duration::from_millis(30), threads, stream);
            assert!(matches!(e, Error::Cancelled), "{e}");
            assert!(done < 64 << 20);
            assert!(
                latency < std::time::Duration::from_millis(100),
                "{threads} threads, stream {stream}: returned {latency:?} after the cancel"
            );
        }
    }

    #[test]
    fn a_cancel_from_the_progress_callback_stops_before_the_next_piece() {
        let size = 16u64 << 20;
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = Box::new(Recorder {
            size,
            unit: 4096,
            encode: false,
            log: log.clone(),
        });
        let options = PipelineOptions::default();
        let cancel = options.cancel.clone();
        let mut calls = 0;
        let e = run(
            Source::Random(Arc::new(Mem(vec![3u8; size as usize]))),
            writer,
            &options,
            &mut |p| {
                calls += 1;
                if p.done > 0 {
                    cancel.cancel();
                }
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::Cancelled), "{e}");
        // The start, then the first job: nothing after it is written.
        assert_eq!(calls, 2);
        let written: u64 = log.lock().unwrap().iter().map(|p| p.length()).sum();
        assert_eq!(written, 2 << 20);
    }

    #[test]
    fn a_failing_reader_stops_the_pipeline() {
        struct Broken;
        impl BlockReader for Broken {
            fn virtual_size(&self) -> u64 {
                64 << 20
            }
            fn read_at(&self, _: &mut [u8], offset: u64) -> Result<()> {
                Err(Error::malformed("test", offset, "broken"))
            }
            fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
                Ok(vec![Extent::new(offset, len, ExtentState::Data)])
            }
        }
        let writer = Box::new(Recorder {
            size: 64 << 20,
            unit: 4096,
            encode: false,
            log: Default::default(),
        });
        let e = run(
            Source::Random(Arc::new(Broken)),
            writer,
            &PipelineOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(e.kind(), "malformed");
    }
}
