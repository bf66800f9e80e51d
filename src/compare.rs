//! Content comparison of two disks, as `qemu-img compare` does it.
//!
//! Both disks are read front to back as chunk streams, so any pair of formats compares, stream-only
//! ones included; ranges that are zero in both are never read.

use bytes::Bytes;

use crate::block::{Chunk, ChunkStream, is_zero};
use crate::error::{Error, Result};

/// The outcome of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Comparison {
    /// Same content (and, when the sizes differ, the larger disk's extra bytes are all zeros).
    Identical {
        /// The disks differ in size (the extra bytes being zeros).
        size_mismatch: bool,
    },
    /// The first byte that differs; qemu-img reports the 512-byte sector holding it.
    Differ {
        /// Offset of that byte in the virtual disk.
        offset: u64,
    },
    /// Strict mode only: the sizes differ.
    SizeMismatch,
}

/// Compares two disks. In `strict` mode a size difference is a difference in itself.
pub fn compare(
    a: &mut dyn ChunkStream,
    b: &mut dyn ChunkStream,
    strict: bool,
) -> Result<Comparison> {
    let (size_a, size_b) = (a.virtual_size(), b.virtual_size());
    if strict && size_a != size_b {
        return Ok(Comparison::SizeMismatch);
    }
    let mut ca = Cursor::new(a);
    let mut cb = Cursor::new(b);
    let common = size_a.min(size_b);
    while ca.pos < common {
        let (Some(x), Some(y)) = (ca.peek()?, cb.peek()?) else {
            return Err(Error::malformed(
                "chunk stream",
                ca.pos,
                "stream ended before the disk",
            ));
        };
        let n = x.length.min(y.length).min(common - ca.pos);
        let diff = match (&x.data, &y.data) {
            (None, None) => None,
            (Some(d), None) | (None, Some(d)) => first_non_zero(&d[..n as usize]),
            (Some(d), Some(e)) => d[..n as usize]
                .iter()
                .zip(&e[..n as usize])
                .position(|(p, q)| p != q),
        };
        if let Some(i) = diff {
            return Ok(Comparison::Differ {
                offset: ca.pos + i as u64,
            });
        }
        ca.advance(n);
        cb.advance(n);
    }
    // The tail of the larger disk must read as zeros.
    let longer = if size_a > size_b { &mut ca } else { &mut cb };
    while let Some(c) = longer.peek()? {
        if let Some(d) = &c.data
            && let Some(i) = first_non_zero(d)
        {
            return Ok(Comparison::Differ {
                offset: c.offset + i as u64,
            });
        }
        let n = c.length;
        longer.advance(n);
    }
    Ok(Comparison::Identical {
        size_mismatch: size_a != size_b,
    })
}

fn first_non_zero(d: &[u8]) -> Option<usize> {
    if is_zero(d) {
        None
    } else {
        d.iter().position(|&b| b != 0)
    }
}

/// A stream position that can consume part of a chunk.
struct Cursor<'a> {
    stream: &'a mut dyn ChunkStream,
    current: Option<Chunk>,
    pos: u64,
}

impl<'a> Cursor<'a> {
    fn new(stream: &'a mut dyn ChunkStream) -> Self {
        Cursor {
            stream,
            current: None,
            pos: 0,
        }
    }

    fn peek(&mut self) -> Result<Option<Chunk>> {
        if self.current.is_none() {
            match self.stream.next_chunk()? {
                Some(c) if c.offset == self.pos && c.length > 0 => self.current = Some(c),
                Some(c) => {
                    return Err(Error::malformed(
                        "chunk stream",
                        c.offset,
                        format!("chunk does not follow at {}", self.pos),
                    ));
                }
                None => return Ok(None),
            }
        }
        Ok(self.current.clone())
    }

    fn advance(&mut self, n: u64) {
        if let Some(c) = self.current.take()
            && n < c.length
        {
            self.current = Some(Chunk {
                offset: c.offset + n,
                length: c.length - n,
                data: c.data.map(|d: Bytes| d.slice(n as usize..)),
            });
        }
        self.pos += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream from a list of chunks given as (data?, length).
    struct List(u64, std::vec::IntoIter<Chunk>);
    impl ChunkStream for List {
        fn virtual_size(&self) -> u64 {
            self.0
        }
        fn next_chunk(&mut self) -> Result<Option<Chunk>> {
            Ok(self.1.next())
        }
    }

    fn stream(parts: &[(u8, u64)]) -> List {
        let mut chunks = Vec::new();
        let mut pos = 0;
        for &(fill, len) in parts {
            chunks.push(if fill == 255 {
                Chunk::zero(pos, len)
            } else {
                Chunk::data(pos, Bytes::from(vec![fill; len as usize]))
            });
            pos += len;
        }
        List(pos, chunks.into_iter())
    }

    #[test]
    fn equal_content_in_different_shapes_is_identical() {
        let mut a = stream(&[(1, 1000), (255, 3000), (0, 96)]);
        let mut b = stream(&[(1, 500), (1, 500), (0, 1000), (255, 2096)]);
        assert_eq!(
            compare(&mut a, &mut b, false).unwrap(),
            Comparison::Identical {
                size_mismatch: false
            }
        );
    }

    #[test]
    fn finds_the_first_difference() {
        let mut a = stream(&[(1, 1000), (255, 3096)]);
        let mut b = stream(&[(1, 1000), (255, 2000), (7, 1096)]);
        assert_eq!(
            compare(&mut a, &mut b, false).unwrap(),
            Comparison::Differ { offset: 3000 }
        );
    }

    #[test]
    fn size_mismatch_with_zero_tail_is_identical_unless_strict() {
        let mut a = stream(&[(1, 1000)]);
        let mut b = stream(&[(1, 1000), (255, 1000), (0, 24)]);
        assert_eq!(
            compare(&mut a, &mut b, false).unwrap(),
            Comparison::Identical {
                size_mismatch: true
            }
        );
        let mut a = stream(&[(1, 1000)]);
        let mut b = stream(&[(1, 1000), (255, 1000)]);
        assert_eq!(
            compare(&mut a, &mut b, true).unwrap(),
            Comparison::SizeMismatch
        );
        let mut a = stream(&[(1, 1000), (255, 10), (9, 1)]);
        let mut b = stream(&[(1, 1000)]);
        assert_eq!(
            compare(&mut a, &mut b, false).unwrap(),
            Comparison::Differ { offset: 1010 }
        );
    }
}
