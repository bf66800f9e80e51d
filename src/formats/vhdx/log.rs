//! The log: a ring of entries, each a set of 4 KiB writes to the file's metadata (data
//! descriptors with their data sectors, zero descriptors). A file closed uncleanly has a
//! nonzero `LogGuid` and entries whose writes may not have reached their places; a reader must
//! apply the active sequence of entries first. ims applies them in memory ([`Replayed`]) and
//! never writes the file.
//!
//! An entry: a 64-byte header and 32-byte descriptors in its first sector(s), then one data
//! sector per data descriptor. Every field is checked (signatures, the log GUID, sequence
//! numbers in every descriptor and data sector, the CRC-32C of the whole entry) before the
//! entry counts.

use std::collections::BTreeMap;
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};
use uuid::Uuid;

use super::{checksum, guid};
use crate::error::{Error, Result};
use crate::limits::{MAX_VHDX_LOG_BYTES, MAX_VHDX_LOG_SECTORS, VHDX_LOG_CHECK_BUDGET};
use crate::storage::{Storage, read_exact_at};

/// The log's unit: entries and the sectors they write are 4 KiB.
pub const LOG_SECTOR: u64 = 4096;
/// Entry header `Signature`: "loge".
pub const ENTRY_SIGNATURE: &[u8; 4] = b"loge";
/// Zero descriptor `ZeroSignature`: "zero".
pub const ZERO_SIGNATURE: &[u8; 4] = b"zero";
/// Data descriptor `DataSignature`: "desc".
pub const DESC_SIGNATURE: &[u8; 4] = b"desc";
/// Data sector `DataSignature`: "data".
pub const DATA_SIGNATURE: &[u8; 4] = b"data";
/// Bytes of the entry header.
pub const ENTRY_HEADER_SIZE: usize = 64;
/// Bytes of a descriptor.
pub const DESCRIPTOR_SIZE: usize = 32;

/// A log entry's header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// `EntryLength`: bytes of the entry, a multiple of 4 KiB.
    pub entry_length: u32,
    /// `Tail`: where the oldest entry of the sequence this entry ends is, from the log's start.
    pub tail: u32,
    /// `SequenceNumber`.
    pub sequence_number: u64,
    /// `DescriptorCount`.
    pub descriptor_count: u32,
    /// `LogGuid`: the header's, when the entry was written.
    pub log_guid: Uuid,
    /// `FlushedFileOffset`: the file was at least this long when the entry was written.
    pub flushed_file_offset: u64,
    /// `LastFileOffset`: every structure fits below this offset.
    pub last_file_offset: u64,
}

/// One write an entry describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A zero descriptor: `length` bytes of zeros at `file_offset`.
    Zero {
        /// `FileOffset`.
        file_offset: u64,
        /// `ZeroLength`.
        length: u64,
    },
    /// A data descriptor and its data sector, reassembled: 4 KiB at `file_offset`.
    Data {
        /// `FileOffset`.
        file_offset: u64,
        /// The sector: the descriptor's `LeadingBytes`, the data sector's 4084 bytes, the
        /// descriptor's `TrailingBytes`.
        sector: Box<[u8]>,
    },
}

/// A valid entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its header.
    pub header: EntryHeader,
    /// Its writes, in order.
    pub writes: Vec<Write>,
}

