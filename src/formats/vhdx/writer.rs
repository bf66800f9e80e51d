//! Writes dynamic VHDX (to a file: the header section, log, BAT and metadata first, blocks as
//! they come, the BAT last) and fixed VHDX (to any append-only sink: every block is allocated
//! in order, so the whole BAT is known before the first byte of data).
//!
//! Layout, as qemu-img and Hyper-V lay files out: the 1 MiB header section; the log at 1 MiB
//! (`log_size`, empty); the BAT; the metadata region (1 MiB); the payload blocks.

use uuid::Uuid;

use super::bat::{BatEntry, BatGeometry, PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_NOT_PRESENT};
use super::header::{HEADER_OFFSETS, Header, LOG_VERSION, MIB, VERSION};
use super::identifier::FileIdentifier;
use super::metadata::{MAX_BLOCK_SIZE, MAX_DISK_SIZE, MIN_BLOCK_SIZE, Metadata};
use super::region::{RegionEntry, RegionTable, TABLE_OFFSETS};
use super::{BAT_REGION, METADATA_REGION};
use crate::block::{BlockWriter, Piece, advance};
use crate::error::{Error, Result};
use crate::io::{AppendSink, FileSink};

/// The sector size ims writes (qemu-img's; Hyper-V's logical one).
const SECTOR: u32 = 512;
/// The metadata region's size.
const METADATA_LENGTH: u64 = MIB;

/// What `-o` chose for a new VHDX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxCreateOptions {
    /// `subformat=fixed`: every block allocated, in order (LeaveBlockAllocated).
    pub fixed: bool,
    /// `block_size`: bytes per payload block; `None` picks by disk size, as qemu-img does.
    pub block_size: Option<u32>,
    /// `log_size`: bytes of the (empty) log, a multiple of 1 MiB.
    pub log_size: u32,
}

impl Default for VhdxCreateOptions {
    fn default() -> Self {
        VhdxCreateOptions {
            fixed: false,
            block_size: None,
            log_size: MIB as u32,
        }
    }
}

impl VhdxCreateOptions {
    /// Reads qemu-img's `subformat`, `block_size` and `log_size` (sizes in bytes, or with a
    /// `k`, `M` or `G` suffix; `block_size=0` is the default).
    pub fn parse(options: &[(String, String)], compress: bool) -> Result<Self> {
        if compress {
            return Err(Error::InvalidArgument(
                "vhdx images cannot be compressed".into(),
            ));
        }
        let mut o = VhdxCreateOptions::default();
        for (key, value) in options {
            match (key.as_str(), value.as_str()) {
                ("subformat", "fixed") => o.fixed = true,
                ("subformat", "dynamic") => o.fixed = false,
                ("block_size", v) => {
                    let n = size_value(key, v)?;
                    o.block_size = (n != 0).then_some(n);
                }
                ("log_size", v) => o.log_size = size_value(key, v)?,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "vhdx option '{key}={value}' is not supported (ims writes: \
                         subformat=dynamic|fixed, block_size=, log_size=)"
                    )));
                }
            }
        }
        if let Some(b) = o.block_size
            && (!b.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&b))
        {
            return Err(Error::InvalidArgument(format!(
                "vhdx block_size {b} is not a power of two from 1 MiB to 256 MiB"
            )));
        }
        if o.log_size == 0 || !u64::from(o.log_size).is_multiple_of(MIB) {
            return Err(Error::InvalidArgument(format!(
                "vhdx log_size {} is not a positive multiple of 1 MiB",
                o.log_size
            )));
        }
        Ok(o)
    }

    /// The block size for a disk of `size` bytes: the one asked for, or qemu-img's choice.
    fn block_size_for(&self, size: u64) -> u32 {
        self.block_size.unwrap_or(if size > 32 << 40 {
            64 << 20
        } else if size > 100 << 30 {
            32 << 20
        } else if size > 1 << 30 {
            16 << 20
        } else {
            8 << 20
        })
    }
}

