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
pub mod compare;
pub mod compress;
pub mod convert;
pub mod error;
pub mod formats;
#[cfg(feature = "inspect")]
pub mod inspect;
pub mod io;
pub mod limits;
pub mod probe;
pub mod references;
#[cfg(feature = "inspect")]
pub mod register;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

pub use block::{BlockReader, BlockWriter, Chunk, ChunkStream, Extent, ExtentState, Piece};
pub use convert::{PipelineOptions, Progress, Source};
pub use error::{Error, ReferenceKind, Result};
pub use formats::Format;

use formats::raw::{RawReader, RawWriter};
use io::{AppendSink, FileSink, Output};

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The format, when the caller knows it; otherwise it is probed.
    pub format: Option<Format>,
    /// The one directory inside which references to other files (backing files, extents,
    /// parents, data files) may be followed. `None` (the default) refuses every reference.
    pub allow_references: Option<PathBuf>,
    /// Open an image even when it refers to files that may not be followed; reading a range
    /// that needs one then fails with the `ExternalReference` error. For `info`, which names
    /// references without opening them.
    pub defer_references: bool,
}

/// An opened image: its format and its disk.
pub struct Image {
    path: PathBuf,
    format: Format,
    source: Source,
    file_length: u64,
    allocated: u64,
}

impl Image {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn virtual_size(&self) -> u64 {
        self.source.virtual_size()
    }

    /// The image file's length in bytes.
    pub fn file_length(&self) -> u64 {
        self.file_length
    }

    /// The random-access reader, for formats that have one.
    pub fn reader(&self) -> Option<Arc<dyn BlockReader>> {
        match &self.source {
            Source::Random(r) => Some(r.clone()),
            Source::Stream(_) => None,
        }
    }

    /// The disk as the pipeline's source.
    pub fn into_source(self) -> Source {
        self.source
    }

    /// What `ims info` reports, in qemu-img's JSON shape.
    pub fn info(&self) -> ImageInfo {
        let format_specific = match &self.source {
            Source::Random(r) => r.format_specific(),
            Source::Stream(s) => s.format_specific(),
        };
        // Formats with a dirty state (qcow2's dirty bit) report it in their data.
        let dirty_flag = format_specific
            .as_ref()
            .and_then(|f| f["data"]["dirty"].as_bool())
            .unwrap_or(false);
        // qemu-img also puts these at the top level, where tools look for them.
        let field = |key: &str| {
            format_specific
                .as_ref()
                .map(|f| f["data"][key].clone())
                .filter(|v| !v.is_null())
        };
        ImageInfo {
            virtual_size: self.virtual_size(),
            filename: self.path.display().to_string(),
            format: self.format.name(),
            actual_size: self.allocated,
            cluster_size: field("cluster-size").and_then(|v| v.as_u64()),
            backing_filename: field("backing-filename")
                .and_then(|v| v.as_str().map(str::to_string)),
            backing_filename_format: field("backing-filename-format")
                .and_then(|v| v.as_str().map(str::to_string)),
            format_specific,
            dirty_flag,
        }
    }
}

/// `ims info`'s answer; the field names are qemu-img's.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    pub filename: String,
    pub format: &'static str,
    /// Bytes the file occupies on disk.
    #[serde(rename = "actual-size")]
    pub actual_size: u64,
    #[serde(rename = "cluster-size", skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    #[serde(rename = "backing-filename", skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    #[serde(
        rename = "backing-filename-format",
        skip_serializing_if = "Option::is_none"
    )]
    pub backing_filename_format: Option<String>,
    #[serde(rename = "format-specific", skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<serde_json::Value>,
    #[serde(rename = "dirty-flag")]
    pub dirty_flag: bool,
}

/// Opens an image file, probing its format unless `options` names it.
pub fn open(path: &Path, options: &OpenOptions) -> Result<Image> {
    let file = io::open_input(path)?;
    open_file(file, path, options, 0)
}

/// Opens an image arriving on a stream (a pipe, stdin, an upload) that can only be read front
/// to back. The format must be named: there is nothing to probe without reading. Only formats
/// whose layout allows it can be read this way (streamOptimized VMDK, ZVHD, raw of a known size
/// cannot: its size is unknown).
pub fn open_stream(
    input: Box<dyn std::io::Read + Send>,
    format: Format,
    name: &str,
) -> Result<Image> {
    let source = stream_source(input, format).map_err(|e| e.in_file(Path::new(name)))?;
    Ok(Image {
        path: PathBuf::from(name),
        format,
        source: named(source, Path::new(name)),
        file_length: 0,
        allocated: 0,
    })
}