/// Parses and checks the entry at the start of `buf` (the log from the entry on, wrapped so it
/// is contiguous): `None` when it is not a valid entry of the log `log_guid`.
pub fn parse_entry(buf: &[u8], log_guid: &Uuid) -> Option<Entry> {
    let h = buf.get(..ENTRY_HEADER_SIZE)?;
    if &h[..4] != ENTRY_SIGNATURE {
        return None;
    }
    let header = EntryHeader {
        entry_length: LittleEndian::read_u32(&h[8..]),
        tail: LittleEndian::read_u32(&h[12..]),
        sequence_number: LittleEndian::read_u64(&h[16..]),
        descriptor_count: LittleEndian::read_u32(&h[24..]),
        log_guid: guid(&h[32..48]),
        flushed_file_offset: LittleEndian::read_u64(&h[48..]),
        last_file_offset: LittleEndian::read_u64(&h[56..]),
    };
    let length = header.entry_length as usize;
    if &header.log_guid != log_guid
        || header.sequence_number == 0
        || LittleEndian::read_u32(&h[28..]) != 0
        || length == 0
        || !(length as u64).is_multiple_of(LOG_SECTOR)
        || !u64::from(header.tail).is_multiple_of(LOG_SECTOR)
    {
        return None;
    }
    let entry = buf.get(..length)?;
    let descriptors = header.descriptor_count as usize;
    let descriptor_bytes =
        ENTRY_HEADER_SIZE.checked_add(descriptors.checked_mul(DESCRIPTOR_SIZE)?)?;
    let descriptor_sectors = descriptor_bytes.div_ceil(LOG_SECTOR as usize);
    let mut data_sector = descriptor_sectors;
    let mut writes = Vec::new();
    let seq = header.sequence_number;
    for i in 0..descriptors {
        let d = entry
            .get(ENTRY_HEADER_SIZE + i * DESCRIPTOR_SIZE..)?
            .get(..DESCRIPTOR_SIZE)?;
        let file_offset = LittleEndian::read_u64(&d[16..]);
        if LittleEndian::read_u64(&d[24..]) != seq || !file_offset.is_multiple_of(LOG_SECTOR) {
            return None;
        }
        if &d[..4] == ZERO_SIGNATURE {
            let length = LittleEndian::read_u64(&d[8..]);
            if LittleEndian::read_u32(&d[4..]) != 0 || !length.is_multiple_of(LOG_SECTOR) {
                return None;
            }
            writes.push(Write::Zero {
                file_offset,
                length,
            });
        } else if &d[..4] == DESC_SIGNATURE {
            let at = data_sector * LOG_SECTOR as usize;
            let s = entry.get(at..)?.get(..LOG_SECTOR as usize)?;
            data_sector += 1;
            if &s[..4] != DATA_SIGNATURE
                || LittleEndian::read_u32(&s[4..]) != (seq >> 32) as u32
                || LittleEndian::read_u32(&s[4092..]) != seq as u32
            {
                return None;
            }
            let mut sector = vec![0u8; LOG_SECTOR as usize].into_boxed_slice();
            sector[..8].copy_from_slice(&d[8..16]);
            sector[8..4092].copy_from_slice(&s[8..4092]);
            sector[4092..].copy_from_slice(&d[4..8]);
            writes.push(Write::Data {
                file_offset,
                sector,
            });
        } else {
            return None;
        }
    }
    // The descriptor sectors and one data sector per data descriptor make the entry.
    if data_sector * LOG_SECTOR as usize > length {
        return None;
    }
    if LittleEndian::read_u32(&entry[4..]) != checksum(entry, 4) {
        return None;
    }
    Some(Entry { header, writes })
}

/// Entries of a run, each with the log sector it starts at.
type Run = Vec<(usize, Arc<Entry>)>;

