//! Opening an image: probe its format, open the format's reader over the image's storage, and
//! name the image in every error. The one place that knows which reader each format has.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::block::Source;
use crate::block::{BlockReader, Chunk, ChunkStream, Extent};
use crate::drivers::driver;
use crate::error::{Error, Result};
use crate::formats::Format;
use crate::formats::info::FormatInfo;
use crate::probe;
use crate::resolve::{References, Resolver};
use crate::storage::{FileStorage, Storage};

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The format, when the caller knows it; otherwise it is probed.
    pub format: Option<Format>,
    /// What to do with references to other files (backing files, extents, parents, data
    /// files): refused by default.
    pub references: References,
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
    /// The path, or the name given with a storage or stream, the image was opened under.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's format, probed or as named in the open options.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The size of the disk the image holds, in bytes.
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
            Source::Random(r) => r.info(),
            Source::Stream(s) => s.info(),
        };
        // qemu-img also puts these at the top level, where tools look for them.
        let backing = format_specific.as_ref().and_then(FormatInfo::backing_file);
        ImageInfo {
            virtual_size: self.virtual_size(),
            filename: self.path.display().to_string(),
            format: self.format.name(),
            actual_size: self.allocated,
            cluster_size: format_specific.as_ref().and_then(FormatInfo::cluster_size),
            backing_filename: backing.map(|(name, _)| name.to_string()),
            backing_filename_format: backing.and_then(|(_, f)| f.map(str::to_string)),
            dirty_flag: format_specific.as_ref().is_some_and(FormatInfo::dirty),
            format_specific,
        }
    }
}

/// `ims info`'s answer; the field names are qemu-img's.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// The disk's size in bytes.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    /// The path or name the image was opened under.
    pub filename: String,
    /// The format's name, as [`Format::name`] gives it.
    pub format: &'static str,
    /// Bytes the file occupies on disk.
    #[serde(rename = "actual-size")]
    pub actual_size: u64,
    /// The unit of allocation, for formats that have one.
    #[serde(rename = "cluster-size", skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// The backing file or parent the image names (not opened, not checked).
    #[serde(rename = "backing-filename", skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    /// The backing file's format, when the image records it.
    #[serde(
        rename = "backing-filename-format",
        skip_serializing_if = "Option::is_none"
    )]
    pub backing_filename_format: Option<String>,
    /// What only this format records.
    #[serde(rename = "format-specific", skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<FormatInfo>,
    /// The image was not closed cleanly (QCOW2's dirty bit); false for the other formats.
    #[serde(rename = "dirty-flag")]
    pub dirty_flag: bool,
}

/// Opens an image file, probing its format unless `options` names it.
pub fn open(path: &Path, options: &OpenOptions) -> Result<Image> {
    let storage = Arc::new(FileStorage::open(path)?);
    open_storage(storage, path, options)
}

/// Opens an image whose bytes `storage` serves (memory, an object store, a caller's cache),
/// probing its format unless `options` names it. `name` names the image in errors and is the
/// place relative to which references to other files are resolved, when they are allowed.
pub fn open_storage(
    storage: Arc<dyn Storage>,
    name: &Path,
    options: &OpenOptions,
) -> Result<Image> {
    open_with(
        storage,
        name,
        options.format,
        &Resolver::new(options.references.clone(), open_reference),
    )
}

/// Opens an image arriving on a stream (a pipe, stdin, an upload) that can only be read front
/// to back. The format must be named: there is nothing to probe without reading. Only formats
/// whose layout allows it can be read this way: streamOptimized VMDK and ZVHD (raw needs its
/// size: see [`Input::Stream`]).
pub fn open_stream(
    input: Box<dyn std::io::Read + Send>,
    format: Format,
    name: &str,
) -> Result<Image> {
    open_input(
        Input::Stream {
            reader: input,
            format,
            name: name.to_string(),
            size: None,
        },
        &OpenOptions::default(),
    )
}

/// Where an image's bytes come from.
#[non_exhaustive]
pub enum Input {
    /// A local file.
    Path(PathBuf),
    /// Bytes a caller's storage serves (memory, an object store, a cache); `name` names the
    /// image in errors and is where references are resolved from, when they are allowed.
    Storage {
        /// The image's bytes.
        storage: Arc<dyn Storage>,
        /// The image's name.
        name: String,
    },
    /// A byte stream read once, front to back (a pipe, an upload, a GET). Only formats whose
    /// layout allows it: streamOptimized VMDK, ZVHD, and raw when `size` is given.
    Stream {
        /// The bytes.
        reader: Box<dyn std::io::Read + Send>,
        /// The format: a stream cannot be probed.
        format: Format,
        /// The image's name, for errors.
        name: String,
        /// The disk size, which a raw stream needs.
        size: Option<u64>,
    },
}

