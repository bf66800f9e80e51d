//! Making a writer for an output format: [`CreateOptions`], the command-line adapter that
//! reads qemu-img's `-o` options into each format's typed options, and [`create`].

use crate::block::BlockWriter;
use crate::drivers::{FormatOptions, Target, driver};
use crate::error::{Error, Result};
use crate::formats::Format;
use crate::partial::Staging;

/// How to create an output image.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The output format's own options; `None` takes the format's defaults.
    pub format: Option<FormatOptions>,
    /// Sync the output to stable storage before `finish` returns.
    pub durable: bool,
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
    (driver(format).create)(format, target, virtual_size, typed, files)
}
