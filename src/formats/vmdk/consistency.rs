//! The open-time consistency pass of a hosted sparse extent (issue 20). The extent's metadata
//! (header, embedded descriptor, grain directories, grain tables, the markers and footer of the
//! stream layout) must not overlap; every stored grain must lie in the file, outside the
//! metadata, and serve one grain of the disk only, so a small file cannot read as a huge one
//! (amplification) nor expose its metadata as guest data. A compressed grain's length is known
//! only from its marker: it is bounded when read, by the next structure or grain that starts after
//! it ([`Layout::next_start`]). The rules are in formats/vmdk.md, "Consistency".

use byteorder::{ByteOrder, LittleEndian};

use super::header::{
    FLAG_REDUNDANT_GT, GD_AT_END, GRAIN_MARKER_HEAD, GTE_ZEROED, SECTOR, SparseHeader,
};
use super::marker::{Marker, MarkerType};
use crate::block::usize_len;
use crate::error::{Error, Result};
use crate::limits::MAX_VMDK_MAP_GRAINS;
use crate::storage::{Storage, read_exact_at};

/// What a metadata region is, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Header,
    Descriptor,
    Directory,
    RedundantDirectory,
    Table(usize),
    RedundantTable(usize),
    DirectoryMarker,
    TableMarker(usize),
    Footer,
}

impl What {
    fn structure(self) -> &'static str {
        match self {
            What::Header => "vmdk sparse header",
            What::Descriptor => "vmdk descriptor",
            What::Directory | What::RedundantDirectory => "vmdk grain directory",
            What::Table(_) | What::RedundantTable(_) => "vmdk grain table",
            What::DirectoryMarker | What::TableMarker(_) => "vmdk metadata marker",
            What::Footer => "vmdk footer",
        }
    }

    fn describe(self) -> String {
        match self {
            What::Header => "the sparse header".into(),
            What::Descriptor => "the embedded descriptor".into(),
            What::Directory => "the grain directory".into(),
            What::RedundantDirectory => "the redundant grain directory".into(),
            What::Table(i) => format!("grain table {i}"),
            What::RedundantTable(i) => format!("redundant grain table {i}"),
            What::DirectoryMarker => "the grain directory's marker".into(),
            What::TableMarker(i) => format!("grain table {i}'s marker"),
            What::Footer => "the footer and end-of-stream markers".into(),
        }
    }
}

/// A byte range of the file holding metadata.
#[derive(Debug, Clone, Copy)]
struct Region {
    start: u64,
    end: u64,
    what: What,
}

/// Where the structures and stored grains of a compressed extent start, so that a compressed
/// grain read later can be held to end before the next one.
pub(crate) struct Layout {
    /// Sectors where stored grains start, sorted.
    grains: Vec<u32>,
    /// Bytes where metadata regions start, sorted.
    regions: Vec<u64>,
    file_len: u64,
}

impl Layout {
    /// The first byte after `at` where a grain or a structure starts, or the end of the file: a
    /// compressed grain stored at `at` must end there.
    pub fn next_start(&self, at: u64) -> u64 {
        let grain = self
            .grains
            .get(
                self.grains
                    .partition_point(|&s| u64::from(s) * SECTOR <= at),
            )
            .map_or(u64::MAX, |&s| u64::from(s) * SECTOR);
        let region = self
            .regions
            .get(self.regions.partition_point(|&s| s <= at))
            .copied()
            .unwrap_or(u64::MAX);
        grain.min(region).min(self.file_len)
    }
}

/// The extent being checked: its header (the footer's copy in the stream layout), grain
/// directory and where it lies.
pub(crate) struct Extent<'a> {
    pub file: &'a dyn Storage,
    pub file_len: u64,
    pub header: &'a SparseHeader,
    /// The header at offset 0 said [`GD_AT_END`]: metadata follows the grains, behind markers.
    pub gd_at_end: bool,
    pub gd: &'a [u32],
    pub gd_pos: u64,
}

/// Runs the pass over `e`; returns the layout a compressed extent's reads are bounded by
/// (`None` for an extent of plain grains, whose lengths the pass already checked).
pub(crate) fn check(e: &Extent) -> Result<Option<Layout>> {
    let regions = metadata(e)?;
    let (grains, short_last) = stored_grains(e)?;
    check_grains(e, &regions, &grains, short_last)?;
    if !e.header.compressed() {
        return Ok(None);
    }
    Ok(Some(Layout {
        grains,
        regions: regions.iter().map(|r| r.start).collect(),
        file_len: e.file_len,
    }))
}