/// The stream reader of each format that has one.
fn stream_source(input: Box<dyn std::io::Read + Send>, format: Format) -> Result<Source> {
    match format {
        Format::Zvhd => Ok(Source::Stream(Box::new(formats::zvhd::ZvhdStream::new(
            input,
        )?))),
        Format::Vmdk => Ok(Source::Stream(Box::new(formats::vmdk::StreamReader::new(
            input,
        )?))),
        other => {
            drop(input);
            Err(Error::unsupported(format!(
                "{other} images cannot be read from a stream; give a file"
            )))
        }
    }
}

/// Opens the image in `file`, named `path`, which is `depth` levels down a backing chain.
pub(crate) fn open_file(
    file: std::fs::File,
    path: &Path,
    options: &OpenOptions,
    depth: usize,
) -> Result<Image> {
    let meta = file
        .metadata()
        .map_err(|e| Error::io("stat", e).in_file(path))?;
    let file_length = io::file_length(&file).map_err(|e| e.in_file(path))?;
    let format = match options.format {
        Some(f) => f,
        None => probe::probe_file(&file).map_err(|e| e.in_file(path))?,
    };
    let source = match format {
        Format::Raw => Source::Random(Arc::new(RawReader::new(file).map_err(|e| e.in_file(path))?)),
        Format::Qcow2 => Source::Random(Arc::new(
            open_qcow2(file, path, options, depth).map_err(|e| e.in_file(path))?,
        )),
        Format::Vhd => Source::Random(Arc::new(
            formats::vhd::open(
                file,
                path,
                options.allow_references.as_deref(),
                options.defer_references,
                depth,
            )
            .map_err(|e| e.in_file(path))?,
        )),
        Format::Zvhd => Source::Stream(Box::new(
            formats::zvhd::ZvhdStream::open(file).map_err(|e| e.in_file(path))?,
        )),
        Format::Zvhd2 => Source::Random(Arc::new(
            formats::zvhd::Zvhd2Reader::open(file).map_err(|e| e.in_file(path))?,
        )),
        Format::Vmdk => Source::Random(Arc::new(
            formats::vmdk::open(file, path, options, depth).map_err(|e| e.in_file(path))?,
        )),
    };
    use std::os::unix::fs::MetadataExt;
    Ok(Image {
        path: path.to_path_buf(),
        format,
        source: named(source, path),
        file_length,
        allocated: meta.blocks().saturating_mul(512),
    })
}

/// Opens a QCOW2 image, with its backing chain when `options` allow references. An external
/// data file is refused: by default as a reference, with references allowed as unsupported.
fn open_qcow2(
    file: std::fs::File,
    path: &Path,
    options: &OpenOptions,
    depth: usize,
) -> Result<formats::qcow2::Qcow2Reader> {
    use formats::qcow2::{Qcow2Header, Qcow2OpenOptions, Qcow2Reader};
    let mut qcow2_options = Qcow2OpenOptions::default();
    if options.allow_references.is_some() {
        let header = Qcow2Header::read(&file)?;
        if header.data_file().is_some() {
            return Err(Error::unsupported(
                "qcow2 images with an external data file",
            ));
        }
        if let Some(name) = header.backing_file() {
            qcow2_options.backing = Some(references::open_backing(
                name,
                header.backing_format(),
                path,
                options,
                depth,
            )?);
        }
    } else if options.defer_references {
        let header = Qcow2Header::read(&file)?;
        if let Some(name) = header.backing_file() {
            qcow2_options.backing = Some(Arc::new(references::RefusedReference::new(
                ReferenceKind::BackingFile,
                name,
                header.header.size,
            )));
        }
    }
    Qcow2Reader::open(file, &qcow2_options)
}

/// What `ims check` found.
pub enum CheckOutcome {
    /// The image was checked; the report lists what is wrong, if anything.
    Checked(formats::qcow2::check::CheckReport),
    /// The format has nothing to check (raw), as qemu-img says of it.
    NotSupported(Format),
}