/// Finds the active sequence of the log `log` (its bytes) as the specification's procedure
/// does: from every starting point, the longest run of valid entries with consecutive sequence
/// numbers whose last entry's tail lies inside the run; the one ending in the highest sequence
/// number wins. Returns its entries from the tail entry to the head entry. Each position is
/// parsed once; the bytes checksummed are bounded by [`VHDX_LOG_CHECK_BUDGET`].
pub fn active_sequence(log: &[u8], log_guid: &Uuid, log_at: u64) -> Result<Vec<Entry>> {
    let len = log.len();
    let sectors = len / LOG_SECTOR as usize;
    let mut parsed: Vec<Option<Option<Arc<Entry>>>> = vec![None; sectors];
    let mut budget = VHDX_LOG_CHECK_BUDGET;
    // The log wrapped once, so an entry that runs past its end reads contiguously.
    let mut ring = Vec::with_capacity(2 * len);
    ring.extend_from_slice(log);
    ring.extend_from_slice(log);
    let mut entry_at = |sector: usize| -> Result<Option<Arc<Entry>>> {
        if let Some(e) = &parsed[sector] {
            return Ok(e.clone());
        }
        let at = sector * LOG_SECTOR as usize;
        // Only what could be an entry is checksummed, and charged to the budget.
        let claimed = if &ring[at..at + 4] == ENTRY_SIGNATURE {
            u64::from(LittleEndian::read_u32(&ring[at + 8..]))
        } else {
            0
        };
        budget = budget.checked_sub(claimed.min(len as u64)).ok_or_else(|| {
            Error::limit(
                "vhdx log",
                log_at,
                format!(
                    "finding the active sequence would checksum more than \
                     {VHDX_LOG_CHECK_BUDGET} bytes"
                ),
            )
        })?;
        let e = if claimed > 0 && claimed <= len as u64 {
            parse_entry(&ring[at..at + len], log_guid).map(Arc::new)
        } else {
            None
        };
        parsed[sector] = Some(e.clone());
        Ok(e)
    };
    // The best sequence so far: its head's sequence number, its entries with their sectors.
    let mut best: Option<(u64, Run)> = None;
    let mut tail = 0usize;
    loop {
        let mut seq: Run = Vec::new();
        let mut head = tail;
        let mut covered = 0usize;
        while covered < len {
            let Some(e) = entry_at(head)? else { break };
            if let Some((_, last)) = seq.last()
                && e.header.sequence_number != last.header.sequence_number.wrapping_add(1)
            {
                break;
            }
            let step = e.header.entry_length as usize / LOG_SECTOR as usize;
            covered += e.header.entry_length as usize;
            seq.push((head, e));
            head = (head + step) % sectors;
        }
        // Valid when the head entry's tail is the start of one of the run's entries.
        let valid = seq.last().and_then(|(_, last)| {
            let t = last.header.tail as usize / LOG_SECTOR as usize;
            seq.iter().position(|(at, _)| *at == t)
        });
        if let (Some(from), Some((_, last))) = (valid, seq.last()) {
            let number = last.header.sequence_number;
            if best.as_ref().is_none_or(|(n, _)| number > *n) {
                best = Some((number, seq[from..].to_vec()));
            }
        }
        let next = if valid.is_some() {
            head
        } else {
            (tail + 1) % sectors
        };
        if next <= tail {
            break;
        }
        tail = next;
    }
    let Some((_, entries)) = best else {
        return Err(Error::malformed(
            "vhdx log",
            log_at,
            "the header's log GUID is set but the log holds no valid sequence of entries",
        ));
    };
    Ok(entries.into_iter().map(|(_, e)| (*e).clone()).collect())
}

/// The file as it reads after the log's active sequence is applied: the replayed sectors over
/// the file's own bytes, and the file's length grown to what the entries say.
pub struct Replayed {
    inner: Arc<dyn Storage>,
    /// Replayed 4 KiB sectors by file offset: their bytes, or `None` for zeros.
    sectors: BTreeMap<u64, Option<Box<[u8]>>>,
    len: u64,
}

