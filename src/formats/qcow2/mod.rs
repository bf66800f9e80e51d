//! QCOW2, qemu's copy-on-write image format (versions 2 and 3).
//!
//! - [`header`]: the first cluster: header fields, feature bits, header extensions, backing
//!   file name, and the checks of where the tables lie.
//! - [`tables`]: geometry, L1/L2 entries (standard, compressed, extended), refcounts and the
//!   snapshot table; pure decoding shared with the writer and the checker.
//! - [`reader`]: [`Qcow2Reader`], the [`BlockReader`](crate::block::BlockReader).
//! - [`writer`]: the writer.
//!
//! The format, in this project's words, is in `formats/qcow2.md`.

mod bitmaps;
pub mod check;
mod consistency;
pub mod geometry;
pub mod header;
pub mod info;
pub mod reader;
pub mod snapshot;
pub mod tables;
pub mod writer;

pub use header::{CompressionType, Qcow2Header};
pub use reader::{Qcow2OpenOptions, Qcow2Reader};
