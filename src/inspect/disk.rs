//! The guest's disk as inspection reads it: the image's [`BlockReader`] behind a small page cache
//! and a read budget, cut into [`Volume`]s (a partition, or the whole disk) that check every
//! offset, with the adapters the file-system crates want (`Read + Seek`, `Ext4Read`).
//!
//! File systems make many small reads close together; a compressed format decompresses a whole
//! cluster for each, so the cache keeps recently read 64 KiB pages. The budget bounds the work
//! a hostile guest can cause, and the first error of the image itself (not of the guest's file
//! systems) is kept, so that inspection reports it instead of an "unknown" fact.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::block::{BlockReader, usize_len};
use crate::error::{Error, Result};
use crate::limits::{INSPECT_READ_BUDGET, INSPECT_READ_CALL_BUDGET, MAX_INSPECT_PAGES};

/// The cache's page size.
const PAGE: u64 = 64 << 10;

struct Cache {
    pages: HashMap<u64, (Arc<[u8]>, u64)>,
    clock: u64,
    read: u64,
    calls: u64,
    image_error: Option<Error>,
    image_failed: bool,
}

/// The disk being inspected.
pub struct Disk {
    reader: Arc<dyn BlockReader>,
    size: u64,
    cache: Mutex<Cache>,
}

impl Disk {
    /// Inspects the disk `reader` reads, through a small page cache.
    pub fn new(reader: Arc<dyn BlockReader>) -> Arc<Disk> {
        let size = reader.virtual_size();
        Arc::new(Disk {
            reader,
            size,
            cache: Mutex::new(Cache {
                pages: HashMap::new(),
                clock: 0,
                read: 0,
                calls: 0,
                image_error: None,
                image_failed: false,
            }),
        })
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // A panic inside a file-system crate may poison the lock; the cache is still sound.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first error the image's reader gave, if any: the image is damaged, not the guest.
    pub fn take_image_error(&self) -> Option<Error> {
        self.lock().image_error.take()
    }

    /// Bytes read from the image so far.
    pub fn bytes_read(&self) -> u64 {
        self.lock().read
    }

    fn page(&self, index: u64) -> Result<Arc<[u8]>> {
        let mut cache = self.lock();
        cache.clock += 1;
        let clock = cache.clock;
        if let Some((page, stamp)) = cache.pages.get_mut(&index) {
            *stamp = clock;
            return Ok(page.clone());
        }
        let start = index * PAGE;
        let len = PAGE.min(self.size - start);
        if cache.read.saturating_add(len) > INSPECT_READ_BUDGET {
            return Err(Error::limit(
                "guest inspection",
                start,
                format!("inspection read more than {INSPECT_READ_BUDGET} bytes of the disk"),
            ));
        }
        cache.read += len;
        let mut buf = vec![0u8; usize_len(len)?];
        if let Err(e) = self.reader.read_at(&mut buf, start) {
            // The caller (often a file-system crate) gets a stand-in; inspection reports the
            // image's own error.
            let stand_in = Error::malformed(
                "disk image",
                start,
                format!("the image cannot be read here: {e}"),
            );
            if !cache.image_failed {
                cache.image_failed = true;
                cache.image_error = Some(e);
            }
            return Err(stand_in);
        }
        let page: Arc<[u8]> = buf.into();
        if cache.pages.len() >= MAX_INSPECT_PAGES
            && let Some(oldest) = cache
                .pages
                .iter()
                .min_by_key(|(_, (_, stamp))| *stamp)
                .map(|(k, _)| *k)
        {
            cache.pages.remove(&oldest);
        }
        cache.pages.insert(index, (page.clone(), clock));
        Ok(page)
    }

    /// Fills `buf` from disk offset `offset`; the range must lie inside the disk.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.size => {}
            _ => {
                return Err(Error::truncated(
                    "guest disk",
                    offset,
                    len,
                    self.size.saturating_sub(offset),
                ));
            }
        }
        {
            let mut cache = self.lock();
            cache.calls += 1;
            if cache.calls > INSPECT_READ_CALL_BUDGET {
                return Err(Error::limit(
                    "guest inspection",
                    offset,
                    format!("inspection made more than {INSPECT_READ_CALL_BUDGET} reads"),
                ));
            }
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let page = self.page(pos / PAGE)?;
            let in_page = (pos % PAGE) as usize;
            let n = (page.len() - in_page).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&page[in_page..in_page + n]);
            done += n;
        }
        Ok(())
    }
}

/// A run of a volume stored contiguously on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// Offset in the volume.
    pub offset: u64,
    /// Offset on the disk.
    pub disk_offset: u64,
    pub len: u64,
}

/// A part of the disk read as one device: a partition, the whole disk, or a logical volume
/// made of several runs.
#[derive(Clone)]
pub struct Volume {
    pub(crate) disk: Arc<Disk>,
    /// Its length in bytes.
    pub len: u64,
    /// The runs, in volume order, covering `[0, len)` without gaps; each lies on the disk.
    spans: Arc<[Span]>,
}

impl Volume {
    /// The window `[start, start + len)`, which must lie inside the disk.
    pub fn new(disk: Arc<Disk>, start: u64, len: u64) -> Result<Volume> {
        Volume::mapped(
            disk,
            vec![Span {
                offset: 0,
                disk_offset: start,
                len,
            }],
        )
    }

