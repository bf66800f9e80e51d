//! Writes VDIs: dynamic (to a file: header and block map at the front, written last; only the
//! blocks that hold data are stored, in the order they arrive) and static (front to back to any
//! sink: every block stored in order).

use super::header::{
    BANNER, DEFAULT_BLOCK_SIZE, HEADER_SIZE, HEADER_SIZE_V1_1, ImageType, SECTOR_SIZE, UNALLOCATED,
    VERSION_1_1, VdiHeader,
};
use crate::block::{BlockWriter, Piece, advance};
use crate::error::{Error, Result};
use crate::io::{AppendSink, FileSink};
use crate::limits::MAX_VDI_BLOCKS;

/// What `-o` chose for a new VDI.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VdiCreateOptions {
    /// `static=on`: every block stored (VirtualBox's "fixed" image).
    pub static_image: bool,
    /// Pinned `uuid_image` (and `uuid_last_snap`), for reproducible files; normally random.
    pub uuid: Option<[u8; 16]>,
}

impl VdiCreateOptions {
    /// Reads qemu-img's `static=on|off`.
    pub fn parse(options: &[(String, String)], compress: bool) -> Result<Self> {
        if compress {
            return Err(Error::InvalidArgument(
                "vdi images cannot be compressed".into(),
            ));
        }
        let mut o = VdiCreateOptions::default();
        for (key, value) in options {
            match (key.as_str(), value.as_str()) {
                ("static", "on" | "true") => o.static_image = true,
                ("static", "off" | "false") => o.static_image = false,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "vdi option '{key}={value}' is not supported (ims writes: static=on|off)"
                    )));
                }
            }
        }
        Ok(o)
    }

    /// The header of a new image of `source_size` bytes, and its block count.
    fn header(&self, source_size: u64) -> Result<(VdiHeader, u32)> {
        let disk_size = source_size.next_multiple_of(512);
        let bs = u64::from(DEFAULT_BLOCK_SIZE);
        let blocks = u32::try_from(disk_size.div_ceil(bs))
            .ok()
            .filter(|&b| b <= MAX_VDI_BLOCKS)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "a disk of {disk_size} bytes needs more than the {MAX_VDI_BLOCKS} VDI blocks \
                     ims writes"
                ))
            })?;
        let offset_bmap = HEADER_SIZE as u32;
        let bmap_size = (4 * blocks).next_multiple_of(SECTOR_SIZE);
        let uuid = self
            .uuid
            .unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes());
        Ok((
            VdiHeader {
                text: String::from_utf8_lossy(BANNER).trim_end().to_string(),
                version: VERSION_1_1,
                header_size: HEADER_SIZE_V1_1,
                image_type: if self.static_image {
                    ImageType::Static
                } else {
                    ImageType::Dynamic
                },
                image_flags: 0,
                description: String::new(),
                offset_bmap,
                offset_data: offset_bmap + bmap_size,
                cylinders: 0,
                heads: 0,
                sectors: 0,
                sector_size: SECTOR_SIZE,
                disk_size,
                block_size: DEFAULT_BLOCK_SIZE,
                block_extra: 0,
                blocks_in_image: blocks,
                blocks_allocated: if self.static_image { blocks } else { 0 },
                uuid_image: uuid,
                uuid_last_snap: uuid,
                uuid_link: [0; 16],
                uuid_parent: [0; 16],
            },
            blocks,
        ))
    }
}

/// The block map as stored, padded with unallocated entries to the data area.
fn bmap_bytes(h: &VdiHeader, bmap: &[u32]) -> Vec<u8> {
    let mut b: Vec<u8> = bmap.iter().flat_map(|e| e.to_le_bytes()).collect();
    b.resize((h.offset_data - h.offset_bmap) as usize, 0xff);
    b
}

/// Writes a dynamic VDI; zero blocks are not stored.
pub struct VdiWriter {
    sink: FileSink,
    source_size: u64,
    header: VdiHeader,
    bmap: Vec<u32>,
    next: u64,
}

impl VdiWriter {
    pub(crate) fn new(
        sink: FileSink,
        source_size: u64,
        options: &VdiCreateOptions,
    ) -> Result<Self> {
        let (header, blocks) = VdiCreateOptions {
            static_image: false,
            ..options.clone()
        }
        .header(source_size)?;
        Ok(VdiWriter {
            sink,
            source_size,
            header,
            bmap: vec![UNALLOCATED; blocks as usize],
            next: 0,
        })
    }
}

impl BlockWriter for VdiWriter {
    fn virtual_size(&self) -> u64 {
        self.source_size
    }

