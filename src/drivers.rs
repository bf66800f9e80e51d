//! The table of format drivers: for each format, how to open it from random-access storage,
//! how to read it from a stream where its layout allows, how to read its `-o` options, and how
//! to make its writer. [`open`](crate::open) and [`create`](crate::create()) only look formats
//! up here, so a new format is one folder under `formats/` and one entry in [`DRIVERS`].
//! Detection by signature lives in [`probe`](crate::probe), with the rules for files that look
//! like two formats.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::block::BlockWriter;
use crate::block::{BlockReader, Source};
use crate::error::{Error, ReferenceKind, Result};
use crate::formats::Format;
use crate::formats::iso::IsoLayout;
use crate::formats::qcow2::writer::{Qcow2CreateOptions, Qcow2Writer};
use crate::formats::qcow2::{Qcow2Header, Qcow2OpenOptions, Qcow2Reader};
use crate::formats::raw::{RawReader, RawStream, RawWriter};
use crate::formats::vdi::writer::StaticVdiWriter;
use crate::formats::vdi::{VdiCreateOptions, VdiWriter};
use crate::formats::vhd::footer::DiskType;
use crate::formats::vhd::writer::{DynamicWriter, FixedWriter, VhdCreateOptions};
use crate::formats::vhdx::writer::{
    DynamicWriter as VhdxDynamicWriter, FixedWriter as VhdxFixedWriter, VhdxCreateOptions,
};
use crate::formats::vmdk::writer::{
    self as vmdk_writer, FlatWriter, SparseWriter, Subformat, VmdkCreateOptions,
};
use crate::formats::vmdk::{StreamReader, StreamWriter};
use crate::formats::zvhd::{Zvhd2Reader, Zvhd2Writer, ZvhdCreateOptions, ZvhdStream, ZvhdWriter};
use crate::formats::{qcow1, qed, vdi, vhd, vhdx, vmdk};
use crate::io::{self, AppendSink, FileSink, Output};
use crate::partial::Staging;
use crate::resolve::{Reference, Resolver};
use crate::storage::Storage;

/// Where a writer writes.
#[non_exhaustive]
pub enum Target {
    /// A file, created or truncated.
    File(PathBuf),
    /// The process's standard output (only for formats that can be written front to back).
    Stdout,
    /// Any append-only sink of the caller's (an upload, a socket).
    Stream(Box<dyn AppendSink>),
}

/// The options of each output format, typed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum FormatOptions {
    /// QCOW2: cluster size, version, compression, lazy refcounts.
    Qcow2(Qcow2CreateOptions),
    /// VHD: fixed or dynamic, sizing.
    Vhd(VhdCreateOptions),
    /// VMDK: subformat, adapter, versions.
    Vmdk(VmdkCreateOptions),
    /// ZVHD and ZVHD2: block compression, pinned time and id.
    Zvhd(ZvhdCreateOptions),
    /// VHDX: fixed or dynamic, block and log sizes.
    Vhdx(VhdxCreateOptions),
    /// VDI: static or dynamic.
    Vdi(VdiCreateOptions),
}

impl From<VhdxCreateOptions> for FormatOptions {
    fn from(o: VhdxCreateOptions) -> Self {
        FormatOptions::Vhdx(o)
    }
}

impl From<VdiCreateOptions> for FormatOptions {
    fn from(o: VdiCreateOptions) -> Self {
        FormatOptions::Vdi(o)
    }
}

impl From<Qcow2CreateOptions> for FormatOptions {
    fn from(o: Qcow2CreateOptions) -> Self {
        FormatOptions::Qcow2(o)
    }
}

impl From<VhdCreateOptions> for FormatOptions {
    fn from(o: VhdCreateOptions) -> Self {
        FormatOptions::Vhd(o)
    }
}

impl From<VmdkCreateOptions> for FormatOptions {
    fn from(o: VmdkCreateOptions) -> Self {
        FormatOptions::Vmdk(o)
    }
}