/// A byte count with an optional binary suffix, as qemu-img reads `-o` sizes.
fn size_value(key: &str, v: &str) -> Result<u32> {
    let (digits, shift) = match v.as_bytes().last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 10),
        Some(b'M' | b'm') => (&v[..v.len() - 1], 20),
        Some(b'G' | b'g') => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_shl(shift).filter(|m| m >> shift == n))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| Error::InvalidArgument(format!("vhdx {key} '{v}' is not a size")))
}

/// Where everything goes in a new file, and its structures.
struct Layout {
    geometry: BatGeometry,
    bat_at: u64,
    bat_length: u64,
    metadata_at: u64,
    /// Where the first payload block goes.
    data_at: u64,
    /// The header section (identifier, headers, region tables), 1 MiB.
    header_section: Vec<u8>,
    metadata: Vec<u8>,
}

impl Layout {
    fn new(source_size: u64, options: &VhdxCreateOptions) -> Result<Layout> {
        let size = source_size.next_multiple_of(u64::from(SECTOR));
        if size > MAX_DISK_SIZE {
            return Err(Error::InvalidArgument(format!(
                "a VHDX holds at most 64 TiB; the disk has {size} bytes"
            )));
        }
        let block_size = options.block_size_for(size);
        let geometry = BatGeometry::new(size, block_size, SECTOR, false);
        let log_at = MIB;
        let bat_at = log_at + u64::from(options.log_size);
        let bat_length = (geometry.entries * 8).next_multiple_of(MIB).max(MIB);
        let metadata_at = bat_at + bat_length;
        let data_at = metadata_at + METADATA_LENGTH;
        let region = |guid, file_offset, length: u64| RegionEntry {
            guid,
            file_offset,
            length: length as u32,
            required: true,
        };
        let regions = RegionTable::new(
            region(BAT_REGION, bat_at, bat_length),
            region(METADATA_REGION, metadata_at, METADATA_LENGTH),
        );
        let header = |sequence_number| Header {
            checksum: 0,
            sequence_number,
            file_write_guid: Uuid::new_v4(),
            data_write_guid: Uuid::new_v4(),
            log_guid: Uuid::nil(),
            log_version: LOG_VERSION,
            version: VERSION,
            log_length: options.log_size,
            log_offset: log_at,
        };
        let first = header(1);
        // The second copy is current; both describe the same file.
        let second = Header {
            sequence_number: 2,
            ..first.clone()
        };
        let mut section = vec![0u8; MIB as usize];
        let id = FileIdentifier {
            creator: format!("ims {}", env!("CARGO_PKG_VERSION")),
        }
        .to_bytes();
        section[..id.len()].copy_from_slice(&id);
        for (at, h) in HEADER_OFFSETS.iter().zip([first, second]) {
            let b = h.to_bytes();
            section[*at as usize..*at as usize + b.len()].copy_from_slice(&b);
        }
        let table = regions.to_bytes();
        for at in TABLE_OFFSETS {
            section[at as usize..at as usize + table.len()].copy_from_slice(&table);
        }
        let metadata = Metadata {
            entries: Vec::new(),
            block_size,
            leave_block_allocated: options.fixed,
            has_parent: false,
            virtual_disk_size: size,
            virtual_disk_id: Uuid::new_v4(),
            logical_sector_size: SECTOR,
            physical_sector_size: SECTOR,
            parent_locator: None,
        }
        .region_bytes(METADATA_LENGTH as usize);
        Ok(Layout {
            geometry,
            bat_at,
            bat_length,
            metadata_at,
            data_at,
            header_section: section,
            metadata,
        })
    }

    /// The BAT's bytes (its whole region) for payload entries `payload`, in block order.
    fn bat_bytes(&self, payload: &[BatEntry]) -> Vec<u8> {
        let mut b = vec![0u8; self.bat_length as usize];
        for (block, e) in payload.iter().enumerate() {
            let i = self.geometry.payload_index(block as u64) as usize;
            b[i * 8..i * 8 + 8].copy_from_slice(&e.to_raw().to_le_bytes());
        }
        b
    }