    fn unit_size(&self) -> u64 {
        u64::from(self.header.block_size)
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        let bs = u64::from(self.header.block_size);
        advance(&mut self.next, &piece, bs, self.source_size, "vdi writer")?;
        let (offset, data) = match piece {
            Piece::Zero { .. } => return Ok(()),
            Piece::Data { offset, data } => (offset, data),
            Piece::Encoded { .. } => {
                return Err(Error::Internal("vdi holds no encoded units".into()));
            }
        };
        for (i, block) in data.chunks(bs as usize).enumerate() {
            let index = usize::try_from(offset / bs)
                .ok()
                .and_then(|b| b.checked_add(i))
                .ok_or_else(|| Error::Internal("vdi writer block index".into()))?;
            let stored = self.header.blocks_allocated;
            let slot = self
                .bmap
                .get_mut(index)
                .ok_or_else(|| Error::Internal("vdi writer past the block map".into()))?;
            *slot = stored;
            let at = u64::from(self.header.offset_data) + u64::from(stored) * bs;
            self.sink.write_at_sparse(block, at)?;
            self.header.blocks_allocated += 1;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.next != self.source_size {
            return Err(Error::Internal("vdi writer finished early".into()));
        }
        let bmap = bmap_bytes(&self.header, &self.bmap);
        self.sink
            .write_at(&bmap, u64::from(self.header.offset_bmap))?;
        self.sink.write_at(&self.header.to_bytes(), 0)?;
        // Every stored block takes a whole block in the file, the last one too.
        let end = u64::from(self.header.offset_data)
            + u64::from(self.header.blocks_allocated) * u64::from(self.header.block_size);
        self.sink.set_position(end);
        self.sink.finish()
    }
}

/// Writes a static VDI front to back: header, the block map (block n stored as block n), then
/// every block.
pub struct StaticVdiWriter<S: AppendSink> {
    sink: S,
    source_size: u64,
    /// Where block 0 starts (`offset_data`).
    data_start: u64,
    end: u64,
}

impl<S: AppendSink> StaticVdiWriter<S> {
    pub(crate) fn new(mut sink: S, source_size: u64, options: &VdiCreateOptions) -> Result<Self> {
        let (header, blocks) = VdiCreateOptions {
            static_image: true,
            ..options.clone()
        }
        .header(source_size)?;
        let bmap: Vec<u32> = (0..blocks).collect();
        sink.append(&header.to_bytes())?;
        sink.append(&bmap_bytes(&header, &bmap))?;
        let end = u64::from(header.offset_data) + u64::from(blocks) * u64::from(header.block_size);
        Ok(StaticVdiWriter {
            sink,
            source_size,
            data_start: u64::from(header.offset_data),
            end,
        })
    }
}

impl<S: AppendSink> BlockWriter for StaticVdiWriter<S> {
    fn virtual_size(&self) -> u64 {
        self.source_size
    }

    fn unit_size(&self) -> u64 {
        u64::from(DEFAULT_BLOCK_SIZE)
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        // The disk's bytes follow the header and the block map, in order.
        let at = self.data_start.checked_add(piece.offset());
        if at != Some(self.sink.position()) {
            return Err(Error::Internal(format!(
                "vdi static writer got a piece at {} while at {}",
                piece.offset(),
                self.sink.position().saturating_sub(self.data_start)
            )));
        }
        match piece {
            Piece::Data { data, .. } => self.sink.append(&data),
            Piece::Zero { length, .. } => self.sink.append_zeros(length),
            Piece::Encoded { .. } => Err(Error::Internal("vdi holds no encoded units".into())),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let pos = self.sink.position();
        if pos > self.end {
            return Err(Error::Internal(
                "vdi static writer wrote past its blocks".into(),
            ));
        }
        self.sink.append_zeros(self.end - pos)?;
        self.sink.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_layout_are_qemu_img_s() {
        let pairs = |l: &[(&str, &str)]| -> Vec<(String, String)> {
            l.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(
            VdiCreateOptions::parse(&pairs(&[("static", "on")]), false)
                .unwrap()
                .static_image
        );
        assert!(VdiCreateOptions::parse(&pairs(&[("size", "1")]), false).is_err());
        assert!(VdiCreateOptions::parse(&[], true).is_err());
        let (h, blocks) = VdiCreateOptions::default().header((8 << 20) - 100).unwrap();
        assert_eq!(blocks, 8);
        assert_eq!((h.offset_bmap, h.offset_data), (0x200, 0x400));
        assert_eq!(h.disk_size, 8 << 20);
        let (h, _) = VdiCreateOptions::default().header(200 << 20).unwrap();
        assert_eq!(h.offset_data, 0x200 + 1024);
        assert!(VdiCreateOptions::default().header(u64::MAX / 2).is_err());
    }
}
