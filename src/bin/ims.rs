//! The `ims` command line: qemu-img's verbs and options over the `ims` library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ims::compare::Comparison;
use ims::{
    CancelToken, CreateOptions, Error, ExtentState, Format, OpenOptions, PipelineOptions, Progress,
    References, Target,
};

#[path = "ims/catalog.rs"]
mod catalog;
#[cfg(feature = "server")]
#[path = "ims/serve.rs"]
mod serve;

#[derive(Parser)]
#[command(
    name = "ims",
    version,
    about = "Read, write, convert and inspect virtual-disk images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OutputKind {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ProgressKind {
    /// A progress bar on the terminal (as -p).
    Bar,
    /// One JSON object per line on stderr, for services.
    Json,
}

#[derive(clap::Args)]
struct Input {
    /// The image's format (probed when not given).
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Follow references to other files (backing files, extents, parents) inside DIR only.
    #[arg(long, value_name = "DIR")]
    allow_references: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Show an image's format, sizes and format-specific details.
    Info {
        #[command(flatten)]
        input: Input,
        #[arg(long, value_enum, default_value = "human")]
        output: OutputKind,
        file: PathBuf,
    },
    /// Convert an image to another format (SRC `-` reads stdin with -f, DST `-` writes stdout,
    /// for formats that stream).
    Convert {
        #[command(flatten)]
        input: Input,
        /// The output format.
        #[arg(short = 'O', value_name = "FMT")]
        output_format: String,
        /// Output format options, key=value[,key=value...]; may be repeated.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Compress the output (formats that can).
        #[arg(short = 'c')]
        compress: bool,
        /// Draw a progress bar.
        #[arg(short = 'p')]
        progress_bar: bool,
        /// Report progress: `bar` on a terminal, or `json` lines on stderr.
        #[arg(long, value_enum, value_name = "KIND")]
        progress: Option<ProgressKind>,
        /// Worker threads (default: one per core).
        #[arg(short = 'j', value_name = "N", default_value_t = 0)]
        threads: usize,
        src: PathBuf,
        dst: String,
    },
    /// Compare two images' content: exit 0 when identical, 1 when they differ, 2 on error.
    Compare {
        /// The first image's format.
        #[arg(short = 'f', value_name = "FMT")]
        format_a: Option<String>,
        /// The second image's format.
        #[arg(short = 'F', value_name = "FMT")]
        format_b: Option<String>,
        /// Strict: images of different sizes differ.
        #[arg(short = 's')]
        strict: bool,
        /// Quiet: print nothing, only the exit code.
        #[arg(short = 'q')]
        quiet: bool,
        #[arg(long, value_name = "DIR")]
        allow_references: Option<PathBuf>,
        a: PathBuf,
        b: PathBuf,
    },
    /// Check an image's consistency: exit 0 clean, 2 corruptions, 3 leaked clusters only,
    /// 1 when it could not be checked, 63 when the format has nothing to check (as qemu-img).
    Check {
        #[command(flatten)]
        input: Input,
        #[arg(long, value_enum, default_value = "human")]
        output: OutputKind,
        file: PathBuf,
    },
    /// Show which ranges of the disk hold data, zeros or nothing.
    Map {
        #[command(flatten)]
        input: Input,
        #[arg(long, value_enum, default_value = "human")]
        output: OutputKind,
        file: PathBuf,
    },
    /// Show what the disk holds: partitions, file systems, and the guest OS (distribution,
    /// version, architecture, boot firmware, cloud-init, virtio drivers), read without mounting.
    Inspect {
        #[command(flatten)]
        input: Input,
        #[arg(long, value_enum, default_value = "human")]
        output: OutputKind,
        file: PathBuf,
    },
    /// Register an image file as a private image of the catalog (inspected, validated,
    /// stored as zvhd2) and print its record.
    Register(catalog::RegisterArgs),
    /// The image catalog: list, show, update, delete, share, unshare, members, accept,
    /// reject, copy (to another region), export.
    Images(catalog::ImagesArgs),
    /// Serve the image service over HTTP(S): the OpenStack Image API v2 and IMS's API, for
    /// the projects of a tokens file.
    #[cfg(feature = "server")]
    Serve(serve::ServeArgs),
}

/// A token the first SIGINT or SIGTERM cancels, so that an interrupted conversion,
/// registration, copy or export stops and the library removes what it was writing; a second
/// signal ends the process at once, as usual.
pub(crate) fn cancel_on_signals() -> CancelToken {
    static TOKEN: std::sync::OnceLock<CancelToken> = std::sync::OnceLock::new();
    extern "C" fn on_signal(_: libc::c_int) {
        // An atomic load and an atomic store: safe in a signal handler.
        if let Some(token) = TOKEN.get() {
            token.cancel();
        }
    }
    let token = TOKEN.get_or_init(CancelToken::new).clone();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only touches atomics, and
        // SA_RESETHAND restores the default action for the next signal.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    token
}

