//! Deflate and inflate for the hot paths — QCOW2 clusters and VMDK grains — through zlib-rs,
//! which runs zlib's algorithms faster than C zlib. (ZVHD, whose reference files ims reproduces
//! byte for byte, keeps C zlib through flate2.)
//!
//! Each thread keeps one deflate state and one inflate state and resets them per unit: setting
//! up a state (a window and hash tables of a few hundred KiB) costs as much as compressing a
//! small cluster.

use std::borrow::Cow;
use std::cell::RefCell;
use std::mem::MaybeUninit;

use libz_rs_sys as z;
use zlib_rs::{Inflate, InflateFlush, Status};

use crate::error::{Error, Result};

/// How a deflate stream is made: zlib's level, window (negative: raw deflate without the zlib
/// header and checksum) and memory level, and optionally zlib's search parameters
/// (`deflateTune`) applied over the level's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateParams {
    pub(crate) level: i32,
    pub(crate) window_bits: i32,
    pub(crate) mem_level: i32,
    /// good_length, max_lazy, nice_length, max_chain.
    pub tuning: Option<[i32; 4]>,
}

/// QCOW2 clusters as qemu-img writes them (raw deflate, 4 KiB window, memory level 9) at the
/// effort of C zlib's level 6, which qemu-img uses: zlib-rs's own level 6 searches with a
/// 4-byte hash and is faster, but its output is about 1.4 % larger than qemu-img's, while its
/// level 9 keeps zlib's 3-byte rolling hash; tuned down to level 6's search (lazy matching,
/// chains of 128) it gives qemu-img's size (within 0.1 %) about 1.7 times faster per core.
pub const QCOW2_CLUSTER: DeflateParams = DeflateParams {
    level: 9,
    window_bits: -12,
    mem_level: 9,
    tuning: Some([8, 16, 128, 128]),
};

/// VMDK grains: zlib streams at zlib's default level, as VMware and qemu-img write them. Grain
/// size is not held to another tool's, so zlib-rs's own (faster) level 6 is used.
pub const VMDK_GRAIN: DeflateParams = DeflateParams {
    level: 6,
    window_bits: 15,
    mem_level: 8,
    tuning: None,
};

/// One thread's deflate state, made for one set of parameters.
struct Deflater {
    /// Boxed: zlib's state points back at its stream, which must not move.
    stream: Box<z::z_stream>,
    params: DeflateParams,
}

impl Deflater {
    fn new(params: DeflateParams) -> Result<Deflater> {
        // SAFETY: an all-zero z_stream (no allocator functions, no buffers) is what
        // deflateInit2_ expects to initialise.
        let mut stream: Box<z::z_stream> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `stream` is a valid, boxed z_stream; the version and size are the library's.
        let rc = unsafe {
            z::deflateInit2_(
                &mut *stream,
                params.level,
                z::Z_DEFLATED,
                params.window_bits,
                params.mem_level,
                z::Z_DEFAULT_STRATEGY,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            )
        };
        if rc != z::Z_OK {
            return Err(Error::Internal(format!(
                "deflate parameters {params:?} refused ({rc})"
            )));
        }
        Ok(Deflater { stream, params })
    }

    fn compress(&mut self, input: &[u8]) -> Result<Vec<u8>> {
        let failed = |what: &str, rc: i32| Error::Internal(format!("deflate {what}: {rc}"));
        let avail_in = u32::try_from(input.len())
            .map_err(|_| Error::Internal("deflate input over 4 GiB".into()))?;
        let strm = &mut *self.stream;
        // SAFETY: the stream was initialised by deflateInit2_ and has not moved.
        let rc = unsafe { z::deflateReset(strm) };
        if rc != z::Z_OK {
            return Err(failed("reset", rc));
        }
        if let Some([good, lazy, nice, chain]) = self.params.tuning {
            // SAFETY: as above; reset restores the level's parameters, so tune after it.
            let rc = unsafe { z::deflateTune(strm, good, lazy, nice, chain) };
            if rc != z::Z_OK {
                return Err(failed("tune", rc));
            }
        }
        // SAFETY: as above; deflateBound only reads the stream's parameters.
        let bound = unsafe { z::deflateBound(strm, avail_in.into()) } as usize;
        let mut out: Vec<u8> = Vec::with_capacity(bound);
        let spare: &mut [MaybeUninit<u8>] = out.spare_capacity_mut();
        strm.next_in = input.as_ptr();
        strm.avail_in = avail_in;
        strm.next_out = spare.as_mut_ptr().cast::<u8>();
        strm.avail_out = u32::try_from(spare.len()).unwrap_or(u32::MAX);
        // SAFETY: next_in/avail_in describe `input` and next_out/avail_out the spare capacity
        // of `out`, both alive for the call; with Z_FINISH and a deflateBound-sized output the
        // whole stream is written in this one call.
        let rc = unsafe { z::deflate(strm, z::Z_FINISH) };
        let written = spare.len() - strm.avail_out as usize;
        strm.next_in = std::ptr::null();
        strm.next_out = std::ptr::null_mut();
        if rc != z::Z_STREAM_END {
            return Err(failed("did not finish", rc));
        }
        // SAFETY: deflate initialised exactly `written` bytes of the spare capacity.
        unsafe { out.set_len(written) };
        Ok(out)
    }
}