impl From<PathBuf> for Input {
    fn from(path: PathBuf) -> Input {
        Input::Path(path)
    }
}

impl From<&Path> for Input {
    fn from(path: &Path) -> Input {
        Input::Path(path.to_path_buf())
    }
}

/// Opens an image from any [`Input`]. A stream of a format that needs random access is refused
/// with an error that says to spool it (to a file, or into a [`Storage`]).
pub fn open_input(input: Input, options: &OpenOptions) -> Result<Image> {
    match input {
        Input::Path(path) => open(&path, options),
        Input::Storage { storage, name } => open_storage(storage, Path::new(&name), options),
        Input::Stream {
            reader,
            format,
            name,
            size,
        } => {
            let path = PathBuf::from(&name);
            if let Some(f) = options.format
                && f != format
            {
                return Err(Error::InvalidArgument(format!(
                    "{name}: the stream is given as {format} and opened as {f}"
                )));
            }
            let source = stream_source(reader, format, size).map_err(|e| e.in_file(&path))?;
            Ok(Image {
                source: named(source, &path),
                path,
                format,
                file_length: 0,
                allocated: 0,
            })
        }
    }
}

/// The stream reader of `format`, where its layout allows one.
fn stream_source(
    input: Box<dyn std::io::Read + Send>,
    format: Format,
    size: Option<u64>,
) -> Result<Source> {
    match driver(format).open_stream {
        Some(open) => open(input, size),
        None => Err(Error::unsupported(format!(
            "{format} images need random access and cannot be read from a stream; spool the \
             stream to a file (Input::Path) or into a Storage (Input::Storage)"
        ))),
    }
}

/// Opens the image `storage` serves, named `path`, of `format` (probed when `None`), with
/// `resolver` deciding about its references.
pub(crate) fn open_with(
    storage: Arc<dyn Storage>,
    path: &Path,
    format: Option<Format>,
    resolver: &Resolver,
) -> Result<Image> {
    let file_length = storage.len();
    let allocated = storage.allocated().unwrap_or(0);
    let format = match format {
        // Naming the format does not make a polyglot safe to read (formats/probe.md).
        Some(f) => {
            probe::check_named_storage(&*storage, f).map_err(|e| e.in_file(path))?;
            f
        }
        None => probe::probe_storage(&*storage).map_err(|e| e.in_file(path))?,
    };
    let source = (driver(format).open)(storage, path, resolver).map_err(|e| e.in_file(path))?;
    Ok(Image {
        path: path.to_path_buf(),
        format,
        source: named(source, path),
        file_length,
        allocated,
    })
}

/// Opens the disk a reference leads to, for the [`Resolver`]: it must be random access.
fn open_reference(
    storage: Arc<dyn Storage>,
    path: &Path,
    format: Option<Format>,
    resolver: &Resolver,
) -> Result<Arc<dyn BlockReader>> {
    let image = open_with(storage, path, format, resolver)?;
    let described = image.format();
    image.reader().ok_or_else(|| {
        Error::unsupported(format!(
            "a {described} image another refers to (it can only be read front to back)"
        ))
        .in_file(path)
    })
}

/// What `ims check` found.
#[non_exhaustive]
pub enum CheckOutcome {
    /// The image was checked; the report lists what is wrong, if anything.
    Checked(crate::formats::qcow2::check::CheckReport),
    /// The format has nothing to check (raw), as qemu-img says of it.
    NotSupported(Format),
}

/// Checks an image's consistency: QCOW2 refcounts and tables in full (as `qemu-img check`);
/// for the other formats, every structure that opening and mapping the whole disk validates.
pub fn check(path: &Path, options: &OpenOptions) -> Result<CheckOutcome> {
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::open(path)?);
    let format = match options.format {
        // A named format meets the polyglot rule here too, as every other verb does.
        Some(f) => {
            probe::check_named_storage(&*storage, f).map_err(|e| e.in_file(path))?;
            f
        }
        None => probe::probe_storage(&*storage).map_err(|e| e.in_file(path))?,
    };
    match format {
        Format::Raw => Ok(CheckOutcome::NotSupported(format)),
        Format::Qcow2 => crate::formats::qcow2::check::check(&*storage)
            .map(CheckOutcome::Checked)
            .map_err(|e| e.in_file(path)),
        _ => {
            let resolver = Resolver::new(options.references.clone(), open_reference);
            let image = open_with(storage, path, Some(format), &resolver)?;
            let mut stream = image.into_source().into_stream(4 << 20);
            // Walking the stream validates every table the map consults (and, for stream-only
            // formats, every record).
            while stream.next_chunk()?.is_some() {}
            Ok(CheckOutcome::Checked(Default::default()))
        }
    }
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
    fn info(&self) -> Option<FormatInfo> {
        self.inner.info()
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
    fn info(&self) -> Option<FormatInfo> {
        self.inner.info()
    }
}
