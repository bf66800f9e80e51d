//! Writes VMDKs: monolithicSparse (one hosted sparse extent, to a file), streamOptimized
//! (VMware's stream layout, to any append-only sink: see [`super::stream::StreamWriter`]) and
//! monolithicFlat (a descriptor file and a `<name>-flat.vmdk` raw extent beside it).

use std::path::{Path, PathBuf};

use super::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT_CID};
use super::sparse::{FLAG_NEWLINE_TEST, FLAG_ZEROED_GRAIN, NEWLINE_CHARS, SECTOR, SparseHeader};
use super::stream::{DESCRIPTOR_SECTORS, WRITE_GRAIN_SECTORS, WRITE_GTES_PER_GT};
use crate::block::{BlockWriter, Piece, advance, usize_len};
use crate::error::{Error, Result};
use crate::io::{AppendSink, FileSink, append_piece};
use crate::limits::{MAX_HW_VERSION, MAX_VMDK_DISK_BYTES};

/// The kind of VMDK to write (`-o subformat=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Subformat {
    /// One file: a sparse extent with its descriptor embedded.
    MonolithicSparse,
    /// One file of compressed grains with markers, written front to back.
    StreamOptimized,
    /// A descriptor file and one flat extent file beside it.
    MonolithicFlat,
}

impl Subformat {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::StreamOptimized => "streamOptimized",
            Subformat::MonolithicFlat => "monolithicFlat",
        }
    }
}

/// The virtual controller the disk is attached to (`-o adapter_type=`, `ddb.adapterType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Adapter {
    /// `ide` (the default).
    Ide,
    /// `lsilogic`: LSI Logic SCSI.
    LsiLogic,
    /// `buslogic`: BusLogic SCSI.
    BusLogic,
    /// `legacyESX`: ESX's legacy SCSI.
    LegacyEsx,
}

impl Adapter {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Adapter::Ide => "ide",
            Adapter::LsiLogic => "lsilogic",
            Adapter::BusLogic => "buslogic",
            Adapter::LegacyEsx => "legacyESX",
        }
    }

    /// Heads of the geometry VMware gives disks on this adapter (sectors per track are 63).
    fn heads(self) -> u64 {
        match self {
            Adapter::Ide => 16,
            _ => 255,
        }
    }
}

/// The `ddb.toolsVersion` written: 2147483647 says the guest's tools are managed by the guest
/// (open-vm-tools or none), as qemu-img writes it.
pub const TOOLS_VERSION: u32 = 2_147_483_647;
/// The `ddb.virtualHWVersion` written by default: 4, the oldest virtual hardware that every
/// ESXi and Workstation release still runs (and qemu-img's default).
pub const DEFAULT_HW_VERSION: u32 = 4;

/// What `-o` chose for a new VMDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkCreateOptions {
    /// `subformat`: the layout to write.
    pub subformat: Subformat,
    /// `adapter_type`: recorded as `ddb.adapterType`; sets the geometry's heads.
    pub adapter: Adapter,
    /// `hwversion` (`compat6` sets 6): recorded as `ddb.virtualHWVersion`.
    pub hw_version: u32,
    /// `toolsversion`: recorded as `ddb.toolsVersion`.
    pub tools_version: u32,
    /// Mark the sparse extent as knowing zeroed-grain entries (version 2, flag bit 2).
    pub zeroed_grain: bool,
    /// A pinned CID (tests); normally random.
    pub cid: Option<u32>,
}