impl Replayed {
    /// Reads the log of `length` bytes at `at` of `inner`, finds its active sequence and
    /// applies it in memory. Returns the replayed file and the number of entries applied.
    pub fn open(
        inner: Arc<dyn Storage>,
        at: u64,
        length: u64,
        log_guid: &Uuid,
    ) -> Result<(Replayed, u64)> {
        if length > MAX_VHDX_LOG_BYTES {
            return Err(Error::limit(
                "vhdx log",
                at,
                format!(
                    "a log of {length} bytes to replay; ims replays up to {MAX_VHDX_LOG_BYTES}"
                ),
            ));
        }
        if length == 0 {
            return Err(Error::malformed(
                "vhdx log",
                at,
                "the header's log GUID is set but the log is empty",
            ));
        }
        let mut log = vec![0u8; length as usize];
        read_exact_at(&*inner, &mut log, at, "vhdx log")?;
        let entries = active_sequence(&log, log_guid, at)?;
        drop(log);
        let file_len = inner.len();
        let head = entries.last().map(|e| &e.header);
        if let Some(h) = head
            && file_len < h.flushed_file_offset
        {
            return Err(Error::truncated(
                "vhdx log",
                at,
                h.flushed_file_offset,
                file_len,
            ));
        }
        let mut len = file_len.max(head.map_or(0, |h| h.last_file_offset));
        let mut sectors: BTreeMap<u64, Option<Box<[u8]>>> = BTreeMap::new();
        let too_many = || {
            Error::limit(
                "vhdx log",
                at,
                format!("the log writes more than {MAX_VHDX_LOG_SECTORS} sectors"),
            )
        };
        for e in &entries {
            for w in &e.writes {
                match w {
                    Write::Data {
                        file_offset,
                        sector,
                    } => {
                        sectors.insert(*file_offset, Some(sector.clone()));
                        len = len.max(file_offset.saturating_add(LOG_SECTOR));
                    }
                    Write::Zero {
                        file_offset,
                        length,
                    } => {
                        let count = length / LOG_SECTOR;
                        if count > MAX_VHDX_LOG_SECTORS {
                            return Err(too_many());
                        }
                        for i in 0..count {
                            let offset = file_offset
                                .checked_add(i * LOG_SECTOR)
                                .ok_or_else(too_many)?;
                            sectors.insert(offset, None);
                        }
                        len = len.max(file_offset.saturating_add(*length));
                    }
                }
                if sectors.len() as u64 > MAX_VHDX_LOG_SECTORS {
                    return Err(too_many());
                }
            }
        }
        let count = entries.len() as u64;
        Ok((
            Replayed {
                inner,
                sectors,
                len,
            },
            count,
        ))
    }
}

impl Storage for Replayed {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len - offset) as usize;
        let buf = &mut buf[..n];
        // The file's own bytes first (zeros past its end), then the replayed sectors over them.
        let got = self.inner.read_at(buf, offset)?;
        buf[got..].fill(0);
        let end = offset + n as u64;
        let first = offset - offset % LOG_SECTOR;
        for (&at, sector) in self.sectors.range(first..end) {
            let from = at.max(offset);
            let to = (at + LOG_SECTOR).min(end);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match sector {
                Some(bytes) => {
                    dst.copy_from_slice(&bytes[(from - at) as usize..(to - at) as usize])
                }
                None => dst.fill(0),
            }
        }
        Ok(n)
    }

    fn allocated(&self) -> Option<u64> {
        self.inner.allocated()
    }
}

/// Builds log entries as the specification lays them out, for tests.
#[cfg(test)]
pub(crate) mod build {
    use super::*;
    use crate::formats::vhdx::put_guid;

