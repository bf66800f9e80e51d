//! `ims check` for QCOW2: rebuilds every cluster's reference count from the metadata (header,
//! L1 and L2 tables, refcount table and blocks, snapshot tables) and compares it with the
//! refcounts the image stores, as `qemu-img check` does.
//!
//! A stored refcount smaller than the references, a reference past the end of the file, a
//! misaligned table or a COPIED flag that disagrees with the refcount is a corruption; a
//! cluster with a refcount and no reference is a leak. Nothing is repaired.

use serde::Serialize;

use super::header::Qcow2Header;
use super::tables::{
    CompressedDescriptor, Geometry, L1Entry, L2Entry, OFLAG_COMPRESSED, decode_table, get_refcount,
    refcount_block_offset,
};
use crate::error::{Error, Result};
use crate::limits::MAX_CHECK_CLUSTERS;
use crate::storage::{Storage, read_be_u64_table, read_exact_at};

/// What a check found, with qemu-img check's JSON keys (zero counts left out, as qemu-img does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// One past the last cluster with a refcount: where the file could end.
    #[serde(rename = "image-end-offset")]
    pub image_end_offset: u64,
    /// Clusters the virtual disk spans.
    #[serde(rename = "total-clusters")]
    pub total_clusters: u64,
    /// Problems that kept part of the image from being checked (qemu-img's count).
    #[serde(rename = "check-errors")]
    pub check_errors: u64,
    /// Clusters of the virtual disk that are allocated.
    #[serde(rename = "allocated-clusters", skip_serializing_if = "is_zero")]
    pub allocated_clusters: u64,
    /// Allocated clusters that do not follow the previous one in the file.
    #[serde(rename = "fragmented-clusters", skip_serializing_if = "is_zero")]
    pub fragmented_clusters: u64,
    /// Allocated clusters stored compressed.
    #[serde(rename = "compressed-clusters", skip_serializing_if = "is_zero")]
    pub compressed_clusters: u64,
    /// Metadata errors: a refcount that differs from the references to its cluster, a
    /// misaligned table, a reference outside the file.
    #[serde(skip_serializing_if = "is_zero")]
    pub corruptions: u64,
    /// Clusters with a refcount that nothing uses.
    #[serde(skip_serializing_if = "is_zero")]
    pub leaks: u64,
    /// One line per problem, as qemu-img prints them.
    #[serde(skip)]
    pub messages: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Reference counting over the clusters of the file.
struct Tally {
    cluster_bits: u32,
    file_len: u64,
    clusters: u64,
    references: Vec<u16>,
    report: CheckReport,
}

impl Tally {
    fn corruption(&mut self, message: String) {
        self.report.corruptions += 1;
        self.report.messages.push(format!("ERROR {message}"));
    }

    /// Counts one reference to every cluster `[offset, offset + len)` touches.
    fn reference(&mut self, offset: u64, len: u64, what: &str) {
        if len == 0 {
            return;
        }
        let first = offset >> self.cluster_bits;
        let last = offset.saturating_add(len - 1) >> self.cluster_bits;
        for c in first..=last {
            match usize::try_from(c)
                .ok()
                .and_then(|i| self.references.get_mut(i))
            {
                Some(r) => *r = r.saturating_add(1),
                None => {
                    self.corruption(format!(
                        "{what} at offset {offset:#x} is past the end of the file"
                    ));
                    return;
                }
            }
        }
    }
}