impl VmdkCreateOptions {
    /// Reads qemu-img's option names: `subformat`, `adapter_type`, `hwversion`, `compat6`,
    /// `toolsversion`, `zeroed_grain`; `-c` is allowed for streamOptimized (always compressed).
    pub fn parse(options: &[(String, String)], compress: bool) -> Result<Self> {
        let mut out = VmdkCreateOptions {
            subformat: Subformat::MonolithicSparse,
            adapter: Adapter::LsiLogic,
            hw_version: DEFAULT_HW_VERSION,
            tools_version: TOOLS_VERSION,
            zeroed_grain: false,
            cid: None,
        };
        let bad = |k: &str, v: &str, want: &str| {
            Err(Error::InvalidArgument(format!(
                "vmdk option '{k}={v}' is not supported ({want})"
            )))
        };
        for (key, value) in options {
            let (k, v) = (key.as_str(), value.as_str());
            match k {
                "subformat" => {
                    out.subformat = match v {
                        "monolithicSparse" => Subformat::MonolithicSparse,
                        "streamOptimized" => Subformat::StreamOptimized,
                        "monolithicFlat" => Subformat::MonolithicFlat,
                        _ => {
                            return bad(
                                k,
                                v,
                                "ims writes monolithicSparse, streamOptimized, monolithicFlat",
                            );
                        }
                    }
                }
                "adapter_type" => {
                    out.adapter = match v {
                        "ide" => Adapter::Ide,
                        "lsilogic" => Adapter::LsiLogic,
                        "buslogic" => Adapter::BusLogic,
                        "legacyESX" => Adapter::LegacyEsx,
                        _ => return bad(k, v, "ide, lsilogic, buslogic or legacyESX"),
                    }
                }
                "hwversion" => {
                    out.hw_version = match v.parse::<u32>() {
                        Ok(n) if (4..=MAX_HW_VERSION).contains(&n) => n,
                        _ if v == "undefined" => DEFAULT_HW_VERSION,
                        _ => return bad(k, v, &format!("a number from 4 to {MAX_HW_VERSION}")),
                    }
                }
                "compat6" => match v {
                    "on" | "true" => out.hw_version = 6,
                    "off" | "false" => {}
                    _ => return bad(k, v, "on or off"),
                },
                "toolsversion" => {
                    out.tools_version = match v.parse() {
                        Ok(n) => n,
                        Err(_) => return bad(k, v, "a number"),
                    }
                }
                "zeroed_grain" => match v {
                    "on" | "true" => out.zeroed_grain = true,
                    "off" | "false" => out.zeroed_grain = false,
                    _ => return bad(k, v, "on or off"),
                },
                _ => {
                    return bad(
                        k,
                        v,
                        "ims writes: subformat, adapter_type, hwversion, compat6, toolsversion, zeroed_grain",
                    );
                }
            }
        }
        if compress && out.subformat != Subformat::StreamOptimized {
            return Err(Error::InvalidArgument(
                "-c needs subformat=streamOptimized (the only compressed VMDK)".into(),
            ));
        }
        Ok(out)
    }

    /// The descriptor of a new disk of `capacity` sectors whose one extent is `file_name`.
    pub fn descriptor(&self, capacity: u64, file_name: &str) -> Descriptor {
        let heads = self.adapter.heads();
        let cylinders = (capacity / (heads * 63)).clamp(1, 65535);
        let kind = match self.subformat {
            Subformat::MonolithicFlat => ExtentType::Flat,
            _ => ExtentType::Sparse,
        };
        let cid = self.cid.unwrap_or_else(random_cid);
        Descriptor {
            version: 1,
            cid,
            parent_cid: NO_PARENT_CID,
            create_type: Some(self.subformat.name().to_string()),
            parent_file_name_hint: None,
            extents: vec![ExtentLine {
                access: Access::Rw,
                sectors: capacity,
                kind,
                file_name: Some(file_name.to_string()),
                offset: 0,
                at: 0,
            }],
            ddb: vec![
                ("ddb.virtualHWVersion".into(), self.hw_version.to_string()),
                ("ddb.adapterType".into(), self.adapter.name().into()),
                ("ddb.geometry.cylinders".into(), cylinders.to_string()),
                ("ddb.geometry.heads".into(), heads.to_string()),
                ("ddb.geometry.sectors".into(), "63".into()),
                ("ddb.toolsVersion".into(), self.tools_version.to_string()),
            ],
        }
    }
}

/// A random CID that is not the "no parent" value.
fn random_cid() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    let cid = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if cid == NO_PARENT_CID {
        0xfffffffe
    } else {
        cid
    }
}

/// The disk's capacity in sectors, refusing disks over [`MAX_VMDK_DISK_BYTES`].
pub fn capacity_for(size: u64) -> Result<u64> {
    let capacity = size.div_ceil(SECTOR);
    if capacity.saturating_mul(SECTOR) > MAX_VMDK_DISK_BYTES {
        return Err(Error::InvalidArgument(format!(
            "a VMDK holds at most {MAX_VMDK_DISK_BYTES} bytes; the disk has {size}"
        )));
    }
    Ok(capacity)
}

/// The name a descriptor gives its own file: the last component of `path`.
pub fn own_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "disk.vmdk".into(), |n| n.to_string_lossy().into_owned())
}

/// Writes a monolithicSparse VMDK: header, descriptor, GD and all GTs at the front (as VMware
/// and qemu-img place them), then whole 64 KiB grains in ascending order; zero grains are left
/// unallocated. Memory holds the GD and one GT.
pub struct SparseWriter {
    sink: FileSink,
    size: u64,
    header: SparseHeader,
    descriptor: String,
    /// Sector of the first GT; GT `i` is at `gt_start + i * gt_sectors`.
    gt_start: u64,
    gt: Vec<u32>,
    gt_index: u64,
    gd_len: u64,
    /// Where the next grain goes (bytes).
    pos: u64,
    next: u64,
    /// Whether the GT being filled has entries.
    gt_dirty: bool,
}