    /// An entry of `writes` (zero: `(offset, length, None)`, data: `(offset, 4096, Some)`).
    pub fn entry(
        seq: u64,
        tail: u32,
        guid: &Uuid,
        last_file_offset: u64,
        writes: &[(u64, u64, Option<&[u8]>)],
    ) -> Vec<u8> {
        let desc_sectors = (ENTRY_HEADER_SIZE + writes.len() * DESCRIPTOR_SIZE).div_ceil(4096);
        let data: Vec<_> = writes.iter().filter_map(|w| w.2).collect();
        let length = (desc_sectors + data.len()) * 4096;
        let mut b = vec![0u8; length];
        b[..4].copy_from_slice(ENTRY_SIGNATURE);
        LittleEndian::write_u32(&mut b[8..], length as u32);
        LittleEndian::write_u32(&mut b[12..], tail);
        LittleEndian::write_u64(&mut b[16..], seq);
        LittleEndian::write_u32(&mut b[24..], writes.len() as u32);
        put_guid(&mut b[32..48], guid);
        LittleEndian::write_u64(&mut b[48..], 0);
        LittleEndian::write_u64(&mut b[56..], last_file_offset);
        let mut sector = desc_sectors;
        for (i, (offset, len, bytes)) in writes.iter().enumerate() {
            let d = ENTRY_HEADER_SIZE + i * DESCRIPTOR_SIZE;
            LittleEndian::write_u64(&mut b[d + 16..], *offset);
            LittleEndian::write_u64(&mut b[d + 24..], seq);
            match bytes {
                None => {
                    b[d..d + 4].copy_from_slice(ZERO_SIGNATURE);
                    LittleEndian::write_u64(&mut b[d + 8..], *len);
                }
                Some(s) => {
                    b[d..d + 4].copy_from_slice(DESC_SIGNATURE);
                    b[d + 4..d + 8].copy_from_slice(&s[4092..4096]);
                    b[d + 8..d + 16].copy_from_slice(&s[..8]);
                    let at = sector * 4096;
                    b[at..at + 4].copy_from_slice(DATA_SIGNATURE);
                    LittleEndian::write_u32(&mut b[at + 4..], (seq >> 32) as u32);
                    b[at + 8..at + 4092].copy_from_slice(&s[8..4092]);
                    LittleEndian::write_u32(&mut b[at + 4092..], seq as u32);
                    sector += 1;
                }
            }
        }
        let sum = checksum(&b, 4);
        LittleEndian::write_u32(&mut b[4..], sum);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::build::entry;
    use super::*;
    use crate::storage::MemoryStorage;

    const G: Uuid = Uuid::from_u128(0x1234);

    fn sector(fill: u8) -> Vec<u8> {
        let mut s = vec![fill; 4096];
        s[..8].copy_from_slice(b"LEADING!");
        s[4092..].copy_from_slice(b"TAIL");
        s
    }

    #[test]
    fn an_entry_round_trips_with_its_leading_and_trailing_bytes() {
        let s = sector(7);
        let b = entry(5, 0, &G, 0, &[(8192, 4096, Some(&s)), (0, 8192, None)]);
        assert_eq!(b.len(), 8192);
        assert_eq!(&b[4096..4100], b"data");
        let e = parse_entry(&b, &G).unwrap();
        assert_eq!(e.header.sequence_number, 5);
        assert_eq!(
            e.writes,
            vec![
                Write::Data {
                    file_offset: 8192,
                    sector: s.into_boxed_slice()
                },
                Write::Zero {
                    file_offset: 0,
                    length: 8192
                }
            ]
        );
        // Another log's entry, a damaged byte, a torn data sector: not entries.
        assert!(parse_entry(&b, &Uuid::from_u128(1)).is_none());
        for at in [100, 4096 + 2000] {
            let mut bad = b.clone();
            bad[at] ^= 1;
            assert!(parse_entry(&bad, &G).is_none(), "{at}");
        }
        let mut torn = b.clone();
        LittleEndian::write_u32(&mut torn[4096 + 4092..], 6);
        assert!(parse_entry(&torn, &G).is_none());
    }

    /// A log of `entries` placed one after the other from offset 0, in a log of `size` bytes.
    fn log(entries: &[Vec<u8>], size: usize) -> Vec<u8> {
        let mut l: Vec<u8> = entries.concat();
        l.resize(size, 0);
        l
    }

    #[test]
    fn the_active_sequence_is_the_newest_complete_one() {
        let s = sector(1);
        let e1 = entry(10, 0, &G, 0, &[(0, 4096, None)]);
        let e2 = entry(11, 0, &G, 0, &[(4096, 4096, Some(&s))]);
        let seq = active_sequence(&log(&[e1.clone(), e2.clone()], 1 << 20), &G, 0).unwrap();
        assert_eq!(
            seq.iter()
                .map(|e| e.header.sequence_number)
                .collect::<Vec<_>>(),
            [10, 11]
        );
        // The head's tail says where the sequence starts: entry 11 alone.
        let e2_self = entry(11, 4096, &G, 0, &[(4096, 4096, Some(&s))]);
        let seq = active_sequence(&log(&[e1.clone(), e2_self], 1 << 20), &G, 0).unwrap();
        assert_eq!(seq.len(), 1);
        // A damaged second entry: the first stands alone.
        let mut bad = e2.clone();
        bad[3000] ^= 1;
        let seq = active_sequence(&log(&[e1.clone(), bad], 1 << 20), &G, 0).unwrap();
        assert_eq!(seq.len(), 1);
        // A gap in the sequence numbers ends the run; the later entry's tail is outside it.
        let e3 = entry(13, 0, &G, 0, &[(0, 4096, None)]);
        let seq = active_sequence(&log(&[e1.clone(), e3], 1 << 20), &G, 0).unwrap();
        assert_eq!(seq.len(), 1);
        // No valid entry at all.
        let e = active_sequence(&vec![0u8; 1 << 20], &G, 0x100000).unwrap_err();
        assert!(e.to_string().contains("no valid sequence"), "{e}");
        // An entry that runs past the log's end wraps to its start.
        let big = entry(20, (1 << 20) - 4096, &G, 0, &[(0, 4096, Some(&s))]);
        let mut l = vec![0u8; 1 << 20];
        l[(1 << 20) - 4096..].copy_from_slice(&big[..4096]);
        l[..4096].copy_from_slice(&big[4096..]);
        let seq = active_sequence(&l, &G, 0).unwrap();
        assert_eq!(seq[0].header.sequence_number, 20);
    }

    #[test]
    fn a_log_of_entries_claiming_the_whole_log_stays_within_its_budget() {
        // Every sector a header claiming the whole log: each would be checksummed in full.
        let size = 16 << 20;
        let one = entry(1, 0, &G, 0, &[]);
        let mut l = vec![0u8; size];
        for at in (0..size).step_by(4096) {
            l[at..at + 64].copy_from_slice(&one[..64]);
            LittleEndian::write_u32(&mut l[at + 8..], size as u32);
        }
        let e = active_sequence(&l, &G, 0).unwrap_err();
        assert_eq!(e.kind(), "limit-exceeded");
    }

    #[test]
    fn replayed_sectors_read_over_the_file() {
        let s = sector(9);
        let mut file = vec![0x55u8; 3 << 20];
        let e1 = entry(1, 0, &G, 4 << 20, &[(8192, 8192, None)]);
        let e2 = entry(2, 0, &G, 4 << 20, &[(12288, 4096, Some(&s))]);
        let l = log(&[e1, e2], 1 << 20);
        file[1 << 20..2 << 20].copy_from_slice(&l);
        let (r, n) =
            Replayed::open(Arc::new(MemoryStorage::new(file)), 1 << 20, 1 << 20, &G).unwrap();
        assert_eq!(n, 2);
        assert_eq!(r.len(), 4 << 20);
        let mut buf = vec![0u8; 20000];
        assert_eq!(r.read_at(&mut buf, 4000).unwrap(), 20000);
        assert!(buf[..4192].iter().all(|&b| b == 0x55));
        assert!(buf[4192..8288].iter().all(|&b| b == 0));
        assert_eq!(&buf[8288..8288 + 4096], &s[..]);
        assert!(buf[12384..].iter().all(|&b| b == 0x55));
        // Past the file's own end, up to LastFileOffset: zeros.
        let mut tail = vec![1u8; 4096];
        r.read_at(&mut tail, (4 << 20) - 4096).unwrap();
        assert!(tail.iter().all(|&b| b == 0));
    }
}