/// The metadata regions, sorted, after checking that no two overlap.
fn metadata(e: &Extent) -> Result<Vec<Region>> {
    let h = e.header;
    let gd_bytes = e.gd.len() as u64 * 4;
    let gt_bytes = h.gt_bytes();
    let mut regions = vec![
        Region {
            start: 0,
            end: SECTOR,
            what: What::Header,
        },
        Region {
            start: e.gd_pos,
            end: e.gd_pos + gd_bytes,
            what: What::Directory,
        },
    ];
    if h.descriptor_offset != 0 && h.descriptor_size != 0 {
        // Only the descriptor's sectors inside the file count (writers reserve more).
        let start = h.descriptor_offset.saturating_mul(SECTOR);
        let end = h
            .descriptor_offset
            .saturating_add(h.descriptor_size)
            .saturating_mul(SECTOR)
            .min(e.file_len);
        regions.push(Region {
            start,
            end,
            what: What::Descriptor,
        });
    }
    for (i, &entry) in e.gd.iter().enumerate() {
        if entry != 0 {
            let start = u64::from(entry) * SECTOR;
            regions.push(Region {
                start,
                end: start + gt_bytes,
                what: What::Table(i),
            });
        }
    }
    redundant_tables(e, gd_bytes, &mut regions)?;
    if e.gd_at_end {
        // The footer marker, the footer and the end-of-stream marker (read_footer checked them).
        regions.push(Region {
            start: e.file_len - 3 * SECTOR,
            end: e.file_len,
            what: What::Footer,
        });
        if h.has_markers() {
            markers(e, &mut regions)?;
        }
    }
    regions.sort_unstable_by_key(|r| (r.start, r.end));
    for pair in regions.windows(2) {
        if let [a, b] = pair
            && b.start < a.end
        {
            return Err(Error::malformed(
                b.what.structure(),
                b.start,
                format!(
                    "{} overlaps {} (bytes {:#x}..{:#x})",
                    b.what.describe(),
                    a.what.describe(),
                    a.start,
                    a.end
                ),
            ));
        }
    }
    Ok(regions)
}

/// Adds the redundant grain directory and its tables, where the header has them inside the
/// file. ims never reads them, so one outside the file is ignored; inside it, a grain stored
/// over them would still expose metadata.
fn redundant_tables(e: &Extent, gd_bytes: u64, regions: &mut Vec<Region>) -> Result<()> {
    let h = e.header;
    if h.flags & FLAG_REDUNDANT_GT == 0 || h.rgd_offset == 0 || h.rgd_offset == GD_AT_END {
        return Ok(());
    }
    let Some(rgd_pos) = h
        .rgd_offset
        .checked_mul(SECTOR)
        .filter(|p| p.checked_add(gd_bytes).is_some_and(|end| end <= e.file_len))
    else {
        return Ok(());
    };
    regions.push(Region {
        start: rgd_pos,
        end: rgd_pos + gd_bytes,
        what: What::RedundantDirectory,
    });
    let mut raw = vec![0u8; usize_len(gd_bytes)?];
    read_exact_at(e.file, &mut raw, rgd_pos, "vmdk grain directory")?;
    for (i, chunk) in raw.chunks_exact(4).enumerate() {
        let start = u64::from(LittleEndian::read_u32(chunk)) * SECTOR;
        let end = start + h.gt_bytes();
        if start != 0 && end <= e.file_len {
            regions.push(Region {
                start,
                end,
                what: What::RedundantTable(i),
            });
        }
    }
    Ok(())
}

/// In the stream layout, the grain directory and each grain table follow a marker whose size
/// must be theirs: a marker that says otherwise would let a front-to-back reader skip a
/// different amount than a random-access one reads.
fn markers(e: &Extent, regions: &mut Vec<Region>) -> Result<()> {
    let mut expect = |at: u64, kind: MarkerType, sectors: u64, what: What| -> Result<()> {
        let Some(marker_at) = at.checked_sub(SECTOR) else {
            return Err(Error::malformed(
                what.structure(),
                at,
                format!("{} has no room for its marker", what.describe()),
            ));
        };
        let mut sector = [0u8; 16];
        read_exact_at(e.file, &mut sector, marker_at, "vmdk metadata marker")?;
        match Marker::parse(&sector) {
            Some(Marker::Metadata {
                num_sectors,
                kind: k,
            }) if k == kind && num_sectors == sectors => {}
            found => {
                return Err(Error::malformed(
                    "vmdk metadata marker",
                    marker_at,
                    format!(
                        "{} is not a {kind:?} marker of {sectors} sectors (found {found:?})",
                        what.describe()
                    ),
                ));
            }
        }
        regions.push(Region {
            start: marker_at,
            end: at,
            what,
        });
        Ok(())
    };
    expect(
        e.gd_pos,
        MarkerType::GrainDirectory,
        e.header.gd_sectors(),
        What::DirectoryMarker,
    )?;
    let gt_sectors = e.header.gt_sectors();
    for (i, &entry) in e.gd.iter().enumerate() {
        if entry != 0 {
            expect(
                u64::from(entry) * SECTOR,
                MarkerType::GrainTable,
                gt_sectors,
                What::TableMarker(i),
            )?;
        }
    }
    Ok(())
}