    /// Bytes of file all payload blocks take.
    fn blocks_length(&self) -> u64 {
        self.geometry.data_blocks * self.geometry.block_size
    }
}

/// Writes a fixed VHDX front to back.
pub struct FixedWriter<S: AppendSink> {
    sink: S,
    source_size: u64,
    layout: Layout,
    next: u64,
}

impl<S: AppendSink> FixedWriter<S> {
    pub(crate) fn new(mut sink: S, source_size: u64, options: &VhdxCreateOptions) -> Result<Self> {
        let layout = Layout::new(source_size, options)?;
        let payload: Vec<BatEntry> = (0..layout.geometry.data_blocks)
            .map(|block| BatEntry {
                state: PAYLOAD_BLOCK_FULLY_PRESENT,
                file_offset_mb: (layout.data_at + block * layout.geometry.block_size) >> 20,
            })
            .collect();
        sink.append(&layout.header_section)?;
        sink.append_zeros(layout.bat_at - MIB)?;
        sink.append(&layout.bat_bytes(&payload))?;
        sink.append(&layout.metadata)?;
        if sink.position() != layout.data_at {
            return Err(Error::internal("vhdx fixed writer: layout"));
        }
        Ok(FixedWriter {
            sink,
            source_size,
            layout,
            next: 0,
        })
    }
}

impl<S: AppendSink> BlockWriter for FixedWriter<S> {
    fn virtual_size(&self) -> u64 {
        self.source_size
    }

    fn unit_size(&self) -> u64 {
        4096
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        advance(
            &mut self.next,
            &piece,
            1,
            self.source_size,
            "vhdx fixed writer",
        )?;
        match piece {
            Piece::Data { data, .. } => self.sink.append(&data),
            Piece::Zero { length, .. } => self.sink.append_zeros(length),
            Piece::Encoded { .. } => Err(Error::internal("vhdx holds no encoded units")),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.next != self.source_size {
            return Err(Error::internal("vhdx writer finished early"));
        }
        // The last block is whole in the file, as qemu-img and Hyper-V expect.
        let end = self.layout.data_at + self.layout.blocks_length();
        let pos = self.sink.position();
        self.sink.append_zeros(end - pos)?;
        self.sink.finish()
    }
}

/// Writes a dynamic VHDX; blocks of zeros are not stored.
pub struct DynamicWriter {
    sink: FileSink,
    source_size: u64,
    layout: Layout,
    payload: Vec<BatEntry>,
    /// Where the next block goes.
    pos: u64,
    next: u64,
}

impl DynamicWriter {
    pub(crate) fn new(
        sink: FileSink,
        source_size: u64,
        options: &VhdxCreateOptions,
    ) -> Result<Self> {
        let layout = Layout::new(source_size, options)?;
        let blocks = usize::try_from(layout.geometry.data_blocks)
            .map_err(|_| Error::InvalidArgument("disk too large for a VHDX BAT".into()))?;
        let not_present = BatEntry {
            state: PAYLOAD_BLOCK_NOT_PRESENT,
            file_offset_mb: 0,
        };
        Ok(DynamicWriter {
            sink,
            source_size,
            pos: layout.data_at,
            layout,
            payload: vec![not_present; blocks],
            next: 0,
        })
    }
}

impl BlockWriter for DynamicWriter {
    fn virtual_size(&self) -> u64 {
        self.source_size
    }

