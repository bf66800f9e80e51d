//! Writes fixed VHDs (to any append-only sink: data, then the footer) and dynamic VHDs (to a
//! file: footer copy, dynamic header and BAT at the front, blocks, footer at the end).

use std::time::{SystemTime, UNIX_EPOCH};

use super::dynamic::{DEFAULT_BLOCK_SIZE, DynamicHeader, HEADER_SIZE, HEADER_VERSION, UNALLOCATED};
use super::footer::{
    DiskType, FEATURES_RESERVED, FILE_FORMAT_VERSION, FOOTER_SIZE, Footer, Geometry,
    MAX_GEOMETRY_SECTORS, NO_DATA_OFFSET, VHD_EPOCH,
};
use crate::block::{BlockWriter, Piece, advance};
use crate::error::{Error, Result};
use crate::io::{AppendSink, FileSink, append_piece};
use crate::limits::MAX_VHD_DISK_SIZE;

const MIB: u64 = 1 << 20;

/// What `-o` chose for a new VHD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdCreateOptions {
    /// `subformat`: fixed or dynamic (a differencing disk cannot be created).
    pub disk_type: DiskType,
    /// Keep the exact size instead of rounding it up to a CHS geometry.
    pub force_size: bool,
    /// `profile=azure`: fixed, size rounded up to a whole MiB, exact size in the footer.
    pub azure: bool,
    /// Pinned footer fields, for reproducible files (tests); normally the time and a random id.
    pub time_stamp: Option<u32>,
    /// Pinned `unique_id`, like `time_stamp`.
    pub unique_id: Option<[u8; 16]>,
}

impl VhdCreateOptions {
    /// Reads qemu-img's `subformat` and `force_size`, and ims's `profile=azure`.
    pub fn parse(options: &[(String, String)], compress: bool) -> Result<Self> {
        if compress {
            return Err(Error::InvalidArgument(
                "vhd images cannot be compressed".into(),
            ));
        }
        let mut disk_type = None;
        let mut force_size = false;
        let mut azure = false;
        for (key, value) in options {
            match (key.as_str(), value.as_str()) {
                ("subformat", "fixed") => disk_type = Some(DiskType::Fixed),
                ("subformat", "dynamic") => disk_type = Some(DiskType::Dynamic),
                ("force_size", "on" | "true") => force_size = true,
                ("force_size", "off" | "false") => force_size = false,
                ("profile", "azure") => azure = true,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "vhd option '{key}={value}' is not supported (ims writes: subformat=fixed|dynamic, force_size=on|off, profile=azure)"
                    )));
                }
            }
        }
        if azure && disk_type == Some(DiskType::Dynamic) {
            return Err(Error::InvalidArgument(
                "profile=azure writes fixed VHDs only".into(),
            ));
        }
        Ok(VhdCreateOptions {
            disk_type: if azure {
                DiskType::Fixed
            } else {
                disk_type.unwrap_or(DiskType::Dynamic)
            },
            force_size,
            azure,
            time_stamp: None,
            unique_id: None,
        })
    }

    /// The disk size, geometry and creator for a source of `source_size` bytes, as qemu-img
    /// chooses them: without `force_size` the size grows to the first CHS geometry that holds
    /// it (creator `qemu`, read by geometry); with it, or past what CHS can describe, the
    /// geometry is the largest one and the footer's size is exact (creator `qem2`).
    pub(crate) fn plan(&self, source_size: u64) -> Result<Plan> {
        let exact = if self.azure {
            source_size.next_multiple_of(MIB)
        } else {
            source_size.next_multiple_of(512)
        };
        let sectors = exact / 512;
        let max = Geometry {
            cylinders: 65535,
            heads: 16,
            sectors_per_track: 255,
        };
        let (size, geometry, creator) =
            if self.force_size || self.azure || sectors >= MAX_GEOMETRY_SECTORS {
                (exact, max, *b"qem2")
            } else {
                let mut g = Geometry::for_sectors(sectors);
                let mut i = 0;
                while g.sectors() < sectors {
                    i += 1;
                    g = Geometry::for_sectors(sectors + i);
                }
                if g.sectors() == MAX_GEOMETRY_SECTORS {
                    (exact, max, *b"qem2")
                } else {
                    (g.sectors() * 512, g, *b"qemu")
                }
            };
        if size > MAX_VHD_DISK_SIZE {
            return Err(Error::InvalidArgument(format!(
                "a VHD holds at most 2040 GiB; the disk has {size} bytes"
            )));
        }
        Ok(Plan {
            size,
            geometry,
            creator,
        })
    }

    fn footer(&self, plan: &Plan, data_offset: u64) -> Footer {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Footer {
            features: FEATURES_RESERVED,
            file_format_version: FILE_FORMAT_VERSION,
            data_offset,
            time_stamp: self
                .time_stamp
                .unwrap_or(u32::try_from(now.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX)),
            creator_application: plan.creator,
            // Virtual PC 2007's version, which qemu-img writes too.
            creator_version: 0x0005_0003,
            creator_host_os: *b"Wi2k",
            original_size: plan.size,
            current_size: plan.size,
            disk_geometry: plan.geometry,
            disk_type: self.disk_type,
            checksum: 0,
            unique_id: self
                .unique_id
                .unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes()),
            saved_state: 0,
        }
    }
}