/// Lets a closed standard output end the process as it ends qemu-img and every C tool (`ims info
/// X | head`): Rust ignores SIGPIPE, so `println!` would panic on the broken pipe instead. Only
/// for the verbs that print to a terminal or a pipe; a long-running server must keep ignoring it.
fn default_sigpipe() {
    // SAFETY: restoring a signal's default action has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    default_sigpipe();
    // Usage errors exit 1, as qemu-img's do (clap's own convention is 2).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    match cli.command {
        Command::Compare {
            format_a,
            format_b,
            strict,
            quiet,
            allow_references,
            a,
            b,
        } => compare(format_a, format_b, strict, quiet, allow_references, a, b),
        Command::Check {
            input,
            output,
            file,
        } => check(input, output, file),
        Command::Register(args) => exit_code(catalog::register(args)),
        Command::Images(args) => exit_code(catalog::images(args)),
        #[cfg(feature = "server")]
        Command::Serve(args) => exit_code(serve::serve(args)),
        other => exit_code(run(other)),
    }
}

/// 0, or 1 with the error on stderr as `ims: ERROR` (a rule's refusal is `ims: CODE: message`).
fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ims: {e}");
            ExitCode::from(1)
        }
    }
}

fn open_options(
    format: Option<&str>,
    allow_references: Option<PathBuf>,
) -> ims::Result<OpenOptions> {
    Ok(OpenOptions {
        format: format.map(str::parse).transpose()?,
        references: allow_references.map_or(References::Deny, References::Confined),
    })
}