    /// 1 MiB, which divides every block size: the pipeline's pieces (and its memory) stay
    /// small whatever the block size, and a block is stored once a piece in it holds data.
    fn unit_size(&self) -> u64 {
        MIB
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        let block_size = self.layout.geometry.block_size;
        let offset = piece.offset();
        advance(
            &mut self.next,
            &piece,
            MIB,
            self.source_size,
            "vhdx dynamic writer",
        )?;
        let data = match piece {
            // A block never written reads as zeros in a dynamic disk, and the unwritten parts
            // of a stored block are holes of the fresh file.
            Piece::Zero { .. } => return Ok(()),
            Piece::Data { data, .. } => data,
            Piece::Encoded { .. } => return Err(Error::internal("vhdx holds no encoded units")),
        };
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let index = usize::try_from(at / block_size)
                .map_err(|_| Error::internal("vhdx dynamic writer: block index"))?;
            let within = at % block_size;
            let n = ((block_size - within) as usize).min(data.len() - done);
            let slot = self
                .payload
                .get_mut(index)
                .ok_or_else(|| Error::internal("vhdx dynamic writer: block past the disk"))?;
            if slot.state != PAYLOAD_BLOCK_FULLY_PRESENT {
                // Pieces come in order: the block is stored where the file ends. A partial
                // last block still takes a whole block in the file.
                *slot = BatEntry {
                    state: PAYLOAD_BLOCK_FULLY_PRESENT,
                    file_offset_mb: self.pos >> 20,
                };
                self.pos += block_size;
            }
            self.sink
                .write_at_sparse(&data[done..done + n], slot.file_offset() + within)?;
            done += n;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.next != self.source_size {
            return Err(Error::internal("vhdx writer finished early"));
        }
        let l = &self.layout;
        self.sink.write_at(&l.bat_bytes(&self.payload), l.bat_at)?;
        self.sink.write_at(&l.metadata, l.metadata_at)?;
        // The header section last: until it is written the file is no VHDX.
        self.sink.write_at(&l.header_section, 0)?;
        self.sink.set_position(self.pos);
        self.sink.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, &str)]) -> Result<VhdxCreateOptions> {
        let list: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        VhdxCreateOptions::parse(&list, false)
    }

    #[test]
    fn options_read_as_qemu_img_reads_them() {
        assert_eq!(opts(&[]).unwrap(), VhdxCreateOptions::default());
        let o = opts(&[
            ("subformat", "fixed"),
            ("block_size", "32M"),
            ("log_size", "4194304"),
        ])
        .unwrap();
        assert!(o.fixed);
        assert_eq!(o.block_size, Some(32 << 20));
        assert_eq!(o.log_size, 4 << 20);
        assert_eq!(opts(&[("block_size", "0")]).unwrap().block_size, None);
        for bad in [
            ("block_size", "3M"),
            ("block_size", "512k"),
            ("block_size", "512M"),
            ("log_size", "0"),
            ("log_size", "1536k"),
            ("log_size", "8G"),
            ("subformat", "differencing"),
            ("cluster_size", "1M"),
        ] {
            assert!(opts(&[bad]).is_err(), "{bad:?}");
        }
        assert!(VhdxCreateOptions::parse(&[], true).is_err());
    }

    #[test]
    fn the_default_block_size_grows_with_the_disk() {
        let o = VhdxCreateOptions::default();
        assert_eq!(o.block_size_for(24 << 20), 8 << 20);
        assert_eq!(o.block_size_for(2 << 30), 16 << 20);
        assert_eq!(o.block_size_for(200 << 30), 32 << 20);
        assert_eq!(o.block_size_for(40 << 40), 64 << 20);
    }

    #[test]
    fn the_layout_puts_the_log_then_the_bat_then_the_metadata() {
        let l = Layout::new(24 << 20, &VhdxCreateOptions::default()).unwrap();
        assert_eq!(
            (l.bat_at, l.metadata_at, l.data_at),
            (2 << 20, 3 << 20, 4 << 20)
        );
        let o = VhdxCreateOptions {
            log_size: 4 << 20,
            ..Default::default()
        };
        let l = Layout::new(24 << 20, &o).unwrap();
        assert_eq!(
            (l.bat_at, l.metadata_at, l.data_at),
            (5 << 20, 6 << 20, 7 << 20)
        );
        assert!(Layout::new((64 << 40) + 1, &o).is_err());
    }
}
