//! The VHDX header: two 4 KiB copies, at 64 KiB and 128 KiB, each checksummed with CRC-32C.
//! The current one is the valid copy with the higher `SequenceNumber`; it says where the log
//! is and which GUIDs identify the file and its data. Little-endian, like all of VHDX.

use byteorder::{ByteOrder, LittleEndian};
use uuid::Uuid;

use super::{checksum, guid, put_guid};
use crate::error::{Error, Result};

/// `Signature`: "head".
pub const SIGNATURE: &[u8; 4] = b"head";
/// Bytes of a header (the rest of its 64 KiB is reserved).
pub const HEADER_SIZE: usize = 4096;
/// Where the two copies are.
pub const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
/// `Version`: 1, the only version.
pub const VERSION: u16 = 1;
/// `LogVersion`: 0, the only log version.
pub const LOG_VERSION: u16 = 0;
/// Where `Checksum` is.
const CHECKSUM_AT: usize = 4;
/// The log's alignment and granularity: 1 MiB.
pub const MIB: u64 = 1 << 20;

/// A header's fields, named as the specification names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `Checksum`: CRC-32C of the 4 KiB with this field zero.
    pub checksum: u32,
    /// `SequenceNumber`: the copy with the higher one is current.
    pub sequence_number: u64,
    /// `FileWriteGuid`: changed on the first write of each open.
    pub file_write_guid: Uuid,
    /// `DataWriteGuid`: changed before the first change of what the disk reads; a child's
    /// `parent_linkage` records its parent's.
    pub data_write_guid: Uuid,
    /// `LogGuid`: nonzero when the log may hold entries to replay.
    pub log_guid: Uuid,
    /// `LogVersion`: 0.
    pub log_version: u16,
    /// `Version`: 1.
    pub version: u16,
    /// `LogLength`: bytes of the log, a multiple of 1 MiB.
    pub log_length: u32,
    /// `LogOffset`: where the log is, a multiple of 1 MiB.
    pub log_offset: u64,
}

impl Header {
    /// Parses and checks the copy at file offset `at` from its 4 KiB: signature, checksum,
    /// version, the log's placement.
    pub fn parse(buf: &[u8], at: u64) -> Result<Header> {
        let bad = |off: u64, problem: String| Error::malformed("vhdx header", at + off, problem);
        let Some(buf) = buf.get(..HEADER_SIZE) else {
            return Err(Error::truncated(
                "vhdx header",
                at,
                HEADER_SIZE as u64,
                buf.len() as u64,
            ));
        };
        if &buf[..4] != SIGNATURE {
            return Err(bad(0, "no \"head\" signature".into()));
        }
        let stored = LittleEndian::read_u32(&buf[CHECKSUM_AT..]);
        let computed = checksum(buf, CHECKSUM_AT);
        if stored != computed {
            return Err(bad(
                4,
                format!("checksum {stored:#010x}, the header's CRC-32C is {computed:#010x}"),
            ));
        }
        let h = Header {
            checksum: stored,
            sequence_number: LittleEndian::read_u64(&buf[8..]),
            file_write_guid: guid(&buf[16..32]),
            data_write_guid: guid(&buf[32..48]),
            log_guid: guid(&buf[48..64]),
            log_version: LittleEndian::read_u16(&buf[64..]),
            version: LittleEndian::read_u16(&buf[66..]),
            log_length: LittleEndian::read_u32(&buf[68..]),
            log_offset: LittleEndian::read_u64(&buf[72..]),
        };
        if h.version != VERSION {
            return Err(Error::unsupported(format!(
                "vhdx header version {} (ims reads version 1)",
                h.version
            )));
        }
        if h.log_version != LOG_VERSION && !h.log_guid.is_nil() {
            return Err(Error::unsupported(format!(
                "vhdx log version {} with a log to replay",
                h.log_version
            )));
        }
        if !h.log_offset.is_multiple_of(MIB) || h.log_offset < MIB {
            return Err(bad(
                72,
                format!(
                    "log offset {:#x} is not a multiple of 1 MiB past the header section",
                    h.log_offset
                ),
            ));
        }
        if !u64::from(h.log_length).is_multiple_of(MIB) {
            return Err(bad(
                68,
                format!("log length {:#x} is not a multiple of 1 MiB", h.log_length),
            ));
        }
        Ok(h)
    }

    /// The header's 4 KiB, checksummed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[..4].copy_from_slice(SIGNATURE);
        LittleEndian::write_u64(&mut b[8..], self.sequence_number);
        put_guid(&mut b[16..32], &self.file_write_guid);
        put_guid(&mut b[32..48], &self.data_write_guid);
        put_guid(&mut b[48..64], &self.log_guid);
        LittleEndian::write_u16(&mut b[64..], self.log_version);
        LittleEndian::write_u16(&mut b[66..], self.version);
        LittleEndian::write_u32(&mut b[68..], self.log_length);
        LittleEndian::write_u64(&mut b[72..], self.log_offset);
        let sum = checksum(&b, CHECKSUM_AT);
        LittleEndian::write_u32(&mut b[CHECKSUM_AT..], sum);
        b
    }
}