impl From<ZvhdCreateOptions> for FormatOptions {
    fn from(o: ZvhdCreateOptions) -> Self {
        FormatOptions::Zvhd(o)
    }
}

impl FormatOptions {
    /// Reads qemu-img's `-o` pairs and `-c` for `format`; `None` for raw, which has no options.
    pub fn parse(
        format: Format,
        pairs: &[(String, String)],
        compress: bool,
    ) -> Result<Option<FormatOptions>> {
        (driver(format).options)(format, pairs, compress)
    }

    /// Whether these options are for `format`.
    pub(crate) fn fits(&self, format: Format) -> bool {
        matches!(
            (self, format),
            (FormatOptions::Qcow2(_), Format::Qcow2)
                | (FormatOptions::Vhd(_), Format::Vhd)
                | (FormatOptions::Vmdk(_), Format::Vmdk)
                | (FormatOptions::Zvhd(_), Format::Zvhd | Format::Zvhd2)
                | (FormatOptions::Vhdx(_), Format::Vhdx)
                | (FormatOptions::Vdi(_), Format::Vdi)
        )
    }
}

/// The file sink for a format whose writer must seek; pipes are refused.
pub(crate) fn seekable_sink(
    format: Format,
    target: Target,
    files: &mut Staging,
) -> Result<FileSink> {
    match target {
        Target::File(path) => files.create(&path),
        Target::Stdout | Target::Stream(_) => Err(Error::InvalidArgument(format!(
            "{format} images cannot be written to a pipe or stdout (the writer must seek); write to a file"
        ))),
    }
}

/// The sink for a writer that only appends.
pub(crate) fn append_sink(target: Target, files: &mut Staging) -> Result<Output> {
    Ok(match target {
        Target::File(path) => Output::File(files.create(&path)?),
        Target::Stdout => Output::Stream(Box::new(io::PipeSink::stdout())),
        Target::Stream(s) => Output::Stream(s),
    })
}

/// Opens a format's reader over random-access storage named `path`.
type OpenFn = fn(Arc<dyn Storage>, &Path, &Resolver) -> Result<Source>;
/// Opens a format's reader over a stream, given the disk size where the format needs it.
type StreamFn = fn(Box<dyn Read + Send>, Option<u64>) -> Result<Source>;
/// Reads qemu-img's `-o` pairs and `-c` into the format's typed options.
type OptionsFn = fn(Format, &[(String, String)], bool) -> Result<Option<FormatOptions>>;
/// Makes the format's writer for a disk of the given size, its files created through the
/// staging area.
type CreateFn =
    fn(Format, Target, u64, Option<FormatOptions>, &mut Staging) -> Result<Box<dyn BlockWriter>>;

/// What ims knows how to do with one format.
pub(crate) struct Driver {
    /// The format.
    pub format: Format,
    /// Its reader over random-access storage.
    pub open: OpenFn,
    /// Its reader over a stream, for formats that can be read front to back.
    pub open_stream: Option<StreamFn>,
    /// Its option reader.
    pub options: OptionsFn,
    /// Its writer.
    pub create: CreateFn,
}