fn run(command: Command) -> ims::Result<()> {
    match command {
        Command::Info {
            input,
            output,
            file,
        } => {
            // info names references (backing files, parents) without opening them.
            let mut options = open_options(input.format.as_deref(), input.allow_references)?;
            if options.references == References::Deny {
                options.references = References::Defer;
            }
            let image = ims::open(&file, &options)?;
            let info = image.info();
            match output {
                OutputKind::Json => println!("{}", to_json(&info)?),
                OutputKind::Human => {
                    println!("image: {}", info.filename);
                    println!("file format: {}", info.format);
                    println!(
                        "virtual size: {} ({} bytes)",
                        human_size(info.virtual_size),
                        info.virtual_size
                    );
                    println!("disk size: {}", human_size(info.actual_size));
                    if let Some(fs) = &info.format_specific {
                        println!("Format specific information:");
                        let fs = serde_json::to_value(fs)
                            .map_err(|e| Error::InvalidArgument(format!("info: {e}")))?;
                        if let Some(data) = fs.get("data").and_then(|d| d.as_object()) {
                            for (k, v) in data {
                                println!("    {k}: {}", v.to_string().trim_matches('"'));
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Convert {
            input,
            output_format,
            options,
            compress,
            progress_bar,
            progress,
            threads,
            src,
            dst,
        } => {
            let out_format: Format = output_format.parse()?;
            let create = CreateOptions::from_args(out_format, &options, compress)?;
            let image = if src.as_os_str() == "-" {
                // Stdin can only be read front to back, and there is nothing to probe.
                let format = input
                    .format
                    .as_deref()
                    .ok_or_else(|| {
                        Error::InvalidArgument(
                            "reading an image from stdin (-) needs -f FMT".into(),
                        )
                    })?
                    .parse()?;
                ims::open_stream(Box::new(std::io::stdin()), format, "<stdin>")?
            } else {
                ims::open(
                    &src,
                    &open_options(input.format.as_deref(), input.allow_references)?,
                )?
            };
            let target = if dst == "-" {
                if std::io::stdout().is_terminal() {
                    return Err(Error::InvalidArgument(
                        "refusing to write an image to a terminal; redirect stdout".into(),
                    ));
                }
                Target::Stdout
            } else {
                Target::File(PathBuf::from(&dst))
            };
            let writer = ims::create(out_format, target, image.virtual_size(), &create)?;
            let kind = match (progress, progress_bar) {
                (Some(k), _) => Some(k),
                (None, true) => Some(ProgressKind::Bar),
                (None, false) => None,
            };
            let mut reporter = Reporter::new(kind, image.virtual_size());
            let pipeline = PipelineOptions {
                threads,
                cancel: cancel_on_signals(),
                ..Default::default()
            };
            // A failed or interrupted conversion leaves no output: the library removes it.
            let result = ims::convert(image, writer, &pipeline, &mut |p| reporter.report(p));
            reporter.finish();
            result
        }
        Command::Map {
            input,
            output,
            file,
        } => {
            let image = ims::open(
                &file,
                &open_options(input.format.as_deref(), input.allow_references)?,
            )?;
            let reader = match image.reader() {
                Some(reader) => reader,
                // One deflate stream: the map comes from the record heads, nothing is inflated.
                None if image.format() == Format::Zvhd => {
                    eprintln!(
                        "ims: zvhd map from the record heads; the blocks are not inflated or checked"
                    );
                    let storage = ims::FileStorage::open(&file)?;
                    std::sync::Arc::new(
                        ims::formats::zvhd::RecordMap::open(&storage)
                            .map_err(|e| e.in_file(&file))?,
                    )
                }
                None => {
                    return Err(ims::Error::unsupported(format!(
                        "{} images can only be read front to back; map needs random access",
                        image.format()
                    )));
                }
            };
            let size = reader.virtual_size();
            let mut stdout = std::io::stdout().lock();
            let io_err = |e| Error::io("write map", e);
            if output == OutputKind::Human {
                writeln!(
                    stdout,
                    "{:<16}{:<16}{:<16}File",
                    "Offset", "Length", "Mapped to"
                )
                .map_err(io_err)?;
            }
            let mut first = true;
            let mut pos = 0;
            const WINDOW: u64 = 1 << 30;
            let mut pending: Option<ims::Extent> = None;
            // Extents are merged across map windows, as qemu-img prints them.
            let mut emit = |e: &ims::Extent, out: &mut std::io::StdoutLock| -> ims::Result<()> {
                match output {
                    OutputKind::Json => {
                        let line = map_json(e);
                        let sep = if first { "[" } else { ",\n" };
                        first = false;
                        write!(out, "{sep}{line}").map_err(io_err)
                    }
                    OutputKind::Human => {
                        if let (ExtentState::Data, Some(host)) = (e.state, e.host_offset) {
                            writeln!(
                                out,
                                "{:<16}{:<16}{:<16}{}",
                                hex(e.start),
                                hex(e.length),
                                hex(host),
                                file.display()
                            )
                            .map_err(io_err)?;
                        }
                        Ok(())
                    }
                }
            };
            while pos < size {
                let len = WINDOW.min(size - pos);
                for e in reader.map(pos, len)? {
                    pending = match pending {
                        Some(p) => match ims::block::merge_extents([p, e]).as_slice() {
                            [merged] => Some(*merged),
                            _ => {
                                emit(&p, &mut stdout)?;
                                Some(e)
                            }
                        },
                        None => Some(e),
                    };
                }
                pos += len;
            }
            if let Some(p) = pending {
                emit(&p, &mut stdout)?;
            }
            if output == OutputKind::Json {
                writeln!(stdout, "{}]", if first { "[" } else { "" }).map_err(io_err)?;
            }
            Ok(())
        }
        Command::Inspect {
            input,
            output,
            file,
        } => {
            let image = ims::open(
                &file,
                &open_options(input.format.as_deref(), input.allow_references)?,
            )?;
            let facts = ims::inspect::inspect_image(&image).map_err(|e| e.in_file(&file))?;
            match output {
                OutputKind::Json => println!("{}", to_json(&facts)?),
                OutputKind::Human => print_inspection(&facts),
            }
            Ok(())
        }
        Command::Compare { .. }
        | Command::Check { .. }
        | Command::Register(_)
        | Command::Images(_) => Err(Error::InvalidArgument(
            "compare, check, register and images are run by main".into(),
        )),
        #[cfg(feature = "server")]
        Command::Serve(_) => Err(Error::InvalidArgument("serve is run by main".into())),
    }
}

/// `inspect`'s readable table: the partitions, then the guest's facts.
fn print_inspection(f: &ims::inspect::Inspection) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    let fs_name = |k: Option<ims::inspect::superblocks::FsKind>| k.map_or("-", |k| k.name());
    println!(
        "virtual size: {} ({} bytes)",
        human_size(f.virtual_size),
        f.virtual_size
    );
    println!("partition table: {}", f.partition_table.name());
    if !f.partitions.is_empty() {
        println!(
            "{:<4} {:>14} {:>10}  {:<28} {:<12} {:<16} UUID",
            "#", "Start", "Size", "Type", "Filesystem", "Label"
        );
        for p in &f.partitions {
            println!(
                "{:<4} {:>14} {:>10}  {:<28} {:<12} {:<16} {}{}",
                p.partition.number,
                p.partition.start,
                human_size(p.partition.size),
                p.partition.partition_type.name,
                fs_name(p.volume.filesystem),
                opt(&p.volume.label),
                opt(&p.volume.uuid),
                p.partition
                    .problem
                    .as_ref()
                    .map(|pr| format!("  ({pr})"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(w) = &f.whole_disk {
        println!(
            "whole disk: {} label {} uuid {}",
            fs_name(w.filesystem),
            opt(&w.label),
            opt(&w.uuid)
        );
    }
    for lv in &f.logical_volumes {
        println!(
            "logical volume {}: {} {} label {} uuid {}",
            lv.name,
            human_size(lv.size),
            fs_name(lv.volume.filesystem),
            opt(&lv.volume.label),
            opt(&lv.volume.uuid)
        );
    }
    let root = f.root_filesystem.as_ref().map(|r| {
        format!(
            "{} on {}",
            r.filesystem.name(),
            match (&r.logical_volume, r.partition) {
                (Some(lv), _) => format!("logical volume {lv}"),
                (None, Some(n)) => format!("partition {n}"),
                (None, None) => "the whole disk".to_string(),
            }
        )
    });
    let rows: [(&str, String); 15] = [
        ("image kind", format!("{:?}", f.image_kind).to_lowercase()),
        ("os type", format!("{:?}", f.os_type).to_lowercase()),
        ("distro", opt(&f.distro)),
        ("os version", opt(&f.os_version)),
        ("os build", opt(&f.os_build)),
        ("product name", opt(&f.product_name)),
        ("arch", f.arch.clone()),
        ("firmware", format!("{:?}", f.firmware).to_lowercase()),
        ("root filesystem", opt(&root)),
        ("hostname", opt(&f.hostname)),
        ("kernels", list(&f.kernels)),
        ("cloud-init", opt(&f.cloud_init_agent)),
        (
            "virtio",
            format!("{} ({})", f.virtio, list(&f.virtio_drivers)),
        ),
        ("efi loaders", list(&f.efi_loaders)),
        ("notes", list(&f.notes)),
    ];
    for (k, v) in rows {
        println!("{:<16} {v}", format!("{k}:"));
    }
    if let Some(iso) = &f.iso {
        println!("{:<16} {}", "iso label:", opt(&iso.volume_label));
        let boots: Vec<&str> = [(iso.bios, "bios"), (iso.uefi, "uefi")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        println!(
            "{:<16} {}",
            "iso boots:",
            list(&boots.iter().map(|b| b.to_string()).collect::<Vec<_>>())
        );
        if let Some(source) = iso.os_source {
            println!("{:<16} {source}", "iso os from:");
        }
        for e in &iso.boot_entries {
            let section = e
                .section
                .map_or("default".to_string(), |n| format!("section {n}"));
            println!(
                "{:<16} {section}: platform {:?} ({:#04x}), {}, {:?}, load sector {}, {} × 512 bytes",
                "boot entry:",
                e.platform,
                e.platform_id,
                if e.bootable {
                    "bootable"
                } else {
                    "not bootable"
                },
                e.emulation,
                e.load_rba,
                e.sector_count
            );
        }
    }
}

/// One line of `map --output json`, with qemu-img's keys in its order.
fn map_json(e: &ims::Extent) -> String {
    let (present, zero, data) = match e.state {
        ExtentState::Data => (true, false, true),
        ExtentState::Zero => (true, true, false),
        ExtentState::Hole => (true, true, true),
        // Not in this image (nor, where one is attached, in its backing chain).
        _ => (false, true, false),
    };
    let offset = match e.host_offset {
        Some(o) => format!(", \"offset\": {o}"),
        None => String::new(),
    };
    format!(
        "{{ \"start\": {}, \"length\": {}, \"depth\": 0, \"present\": {present}, \"zero\": {zero}, \"data\": {data}, \"compressed\": {}{offset}}}",
        e.start, e.length, e.compressed
    )
}

fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

fn to_json(v: &impl serde::Serialize) -> ims::Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::InvalidArgument(format!("JSON output: {e}")))
}

/// A size as qemu-img prints it: three significant digits and a binary unit.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{value:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s} {}", UNITS[unit])
}

/// Draws progress as a bar or as JSON lines.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    json: bool,
    last_percent: Option<u64>,
}

impl Reporter {
    fn new(kind: Option<ProgressKind>, total: u64) -> Self {
        let bar = (kind == Some(ProgressKind::Bar) && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Reporter {
            bar,
            json: kind == Some(ProgressKind::Json),
            last_percent: None,
        }
    }

    fn report(&mut self, p: Progress) {
        if let Some(bar) = &self.bar {
            bar.set_position(p.done);
        }
        if self.json {
            let percent = (p.done as u128 * 100)
                .checked_div(p.total as u128)
                .unwrap_or(100) as u64;
            if self.last_percent != Some(percent) {
                self.last_percent = Some(percent);
                eprintln!(
                    "{{\"done\": {}, \"total\": {}, \"percent\": {percent}}}",
                    p.done, p.total
                );
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

fn check(input: Input, output: OutputKind, file: PathBuf) -> ExitCode {
    let outcome = open_options(input.format.as_deref(), input.allow_references)
        .and_then(|options| ims::check(&file, &options));
    let report = match outcome {
        Ok(ims::CheckOutcome::Checked(r)) => r,
        Ok(ims::CheckOutcome::NotSupported(format)) => {
            eprintln!(
                "ims: {}: the {format} format has nothing to check",
                file.display()
            );
            return ExitCode::from(63);
        }
        Ok(_) => {
            eprintln!("ims: {}: an outcome this ims cannot print", file.display());
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("ims: {e}");
            return ExitCode::from(1);
        }
    };
    match output {
        OutputKind::Json => {
            let mut v = serde_json::to_value(&report).unwrap_or_default();
            v["filename"] = serde_json::json!(file.display().to_string());
            v["format"] = serde_json::json!(input.format.as_deref().unwrap_or("qcow2"));
            match to_json(&v) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("ims: {e}"),
            }
        }
        OutputKind::Human => {
            for m in &report.messages {
                println!("{m}");
            }
            if report.corruptions == 0 && report.leaks == 0 && report.check_errors == 0 {
                println!("No errors were found on the image.");
            }
            if report.corruptions > 0 {
                println!(
                    "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
                    report.corruptions
                );
            }
            if report.leaks > 0 {
                println!(
                    "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.",
                    report.leaks
                );
            }
            if report.total_clusters > 0 {
                // As qemu-img: allocation against the disk, the rest against what is allocated.
                let pct = |n: u64, of: u64| {
                    if of == 0 {
                        0.0
                    } else {
                        n as f64 * 100.0 / of as f64
                    }
                };
                let allocated = report.allocated_clusters;
                println!(
                    "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
                    allocated,
                    report.total_clusters,
                    pct(allocated, report.total_clusters),
                    pct(report.fragmented_clusters, allocated),
                    pct(report.compressed_clusters, allocated)
                );
            }
            if report.image_end_offset > 0 {
                println!("Image end offset: {}", report.image_end_offset);
            }
        }
    }
    ExitCode::from(if report.corruptions > 0 {
        2
    } else if report.leaks > 0 {
        3
    } else if report.check_errors > 0 {
        1
    } else {
        0
    })
}

fn compare(
    format_a: Option<String>,
    format_b: Option<String>,
    strict: bool,
    quiet: bool,
    allow_references: Option<PathBuf>,
    a: PathBuf,
    b: PathBuf,
) -> ExitCode {
    let result = (|| -> ims::Result<Comparison> {
        let ia = ims::open(
            &a,
            &open_options(format_a.as_deref(), allow_references.clone())?,
        )?;
        let ib = ims::open(&b, &open_options(format_b.as_deref(), allow_references)?)?;
        let piece = 2 << 20;
        let mut sa = ia.into_source().into_stream(piece);
        let mut sb = ib.into_source().into_stream(piece);
        ims::compare::compare(&mut sa, &mut sb, strict)
    })();
    match result {
        Ok(Comparison::Identical { size_mismatch }) => {
            if !quiet {
                if size_mismatch {
                    println!("Warning: Image size mismatch!");
                }
                println!("Images are identical.");
            }
            ExitCode::SUCCESS
        }
        Ok(Comparison::Differ { offset }) => {
            if !quiet {
                println!("Content mismatch at offset {}!", offset / 512 * 512);
            }
            ExitCode::from(1)
        }
        Ok(Comparison::SizeMismatch) => {
            if !quiet {
                println!("Strict mode: Image size mismatch!");
            }
            ExitCode::from(1)
        }
        Ok(_) => {
            eprintln!("ims: a comparison result this ims cannot print");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("ims: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_qemu_img() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(10000000), "9.54 MiB");
        assert_eq!(human_size(3 << 20), "3 MiB");
        assert_eq!(human_size(150 << 20), "150 MiB");
        assert_eq!(human_size(64 << 30), "64 GiB");
    }
}