impl Drop for Deflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by deflateInit2_; this frees its state once.
        unsafe { z::deflateEnd(&mut *self.stream) };
    }
}

thread_local! {
    static DEFLATER: RefCell<Option<Deflater>> = const { RefCell::new(None) };
    static INFLATER_RAW: RefCell<Inflate> = RefCell::new(Inflate::new(false, 15));
    static INFLATER_ZLIB: RefCell<Inflate> = RefCell::new(Inflate::new(true, 15));
}

/// Compresses `input` in one call as `params` say, on this thread's deflate state.
pub fn deflate(input: &[u8], params: DeflateParams) -> Result<Vec<u8>> {
    DEFLATER.with(|cell| {
        let mut slot = cell
            .try_borrow_mut()
            .map_err(|_| Error::Internal("deflate re-entered on one thread".into()))?;
        if slot.as_ref().is_none_or(|d| d.params != params) {
            *slot = None;
            *slot = Some(Deflater::new(params)?);
        }
        match slot.as_mut() {
            Some(d) => d.compress(input),
            None => Err(Error::Internal("no deflate state".into())),
        }
    })
}

/// What inflating a unit into its buffer gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inflated {
    /// The stream ended after this many bytes (at most the buffer's length).
    Ended(usize),
    /// The buffer is full and the input ran out without the stream's end: what qemu accepts
    /// for a QCOW2 cluster; an error for a VMDK grain.
    FullWithoutEnd,
}

/// Why a unit did not inflate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InflateProblem {
    /// Not a valid deflate (or zlib) stream, or one cut short.
    Corrupt(String),
    /// More output than the buffer holds: a unit that inflates past its size.
    TooLong,
}

/// Inflates a raw deflate stream (`zlib_header` false, any window) or a zlib stream into
/// `out`, never writing past it; input after the stream's end is ignored.
pub fn inflate(
    input: &[u8],
    out: &mut [u8],
    zlib_header: bool,
) -> std::result::Result<Inflated, InflateProblem> {
    let cell = if zlib_header {
        &INFLATER_ZLIB
    } else {
        &INFLATER_RAW
    };
    cell.with(|cell| match cell.try_borrow_mut() {
        Ok(mut d) => {
            d.reset(zlib_header);
            inflate_with(&mut d, input, out)
        }
        Err(_) => inflate_with(&mut Inflate::new(zlib_header, 15), input, out),
    })
}

fn inflate_with(
    d: &mut Inflate,
    input: &[u8],
    out: &mut [u8],
) -> std::result::Result<Inflated, InflateProblem> {
    let corrupt = |e: zlib_rs::InflateError| InflateProblem::Corrupt(e.as_str().to_string());
    let status = d
        .decompress(input, out, InflateFlush::Finish)
        .map_err(corrupt)?;
    let produced = usize::try_from(d.total_out()).unwrap_or(usize::MAX);
    if status == Status::StreamEnd {
        return Ok(Inflated::Ended(produced));
    }
    if produced < out.len() {
        return Err(InflateProblem::Corrupt("the stream ends early".into()));
    }
    // The buffer is full: any more output means the unit inflates past its size.
    let used = usize::try_from(d.total_in()).unwrap_or(input.len());
    let mut probe = [0u8; 1];
    let status = d.decompress(
        input.get(used..).unwrap_or_default(),
        &mut probe,
        InflateFlush::Finish,
    );
    if d.total_out() > produced as u64 {
        return Err(InflateProblem::TooLong);
    }
    // Whatever follows a full buffer without more output (even damage) is not read: qemu
    // stops at a full cluster.
    Ok(if status == Ok(Status::StreamEnd) {
        Inflated::Ended(produced)
    } else {
        Inflated::FullWithoutEnd
    })
}

