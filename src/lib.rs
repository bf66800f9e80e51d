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

use std::path::PathBuf;

pub use block::{BlockReader, BlockWriter, Chunk, ChunkStream, Extent, ExtentState, Piece};
pub use cancel::CancelToken;
pub use convert::{PipelineOptions, Progress, Source};
pub use error::{Error, ReferenceKind, Result};
pub use formats::Format;
pub use open::{
    CheckOutcome, Image, ImageInfo, Input, OpenOptions, check, open, open_input, open_storage,
    open_stream,
};
pub use resolve::References;
pub use storage::{FileStorage, MemoryStorage, Storage};

use formats::raw::RawWriter;
use io::{AppendSink, FileSink, Output};
use partial::Staging;

/// Where a writer writes.
pub enum Target {
    /// A file, created or truncated.
    File(PathBuf),
    /// The process's standard output (only for formats that can be written front to back).
    Stdout,
    /// Any append-only sink of the caller's (an upload, a socket).
    Stream(Box<dyn AppendSink>),
}

/// How to create an output image: qemu-img's `-o key=value` options and `-c`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Format options, in the order given.
    pub options: Vec<(String, String)>,
    /// Compress the data (formats that can).
    pub compress: bool,
    /// Sync the output to stable storage before `finish` returns.
    pub durable: bool,
}

impl CreateOptions {
    /// Options from a command line: every `-o` argument, and `-c`.
    pub fn from_args(specs: &[String], compress: bool) -> Result<Self> {
        let mut options = CreateOptions {
            compress,
            ..Default::default()
        };
        for spec in specs {
            options.parse_options(spec)?;
        }
        Ok(options)
    }

    /// Parses qemu-img's `-o` syntax (`key=value[,key=value...]`) and adds the pairs. A bare
    /// `key` means `key=on`, as qemu reads boolean options (`-o force_size`).
    pub fn parse_options(&mut self, spec: &str) -> Result<()> {
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, "on"));
            if k.trim().is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "option '{part}' has no name"
                )));
            }
            self.options
                .push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(())
    }

    /// Fails on the first option not in `known`.
    fn check_known(&self, format: Format, known: &[&str]) -> Result<()> {
        match self
            .options
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            Some((k, _)) => Err(Error::InvalidArgument(format!(
                "format '{format}' has no option '{k}'{}",
                if known.is_empty() {
                    String::new()
                } else {
                    format!(" (known: {})", known.join(", "))
                }
            ))),
            None => Ok(()),
        }
    }
}

/// Makes a writer of `format` for a disk of `virtual_size` bytes.
///
/// A [`Target::File`] is written under a hidden temporary name beside it and renamed into
/// place when the writer's `finish` succeeds; a writer dropped unfinished (an error, a cancel,
/// a panic) removes what it wrote, so a failed conversion leaves no output (a file it would
/// have replaced stays as it was). A device or FIFO is written in place; a symbolic link is
/// followed (the file it names is replaced).
pub fn create(
    format: Format,
    target: Target,
    virtual_size: u64,
    options: &CreateOptions,
) -> Result<Box<dyn BlockWriter>> {
    create_writer(format, target, virtual_size, options, true)
}

/// [`create`], with the files of a [`Target::File`] written under their own names unless
/// `stage` (for a caller whose path is a temporary it cleans up itself).
pub(crate) fn create_writer(
    format: Format,
    target: Target,
    virtual_size: u64,
    options: &CreateOptions,
    stage: bool,
) -> Result<Box<dyn BlockWriter>> {
    let mut files = Staging::new(stage, options.durable);
    let writer = create_staged(format, target, virtual_size, options, &mut files)?;
    Ok(files.wrap(writer))
}