/// Every format, in [`Format::ALL`]'s order.
pub(crate) const DRIVERS: [Driver; 11] = [
    Driver {
        format: Format::Raw,
        open: |storage, _, _| Ok(Source::Random(Arc::new(RawReader::new(storage)))),
        open_stream: Some(open_raw_stream),
        options: raw_options,
        create: create_raw,
    },
    Driver {
        format: Format::Qcow2,
        open: |storage, path, resolver| random(open_qcow2(storage, path, resolver)),
        open_stream: None,
        options: |_, pairs, compress| typed(Qcow2CreateOptions::parse(pairs, compress)),
        create: create_qcow2,
    },
    Driver {
        format: Format::Vmdk,
        open: |storage, path, resolver| random(vmdk::open(storage, path, resolver)),
        open_stream: Some(|input, _| Ok(Source::Stream(Box::new(StreamReader::new(input)?)))),
        options: |_, pairs, compress| typed(VmdkCreateOptions::parse(pairs, compress)),
        create: create_vmdk,
    },
    Driver {
        format: Format::Vhd,
        open: |storage, path, resolver| random(vhd::open(storage, path, resolver)),
        open_stream: None,
        options: |_, pairs, compress| typed(VhdCreateOptions::parse(pairs, compress)),
        create: create_vhd,
    },
    Driver {
        format: Format::Vhdx,
        open: |storage, path, resolver| random(vhdx::open(storage, path, resolver)),
        open_stream: None,
        options: |_, pairs, compress| typed(VhdxCreateOptions::parse(pairs, compress)),
        create: create_vhdx,
    },
    Driver {
        format: Format::Zvhd,
        open: |storage, _, _| Ok(Source::Stream(Box::new(ZvhdStream::open(storage)?))),
        open_stream: Some(|input, _| Ok(Source::Stream(Box::new(ZvhdStream::new(input)?)))),
        options: zvhd_options,
        create: create_zvhd,
    },
    Driver {
        format: Format::Zvhd2,
        open: |storage, _, _| Ok(Source::Random(Arc::new(Zvhd2Reader::open(storage)?))),
        open_stream: None,
        options: zvhd_options,
        create: create_zvhd,
    },
    Driver {
        format: Format::Vdi,
        open: |storage, path, resolver| random(vdi::open(storage, path, resolver)),
        open_stream: None,
        options: |_, pairs, compress| typed(VdiCreateOptions::parse(pairs, compress)),
        create: create_vdi,
    },
    Driver {
        format: Format::Qed,
        open: |storage, path, resolver| random(qed::open(storage, path, resolver)),
        open_stream: None,
        options: read_only_options,
        create: create_read_only,
    },
    Driver {
        format: Format::Qcow,
        open: |storage, path, resolver| random(qcow1::open(storage, path, resolver)),
        open_stream: None,
        options: read_only_options,
        create: create_read_only,
    },
    Driver {
        format: Format::Iso,
        open: open_iso,
        open_stream: None,
        options: |_, _, _| Err(no_iso_writer()),
        create: |_, _, _, _, _| Err(no_iso_writer()),
    },
];

/// The formats ims reads but does not write.
fn read_only_options(
    format: Format,
    _: &[(String, String)],
    _: bool,
) -> Result<Option<FormatOptions>> {
    Err(Error::InvalidArgument(format!(
        "ims reads {format} images but does not write them"
    )))
}

fn create_read_only(
    format: Format,
    _: Target,
    _: u64,
    options: Option<FormatOptions>,
    _: &mut Staging,
) -> Result<Box<dyn BlockWriter>> {
    read_only_options(format, &[], false)?;
    Err(wrong_options(format, options))
}

fn create_vdi(
    format: Format,
    target: Target,
    size: u64,
    options: Option<FormatOptions>,
    files: &mut Staging,
) -> Result<Box<dyn BlockWriter>> {
    let Some(FormatOptions::Vdi(opts)) = options else {
        return Err(wrong_options(format, options));
    };
    if opts.static_image {
        Ok(Box::new(StaticVdiWriter::new(
            append_sink(target, files)?,
            size,
            &opts,
        )?))
    } else {
        let sink = seekable_sink(format, target, files)?;
        Ok(Box::new(VdiWriter::new(sink, size, &opts)?))
    }
}

/// An ISO image is read as the bytes it is, once its descriptor set and boot catalog check.
fn open_iso(storage: Arc<dyn Storage>, _: &Path, _: &Resolver) -> Result<Source> {
    IsoLayout::open(&*storage)?;
    Ok(Source::Random(Arc::new(RawReader::new(storage))))
}

fn no_iso_writer() -> Error {
    Error::unsupported(
        "writing iso images (ims reads and registers ISO 9660 images; it does not make them)",
    )
}

