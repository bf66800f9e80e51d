//! `ims` reads, writes and converts virtual-disk images (raw, QCOW2, VMDK, VHD, ZVHD, ZVHD2),
//! looks inside them (partitions, file systems, the guest's OS) and registers them in an image
//! catalog.
//!
//! # Layers
//!
//! Each layer uses only the ones below it; `ARCHITECTURE.md`, at the root of the repository, is
//! the full map (which module may use which, where each format lives).
//!
//! - **core**: [`block`] says what every format is to the rest of the crate, a disk of
//!   `virtual_size` bytes read through [`BlockReader`] (at any offset) or [`ChunkStream`] (front
//!   to back) and written through [`BlockWriter`]; [`storage`] reads an image's bytes from a
//!   file, from memory or from a caller's backend; [`io`] holds the sinks writers append to;
//!   [`error`] and [`limits`] the one error type and every parser cap.
//! - **formats**: [`formats`], one module per format with its structures, reader and writer.
//! - **open**: [`open()`], [`open_storage`] and [`open_stream`] probe and open an image;
//!   [`create()`] makes a writer. Files an image refers to (backing files, parents, extents) are
//!   opened only by [`resolve`], under the caller's [`References`] policy.
//! - **work**: [`convert()`] copies a disk into a writer through the parallel pipeline of
//!   [`convert`](mod@convert); [`compare`] compares two disks; [`inspect`] finds partitions, file
//!   systems and the guest OS (feature `inspect`).
//! - **service**: [`register`](mod@register), the image catalog with its rules (features
//!   `inspect` and, for the SQLite catalog, `sqlite`; for the PostgreSQL catalog, `postgres`).
//!
//! The `ims` command line (feature `cli`) is a face over these and adds nothing to them.
//!
//! # Convert to QCOW2, with progress and cancellation
//!
//! [`open()`] the source, [`create()`] a writer, [`convert()`] one into the other. The progress
//! callback sees how far the copy has got; the [`CancelToken`] in [`PipelineOptions`] stops it
//! from any thread, here from the callback itself, halfway. A conversion that fails or is
//! cancelled leaves no output behind: the writer works under a temporary name and removes it.
//!
//! ```
//! use ims::{CancelToken, CreateOptions, Error, Format, OpenOptions, PipelineOptions, Target};
//!
//! # fn main() -> ims::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let source = dir.path().join("disk.raw");
//! std::fs::write(&source, vec![0x5a; 8 << 20]).unwrap();
//! let output = dir.path().join("disk.qcow2");
//!
//! let image = ims::open(&source, &OpenOptions::default())?;
//! let writer = ims::create(
//!     Format::Qcow2,
//!     Target::File(output.clone()),
//!     image.virtual_size(),
//!     &CreateOptions::default(),
//! )?;
//! let cancel = CancelToken::new();
//! let options = PipelineOptions {
//!     cancel: cancel.clone(),
//!     piece_size: 1 << 20,
//!     ..Default::default()
//! };
//! let result = ims::convert(image, writer, &options, &mut |progress| {
//!     println!("{} of {} bytes", progress.done, progress.total);
//!     if progress.done * 2 >= progress.total {
//!         cancel.cancel();
//!     }
//! });
//!
//! assert!(matches!(result, Err(Error::Cancelled)));
//! // Neither the output nor its temporary is left: the directory holds the source alone.
//! assert!(!output.exists());
//! assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
//! # Ok(()) }
//! ```
//!
//! # Register into your own image store
//!
//! A service that keeps image data in its own backend (an object store, a database)
//! implements [`register::ImageStore`] for it and gives it, with a catalog, to the image
//! service in [`register`](mod@register); registration, replication and export then write and
//! read image data only through that store. `tests/library_store.rs` in the repository is such a
//! service, written against the public API alone: it registers, replicates, exports and
//! recovers through a store that keeps images in memory.
//!
//! # Inspect an image held in memory
//!
//! An image does not have to be a local file: [`open_storage`] reads any [`Storage`], here a
//! [`MemoryStorage`] holding a small disk with an MBR and one Linux partition, built on the spot.
//!
//! ```
//! use std::path::Path;
//! use std::sync::Arc;
//!
//! use ims::inspect::partitions::TableKind;
//! use ims::{MemoryStorage, OpenOptions};
//!
//! # fn main() -> ims::Result<()> {
//! // 4 MiB, with one partition table entry: a Linux partition (type 0x83) of 6144 sectors
//! // from sector 2048, and the boot signature.
//! let mut disk = vec![0u8; 4 << 20];
//! let entry = &mut disk[446..462];
//! entry[4] = 0x83;
//! entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
//! entry[12..16].copy_from_slice(&6144u32.to_le_bytes());
//! disk[510..512].copy_from_slice(&[0x55, 0xaa]);
//!
//! let storage = Arc::new(MemoryStorage::new(disk));
//! let image = ims::open_storage(storage, Path::new("memory.img"), &OpenOptions::default())?;
//! let found = ims::inspect::inspect(image.reader().unwrap())?;
//!
//! println!("{} image, {} partition table", image.format(), found.partition_table.name());
//! for p in &found.partitions {
//!     let part = &p.partition;
//!     let fs = p.volume.filesystem.map_or("none", |kind| kind.name());
//!     println!(
//!         "partition {}: {} bytes at {}, type {} ({}), file system {fs}",
//!         part.number, part.size, part.start, part.partition_type.id, part.partition_type.name,
//!     );
//! }
//! assert_eq!(found.partition_table, TableKind::Mbr);
//! assert_eq!(found.partitions.len(), 1);
//! assert_eq!(found.partitions[0].partition.start, 2048 * 512);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

/// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod block;
pub mod cache;
pub mod cancel;
mod cluster_set;
pub mod compare;
pub mod compress;
pub mod convert;
pub mod create;
mod drivers;
pub mod error;
pub mod formats;
#[cfg(feature = "inspect")]
pub mod inspect;
pub mod io;
pub mod limits;
pub mod mapped;
pub mod open;
mod partial;
pub mod probe;
#[cfg(feature = "inspect")]
pub mod register;
pub mod resolve;
#[cfg(feature = "server")]
pub mod server;
pub mod storage;

pub use block::{BlockReader, BlockWriter, Chunk, ChunkStream, Extent, ExtentState, Piece, Source};
pub use cancel::CancelToken;
pub use convert::{PipelineOptions, Progress, convert};
#[cfg(feature = "inspect")]
pub(crate) use create::create_writer;
pub use create::{CreateOptions, create};
pub use drivers::{FormatOptions, Target};
pub use error::{Error, ReferenceKind, Result};
pub use formats::Format;
pub use open::{
    CheckOutcome, Image, ImageInfo, Input, OpenOptions, check, open, open_input, open_storage,
    open_stream,
};
#[cfg(feature = "sqlite")]
pub use register::register_file as register;
pub use resolve::References;
pub use storage::{FileStorage, MemoryStorage, Storage};
