//! The QCOW2 internal snapshot table: entries of a fixed 40-byte part, extra data, an id and a
//! name, each padded to 8 bytes. ims lists snapshots (for `info`) but reads only the active
//! state.

use crate::error::{Error, Result};
use crate::limits::{MAX_SNAPSHOT_EXTRA_DATA, MAX_SNAPSHOT_TABLE_SIZE, MAX_SNAPSHOTS};
use crate::storage::{Storage, read_exact_at};

/// Size of the fixed part of a snapshot table entry.
pub const SNAPSHOT_HEADER_SIZE: u64 = 40;

/// The fixed 40 bytes that open a snapshot table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotEntryHeader {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub id_str_size: u16,
    pub name_size: u16,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u32,
    pub extra_data_size: u32,
}

impl SnapshotEntryHeader {
    pub fn parse(b: &[u8; 40]) -> Self {
        let u64_at = |at: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[at..at + 8]);
            u64::from_be_bytes(v)
        };
        let u32_at = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u16_at = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
        SnapshotEntryHeader {
            l1_table_offset: u64_at(0),
            l1_size: u32_at(8),
            id_str_size: u16_at(12),
            name_size: u16_at(14),
            date_sec: u32_at(16),
            date_nsec: u32_at(20),
            vm_clock_nsec: u64_at(24),
            vm_state_size: u32_at(32),
            extra_data_size: u32_at(36),
        }
    }
}

/// An internal snapshot, as listed by `info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// id_str: the snapshot's unique id.
    pub id: String,
    /// name: the snapshot's name.
    pub name: String,
    /// Size of the saved VM state (the 64-bit extra-data field when present).
    pub vm_state_size: u64,
    /// date_sec: when the snapshot was taken, in seconds since the Unix epoch.
    pub date_sec: u32,
    /// date_nsec: the nanoseconds part of that time.
    pub date_nsec: u32,
    /// vm_clock_nsec: the guest's clock at the snapshot, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Guest instructions executed, when recorded.
    pub icount: Option<u64>,
    /// Virtual disk size when the snapshot was taken, when recorded.
    pub disk_size: Option<u64>,
    /// l1_table_offset: where the snapshot's L1 table starts.
    pub l1_table_offset: u64,
    /// l1_size: entries in the snapshot's L1 table.
    pub l1_size: u32,
}

/// Reads the `nb_snapshots` entries of the snapshot table at `snapshots_offset`, as the header
/// gives them. The two values must already have been checked against the file (see
/// `Qcow2Header::check_layout`); each entry is checked again here as it is read.
pub fn read_snapshot_table(
    storage: &dyn Storage,
    snapshots_offset: u64,
    nb_snapshots: u32,
    file_len: u64,
) -> Result<Vec<Snapshot>> {
    read_snapshot_entries(storage, snapshots_offset, nb_snapshots, file_len)
        .map(|t| t.entries.into_iter().map(|(_, s)| s).collect())
}

/// The snapshot table as it lies in the file: each entry with its offset, and where the table
/// ends (for the consistency checks of the reader).
#[derive(Debug, Default)]
pub(crate) struct SnapshotTable {
    /// (file offset of the entry, the snapshot), in table order.
    pub entries: Vec<(u64, Snapshot)>,
    /// One past the last byte of the last entry (the table's start when it is empty).
    pub end: u64,
}