/// Picks the current header from the two copies' parse results: the valid one, or of two valid
/// ones the one with the higher sequence number. Two valid copies with the same sequence
/// number must be the same header; otherwise which one a reader believes decides what it reads.
pub fn current(first: Result<Header>, second: Result<Header>) -> Result<(Header, usize)> {
    match (first, second) {
        (Ok(a), Ok(b)) => {
            if a.sequence_number > b.sequence_number {
                Ok((a, 0))
            } else if b.sequence_number > a.sequence_number {
                Ok((b, 1))
            } else if a == b {
                Ok((a, 0))
            } else {
                Err(Error::malformed(
                    "vhdx header",
                    HEADER_OFFSETS[1] + 8,
                    format!(
                        "both headers are valid with sequence number {} but differ: the \
                         image is ambiguous",
                        a.sequence_number
                    ),
                ))
            }
        }
        (Ok(a), Err(_)) => Ok((a, 0)),
        (Err(_), Ok(b)) => Ok((b, 1)),
        // Report the first copy's problem; the second one's is usually the same.
        (Err(e), Err(_)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(sequence_number: u64) -> Header {
        Header {
            checksum: 0,
            sequence_number,
            file_write_guid: Uuid::from_u128(1),
            data_write_guid: Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            log_guid: Uuid::nil(),
            log_version: 0,
            version: 1,
            log_length: 1 << 20,
            log_offset: 1 << 20,
        }
    }

    fn parsed(h: &Header) -> Header {
        Header::parse(&h.to_bytes(), HEADER_OFFSETS[0]).unwrap()
    }

    #[test]
    fn fields_sit_where_the_specification_puts_them() {
        let b = sample(7).to_bytes();
        assert_eq!(&b[..4], b"head");
        assert_eq!(b[8], 7);
        // A GUID's first three fields are little-endian.
        assert_eq!(&b[32..36], &[0x04, 0x03, 0x02, 0x01]);
        assert_eq!(
            &b[40..48],
            &[0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10]
        );
        assert_eq!(&b[66..68], &[1, 0]);
        assert_eq!(&b[68..72], &[0, 0, 0x10, 0]);
        assert_eq!(&b[72..80], &[0, 0, 0x10, 0, 0, 0, 0, 0]);
        let h = parsed(&sample(7));
        assert_eq!(h.checksum, LittleEndian::read_u32(&b[4..]));
        assert_eq!(Header { checksum: 0, ..h }, sample(7));
    }

    #[test]
    fn a_bad_checksum_or_version_or_log_placement_is_refused() {
        let mut b = sample(1).to_bytes();
        b[100] = 1;
        let e = Header::parse(&b, 0x10000).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        assert!(e.to_string().contains("0x10004"), "{e}");
        let v2 = Header {
            version: 2,
            ..sample(1)
        };
        assert_eq!(
            Header::parse(&v2.to_bytes(), 0).unwrap_err().kind(),
            "unsupported"
        );
        let log = Header {
            log_offset: 4096,
            ..sample(1)
        };
        assert!(
            Header::parse(&log.to_bytes(), 0)
                .unwrap_err()
                .to_string()
                .contains("log offset")
        );
        let log = Header {
            log_length: 4096,
            ..sample(1)
        };
        assert!(
            Header::parse(&log.to_bytes(), 0)
                .unwrap_err()
                .to_string()
                .contains("log length")
        );
    }

    #[test]
    fn the_current_header_has_the_higher_sequence_number() {
        let (a, b) = (parsed(&sample(5)), parsed(&sample(6)));
        assert_eq!(current(Ok(a.clone()), Ok(b.clone())).unwrap().1, 1);
        assert_eq!(current(Ok(b.clone()), Ok(a.clone())).unwrap().1, 0);
        let damaged = || Header::parse(&[0u8; 4096], 0);
        assert_eq!(current(damaged(), Ok(a.clone())).unwrap().1, 1);
        assert_eq!(current(Ok(a.clone()), damaged()).unwrap().1, 0);
        assert!(current(damaged(), damaged()).is_err());
        assert_eq!(current(Ok(a.clone()), Ok(a.clone())).unwrap().1, 0);
        let other = parsed(&Header {
            log_guid: Uuid::from_u128(9),
            ..sample(5)
        });
        let e = current(Ok(a), Ok(other)).unwrap_err();
        assert!(e.to_string().contains("ambiguous"), "{e}");
    }
}