impl SparseWriter {
    pub(crate) fn new(
        sink: FileSink,
        size: u64,
        descriptor: &str,
        zeroed_grain: bool,
    ) -> Result<Self> {
        let capacity = capacity_for(size)?;
        let desc_sectors = (descriptor.len() as u64)
            .div_ceil(SECTOR)
            .max(DESCRIPTOR_SECTORS);
        let mut header = SparseHeader {
            version: if zeroed_grain { 2 } else { 1 },
            flags: FLAG_NEWLINE_TEST | if zeroed_grain { FLAG_ZEROED_GRAIN } else { 0 },
            capacity,
            grain_size: WRITE_GRAIN_SECTORS,
            descriptor_offset: 1,
            descriptor_size: desc_sectors,
            num_gtes_per_gt: WRITE_GTES_PER_GT,
            rgd_offset: 0,
            gd_offset: 1 + desc_sectors,
            over_head: 0,
            unclean_shutdown: 0,
            newline_chars: NEWLINE_CHARS,
            compress_algorithm: 0,
        };
        let gd_len = header.gd_entries();
        let gd_sectors = (gd_len * 4).div_ceil(SECTOR).max(1);
        let gt_start = header.gd_offset + gd_sectors;
        let gt_sectors = header.gt_bytes().div_ceil(SECTOR);
        header.over_head = (gt_start + gd_len * gt_sectors).next_multiple_of(WRITE_GRAIN_SECTORS);
        Ok(SparseWriter {
            sink,
            size,
            descriptor: descriptor.to_string(),
            gt_start,
            gt: vec![0; WRITE_GTES_PER_GT as usize],
            gt_index: 0,
            gd_len,
            pos: header.over_head * SECTOR,
            next: 0,
            gt_dirty: false,
            header,
        })
    }

    fn gt_at(&self, index: u64) -> u64 {
        (self.gt_start + index * self.header.gt_bytes().div_ceil(SECTOR)) * SECTOR
    }

    /// Writes the GT being filled (if it has entries) and starts GT `index`.
    fn move_to_gt(&mut self, index: u64) -> Result<()> {
        if index == self.gt_index {
            return Ok(());
        }
        if self.gt_dirty {
            let bytes: Vec<u8> = self.gt.iter().flat_map(|e| e.to_le_bytes()).collect();
            self.sink.write_at(&bytes, self.gt_at(self.gt_index))?;
            self.gt.fill(0);
            self.gt_dirty = false;
        }
        self.gt_index = index;
        Ok(())
    }
}

impl BlockWriter for SparseWriter {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn unit_size(&self) -> u64 {
        self.header.grain_bytes()
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        let offset = piece.offset();
        let grain_bytes = self.header.grain_bytes();
        advance(
            &mut self.next,
            &piece,
            grain_bytes,
            self.size,
            "vmdk sparse writer",
        )?;
        let data = match piece {
            Piece::Zero { .. } => return Ok(()),
            Piece::Data { data, .. } => data,
            Piece::Encoded { .. } => {
                return Err(Error::Internal(
                    "monolithicSparse holds no encoded grains".into(),
                ));
            }
        };
        let per_gt = u64::from(self.header.num_gtes_per_gt);
        for (i, grain) in data.chunks(usize_len(grain_bytes)?).enumerate() {
            let index = offset / grain_bytes + i as u64;
            self.move_to_gt(index / per_gt)?;
            let sector = u32::try_from(self.pos / SECTOR).map_err(|_| {
                Error::InvalidArgument("vmdk file grows past 2 TiB of sectors".into())
            })?;
            self.sink.write_at(grain, self.pos)?;
            if let Some(slot) = usize::try_from(index % per_gt)
                .ok()
                .and_then(|s| self.gt.get_mut(s))
            {
                *slot = sector;
            }
            self.gt_dirty = true;
            // A partial last grain still takes a whole grain in the file.
            self.pos += grain_bytes;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.next != self.size {
            return Err(Error::Internal(format!(
                "vmdk writer finished at {} of {} bytes",
                self.next, self.size
            )));
        }
        self.move_to_gt(u64::MAX)?;
        let gd: Vec<u8> = (0..self.gd_len)
            .map(|i| u32::try_from(self.gt_at(i) / SECTOR).unwrap_or(0))
            .flat_map(|e| e.to_le_bytes())
            .collect();
        self.sink.write_at(&gd, self.header.gd_offset * SECTOR)?;
        self.sink.write_at(self.descriptor.as_bytes(), SECTOR)?;
        self.sink.write_at(&self.header.to_bytes(), 0)?;
        // The file ends after the last grain, or after the tables of an empty disk.
        let end = self.pos.max(self.header.over_head * SECTOR);
        self.sink.set_position(end);
        self.sink.finish()
    }
}

/// Writes a monolithicFlat VMDK: the disk's bytes to `<name>-flat.vmdk` (zero runs as holes),
/// rounded up to whole sectors, then the descriptor file that names it.
pub struct FlatWriter {
    data: FileSink,
    size: u64,
    capacity: u64,
    descriptor_file: FileSink,
    descriptor: String,
}

impl FlatWriter {
    /// The extent's file name for a descriptor at `path`: its name without `.vmdk`, `-flat.vmdk`.
    pub fn extent_name(path: &Path) -> String {
        let name = own_name(path);
        let stem = name.strip_suffix(".vmdk").unwrap_or(&name);
        format!("{stem}-flat.vmdk")
    }