/// Checks the QCOW2 image in `file`.
pub fn check(storage: &dyn Storage) -> Result<CheckReport> {
    let file_len = storage.len();
    let header = Qcow2Header::read(storage)?;
    header.check_layout(file_len)?;
    let h = &header.header;
    let geometry = h.geometry()?;
    let cs = geometry.cluster_size();
    let clusters = file_len.div_ceil(cs);
    if clusters > MAX_CHECK_CLUSTERS {
        return Err(Error::limit(
            "qcow2 image",
            0,
            format!("{clusters} clusters are more than a check follows ({MAX_CHECK_CLUSTERS})"),
        ));
    }
    if header.extensions.bitmaps.is_some() {
        return Err(Error::unsupported(
            "checking qcow2 images with persistent dirty bitmaps",
        ));
    }
    let mut t = Tally {
        cluster_bits: geometry.cluster_bits(),
        file_len,
        clusters,
        references: vec![0; clusters as usize],
        report: CheckReport {
            total_clusters: h.size.div_ceil(cs),
            ..Default::default()
        },
    };
    let stored = read_refcounts(storage, &header, &geometry, file_len, &mut t)?;

    // The header cluster, the active L1 table and what it points to.
    t.reference(0, cs, "header");
    if let Some(enc) = header.extensions.encryption_header {
        t.reference(enc.offset, enc.length, "encryption header");
    }
    let l1 = read_be_u64_table(
        storage,
        h.l1_table_offset,
        u64::from(h.l1_size),
        "qcow2 L1 table",
    )?;
    t.reference(h.l1_table_offset, u64::from(h.l1_size) * 8, "L1 table");
    walk_l1(storage, &l1, &geometry, h.version, &mut t, Some(&stored))?;

    // Internal snapshots: their table, their L1 tables and the clusters those reach.
    if h.nb_snapshots > 0 {
        let (table_len, snapshot_l1s) =
            read_snapshot_l1s(storage, h.snapshots_offset, h.nb_snapshots, file_len)?;
        t.reference(h.snapshots_offset, table_len, "snapshot table");
        for (offset, size) in snapshot_l1s {
            if !offset.is_multiple_of(cs) {
                t.corruption(format!(
                    "snapshot L1 table at {offset:#x} is not cluster-aligned"
                ));
                continue;
            }
            t.reference(offset, u64::from(size) * 8, "snapshot L1 table");
            let l1 =
                read_be_u64_table(storage, offset, u64::from(size), "qcow2 snapshot L1 table")?;
            walk_l1(storage, &l1, &geometry, h.version, &mut t, None)?;
        }
    }

    // Compare what the metadata references with what the refcounts say.
    let mut highest = 0;
    for c in 0..t.clusters {
        let i = c as usize;
        let (refs, count) = (u64::from(t.references[i]), stored[i]);
        if count > 0 {
            highest = c + 1;
        }
        if refs == count {
            continue;
        }
        if refs == 0 {
            t.report.leaks += 1;
            t.report
                .messages
                .push(format!("Leaked cluster {c} refcount={count} reference=0"));
        } else {
            t.corruption(format!("cluster {c} refcount={count} reference={refs}"));
        }
    }
    t.report.image_end_offset = highest * cs;
    Ok(t.report)
}

/// The refcount of every cluster of the file, as the refcount blocks store it; the refcount
/// table and blocks are counted as references on the way.
fn read_refcounts(
    storage: &dyn Storage,
    header: &Qcow2Header,
    geometry: &Geometry,
    file_len: u64,
    t: &mut Tally,
) -> Result<Vec<u64>> {
    let h = &header.header;
    let cs = geometry.cluster_size();
    let table_entries = (u64::from(h.refcount_table_clusters) << h.cluster_bits) / 8;
    let table = read_be_u64_table(
        storage,
        h.refcount_table_offset,
        table_entries,
        "qcow2 refcount table",
    )?;
    t.reference(
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters) << h.cluster_bits,
        "refcount table",
    );
    let per_block = geometry.refcount_block_entries();
    let mut stored = vec![0u64; t.clusters as usize];
    let mut block = vec![0u8; cs as usize];
    for (i, &entry) in table.iter().enumerate() {
        let offset = refcount_block_offset(entry);
        if offset == 0 {
            continue;
        }
        if !offset.is_multiple_of(cs) {
            t.corruption(format!(
                "refcount block {i} at {offset:#x} is not cluster-aligned"
            ));
            continue;
        }
        if offset.checked_add(cs).is_none_or(|end| end > file_len) {
            t.corruption(format!(
                "refcount block {i} at {offset:#x} is past the end of the file"
            ));
            continue;
        }
        t.reference(offset, cs, "refcount block");
        read_exact_at(storage, &mut block, offset, "qcow2 refcount block")?;
        let first = i as u64 * per_block;
        for j in 0..per_block {
            let c = first + j;
            if c >= t.clusters {
                break;
            }
            stored[c as usize] = get_refcount(&block, j, geometry.refcount_order()).unwrap_or(0);
        }
    }
    Ok(stored)
}

