//! Making a writer for an output format: the typed options of each format, the command-line
//! adapter that reads qemu-img's `-o` options into them, and where the output goes.

use std::path::PathBuf;

use crate::block::BlockWriter;
use crate::error::{Error, Result};
use crate::formats::Format;
use crate::formats::qcow2::writer::{Qcow2CreateOptions, Qcow2Writer};
use crate::formats::raw::RawWriter;
use crate::formats::vhd::footer::DiskType;
use crate::formats::vhd::writer::{DynamicWriter, FixedWriter, VhdCreateOptions};
use crate::formats::vmdk::StreamWriter;
use crate::formats::vmdk::writer::{
    self as vmdk_writer, FlatWriter, SparseWriter, Subformat, VmdkCreateOptions,
};
use crate::formats::zvhd::{Zvhd2Writer, ZvhdCreateOptions, ZvhdWriter};
use crate::io::{self, AppendSink, FileSink, Output};
use crate::partial::Staging;

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

/// How to create an output image.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The output format's own options; `None` takes the format's defaults.
    pub format: Option<FormatOptions>,
    /// Sync the output to stable storage before `finish` returns.
    pub durable: bool,
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
}

impl CreateOptions {
    /// The command-line adapter: qemu-img's `-o key=value[,key=value...]` arguments and `-c`,
    /// read for `format`. A bare `key` means `key=on`, as qemu reads boolean options
    /// (`-o force_size`).
    pub fn from_args(format: Format, specs: &[String], compress: bool) -> Result<Self> {
        let mut pairs = Vec::new();
        for spec in specs {
            for part in spec.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = part.split_once('=').unwrap_or((part, "on"));
                if k.trim().is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "option '{part}' has no name"
                    )));
                }
                pairs.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        CreateOptions::from_pairs(format, &pairs, compress)
    }

    /// qemu-img's option names and values as pairs, and `-c`, read for `format`.
    pub fn from_pairs(format: Format, pairs: &[(String, String)], compress: bool) -> Result<Self> {
        Ok(CreateOptions {
            format: FormatOptions::parse(format, pairs, compress)?,
            durable: false,
        })
    }
}

impl FormatOptions {
    /// Reads qemu-img's `-o` pairs and `-c` for `format`; `None` for raw, which has no options.
    pub fn parse(
        format: Format,
        pairs: &[(String, String)],
        compress: bool,
    ) -> Result<Option<FormatOptions>> {
        Ok(Some(match format {
            Format::Raw => {
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
                return Ok(None);
            }
            Format::Qcow2 => FormatOptions::Qcow2(Qcow2CreateOptions::parse(pairs, compress)?),
            Format::Vhd => FormatOptions::Vhd(VhdCreateOptions::parse(pairs, compress)?),
            Format::Vmdk => FormatOptions::Vmdk(VmdkCreateOptions::parse(pairs, compress)?),
            // Both are always compressed; `-c` changes nothing.
            Format::Zvhd | Format::Zvhd2 => {
                FormatOptions::Zvhd(ZvhdCreateOptions::parse(format == Format::Zvhd2, pairs)?)
            }
        }))
    }

    /// Whether these options are for `format`.
    fn fits(&self, format: Format) -> bool {
        matches!(
            (self, format),
            (FormatOptions::Qcow2(_), Format::Qcow2)
                | (FormatOptions::Vhd(_), Format::Vhd)
                | (FormatOptions::Vmdk(_), Format::Vmdk)
                | (FormatOptions::Zvhd(_), Format::Zvhd | Format::Zvhd2)
        )
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
    let typed = match &options.format {
        Some(o) if !o.fits(format) => {
            return Err(Error::InvalidArgument(format!(
                "options {o:?} are not {format} options"
            )));
        }
        Some(o) => Some(o.clone()),
        None => FormatOptions::parse(format, &[], false)?,
    };
    match (format, typed) {
        (Format::Raw, _) => Ok(Box::new(RawWriter::new(
            append_sink(target, files)?,
            virtual_size,
        ))),
        (Format::Qcow2, Some(FormatOptions::Qcow2(opts))) => {
            let sink = seekable_sink(format, target, files)?;
            Ok(Box::new(Qcow2Writer::new(sink, virtual_size, opts)?))
        }
        (Format::Vhd, Some(FormatOptions::Vhd(opts))) => {
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
        (Format::Zvhd2, Some(FormatOptions::Zvhd(opts))) => Ok(Box::new(Zvhd2Writer::new(
            append_sink(target, files)?,
            virtual_size,
            &opts,
        )?)),
        (Format::Zvhd, Some(FormatOptions::Zvhd(opts))) => Ok(Box::new(ZvhdWriter::new(
            append_sink(target, files)?,
            virtual_size,
            &opts,
        )?)),
        (Format::Vmdk, Some(FormatOptions::Vmdk(opts))) => {
            let capacity = vmdk_writer::capacity_for(virtual_size)?;
            let own = match &target {
                Target::File(path) => vmdk_writer::own_name(path),
                Target::Stdout | Target::Stream(_) => "disk.vmdk".into(),
            };
            let descriptor = opts.descriptor(capacity, &own).to_text();
            match opts.subformat {
                Subformat::StreamOptimized => Ok(Box::new(StreamWriter::new(
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
        (format, typed) => Err(Error::internal(format!(
            "no writer for {format} with {typed:?}"
        ))),
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