/// The size, geometry and creator chosen for a new disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub size: u64,
    pub geometry: Geometry,
    pub creator: [u8; 4],
}

/// Writes a fixed VHD front to back.
pub struct FixedWriter<S: AppendSink> {
    sink: S,
    source_size: u64,
    footer: Footer,
}

impl<S: AppendSink> FixedWriter<S> {
    pub(crate) fn new(sink: S, source_size: u64, options: &VhdCreateOptions) -> Result<Self> {
        let plan = options.plan(source_size)?;
        Ok(FixedWriter {
            sink,
            source_size,
            footer: options.footer(&plan, NO_DATA_OFFSET),
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
        append_piece(&mut self.sink, piece, "vhd fixed writer")
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.sink.position() != self.source_size {
            return Err(Error::Internal("vhd writer finished early".into()));
        }
        // The disk may be larger than the source (rounded up): the rest reads as zeros.
        self.sink
            .append_zeros(self.footer.current_size - self.source_size)?;
        let footer = self.footer.to_bytes();
        self.sink.append(&footer)?;
        self.sink.finish()
    }
}

/// Writes a dynamic VHD; zero blocks are not stored.
pub struct DynamicWriter {
    sink: FileSink,
    source_size: u64,
    footer: Footer,
    header: DynamicHeader,
    bat: Vec<u32>,
    /// Where the next block goes (sector-aligned).
    pos: u64,
    next: u64,
}

/// Where qemu-img and Hyper-V put the BAT: after the footer copy and the dynamic header.
const TABLE_OFFSET: u64 = (FOOTER_SIZE + HEADER_SIZE) as u64;

impl DynamicWriter {
    pub(crate) fn new(
        sink: FileSink,
        source_size: u64,
        options: &VhdCreateOptions,
    ) -> Result<Self> {
        let plan = options.plan(source_size)?;
        let block_size = DEFAULT_BLOCK_SIZE;
        let blocks = plan.size.div_ceil(u64::from(block_size));
        let max_table_entries = u32::try_from(blocks)
            .map_err(|_| Error::InvalidArgument("disk too large for a VHD BAT".into()))?;
        let header = DynamicHeader {
            data_offset: NO_DATA_OFFSET,
            table_offset: TABLE_OFFSET,
            header_version: HEADER_VERSION,
            max_table_entries,
            block_size,
            checksum: 0,
            parent_unique_id: [0; 16],
            parent_time_stamp: 0,
            parent_unicode_name: String::new(),
            parent_locators: Vec::new(),
        };
        let pos = TABLE_OFFSET + header.bat_size();
        Ok(DynamicWriter {
            sink,
            source_size,
            footer: options.footer(&plan, FOOTER_SIZE as u64),
            bat: vec![UNALLOCATED; blocks as usize],
            header,
            pos,
            next: 0,
        })
    }

    fn block_size(&self) -> u64 {
        u64::from(self.header.block_size)
    }
}

impl BlockWriter for DynamicWriter {
    fn virtual_size(&self) -> u64 {
        self.source_size
    }

    fn unit_size(&self) -> u64 {
        self.block_size()
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        let offset = piece.offset();
        let block_size = self.block_size();
        advance(
            &mut self.next,
            &piece,
            block_size,
            self.source_size,
            "vhd dynamic writer",
        )?;
        let data = match piece {
            Piece::Zero { .. } => return Ok(()),
            Piece::Data { data, .. } => data,
            Piece::Encoded { .. } => {
                return Err(Error::Internal("vhd holds no encoded units".into()));
            }
        };
        let bitmap = vec![0xffu8; self.header.bitmap_size() as usize];
        for (i, block) in data.chunks(self.block_size() as usize).enumerate() {
            let index = ((offset / self.block_size()) as usize) + i;
            let sector = u32::try_from(self.pos / 512).map_err(|_| {
                Error::InvalidArgument("vhd file grows past 2 TiB of sectors".into())
            })?;
            self.sink.write_at(&bitmap, self.pos)?;
            self.sink
                .write_at_sparse(block, self.pos + bitmap.len() as u64)?;
            self.bat[index] = sector;
            // A partial last block still takes a whole block in the file.
            self.pos += bitmap.len() as u64 + self.block_size();
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.next != self.source_size {
            return Err(Error::Internal("vhd writer finished early".into()));
        }
        let mut bat: Vec<u8> = self.bat.iter().flat_map(|e| e.to_be_bytes()).collect();
        bat.resize(self.header.bat_size() as usize, 0xff);
        self.sink.write_at(&bat, TABLE_OFFSET)?;
        self.sink
            .write_at(&self.header.to_bytes(), FOOTER_SIZE as u64)?;
        let footer = self.footer.to_bytes();
        self.sink.write_at(&footer, 0)?;
        self.sink.write_at(&footer, self.pos)?;
        self.sink.set_position(self.pos + FOOTER_SIZE as u64);
        self.sink.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, &str)]) -> Result<VhdCreateOptions> {
        let list: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        VhdCreateOptions::parse(&list, false)
    }

    #[test]
    fn sizes_are_planned_as_qemu_img_plans_them() {
        // 10,000,000 bytes: the CHS search rounds up to 10,027,008 (what qemu-img info shows).
        let chs = opts(&[]).unwrap().plan(10_000_000).unwrap();
        assert_eq!(chs.size, 10_027_008);
        assert_eq!(&chs.creator, b"qemu");
        assert!(chs.geometry.sectors() * 512 == chs.size);
        let exact = opts(&[("force_size", "on")])
            .unwrap()
            .plan(10_000_000)
            .unwrap();
        assert_eq!(exact.size, 10_000_384);
        assert_eq!(&exact.creator, b"qem2");
        assert_eq!(exact.geometry.sectors(), MAX_GEOMETRY_SECTORS);
        let azure = opts(&[("profile", "azure")]).unwrap();
        assert_eq!(azure.disk_type, DiskType::Fixed);
        assert_eq!(azure.plan(10_000_000).unwrap().size, 10 << 20);
        assert!(opts(&[("profile", "azure"), ("subformat", "dynamic")]).is_err());
        assert!(opts(&[("subformat", "differencing")]).is_err());
        assert!(opts(&[]).unwrap().plan(3 << 40).is_err());
    }
}