/// Counts the references of an L1 table's L2 tables and their clusters. For the active table
/// (`stored` given), COPIED flags are checked against the stored refcounts.
fn walk_l1(
    storage: &dyn Storage,
    l1: &[u64],
    geometry: &Geometry,
    version: u32,
    t: &mut Tally,
    stored: Option<&[u64]>,
) -> Result<()> {
    let cs = geometry.cluster_size();
    let entry_size = geometry.l2_entry_size();
    let mut l2 = vec![0u8; cs as usize];
    let refcount = |offset: u64| {
        stored
            .and_then(|s| s.get(usize::try_from(offset / cs).ok()?))
            .copied()
    };
    for (i, &raw) in l1.iter().enumerate() {
        let entry = L1Entry(raw);
        let l2_offset = entry.l2_offset();
        if l2_offset == 0 {
            continue;
        }
        if !l2_offset.is_multiple_of(cs) {
            t.corruption(format!(
                "L2 table {i} at {l2_offset:#x} is not cluster-aligned"
            ));
            continue;
        }
        t.reference(l2_offset, cs, "L2 table");
        if l2_offset.checked_add(cs).is_none_or(|end| end > t.file_len) {
            continue;
        }
        if let Some(count) = refcount(l2_offset)
            && entry.copied() != (count == 1)
        {
            t.corruption(format!(
                "OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={raw:x} refcount={count}"
            ));
        }
        read_exact_at(storage, &mut l2, l2_offset, "qcow2 L2 table")?;
        // Contiguity is counted within one L2 table, as qemu-img counts it.
        let mut next_contiguous = 0u64;
        for chunk in l2.chunks_exact(entry_size as usize) {
            let words = decode_table(chunk);
            let e = L2Entry {
                descriptor: words.first().copied().unwrap_or(0),
                bitmap: words.get(1).copied().unwrap_or(0),
            };
            if e.is_compressed() {
                let d =
                    CompressedDescriptor::decode(e.descriptor & (OFLAG_COMPRESSED - 1), geometry);
                t.reference(d.host_offset & !511, d.sectors * 512, "compressed cluster");
                t.report.allocated_clusters += 1;
                t.report.compressed_clusters += 1;
                // Adjacent compressed clusters share sectors: fragmented by nature, as qemu counts.
                t.report.fragmented_clusters += 1;
                continue;
            }
            let host = e.host_offset();
            if host == 0 {
                continue;
            }
            if !host.is_multiple_of(cs) {
                t.corruption(format!("data cluster at {host:#x} is not cluster-aligned"));
                continue;
            }
            if version < 3 && e.zero_flag() {
                t.corruption(format!(
                    "zero flag in a version 2 image (l2 entry {:x})",
                    e.descriptor
                ));
            }
            t.reference(host, cs, "data cluster");
            t.report.allocated_clusters += 1;
            if next_contiguous != 0 && host != next_contiguous {
                t.report.fragmented_clusters += 1;
            }
            next_contiguous = host + cs;
            if let Some(count) = refcount(host)
                && e.copied() != (count == 1)
            {
                t.corruption(format!(
                    "OFLAG_COPIED data cluster: l2_entry={:x} refcount={count}",
                    e.descriptor
                ));
            }
        }
    }
    Ok(())
}

/// Walks the snapshot table: its length in bytes and each snapshot's L1 table (offset, size).
fn read_snapshot_l1s(
    storage: &dyn Storage,
    offset: u64,
    count: u32,
    file_len: u64,
) -> Result<(u64, Vec<(u64, u32)>)> {
    const S: &str = "qcow2 snapshot table";
    let mut pos = offset;
    let mut out = Vec::new();
    for _ in 0..count {
        let mut head = [0u8; 40];
        read_exact_at(storage, &mut head, pos, S)?;
        let l1_offset = u64::from_be_bytes(head[0..8].try_into().unwrap_or_default());
        let l1_size = u32::from_be_bytes(head[8..12].try_into().unwrap_or_default());
        let id_len = u64::from(u16::from_be_bytes([head[12], head[13]]));
        let name_len = u64::from(u16::from_be_bytes([head[14], head[15]]));
        let extra = u64::from(u32::from_be_bytes(
            head[36..40].try_into().unwrap_or_default(),
        ));
        let next = pos
            .checked_add(40 + extra + id_len + name_len)
            .map(|p| p.next_multiple_of(8))
            .filter(|&p| p <= file_len)
            .ok_or_else(|| {
                Error::malformed(S, pos, "snapshot entry runs past the end of the file")
            })?;
        out.push((l1_offset, l1_size));
        pos = next;
    }
    Ok((pos - offset, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(clusters: u64) -> Tally {
        Tally {
            cluster_bits: 16,
            file_len: clusters * 65536,
            clusters,
            references: vec![0; clusters as usize],
            report: CheckReport::default(),
        }
    }

    #[test]
    fn references_count_every_touched_cluster() {
        let mut t = tally(4);
        t.reference(65536 - 512, 1024, "compressed cluster");
        assert_eq!(t.references, vec![1, 1, 0, 0]);
        t.reference(3 * 65536, 65536, "data cluster");
        assert_eq!(t.references[3], 1);
        assert_eq!(t.report.corruptions, 0);
        t.reference(4 * 65536, 1, "data cluster");
        assert_eq!(t.report.corruptions, 1);
        assert!(t.report.messages[0].contains("past the end"));
    }

    #[test]
    fn report_serialises_with_qemu_keys() {
        let r = CheckReport {
            leaks: 2,
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["leaks"], 2);
        assert!(v.get("corruptions").is_none());
        assert!(v.get("image-end-offset").is_some());
    }
}