/// [`read_snapshot_table`], keeping where each entry and the table lie.
pub(crate) fn read_snapshot_entries(
    storage: &dyn Storage,
    snapshots_offset: u64,
    nb_snapshots: u32,
    file_len: u64,
) -> Result<SnapshotTable> {
    const STRUCTURE: &str = "qcow2 snapshot table";
    let count = nb_snapshots;
    if count == 0 {
        return Ok(SnapshotTable {
            entries: Vec::new(),
            end: snapshots_offset,
        });
    }
    if count > MAX_SNAPSHOTS {
        return Err(Error::limit(
            STRUCTURE,
            snapshots_offset,
            format!("{count} snapshots, more than {MAX_SNAPSHOTS}"),
        ));
    }
    let start = snapshots_offset;
    let mut pos = start;
    // The table holds at least 40 bytes per snapshot, all inside the file.
    let min_len = u64::from(count) * SNAPSHOT_HEADER_SIZE;
    if start.checked_add(min_len).is_none_or(|end| end > file_len) {
        return Err(Error::truncated(STRUCTURE, start, min_len, file_len));
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut fixed = [0u8; 40];
        read_exact_at(storage, &mut fixed, pos, STRUCTURE)?;
        let h = SnapshotEntryHeader::parse(&fixed);
        if h.extra_data_size > MAX_SNAPSHOT_EXTRA_DATA {
            return Err(Error::limit(
                STRUCTURE,
                pos,
                format!(
                    "{} bytes of extra data, more than {MAX_SNAPSHOT_EXTRA_DATA}",
                    h.extra_data_size
                ),
            ));
        }
        // All three sizes are small (u32 capped at 1 KiB, two u16), so the sum cannot overflow.
        let extra = u64::from(h.extra_data_size);
        let var_len = extra + u64::from(h.id_str_size) + u64::from(h.name_size);
        let var_start = pos + SNAPSHOT_HEADER_SIZE;
        let entry_len = (SNAPSHOT_HEADER_SIZE + var_len).next_multiple_of(8);
        let entry_end = pos
            .checked_add(entry_len)
            .ok_or_else(|| Error::malformed(STRUCTURE, pos, "entry overflows"))?;
        if entry_end - start > MAX_SNAPSHOT_TABLE_SIZE {
            return Err(Error::limit(
                STRUCTURE,
                start,
                format!("the table is larger than {MAX_SNAPSHOT_TABLE_SIZE} bytes"),
            ));
        }
        if var_start + var_len > file_len {
            return Err(Error::truncated(
                STRUCTURE,
                pos,
                SNAPSHOT_HEADER_SIZE + var_len,
                file_len,
            ));
        }
        // var_len is at most 1 KiB + 128 KiB: a small allocation, and inside the file.
        let mut var = vec![0u8; var_len as usize];
        read_exact_at(storage, &mut var, var_start, STRUCTURE)?;
        let (extra_bytes, rest) = var.split_at(h.extra_data_size as usize);
        let (id, rest) = rest.split_at(usize::from(h.id_str_size));
        let name = rest.get(..usize::from(h.name_size)).unwrap_or_default();
        let extra_u64 = |at: usize| -> Option<u64> {
            let b: [u8; 8] = extra_bytes.get(at..at + 8)?.try_into().ok()?;
            Some(u64::from_be_bytes(b))
        };
        out.push((
            pos,
            Snapshot {
                id: String::from_utf8_lossy(id).into_owned(),
                name: String::from_utf8_lossy(name).into_owned(),
                vm_state_size: extra_u64(0).unwrap_or(u64::from(h.vm_state_size)),
                date_sec: h.date_sec,
                date_nsec: h.date_nsec,
                vm_clock_nsec: h.vm_clock_nsec,
                // All ones means "not recorded".
                icount: extra_u64(16).filter(|&v| v != u64::MAX),
                disk_size: extra_u64(8),
                l1_table_offset: h.l1_table_offset,
                l1_size: h.l1_size,
            },
        ));
        pos = entry_end;
    }
    Ok(SnapshotTable {
        entries: out,
        end: pos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_entry_header() {
        let mut b = [0u8; 40];
        b[..8].copy_from_slice(&0x70000u64.to_be_bytes());
        b[8..12].copy_from_slice(&3u32.to_be_bytes());
        b[12..14].copy_from_slice(&1u16.to_be_bytes());
        b[14..16].copy_from_slice(&5u16.to_be_bytes());
        b[16..20].copy_from_slice(&1_700_000_000u32.to_be_bytes());
        b[20..24].copy_from_slice(&42u32.to_be_bytes());
        b[24..32].copy_from_slice(&9u64.to_be_bytes());
        b[32..36].copy_from_slice(&0u32.to_be_bytes());
        b[36..40].copy_from_slice(&24u32.to_be_bytes());
        let h = SnapshotEntryHeader::parse(&b);
        assert_eq!(h.l1_table_offset, 0x70000);
        assert_eq!(h.l1_size, 3);
        assert_eq!((h.id_str_size, h.name_size), (1, 5));
        assert_eq!(
            (h.date_sec, h.date_nsec, h.vm_clock_nsec),
            (1_700_000_000, 42, 9)
        );
        assert_eq!(h.extra_data_size, 24);
    }
}