/// A random-access reader as a source.
fn random<R: BlockReader + 'static>(reader: Result<R>) -> Result<Source> {
    Ok(Source::Random(Arc::new(reader?)))
}

/// A format's typed options as the driver table holds them.
fn typed<T: Into<FormatOptions>>(options: Result<T>) -> Result<Option<FormatOptions>> {
    Ok(Some(options?.into()))
}

/// The driver of `format`.
pub(crate) fn driver(format: Format) -> &'static Driver {
    DRIVERS
        .iter()
        .find(|d| d.format == format)
        .unwrap_or(&DRIVERS[0])
}

fn open_raw_stream(input: Box<dyn Read + Send>, size: Option<u64>) -> Result<Source> {
    match size {
        Some(size) => Ok(Source::Stream(Box::new(RawStream::new(input, size)))),
        None => Err(Error::InvalidArgument(
            "a raw image read from a stream needs its size (Input::Stream's size)".into(),
        )),
    }
}

/// Opens a QCOW2 image with its backing disk, as `resolver` allows. An external data file is
/// refused: as a reference, or as unsupported where references may be followed.
fn open_qcow2(storage: Arc<dyn Storage>, path: &Path, resolver: &Resolver) -> Result<Qcow2Reader> {
    let header = Qcow2Header::read(&*storage)?;
    if resolver.follows() && header.data_file().is_some() {
        return Err(Error::unsupported(
            "qcow2 images with an external data file",
        ));
    }
    let mut qcow2_options = Qcow2OpenOptions::default();
    if let Some(name) = header.backing_file() {
        let mut reference = Reference::new(ReferenceKind::BackingFile, name);
        if resolver.follows() {
            reference.format = header
                .backing_format()
                .map(|f| {
                    f.parse::<Format>()
                        .map_err(|_| Error::unsupported(format!("backing file format '{f}'")))
                })
                .transpose()?;
        }
        qcow2_options.backing = Some(resolver.open_disk(&reference, path, header.header.size)?);
    }
    Qcow2Reader::open(storage, &qcow2_options)
}

fn raw_options(
    _: Format,
    pairs: &[(String, String)],
    compress: bool,
) -> Result<Option<FormatOptions>> {
    if let Some((k, _)) = pairs.first() {
        return Err(Error::InvalidArgument(format!(
            "format 'raw' has no option '{k}'"
        )));
    }
    if compress {
        return Err(Error::InvalidArgument(
            "raw images cannot be compressed".into(),
        ));
    }
    Ok(None)
}

/// ZVHD and ZVHD2 are always compressed; `-c` changes nothing.
fn zvhd_options(
    format: Format,
    pairs: &[(String, String)],
    _compress: bool,
) -> Result<Option<FormatOptions>> {
    Ok(Some(FormatOptions::Zvhd(ZvhdCreateOptions::parse(
        format == Format::Zvhd2,
        pairs,
    )?)))
}

/// The error for options that do not belong to the format being written.
fn wrong_options(format: Format, options: Option<FormatOptions>) -> Error {
    Error::InvalidArgument(format!("options {options:?} are not {format} options"))
}

fn create_raw(
    _: Format,
    target: Target,
    size: u64,
    options: Option<FormatOptions>,
    files: &mut Staging,
) -> Result<Box<dyn BlockWriter>> {
    match options {
        None => Ok(Box::new(RawWriter::new(append_sink(target, files)?, size))),
        other => Err(wrong_options(Format::Raw, other)),
    }
}

fn create_qcow2(
    format: Format,
    target: Target,
    size: u64,
    options: Option<FormatOptions>,
    files: &mut Staging,
) -> Result<Box<dyn BlockWriter>> {
    let Some(FormatOptions::Qcow2(opts)) = options else {
        return Err(wrong_options(format, options));
    };
    let sink = seekable_sink(format, target, files)?;
    Ok(Box::new(Qcow2Writer::new(sink, size, opts)?))
}

