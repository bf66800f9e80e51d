//! The data record shared by ZVHD and ZVHD2: a 48-byte head (`hwstream bg\0`, payload size,
//! block number), the compressed payload, padding, and `end\0` in the last 4 bytes, rounded up
//! to whole pages. Also the payload decoders both formats use: each decodes into a buffer of
//! exactly one block and fails on anything else.
//!
//! The layout, including how the reference writer's padding comes about, is in
//! `formats/zvhd.md`.

use byteorder::{ByteOrder, LittleEndian};
use flate2::{Decompress, FlushDecompress, Status};

use crate::error::{Error, Result};
use crate::limits::MAX_ZVHD_RECORD_LEN;

use super::{BLOCK_SIZE, PAGE};

/// The first 12 bytes of every record.
pub const RECORD_PREFIX: [u8; 12] = *b"hwstream bg\0";
/// The last 4 bytes of every record.
pub const RECORD_POSTFIX: [u8; 4] = *b"end\0";
/// Bytes before the payload.
pub const RECORD_HEAD_LEN: usize = 48;
/// Where the reference writer's compressor puts its output in the record buffer; the padding
/// of a record of 8192 bytes or more holds a stale copy of the payload from here on.
const STALE_COPY_AT: usize = PAGE as usize;

/// A record's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHead {
    /// Length of the compressed payload.
    pub size: u32,
    /// The block the record holds.
    pub blk: u32,
}

impl RecordHead {
    /// Decodes and checks the head at the start of `bytes`, a record found at file `offset`.
    pub fn decode(bytes: &[u8], offset: u64) -> Result<RecordHead> {
        let Some(head) = bytes.get(..RECORD_HEAD_LEN) else {
            return Err(Error::truncated(
                "zvhd record",
                offset,
                RECORD_HEAD_LEN as u64,
                bytes.len() as u64,
            ));
        };
        if head[..12] != RECORD_PREFIX {
            return Err(Error::malformed(
                "zvhd record",
                offset,
                "does not start with \"hwstream bg\"",
            ));
        }
        let size = LittleEndian::read_u32(&head[12..16]);
        let blk = LittleEndian::read_u32(&head[16..20]);
        if size == 0 {
            return Err(Error::malformed("zvhd record", offset, "payload size is 0"));
        }
        Ok(RecordHead { size, blk })
    }

    /// The record's length: head, payload and postfix rounded up to whole pages, within
    /// [`MAX_ZVHD_RECORD_LEN`].
    pub fn record_len(&self, offset: u64) -> Result<u64> {
        match record_len_for(u64::from(self.size)) {
            Some(len) if len <= MAX_ZVHD_RECORD_LEN => Ok(len),
            _ => Err(Error::limit(
                "zvhd record",
                offset,
                format!(
                    "payload of {} bytes is larger than a record may be ({MAX_ZVHD_RECORD_LEN} bytes)",
                    self.size
                ),
            )),
        }
    }
}

/// The length of a record holding a payload of `size` bytes.
pub fn record_len_for(size: u64) -> Option<u64> {
    size.checked_add(RECORD_HEAD_LEN as u64 + RECORD_POSTFIX.len() as u64)?
        .checked_next_multiple_of(PAGE)
}

/// Checks a whole record read at `offset` (its head already decoded into `head`) and returns
/// its payload: the length must be what the payload size gives and the postfix must be there.
pub fn payload<'a>(record: &'a [u8], head: &RecordHead, offset: u64) -> Result<&'a [u8]> {
    let expected = head.record_len(offset)?;
    if record.len() as u64 != expected {
        return Err(Error::malformed(
            "zvhd record",
            offset,
            format!(
                "record is {} bytes, a payload of {} bytes needs {expected}",
                record.len(),
                head.size
            ),
        ));
    }
    let postfix_at = record.len().saturating_sub(RECORD_POSTFIX.len());
    if record.get(postfix_at..) != Some(&RECORD_POSTFIX[..]) {
        return Err(Error::malformed(
            "zvhd record",
            offset,
            "does not end with \"end\"",
        ));
    }
    let size = usize::try_from(head.size)
        .map_err(|_| Error::limit("zvhd record", offset, "payload too large"))?;
    record
        .get(RECORD_HEAD_LEN..RECORD_HEAD_LEN + size)
        .ok_or_else(|| Error::malformed("zvhd record", offset, "payload runs past the record"))
}