/// Makes the writer, its output files created through `files`.
fn create_staged(
    format: Format,
    target: Target,
    virtual_size: u64,
    options: &CreateOptions,
    files: &mut Staging,
) -> Result<Box<dyn BlockWriter>> {
    match format {
        Format::Raw => {
            options.check_known(format, &[])?;
            if options.compress {
                return Err(Error::InvalidArgument(
                    "raw images cannot be compressed".into(),
                ));
            }
            Ok(Box::new(RawWriter::new(
                append_sink(target, files)?,
                virtual_size,
            )))
        }
        Format::Qcow2 => {
            let opts = formats::qcow2::writer::Qcow2CreateOptions::parse(
                &options.options,
                options.compress,
            )?;
            let sink = seekable_sink(format, target, files)?;
            Ok(Box::new(formats::qcow2::writer::Qcow2Writer::new(
                sink,
                virtual_size,
                opts,
            )?))
        }
        Format::Vhd => {
            use formats::vhd::footer::DiskType;
            use formats::vhd::writer::{DynamicWriter, FixedWriter, VhdCreateOptions};
            let opts = VhdCreateOptions::parse(&options.options, options.compress)?;
            if opts.disk_type == DiskType::Fixed {
                Ok(Box::new(FixedWriter::new(
                    append_sink(target, files)?,
                    virtual_size,
                    &opts,
                )?))
            } else {
                let sink = seekable_sink(format, target, files)?;
                Ok(Box::new(DynamicWriter::new(sink, virtual_size, &opts)?))
            }
        }
        Format::Zvhd | Format::Zvhd2 => {
            use formats::zvhd::{Zvhd2Writer, ZvhdCreateOptions, ZvhdWriter};
            // Both are always compressed; `-c` changes nothing.
            let zvhd2 = format == Format::Zvhd2;
            let opts = ZvhdCreateOptions::parse(zvhd2, &options.options)?;
            let sink = append_sink(target, files)?;
            if zvhd2 {
                Ok(Box::new(Zvhd2Writer::new(sink, virtual_size, &opts)?))
            } else {
                Ok(Box::new(ZvhdWriter::new(sink, virtual_size, &opts)?))
            }
        }
        Format::Vmdk => {
            use formats::vmdk::writer::{FlatWriter, SparseWriter, Subformat, VmdkCreateOptions};
            let opts = VmdkCreateOptions::parse(&options.options, options.compress)?;
            let capacity = formats::vmdk::writer::capacity_for(virtual_size)?;
            let own = match &target {
                Target::File(path) => formats::vmdk::writer::own_name(path),
                Target::Stdout | Target::Stream(_) => "disk.vmdk".into(),
            };
            let descriptor = opts.descriptor(capacity, &own).to_text();
            match opts.subformat {
                Subformat::StreamOptimized => Ok(Box::new(formats::vmdk::StreamWriter::new(
                    append_sink(target, files)?,
                    virtual_size,
                    &descriptor,
                )?)),
                Subformat::MonolithicSparse => Ok(Box::new(SparseWriter::new(
                    seekable_sink(format, target, files)?,
                    virtual_size,
                    &descriptor,
                    opts.zeroed_grain,
                )?)),
                Subformat::MonolithicFlat => match target {
                    Target::File(path) => {
                        // The extent first: it is renamed into place before the descriptor
                        // that names it.
                        let extent = files.create(&FlatWriter::extent_path(&path)?)?;
                        let descriptor = files.create(&path)?;
                        Ok(Box::new(FlatWriter::new(
                            &path,
                            virtual_size,
                            &opts,
                            extent,
                            descriptor,
                        )?))
                    }
                    Target::Stdout | Target::Stream(_) => Err(Error::InvalidArgument(
                        "monolithicFlat VMDKs are two files; write to a file".into(),
                    )),
                },
            }
        }
    }
}

/// The file sink for a format whose writer must seek; pipes are refused.
fn seekable_sink(format: Format, target: Target, files: &mut Staging) -> Result<FileSink> {
    match target {
        Target::File(path) => files.create(&path),
        Target::Stdout | Target::Stream(_) => Err(Error::InvalidArgument(format!(
            "{format} images cannot be written to a pipe or stdout (the writer must seek); write to a file"
        ))),
    }
}

/// The sink for a writer that only appends.
fn append_sink(target: Target, files: &mut Staging) -> Result<Output> {
    Ok(match target {
        Target::File(path) => Output::File(files.create(&path)?),
        Target::Stdout => Output::Stream(Box::new(io::PipeSink::stdout())),
        Target::Stream(s) => Output::Stream(s),
    })
}

/// Converts `image` into `writer` (made by [`create`]) through the parallel pipeline.
pub fn convert(
    image: Image,
    writer: Box<dyn BlockWriter>,
    options: &PipelineOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    convert::run(image.into_source(), writer, options, progress)
}

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
