//! The checksums of stored data: MD5 (Glance's `checksum`), SHA-256 and SHA-512 computed as the bytes are appended
//! ([`HashingSink`]), or by reading a stored object back ([`hash_storage`]).

use std::sync::{Arc, Mutex};

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};

use crate::cancel::CancelToken;
use crate::error::Result;
use crate::io::AppendSink;
use crate::storage::Storage;

use super::record::Checksum;

/// The SHA-256, SHA-512 and MD5 of bytes as they go by; clones share the state.
#[derive(Clone, Default)]
pub(crate) struct Hashes(Arc<Mutex<(Sha256, Sha512, Md5)>>);

impl Hashes {
    pub(crate) fn update(&self, data: &[u8]) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        h.0.update(data);
        h.1.update(data);
        h.2.update(data);
    }

    /// Hashes `len` zero bytes.
    pub(crate) fn update_zeros(&self, len: u64) {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64);
            self.update(&ZEROS[..n as usize]);
            left -= n;
        }
    }

    /// The checksums of everything so far.
    pub(crate) fn finish(&self) -> Checksum {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Checksum {
            sha256: hex(&h.0.clone().finalize()),
            sha512: hex(&h.1.clone().finalize()),
            md5: hex(&h.2.clone().finalize()),
        }
    }
}

/// Lower-case hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A sink that hashes what it appends before passing it on. `on_append` runs after each
/// append with the position reached (the crash-test hook's `mid-write`).
pub(crate) struct HashingSink<S> {
    pub(crate) inner: S,
    pub(crate) hashes: Hashes,
    pub(crate) on_append: Box<dyn Fn(u64) + Send + Sync>,
}

impl<S: AppendSink> AppendSink for HashingSink<S> {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.hashes.update(data);
        self.inner.append(data)?;
        (self.on_append)(self.inner.position());
        Ok(())
    }

    fn append_zeros(&mut self, len: u64) -> Result<()> {
        self.hashes.update_zeros(len);
        self.inner.append_zeros(len)
    }

    fn position(&self) -> u64 {
        self.inner.position()
    }

    fn finish(&mut self) -> Result<()> {
        self.inner.finish()
    }
}

/// Hashes all of `storage`; stops with [`Error::Cancelled`](crate::Error::Cancelled) between
/// reads once `cancel` is.
pub(crate) fn hash_storage(storage: &dyn Storage, cancel: &CancelToken) -> Result<Checksum> {
    let hashes = Hashes::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < storage.len() {
        cancel.check()?;
        let want = buf
            .len()
            .min(usize::try_from(storage.len() - at).unwrap_or(usize::MAX));
        crate::storage::read_exact_at(storage, &mut buf[..want], at, "stored image")?;
        hashes.update(&buf[..want]);
        at += want as u64;
    }
    Ok(hashes.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_and_read_back_hash_the_same() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut out = Vec::new();
        let hashes = Hashes::default();
        {
            let mut sink = HashingSink {
                inner: crate::io::PipeSink::new(&mut out),
                hashes: hashes.clone(),
                on_append: Box::new(|_| {}),
            };
            sink.append(&data).unwrap();
            sink.append_zeros(100_000).unwrap();
            sink.finish().unwrap();
        }
        let stored = crate::storage::MemoryStorage::new(out);
        let back = hash_storage(&stored, &CancelToken::new()).unwrap();
        assert_eq!(back, hashes.finish());
        let mut whole = data;
        whole.resize(whole.len() + 100_000, 0);
        assert_eq!(back.sha256, hex(&Sha256::digest(&whole)));
    }
}