/// Builds the record for block `blk` holding `payload`, padding included exactly as the
/// reference writer leaves it: zero, except that padding bytes at record offsets
/// 4096..4096+size repeat the payload (the writer compresses at offset 4096 of its buffer and
/// moves the output down to 48).
pub fn encode_record(blk: u32, payload: &[u8]) -> Result<Vec<u8>> {
    let size = u32::try_from(payload.len())
        .map_err(|_| Error::InvalidArgument("compressed block over 4 GiB".into()))?;
    let len = record_len_for(payload.len() as u64)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| Error::InvalidArgument("compressed block too large".into()))?;
    let mut record = vec![0u8; len];
    record[..12].copy_from_slice(&RECORD_PREFIX);
    LittleEndian::write_u32(&mut record[12..16], size);
    LittleEndian::write_u32(&mut record[16..20], blk);
    let payload_end = RECORD_HEAD_LEN + payload.len();
    record[RECORD_HEAD_LEN..payload_end].copy_from_slice(payload);
    let postfix_at = len - RECORD_POSTFIX.len();
    let stale_from = payload_end.max(STALE_COPY_AT);
    let stale_to = postfix_at.min(STALE_COPY_AT + payload.len());
    if stale_from < stale_to {
        record[stale_from..stale_to]
            .copy_from_slice(&payload[stale_from - STALE_COPY_AT..stale_to - STALE_COPY_AT]);
    }
    record[postfix_at..].copy_from_slice(&RECORD_POSTFIX);
    Ok(record)
}

/// A buffer for one decoded block, with one spare byte to notice a payload that inflates to
/// more than a block.
pub fn block_buffer() -> Vec<u8> {
    vec![0u8; BLOCK_SIZE as usize + 1]
}

/// Feeds one record's payload to `inflater` with a sync flush and checks that it yields exactly
/// one block into `out` (a [`block_buffer`]), consumes the whole payload and does not end the
/// deflate stream (the reference treats a stream end as an error).
pub fn inflate_block(
    inflater: &mut Decompress,
    payload: &[u8],
    out: &mut [u8],
    offset: u64,
) -> Result<()> {
    let bad = |problem: String| Error::malformed("zvhd record payload", offset, problem);
    let block = BLOCK_SIZE as usize;
    let (mut consumed, mut produced) = (0usize, 0usize);
    loop {
        let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
        let input = payload.get(consumed..).unwrap_or_default();
        let output = out.get_mut(produced..).unwrap_or_default();
        let status = inflater
            .decompress(input, output, FlushDecompress::Sync)
            .map_err(|e| bad(format!("deflate data is corrupt: {e}")))?;
        let took = usize::try_from(inflater.total_in().saturating_sub(in_before)).unwrap_or(0);
        let gave = usize::try_from(inflater.total_out().saturating_sub(out_before)).unwrap_or(0);
        consumed = consumed.saturating_add(took);
        produced = produced.saturating_add(gave);
        if status == Status::StreamEnd {
            return Err(bad(
                "the deflate stream ends here (the reference refuses a finished stream)".into(),
            ));
        }
        // Stop when nothing moves any more, or when the spare byte past the block is used.
        if (took == 0 && gave == 0) || produced >= out.len() {
            break;
        }
    }
    if produced > block {
        return Err(bad(format!("inflates to more than {block} bytes")));
    }
    if produced < block {
        return Err(bad(format!("inflates to {produced} bytes, not {block}")));
    }
    if consumed != payload.len() {
        return Err(bad(format!(
            "{} of its {} bytes are left over after the block",
            payload.len() - consumed.min(payload.len()),
            payload.len()
        )));
    }
    Ok(())
}