/// Calls `f(grain index, GTE's byte offset, entry)` for every entry of every grain table that
/// names a grain of the disk, reading each table once.
fn each_entry(e: &Extent, f: &mut dyn FnMut(u64, u64, u32) -> Result<()>) -> Result<()> {
    let per_gt = u64::from(e.header.num_gtes_per_gt);
    let grains = e.header.grains();
    let mut raw = vec![0u8; usize_len(e.header.gt_bytes())?];
    for (i, &entry) in e.gd.iter().enumerate() {
        if entry == 0 {
            continue;
        }
        let gt_at = u64::from(entry) * SECTOR;
        read_exact_at(e.file, &mut raw, gt_at, "vmdk grain table")?;
        for (slot, gte) in raw.chunks_exact(4).enumerate() {
            let index = i as u64 * per_gt + slot as u64;
            if index >= grains {
                break;
            }
            f(index, gt_at + slot as u64 * 4, LittleEndian::read_u32(gte))?;
        }
    }
    Ok(())
}

/// The bytes of grain `index` the file must hold: the whole grain, or only the part inside
/// the disk for the last one; a compressed grain's marker head (its data is bounded when read).
fn stored_len(h: &SparseHeader, index: u64) -> u64 {
    if h.compressed() {
        return GRAIN_MARKER_HEAD;
    }
    let start = index * h.grain_bytes();
    (h.disk_bytes() - start).min(h.grain_bytes())
}

/// The disk's last grain when it is plain and shorter than a grain: its sector and length.
type ShortGrain = (u32, u64);

/// The sectors of every stored grain, sorted, each checked to lie in the file; and the sector
/// of the disk's last grain when it is plain and shorter than a grain.
fn stored_grains(e: &Extent) -> Result<(Vec<u32>, Option<ShortGrain>)> {
    let h = e.header;
    let mut grains = Vec::new();
    let mut short_last = None;
    each_entry(e, &mut |index, gte_at, entry| {
        if entry == 0 || (entry == GTE_ZEROED && h.zeroed_grain()) {
            return Ok(());
        }
        let len = stored_len(h, index);
        if !h.compressed() && len < h.grain_bytes() {
            short_last = Some((entry, len));
        }
        let at = u64::from(entry) * SECTOR;
        if at + len > e.file_len {
            return Err(Error::malformed(
                "vmdk grain table",
                gte_at,
                format!(
                    "grain {index} at sector {entry} runs past the end of the file of {} bytes",
                    e.file_len
                ),
            ));
        }
        if grains.len() as u64 >= MAX_VMDK_MAP_GRAINS {
            return Err(Error::limit(
                "vmdk grain table",
                gte_at,
                format!(
                    "more than {MAX_VMDK_MAP_GRAINS} stored grains in one extent, the most the \
                     consistency check follows"
                ),
            ));
        }
        grains.push(entry);
        Ok(())
    })?;
    grains.sort_unstable();
    Ok((grains, short_last))
}

/// Refuses a grain stored over metadata or over another grain: names the grain table entry
/// that points there.
fn check_grains(
    e: &Extent,
    regions: &[Region],
    grains: &[u32],
    short_last: Option<ShortGrain>,
) -> Result<()> {
    let h = e.header;
    // Plain grains take a whole grain (the disk's last one only what lies inside the disk);
    // compressed ones at least their marker head.
    let span = |sector: u32| -> u64 {
        match short_last {
            Some((s, len)) if s == sector => len,
            _ if h.compressed() => GRAIN_MARKER_HEAD,
            _ => h.grain_bytes(),
        }
        .min(e.file_len - u64::from(sector) * SECTOR)
    };
    let mut conflict: Option<(u32, String)> = None;
    for pair in grains.windows(2) {
        if let [a, b] = pair
            && u64::from(*b) * SECTOR < u64::from(*a) * SECTOR + span(*a)
        {
            let why = if a == b {
                format!("is stored at sector {b}, as another grain of the disk is")
            } else {
                format!("at sector {b} overlaps the grain stored at sector {a}")
            };
            conflict = Some((*b, why));
            break;
        }
    }
    if conflict.is_none() {
        for &sector in grains {
            let start = u64::from(sector) * SECTOR;
            let end = start + span(sector);
            let i = regions.partition_point(|r| r.start < end);
            if let Some(r) = i.checked_sub(1).and_then(|i| regions.get(i))
                && r.end > start
            {
                conflict = Some((
                    sector,
                    format!("at sector {sector} lies over {}", r.what.describe()),
                ));
                break;
            }
        }
    }
    let Some((sector, why)) = conflict else {
        return Ok(());
    };
    // Name the (last) entry that points there.
    let mut found = None;
    each_entry(e, &mut |index, gte_at, entry| {
        if entry == sector {
            found = Some((index, gte_at));
        }
        Ok(())
    })?;
    let (index, gte_at) = found.unwrap_or((0, e.gd_pos));
    Err(Error::malformed(
        "vmdk grain table",
        gte_at,
        format!("grain {index} {why}"),
    ))
}