/// Checks an image's consistency: QCOW2 refcounts and tables in full (as `qemu-img check`);
/// for the other formats, every structure that opening and mapping the whole disk validates.
pub fn check(path: &Path, options: &OpenOptions) -> Result<CheckOutcome> {
    let file = io::open_input(path)?;
    let format = match options.format {
        Some(f) => f,
        None => probe::probe_file(&file).map_err(|e| e.in_file(path))?,
    };
    match format {
        Format::Raw => Ok(CheckOutcome::NotSupported(format)),
        Format::Qcow2 => formats::qcow2::check::check(&file)
            .map(CheckOutcome::Checked)
            .map_err(|e| e.in_file(path)),
        _ => {
            let options = OpenOptions {
                format: Some(format),
                ..options.clone()
            };
            let image = open_file(file, path, &options, 0)?;
            let mut stream = image.into_source().into_stream(4 << 20);
            // Walking the stream validates every table the map consults (and, for stream-only
            // formats, every record).
            while stream.next_chunk()?.is_some() {}
            Ok(CheckOutcome::Checked(Default::default()))
        }
    }
}

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
pub fn create(
    format: Format,
    target: Target,
    virtual_size: u64,
    options: &CreateOptions,
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
                append_sink(target, options)?,
                virtual_size,
            )))
        }
        Format::Qcow2 => {
            let opts = formats::qcow2::writer::Qcow2CreateOptions::parse(
                &options.options,
                options.compress,
            )?;
            let sink = seekable_sink(format, target, options)?;
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
                    append_sink(target, options)?,
                    virtual_size,
                    &opts,
                )?))
            } else {
                let sink = seekable_sink(format, target, options)?;
                Ok(Box::new(DynamicWriter::new(sink, virtual_size, &opts)?))
            }
        }
        Format::Zvhd | Format::Zvhd2 => {
            use formats::zvhd::{Zvhd2Writer, ZvhdCreateOptions, ZvhdWriter};
            // Both are always compressed; `-c` changes nothing.
            let zvhd2 = format == Format::Zvhd2;
            let opts = ZvhdCreateOptions::parse(zvhd2, &options.options)?;
            let sink = append_sink(target, options)?;
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
                    append_sink(target, options)?,
                    virtual_size,
                    &descriptor,
                )?)),
                Subformat::MonolithicSparse => Ok(Box::new(SparseWriter::new(
                    seekable_sink(format, target, options)?,
                    virtual_size,
                    &descriptor,
                    opts.zeroed_grain,
                )?)),
                Subformat::MonolithicFlat => match target {
                    Target::File(path) => Ok(Box::new(FlatWriter::new(
                        &path,
                        virtual_size,
                        &opts,
                        options.durable,
                    )?)),
                    Target::Stdout | Target::Stream(_) => Err(Error::InvalidArgument(
                        "monolithicFlat VMDKs are two files; write to a file".into(),
                    )),
                },
            }
        }
    }
}

/// The file sink for a format whose writer must seek; pipes are refused.
fn seekable_sink(format: Format, target: Target, options: &CreateOptions) -> Result<FileSink> {
    match target {
        Target::File(path) => Ok(FileSink::create(&path)?.durable(options.durable)),
        Target::Stdout | Target::Stream(_) => Err(Error::InvalidArgument(format!(
            "{format} images cannot be written to a pipe or stdout (the writer must seek); write to a file"
        ))),
    }
}

/// The sink for a writer that only appends.
fn append_sink(target: Target, options: &CreateOptions) -> Result<Output> {
    Ok(match target {
        Target::File(path) => Output::File(FileSink::create(&path)?.durable(options.durable)),
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
    home: &Path,
    scope: &register::Scope,
    file: &Path,
    request: &register::RegisterRequest,
) -> Result<register::Registered> {
    register::Ims::open(home)?.register(scope, file, request, &mut |_| {})
}

/// Wraps a source so that its errors name `path`.
fn named(source: Source, path: &Path) -> Source {
    let path = path.to_path_buf();
    match source {
        Source::Random(inner) => Source::Random(Arc::new(NamedReader { path, inner })),
        Source::Stream(inner) => Source::Stream(Box::new(NamedStream { path, inner })),
    }
}

/// A reader whose errors name the file it reads.
struct NamedReader {
    path: PathBuf,
    inner: Arc<dyn BlockReader>,
}

impl BlockReader for NamedReader {
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner
            .read_at(buf, offset)
            .map_err(|e| e.in_file(&self.path))
    }
    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.inner
            .map(offset, len)
            .map_err(|e| e.in_file(&self.path))
    }
    fn format_specific(&self) -> Option<serde_json::Value> {
        self.inner.format_specific()
    }
}

/// A chunk stream whose errors name the file it reads.
struct NamedStream {
    path: PathBuf,
    inner: Box<dyn ChunkStream>,
}

impl ChunkStream for NamedStream {
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }
    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        self.inner.next_chunk().map_err(|e| e.in_file(&self.path))
    }
    fn format_specific(&self) -> Option<serde_json::Value> {
        self.inner.format_specific()
    }
}