    /// Where the extent of a descriptor at `path` lies: beside it, named by
    /// [`extent_name`](Self::extent_name); refused when that is the descriptor itself.
    pub fn extent_path(path: &Path) -> Result<PathBuf> {
        let extent_path = path.with_file_name(Self::extent_name(path));
        if extent_path == path {
            return Err(Error::InvalidArgument(format!(
                "{}: the flat extent would overwrite the descriptor",
                path.display()
            )));
        }
        Ok(extent_path)
    }

    /// A writer of the VMDK whose descriptor is named `path`: the disk's bytes go to `data`,
    /// the descriptor (naming the extent [`extent_path`](Self::extent_path)) to `descriptor`
    /// at the end. The caller opens both files, under these names or temporary ones.
    pub fn new(
        path: &Path,
        size: u64,
        options: &VmdkCreateOptions,
        data: FileSink,
        descriptor: FileSink,
    ) -> Result<Self> {
        let capacity = capacity_for(size)?;
        let extent = Self::extent_name(path);
        let text = options.descriptor(capacity, &extent).to_text();
        Ok(FlatWriter {
            data,
            size,
            capacity,
            descriptor_file: descriptor,
            descriptor: text,
        })
    }
}

impl BlockWriter for FlatWriter {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn unit_size(&self) -> u64 {
        4096
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        append_piece(&mut self.data, piece, "vmdk flat writer")
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.data.position() != self.size {
            return Err(Error::Internal("vmdk flat writer finished early".into()));
        }
        self.data.append_zeros(self.capacity * SECTOR - self.size)?;
        self.data.finish()?;
        self.descriptor_file.append(self.descriptor.as_bytes())?;
        self.descriptor_file.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, &str)], compress: bool) -> Result<VmdkCreateOptions> {
        let list: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        VmdkCreateOptions::parse(&list, compress)
    }

    #[test]
    fn options_follow_qemu_img_names() {
        let o = opts(&[], false).unwrap();
        assert_eq!(o.subformat, Subformat::MonolithicSparse);
        assert_eq!(o.adapter, Adapter::LsiLogic);
        assert_eq!(o.hw_version, 4);
        let o = opts(
            &[
                ("subformat", "streamOptimized"),
                ("adapter_type", "ide"),
                ("hwversion", "13"),
            ],
            true,
        )
        .unwrap();
        assert_eq!(
            (o.subformat, o.adapter, o.hw_version),
            (Subformat::StreamOptimized, Adapter::Ide, 13)
        );
        assert!(opts(&[("subformat", "twoGbMaxExtentSparse")], false).is_err());
        assert!(opts(&[("adapter_type", "pvscsi")], false).is_err());
        assert!(opts(&[("hwversion", "99")], false).is_err());
        assert!(opts(&[], true).is_err());
        assert!(opts(&[("backing_file", "x")], false).is_err());
    }

    #[test]
    fn descriptor_has_what_esxi_reads() {
        let mut o = opts(&[("subformat", "streamOptimized")], false).unwrap();
        o.cid = Some(0x12345678);
        let text = o.descriptor(2 << 21, "disk.vmdk").to_text();
        for line in [
            "CID=12345678",
            "parentCID=ffffffff",
            "createType=\"streamOptimized\"",
            "RW 4194304 SPARSE \"disk.vmdk\"",
            "ddb.virtualHWVersion = \"4\"",
            "ddb.adapterType = \"lsilogic\"",
            "ddb.geometry.cylinders = \"261\"",
            "ddb.geometry.heads = \"255\"",
            "ddb.geometry.sectors = \"63\"",
            "ddb.toolsVersion = \"2147483647\"",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn flat_extent_name_drops_the_extension() {
        assert_eq!(
            FlatWriter::extent_name(Path::new("/a/w.vmdk")),
            "w-flat.vmdk"
        );
        assert_eq!(FlatWriter::extent_name(Path::new("disk")), "disk-flat.vmdk");
    }
}