    /// A volume of `spans` (in order, without gaps from 0), each inside the disk.
    pub(crate) fn mapped(disk: Arc<Disk>, spans: Vec<Span>) -> Result<Volume> {
        let mut len = 0u64;
        for s in &spans {
            if s.offset != len
                || s.disk_offset
                    .checked_add(s.len)
                    .is_none_or(|e| e > disk.size())
            {
                return Err(Error::malformed(
                    "volume",
                    s.disk_offset,
                    format!("{} bytes do not fit on the disk", s.len),
                ));
            }
            len += s.len;
        }
        Ok(Volume {
            disk,
            len,
            spans: spans.into(),
        })
    }

    /// The whole disk.
    pub fn whole(disk: Arc<Disk>) -> Volume {
        let len = disk.size();
        let spans = vec![Span {
            offset: 0,
            disk_offset: 0,
            len,
        }];
        Volume {
            disk,
            len,
            spans: spans.into(),
        }
    }

    /// Where volume offset `offset` lies on the disk (for a volume of one span).
    pub fn disk_offset(&self, offset: u64) -> Option<u64> {
        let i = self.spans.partition_point(|s| s.offset + s.len <= offset);
        let s = self.spans.get(i)?;
        (s.offset <= offset).then(|| s.disk_offset + (offset - s.offset))
    }

    /// Fills `buf` from volume offset `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::truncated(
                "volume",
                offset,
                len,
                self.len.saturating_sub(offset),
            ));
        }
        let mut done = 0usize;
        let mut i = self.spans.partition_point(|s| s.offset + s.len <= offset);
        while done < buf.len() {
            let pos = offset + done as u64;
            let Some(s) = self.spans.get(i) else {
                return Err(Error::truncated("volume", pos, len - done as u64, 0));
            };
            let in_span = pos - s.offset;
            let n = usize::try_from(s.len - in_span)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            self.disk
                .read_at(&mut buf[done..done + n], s.disk_offset + in_span)?;
            done += n;
            i += 1;
        }
        Ok(())
    }

    /// `len` bytes at `offset`, or `None` when they lie past the volume's end.
    pub fn read_vec(&self, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.len)
        {
            return Ok(None);
        }
        let mut buf = vec![0u8; len];
        self.read_at(&mut buf, offset)?;
        Ok(Some(buf))
    }

    /// A `Read + Seek` cursor over the volume, for the file-system crates.
    pub fn cursor(&self) -> VolumeCursor {
        VolumeCursor {
            volume: self.clone(),
            pos: 0,
        }
    }
}

/// A volume with a position. Writing is refused: inspection never changes the image.
pub struct VolumeCursor {
    volume: Volume,
    pos: u64,
}

impl Read for VolumeCursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.volume.len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.volume.len - self.pos) as usize;
        self.volume
            .read_at(&mut buf[..n], self.pos)
            .map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for VolumeCursor {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.volume.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the volume",
            )),
        }
    }
}

impl Write for VolumeCursor {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "inspection is read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ext4_view::Ext4Read for Volume {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Volume::read_at(self, dst, start_byte).map_err(|e| Box::new(e) as _)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub use crate::block::MemoryDisk as MemDisk;

    pub fn mem_disk(bytes: Vec<u8>) -> Arc<Disk> {
        Disk::new(Arc::new(MemDisk(bytes)))
    }

    #[test]
    fn reads_across_pages_and_refuses_past_the_end() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let disk = mem_disk(bytes.clone());
        let mut buf = vec![0u8; 70_000];
        disk.read_at(&mut buf, 60_000).unwrap();
        assert_eq!(buf, bytes[60_000..130_000]);
        assert!(disk.read_at(&mut buf, 150_000).is_err());
        let vol = Volume::new(disk.clone(), 1000, 5000).unwrap();
        let mut b = [0u8; 10];
        vol.read_at(&mut b, 4990).unwrap();
        assert_eq!(b[..], bytes[5990..6000]);
        assert!(vol.read_at(&mut b, 4991).is_err());
        assert!(Volume::new(disk.clone(), 199_000, 2000).is_err());
        // Two runs, the second before the first on the disk.
        let span = |offset, disk_offset, len| Span {
            offset,
            disk_offset,
            len,
        };
        let lv = Volume::mapped(
            disk.clone(),
            vec![span(0, 100_000, 100), span(100, 50, 100)],
        )
        .unwrap();
        assert_eq!(lv.len, 200);
        let mut b = [0u8; 20];
        lv.read_at(&mut b, 90).unwrap();
        assert_eq!(b[..10], bytes[100_090..100_100]);
        assert_eq!(b[10..], bytes[50..60]);
        assert!(Volume::mapped(disk, vec![span(0, 0, 10), span(11, 0, 10)]).is_err());
    }

    #[test]
    fn cursor_reads_to_the_end_and_refuses_writes() {
        let disk = mem_disk(vec![7u8; 4096]);
        let mut c = Volume::new(disk, 4000, 96).unwrap().cursor();
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 96);
        assert!(c.seek(SeekFrom::Current(-100)).is_err());
        assert!(c.write(b"x").is_err());
    }
}
