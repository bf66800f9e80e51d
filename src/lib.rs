//! `ims` reads, writes and converts virtual-disk images (raw, QCOW2, VMDK, VHD, ZVHD, ZVHD2).
//!
//! Every format is, to the rest of the crate, a disk of `virtual_size` bytes (see [`block`]).
//! [`open`] probes and opens an image, [`create`] makes a writer for an output format, and
//! [`convert`] copies one into the other through the parallel pipeline in [`convert`](mod@convert).
//!
//! ```
//! use ims::{CreateOptions, Format, OpenOptions, Target};
//! # fn main() -> ims::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let src = dir.path().join("disk.raw");
//! # std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
//! let image = ims::open(&src, &OpenOptions::default())?;
//! assert_eq!(image.format(), Format::Raw);
//! let out = dir.path().join("copy.raw");
//! let writer = ims::create(Format::Raw, Target::File(out.clone()), image.virtual_size(), &CreateOptions::default())?;
//! ims::convert(image, writer, &Default::default(), &mut |_progress| {})?;
//! assert_eq!(std::fs::read(&out).unwrap(), vec![7u8; 1 << 20]);
//! # Ok(()) }
//! ```

/// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod block;
pub mod cache;
pub mod cancel;
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
pub use resolve::References;
pub use storage::{FileStorage, MemoryStorage, Storage};

/// Registers the image file `file` as a private image of `scope` in the catalog under `home`
/// (an SQLite file and a store directory, made when absent) and returns its active record; see
/// [`register`](mod@register) for the flow, the rules and the rest of the catalog.
#[cfg(feature = "sqlite")]
pub fn register(
    home: &std::path::Path,
    scope: &register::Scope,
    file: &std::path::Path,
    request: &register::RegisterRequest,
) -> Result<register::Registered> {
    register::Ims::open(home)?.register(scope, file, request, &mut |_| {}, &CancelToken::new())
}