/// Compresses `input` as one zstd frame at `level`, on this thread's compression context:
/// creating a context per unit costs allocations that make the workers queue on the kernel's
/// memory map. The frame is the same as a fresh context's.
pub fn zstd_compress(input: &[u8], level: i32) -> Result<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
    }
    let failed = |e| Error::io("zstd compress", e);
    COMPRESSOR.with(|cell| {
        let mut slot = cell
            .try_borrow_mut()
            .map_err(|_| Error::Internal("zstd re-entered on one thread".into()))?;
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).map_err(failed)?));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress(input).map_err(failed),
            None => Err(Error::Internal("no zstd context".into())),
        }
    })
}

/// `unit` padded with zeros to `len` bytes: the last cluster or grain of a disk may be partial,
/// and readers inflate whole ones.
pub fn padded(unit: &[u8], len: usize) -> Cow<'_, [u8]> {
    if unit.len() >= len {
        Cow::Borrowed(unit)
    } else {
        let mut p = unit.to_vec();
        p.resize(len, 0);
        Cow::Owned(p)
    }
}

#[cfg(test)]
mod tests {
    use flate2::{Compress, Compression, FlushCompress};

    use super::*;

    fn sample() -> Vec<u8> {
        (0..100_000u32).map(|i| (i / 13 % 251) as u8).collect()
    }

    #[test]
    fn qcow2_clusters_inflate_with_a_4k_window_and_vmdk_grains_as_zlib() {
        let input = sample();
        let raw = deflate(&input, QCOW2_CLUSTER).unwrap();
        // qemu inflates clusters with a 4 KiB window: the stream must not reach further back.
        let mut d = flate2::Decompress::new_with_window_bits(false, 12);
        let mut out = Vec::with_capacity(input.len());
        d.decompress_vec(&raw, &mut out, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(out, input);
        let zlib = deflate(&input, VMDK_GRAIN).unwrap();
        assert_eq!(zlib[0], 0x78);
        let mut d = flate2::Decompress::new(true);
        let mut out = Vec::with_capacity(input.len());
        d.decompress_vec(&zlib, &mut out, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(out, input);
        // The state is reused per thread: the same input gives the same bytes again, also
        // after the other parameters were used.
        assert_eq!(deflate(&input, QCOW2_CLUSTER).unwrap(), raw);
        let bad = DeflateParams {
            window_bits: 99,
            ..VMDK_GRAIN
        };
        assert!(deflate(&input, bad).is_err());
        assert_eq!(deflate(&input, VMDK_GRAIN).unwrap(), zlib);
    }

    #[test]
    fn inflate_fills_the_buffer_and_no_further() {
        let input = sample();
        for zlib_header in [false, true] {
            let params = if zlib_header {
                VMDK_GRAIN
            } else {
                QCOW2_CLUSTER
            };
            let packed = deflate(&input, params).unwrap();
            let mut out = vec![0u8; input.len()];
            assert_eq!(
                inflate(&packed, &mut out, zlib_header),
                Ok(Inflated::Ended(input.len()))
            );
            assert_eq!(out, input);
            // Trailing bytes after the stream are ignored.
            let mut padded = packed.clone();
            padded.extend_from_slice(&[0xa5; 300]);
            assert_eq!(
                inflate(&padded, &mut out, zlib_header),
                Ok(Inflated::Ended(input.len()))
            );
            // A larger buffer: the stream ends before it is full.
            let mut big = vec![0u8; input.len() + 10];
            assert_eq!(
                inflate(&packed, &mut big, zlib_header),
                Ok(Inflated::Ended(input.len()))
            );
            // A smaller one: the unit inflates past it.
            let mut small = vec![0u8; input.len() - 1];
            assert_eq!(
                inflate(&packed, &mut small, zlib_header),
                Err(InflateProblem::TooLong)
            );
            // Cut short, or not deflate at all.
            assert!(matches!(
                inflate(&packed[..packed.len() / 2], &mut out, zlib_header),
                Err(InflateProblem::Corrupt(_))
            ));
            assert!(matches!(
                inflate(&[0xff; 64], &mut out, zlib_header),
                Err(InflateProblem::Corrupt(_))
            ));
        }
    }

    #[test]
    fn a_full_buffer_without_the_streams_end_is_reported() {
        let input = sample();
        let mut c = Compress::new(Compression::new(6), false);
        let mut packed = Vec::with_capacity(input.len() * 2);
        c.compress_vec(&input, &mut packed, FlushCompress::Sync)
            .unwrap();
        let mut out = vec![0u8; input.len()];
        assert_eq!(
            inflate(&packed, &mut out, false),
            Ok(Inflated::FullWithoutEnd)
        );
        assert_eq!(out, input);
    }
}
