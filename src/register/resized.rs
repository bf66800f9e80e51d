//! A disk adapter: a disk cut or grown to another size.

use std::sync::Arc;

use crate::block::{BlockReader, Extent, ExtentState};
use crate::error::Result;

/// A disk cut or grown to `size` bytes; what lies past the inner disk reads as zeros.
pub(crate) struct Resized {
    pub(crate) inner: Arc<dyn BlockReader>,
    pub(crate) size: u64,
}

impl BlockReader for Resized {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::block::check_range(offset, buf.len() as u64, self.size)?;
        let inner = self.inner.virtual_size();
        let split = usize::try_from(inner.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (head, tail) = buf.split_at_mut(split);
        if !head.is_empty() {
            self.inner.read_at(head, offset)?;
        }
        tail.fill(0);
        Ok(())
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
        let inner = self.inner.virtual_size();
        let mut out = Vec::new();
        if offset < inner {
            out = self.inner.map(offset, end.min(inner) - offset)?;
        }
        let zero_from = offset.max(inner);
        if end > zero_from {
            out.push(Extent::new(zero_from, end - zero_from, ExtentState::Zero));
        }
        Ok(out)
    }
}