fn create_vhd(
    format: Format,
    target: Target,
    size: u64,
    options: Option<FormatOptions>,
    files: &mut Staging,
) -> Result<Box<dyn BlockWriter>> {
    let Some(FormatOptions::Vhd(opts)) = options else {
        return Err(wrong_options(format, options));
    };
    if opts.disk_type == DiskType::Fixed {
        Ok(Box::new(FixedWriter::new(
            append_sink(target, files)?,
            size,
            &opts,
        )?))
    } else {
        let sink = seekable_sink(format, target, files)?;
        Ok(Box::new(DynamicWriter::new(sink, size, &opts)?))
    }
}

fn create_vhdx(
    format: Format,
    target: Target,
    size: u64,
    options: Option<FormatOptions>,
    files: &mut Staging,
) -> Result<Box<dyn BlockWriter>> {
    let Some(FormatOptions::Vhdx(opts)) = options else {
        return Err(wrong_options(format, options));
    };
    if opts.fixed {
        Ok(Box::new(VhdxFixedWriter::new(
            append_sink(target, files)?,
            size,
            &opts,
        )?))
    } else {
        let sink = seekable_sink(format, target, files)?;
        Ok(Box::new(VhdxDynamicWriter::new(sink, size, &opts)?))
    }
}

fn create_zvhd(
    format: Format,
    target: Target,
    size: u64,
    options: Option<FormatOptions>,
    files: &mut Staging,
) -> Result<Box<dyn BlockWriter>> {
    let Some(FormatOptions::Zvhd(opts)) = options else {
        return Err(wrong_options(format, options));
    };
    let sink = append_sink(target, files)?;
    if format == Format::Zvhd2 {
        Ok(Box::new(Zvhd2Writer::new(sink, size, &opts)?))
    } else {
        Ok(Box::new(ZvhdWriter::new(sink, size, &opts)?))
    }
}

fn create_vmdk(
    format: Format,
    target: Target,
    size: u64,
    options: Option<FormatOptions>,
    files: &mut Staging,
) -> Result<Box<dyn BlockWriter>> {
    let Some(FormatOptions::Vmdk(opts)) = options else {
        return Err(wrong_options(format, options));
    };
    let capacity = vmdk_writer::capacity_for(size)?;
    let own = match &target {
        Target::File(path) => vmdk_writer::own_name(path),
        Target::Stdout | Target::Stream(_) => "disk.vmdk".into(),
    };
    let descriptor = opts.descriptor(capacity, &own).to_text();
    match opts.subformat {
        Subformat::StreamOptimized => Ok(Box::new(StreamWriter::new(
            append_sink(target, files)?,
            size,
            &descriptor,
        )?)),
        Subformat::MonolithicSparse => Ok(Box::new(SparseWriter::new(
            seekable_sink(format, target, files)?,
            size,
            &descriptor,
            opts.zeroed_grain,
        )?)),
        Subformat::MonolithicFlat => match target {
            Target::File(path) => {
                // The extent first: it is renamed into place before the descriptor that
                // names it.
                let extent = files.create(&FlatWriter::extent_path(&path)?)?;
                let descriptor = files.create(&path)?;
                Ok(Box::new(FlatWriter::new(
                    &path, size, &opts, extent, descriptor,
                )?))
            }
            Target::Stdout | Target::Stream(_) => Err(Error::InvalidArgument(
                "monolithicFlat VMDKs are two files; write to a file".into(),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_has_its_driver() {
        for (driver, format) in DRIVERS.iter().zip(Format::ALL) {
            assert_eq!(driver.format, format);
            assert_eq!(super::driver(format).format, format);
        }
    }

    #[test]
    fn stream_readers_only_where_the_layout_allows() {
        let streams: Vec<Format> = DRIVERS
            .iter()
            .filter(|d| d.open_stream.is_some())
            .map(|d| d.format)
            .collect();
        assert_eq!(streams, [Format::Raw, Format::Vmdk, Format::Zvhd]);
    }
}