/// Decodes one zstd payload into `out` (exactly one block long) and checks that it fills it.
pub fn unzstd_block(payload: &[u8], out: &mut [u8], offset: u64) -> Result<()> {
    let bad = |problem: String| Error::malformed("zvhd2 record payload", offset, problem);
    let block = BLOCK_SIZE as usize;
    let out = out
        .get_mut(..block)
        .ok_or_else(|| Error::Internal("zstd output buffer is short".into()))?;
    let n = zstd::bulk::decompress_to_buffer(payload, out)
        .map_err(|e| bad(format!("zstd data is corrupt or over {block} bytes: {e}")))?;
    if n != block {
        return Err(bad(format!("zstd data decodes to {n} bytes, not {block}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lengths() {
        assert_eq!(record_len_for(1), Some(4096));
        assert_eq!(record_len_for(4044), Some(4096));
        assert_eq!(record_len_for(4045), Some(8192));
        // The largest vector payloads (incompressible blocks).
        assert_eq!(record_len_for(2_097_209), Some(2_101_248));
        assert_eq!(record_len_for(2_097_799), Some(2_101_248));
        assert_eq!(record_len_for(u64::MAX), None);
    }

    #[test]
    fn padding_repeats_the_payload_tail_past_4096() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251 + 1) as u8).collect();
        let r = encode_record(7, &payload).unwrap();
        assert_eq!(r.len(), 8192);
        let head = RecordHead::decode(&r, 0).unwrap();
        assert_eq!(head, RecordHead { size: 5000, blk: 7 });
        assert_eq!(super::payload(&r, &head, 0).unwrap(), &payload[..]);
        // 48 + 5000 = 5048; stale copy of payload[952..4092] at 5048..8188.
        assert_eq!(&r[5048..8188], &payload[952..4092]);
        // A small payload: zero padding.
        let r = encode_record(1, &[9u8; 100]).unwrap();
        assert_eq!(r.len(), 4096);
        assert!(r[148..4092].iter().all(|&b| b == 0));
        assert_eq!(&r[4092..], b"end\0");
    }

    #[test]
    fn damaged_records_are_refused() {
        let r = encode_record(0, &[1u8; 100]).unwrap();
        let mut bad = r.clone();
        bad[0] = b'H';
        assert_eq!(RecordHead::decode(&bad, 0).unwrap_err().kind(), "malformed");
        let mut bad = r.clone();
        bad[12..16].fill(0);
        assert_eq!(RecordHead::decode(&bad, 0).unwrap_err().kind(), "malformed");
        let mut bad = r.clone();
        bad[4093] = b'x';
        let head = RecordHead::decode(&bad, 0).unwrap();
        assert_eq!(payload(&bad, &head, 0).unwrap_err().kind(), "malformed");
        let mut big = r.clone();
        big[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let head = RecordHead::decode(&big, 0).unwrap();
        assert_eq!(head.record_len(0).unwrap_err().kind(), "limit-exceeded");
        assert_eq!(
            payload(&r[..4000], &RecordHead::decode(&r, 0).unwrap(), 0)
                .unwrap_err()
                .kind(),
            "malformed"
        );
    }

    #[test]
    fn inflate_wants_exactly_one_block() {
        use flate2::{Compress, Compression, FlushCompress};
        let compress = |data: &[u8], flush: FlushCompress| {
            let mut c = Compress::new(Compression::new(1), true);
            let mut out = Vec::with_capacity(data.len() + 4096);
            c.compress_vec(data, &mut out, flush).unwrap();
            out
        };
        let block = vec![3u8; BLOCK_SIZE as usize];
        let mut out = block_buffer();
        let good = compress(&block, FlushCompress::Sync);
        inflate_block(&mut Decompress::new(true), &good, &mut out, 0).unwrap();
        assert_eq!(&out[..block.len()], &block[..]);
        let finished = compress(&block, FlushCompress::Finish);
        assert!(inflate_block(&mut Decompress::new(true), &finished, &mut out, 0).is_err());
        let short = compress(&block[1..], FlushCompress::Sync);
        assert!(inflate_block(&mut Decompress::new(true), &short, &mut out, 0).is_err());
        let long = compress(&[block.clone(), vec![1]].concat(), FlushCompress::Sync);
        assert!(inflate_block(&mut Decompress::new(true), &long, &mut out, 0).is_err());
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0, 0, 0xff, 0xff, 0, 0]);
        assert!(inflate_block(&mut Decompress::new(true), &trailing, &mut out, 0).is_err());
        assert!(inflate_block(&mut Decompress::new(true), &[1, 2, 3], &mut out, 0).is_err());
    }

    #[test]
    fn unzstd_wants_exactly_one_block() {
        let block = vec![5u8; BLOCK_SIZE as usize];
        let mut out = block_buffer();
        let good = zstd::bulk::compress(&block, 3).unwrap();
        unzstd_block(&good, &mut out, 0).unwrap();
        assert_eq!(&out[..block.len()], &block[..]);
        let short = zstd::bulk::compress(&block[1..], 3).unwrap();
        assert!(unzstd_block(&short, &mut out, 0).is_err());
        let long = zstd::bulk::compress(&[block.clone(), vec![1]].concat(), 3).unwrap();
        assert!(unzstd_block(&long, &mut out, 0).is_err());
        assert!(unzstd_block(&good[..good.len() - 1], &mut out, 0).is_err());
        assert!(unzstd_block(b"not zstd", &mut out, 0).is_err());
    }
}
