//! `ims register` and `ims images ...`: the image catalog's commands over `ims::register`.
//! This is the CLI adapter of the service's types: `--tag K=V` becomes a [`Tag`], and
//! `images update`'s flags and `--set FIELD=VALUE` a [`RecordUpdate`].

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ims::register::{
    ImageClass, ImageType, Ims, ListQuery, MemberStatus, Publication, RecordUpdate,
    RegisterRequest, Result, Scope, Status, Tag, replicate, rules,
};
use ims::{CreateOptions, Error, Format};

use super::{OutputKind, ProgressKind, Reporter, to_json};

/// Who asks, where, and where the catalog lives.
#[derive(Args)]
pub struct ScopeArgs {
    /// The project (env IMS_PROJECT, default `default`).
    #[arg(long, global = true, value_name = "P")]
    project: Option<String>,
    /// The region (env IMS_REGION, default `local`).
    #[arg(long, global = true, value_name = "R")]
    region: Option<String>,
    /// The data directory: catalog and stored images (env IMS_HOME, default `./ims-data`).
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Where the records are kept instead of `HOME/catalog.db`: `postgres://USER@HOST/DB` for
    /// a PostgreSQL database shared by several ims processes, or an SQLite file (env
    /// IMS_CATALOG). The stored images stay under the home directory.
    #[arg(long, global = true, value_name = "ADDRESS")]
    catalog: Option<String>,
    /// Where the image data is kept instead of `HOME/store/`: `s3://BUCKET/PREFIX` for an S3
    /// or S3-compatible object store (endpoint, region and credentials from the AWS_*
    /// variables), or a directory (env IMS_STORE).
    #[arg(long, global = true, value_name = "ADDRESS")]
    store: Option<String>,
    #[arg(long, global = true, value_enum, default_value = "human")]
    output: OutputKind,
}

impl ScopeArgs {
    fn scope(&self) -> Scope {
        let pick = |v: &Option<String>, var: &str, default: &str| {
            v.clone()
                .or_else(|| std::env::var(var).ok().filter(|s| !s.is_empty()))
                .unwrap_or_else(|| default.to_string())
        };
        Scope::new(
            &pick(&self.project, "IMS_PROJECT", "default"),
            &pick(&self.region, "IMS_REGION", "local"),
        )
    }

    fn open(&self) -> Result<Ims> {
        let home = self
            .home
            .clone()
            .or_else(|| std::env::var_os("IMS_HOME").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("ims-data"));
        let env = |v: &Option<String>, var: &str| {
            v.clone()
                .or_else(|| std::env::var(var).ok().filter(|s| !s.is_empty()))
        };
        match (
            env(&self.catalog, "IMS_CATALOG"),
            env(&self.store, "IMS_STORE"),
        ) {
            (Some(catalog), None) => Ims::open_with_catalog(&home, &catalog),
            (None, None) => Ims::open(&home),
            (catalog, Some(store)) => Ims::open_with(&home, catalog.as_deref(), Some(&store)),
        }
    }
}

#[derive(Args)]
pub struct RegisterArgs {
    /// The image file (raw, qcow2, vmdk, vhd, zvhd, zvhd2), or an uploaded object:
    /// `s3://BUCKET/KEY` or `BUCKET:KEY` (on the AWS_* variables' endpoint), or an `https://`
    /// URL such as a presigned link; for a full-ECS image, the server's system disk.
    file: PathBuf,
    /// Allow plain `http://` URLs (env IMS_ALLOW_HTTP=1): nothing protects the image on the way.
    #[arg(long)]
    allow_http: bool,
    /// 1 to 128 characters.
    #[arg(long)]
    name: String,
    /// system, data, iso or full-ecs.
    #[arg(long = "type", default_value = "system")]
    image_type: String,
    /// A data disk of the full-ECS image (--type full-ecs), in the server's order; repeated.
    #[arg(long = "data-disk", value_name = "FILE")]
    data_disks: Vec<PathBuf>,
    /// Also register FILE as a data-disk image, NAME-dataN, with the system image (--type
    /// system), all or nothing; up to 3.
    #[arg(long = "with-data-disk", value_name = "FILE")]
    with_data_disks: Vec<PathBuf>,
    /// The CBR backup the full-ECS image was made from (then it can be shared).
    #[arg(long, value_name = "ID")]
    backup_id: Option<String>,
    /// The OS version to record (default: what inspection finds); required for an ISO that
    /// does not say which OS and version it installs.
    #[arg(long)]
    os_version: Option<String>,
    /// x86_64 or aarch64, checked against the guest.
    #[arg(long)]
    architecture: Option<String>,
    /// bios or uefi, checked against the guest.
    #[arg(long)]
    firmware: Option<String>,
    /// GB (default: the disk's size).
    #[arg(long, value_name = "GB")]
    min_disk: Option<u64>,
    /// MiB.
    #[arg(long, value_name = "MB", default_value_t = 0)]
    min_ram: u64,
    #[arg(long, default_value = "")]
    description: String,
    /// KEY=VALUE; up to 10.
    #[arg(long = "tag", value_name = "K=V")]
    tags: Vec<String>,
    /// How the image is stored: zvhd2 (default), qcow2 or raw.
    #[arg(long, default_value = "zvhd2")]
    store_format: String,
    /// Record the image as encrypted with this key.
    #[arg(long, value_name = "KEY_ID")]
    kms_key: Option<String>,
    /// Report progress: `bar` on a terminal, or `json` lines on stderr.
    #[arg(long, value_enum, value_name = "KIND")]
    progress: Option<ProgressKind>,
    #[command(flatten)]
    scope: ScopeArgs,
}

#[derive(Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    command: ImagesCommand,
    #[command(flatten)]
    scope: ScopeArgs,
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// List the images the project sees: its own, public ones, and those shared with it.
    List {
        #[arg(long)]
        id: Option<String>,
        /// The exact name.
        #[arg(long)]
        name: Option<String>,
        /// A part of the name.
        #[arg(long)]
        name_contains: Option<String>,
        /// linux, windows, other.
        #[arg(long)]
        os_type: Option<String>,
        /// ubuntu, centos, windows, ...
        #[arg(long)]
        platform: Option<String>,
        /// system, data, full_ecs, iso.
        #[arg(long = "type")]
        image_type: Option<String>,
        /// private, shared, public or marketplace.
        #[arg(long)]
        visibility: Option<String>,
        /// As IMS's __imagetype: gold (public), private, shared, market.
        #[arg(long)]
        imagetype: Option<String>,
        /// queued, saving, active, killed.
        #[arg(long)]
        status: Option<String>,
        /// KEY or KEY=VALUE.
        #[arg(long)]
        tag: Option<String>,
        /// Images shared with the project in this state: pending, accepted, rejected.
        #[arg(long)]
        member_status: Option<String>,
        /// created_at (default), updated_at, name, min_disk, virtual_size, id.
        #[arg(long)]
        sort_key: Option<String>,
        /// asc or desc (default).
        #[arg(long, default_value = "desc")]
        sort_dir: String,
        #[arg(long)]
        limit: Option<usize>,
        /// The id of the last image of the previous page.
        #[arg(long)]
        marker: Option<String>,
    },
    /// Show one image with all its fields.
    Show { id: String },
    /// Change an image's name, description, min_disk, min_ram, tags or features.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, value_name = "GB")]
        min_disk: Option<u64>,
        #[arg(long, value_name = "MB")]
        min_ram: Option<u64>,
        /// Replace the tags (KEY=VALUE, repeated).
        #[arg(long = "tag", value_name = "K=V")]
        tags: Vec<String>,
        /// Remove every tag.
        #[arg(long)]
        clear_tags: bool,
        #[arg(long)]
        support_user_data: Option<bool>,
        #[arg(long)]
        support_disk_hotswap: Option<bool>,
        /// Any field as FIELD=VALUE (fields that describe the stored data are refused).
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        set: Vec<String>,
    },
    /// Delete an image (its members lose it at once; copies made of it stay).
    Delete { id: String },
    /// Offer an image to every project of the region: --public (operators only) or
    /// --marketplace --publisher NAME.
    Publish {
        id: String,
        /// A public image: visible to every project, protected, copyable (operators only).
        #[arg(
            long,
            conflicts_with = "marketplace",
            required_unless_present = "marketplace"
        )]
        public: bool,
        /// On the marketplace, under --publisher.
        #[arg(long, requires = "publisher")]
        marketplace: bool,
        /// The publisher's name (marketplace).
        #[arg(long, value_name = "NAME", requires = "marketplace")]
        publisher: Option<String>,
        /// A note on the price (marketplace).
        #[arg(long, value_name = "TEXT", requires = "marketplace")]
        price_note: Option<String>,
    },
    /// Withdraw a public or marketplace image (it becomes private; copies stay).
    Unpublish { id: String },
    /// Share an image with a project (pending until it accepts).
    Share {
        id: String,
        #[arg(long = "with", value_name = "PROJECT")]
        with: String,
        /// The member project's region (default: the image's).
        #[arg(long, value_name = "R")]
        member_region: Option<String>,
    },
    /// Stop sharing an image with a project.
    Unshare {
        id: String,
        #[arg(long = "with", value_name = "PROJECT")]
        with: String,
    },
    /// List an image's members.
    Members { id: String },
    /// Accept an image shared with the project.
    Accept { id: String },
    /// Reject an image shared with the project.
    Reject { id: String },
    /// Copy an image into a private image of the project: in the region, or replicated to
    /// --to-region (a new image there).
    Copy {
        id: String,
        /// Another region (default: a copy in this region).
        #[arg(long, value_name = "REGION")]
        to_region: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// A key of the target region, for an encrypted image.
        #[arg(long, value_name = "KEY_ID")]
        kms_key: Option<String>,
    },
    /// Export an image as a disk: FORMAT at OUT (a full-ECS image: one file per disk, the
    /// data disks at OUT's name with -data1, -data2, ... before its extension).
    Export {
        id: String,
        /// raw, qcow2, vhd, vmdk (or zvhd2).
        #[arg(short = 'O', value_name = "FMT")]
        output_format: String,
        /// Output format options, key=value[,key=value...].
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Compress (formats that can).
        #[arg(short = 'c')]
        compress: bool,
        /// The disk's size in GB (at least min_disk; default: the image's size).
        #[arg(long, value_name = "GB")]
        size: Option<u64>,
        out: PathBuf,
    },
}

fn parse<T: std::str::FromStr<Err = Error>>(v: &Option<String>) -> ims::Result<Option<T>> {
    v.as_deref().map(str::parse).transpose()
}

pub fn register(args: RegisterArgs) -> Result<()> {
    let ims = args.scope.open()?;
    let scope = args.scope.scope();
    // `full-ecs` as the IMS console writes it, `full_ecs` as the record does.
    let image_type: ImageType = args.image_type.replace('-', "_").parse()?;
    if !args.data_disks.is_empty() && image_type != ImageType::FullEcs {
        return Err(Error::InvalidArgument("--data-disk is for --type full-ecs".into()).into());
    }
    if !args.with_data_disks.is_empty() && image_type != ImageType::System {
        return Err(Error::InvalidArgument("--with-data-disk is for --type system".into()).into());
    }
    let mut request = RegisterRequest {
        description: args.description,
        os_version: args.os_version,
        architecture: args.architecture,
        firmware: args.firmware,
        min_disk: args.min_disk,
        min_ram: args.min_ram,
        store_format: args.store_format.parse()?,
        kms_key_id: args.kms_key,
        backup_id: args.backup_id,
        ..RegisterRequest::new(&args.name, image_type)
    };
    // `--tag K=V` as a Tag: the tag rules are checked as it is parsed.
    request.tags = args
        .tags
        .iter()
        .map(|t| t.parse())
        .collect::<Result<Vec<Tag>>>()?;
    let files = std::iter::once(&args.file)
        .chain(&args.data_disks)
        .chain(&args.with_data_disks);
    let total = files
        .map(|f| ims::open(f, &Default::default()).map_or(0, |i| i.virtual_size()))
        .sum();
    let mut reporter = Reporter::new(args.progress, total);
    let mut progress = |p| reporter.report(p);
    let cancel = super::cancel_on_signals();
    let input = input_of(&args.file, args.allow_http)?;
    let output = args.scope.output;
    if image_type == ImageType::FullEcs {
        let data = args
            .data_disks
            .iter()
            .map(|f| input_of(f, args.allow_http))
            .collect::<Result<Vec<_>>>()?;
        let result = ims.register_full_ecs(&scope, input, data, &request, &mut progress, &cancel);
        reporter.finish();
        let done = result?;
        warn(&done.warnings);
        return print_record(output, &done);
    }
    if !args.with_data_disks.is_empty() {
        // Each data disk an image of its own, NAME-dataN, stored and tagged as the system one.
        let data = args
            .with_data_disks
            .into_iter()
            .enumerate()
            .map(|(i, file)| {
                let name = format!("{}-data{}", request.name, i + 1);
                let data_request = RegisterRequest {
                    tags: request.tags.clone(),
                    store_format: request.store_format,
                    kms_key_id: request.kms_key_id.clone(),
                    ..RegisterRequest::new(&name, ImageType::Data)
                };
                Ok((input_of(&file, args.allow_http)?, data_request))
            })
            .collect::<Result<Vec<_>>>()?;
        let result =
            ims.register_with_data_images(&scope, input, &request, data, &mut progress, &cancel);
        reporter.finish();
        let done = result?;
        for r in std::iter::once(&done.system).chain(&done.data) {
            warn(&r.warnings);
        }
        return match output {
            OutputKind::Json => print_record(output, &done),
            OutputKind::Human => {
                print_record(output, &done.system)?;
                for r in &done.data {
                    println!();
                    print_record(output, r)?;
                }
                Ok(())
            }
        };
    }
    let result = ims.register(&scope, input, &request, &mut progress, &cancel);
    reporter.finish();
    let done = result?;
    warn(&done.warnings);
    print_record(output, &done)
}

fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("ims: warning: {w}");
    }
}

/// `--visibility`'s values as the classes they select: `public` and `marketplace` name the
/// images offered to every project (IMS's `gold` and `market`).
fn visibility_class(v: &str) -> Result<ImageClass> {
    Ok(match v {
        "public" => ImageClass::Gold,
        "marketplace" => ImageClass::Market,
        "private" => ImageClass::Private,
        "shared" => ImageClass::Shared,
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown visibility '{other}' (known: private, shared, public, marketplace)"
            ))
            .into());
        }
    })
}

/// `K=V,K=V` as tags (empty items skipped).
fn parse_tag_list(value: &str) -> Result<Vec<Tag>> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

/// `--set FIELD=VALUE` into `update` (a later value of a field replaces an earlier one): a
/// field that cannot change is refused with `field_immutable`.
fn set_field(update: &mut RecordUpdate, field: &str, value: &str) -> Result<()> {
    rules::check_mutable(field)?;
    let number = |v: &str| {
        v.parse::<u64>().map_err(|_| {
            Error::InvalidArgument(format!("{field} must be a whole number, not '{v}'"))
        })
    };
    let flag = |v: &str| match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::InvalidArgument(format!(
            "{field} must be true or false, not '{v}'"
        ))),
    };
    match field {
        "name" => update.name = Some(value.to_string()),
        "description" => update.description = Some(value.to_string()),
        "min_disk" => update.min_disk = Some(number(value)?),
        "min_ram" => update.min_ram = Some(number(value)?),
        "tags" => update.tags = Some(parse_tag_list(value)?),
        "support_user_data" => update.support_user_data = Some(flag(value)?),
        "support_disk_hotswap" => update.support_disk_hotswap = Some(flag(value)?),
        other => {
            return Err(Error::internal(format!(
                "--set {other}: a changeable field this command does not know"
            ))
            .into());
        }
    }
    Ok(())
}

fn print_record(output: OutputKind, v: &impl serde::Serialize) -> Result<()> {
    match output {
        OutputKind::Json => println!("{}", to_json(v)?),
        OutputKind::Human => {
            let value = serde_json::to_value(v)
                .map_err(|e| Error::InvalidArgument(format!("cannot encode the record: {e}")))?;
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            if let Some(map) = value.as_object() {
                for (k, v) in map {
                    // One level of nesting (checksum, features, tags) as `key.sub`.
                    match v.as_object() {
                        Some(inner) if !inner.is_empty() => {
                            for (sub, v) in inner {
                                println!("{:<31} {}", format!("{k}.{sub}"), text(v));
                            }
                        }
                        _ => println!("{k:<31} {}", text(v)),
                    }
                }
            }
        }
    }
    Ok(())
}

pub fn images(args: ImagesArgs) -> Result<()> {
    let ims = args.scope.open()?;
    let scope = args.scope.scope();
    let output = args.scope.output;
    match args.command {
        ImagesCommand::List {
            id,
            name,
            name_contains,
            os_type,
            platform,
            image_type,
            visibility,
            imagetype,
            status,
            tag,
            member_status,
            sort_key,
            sort_dir,
            limit,
            marker,
        } => {
            let ascending = match sort_dir.as_str() {
                "asc" => true,
                "desc" => false,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "--sort-dir is asc or desc, not '{other}'"
                    ))
                    .into());
                }
            };
            let q = ListQuery {
                id,
                name,
                name_contains,
                os_type,
                platform,
                image_type: image_type
                    .map(|t| t.replace('-', "_").parse::<ImageType>())
                    .transpose()?,
                visibility: None,
                class: match (visibility, imagetype) {
                    (Some(_), Some(_)) => {
                        return Err(Error::InvalidArgument(
                            "give --visibility or --imagetype, not both".into(),
                        )
                        .into());
                    }
                    (Some(v), None) => Some(visibility_class(&v)?),
                    (None, t) => parse::<ImageClass>(&t)?,
                },
                status: parse::<Status>(&status)?,
                tag,
                member_status: parse::<MemberStatus>(&member_status)?,
                sort_key,
                ascending,
                limit,
                marker,
            };
            let items = ims.list(&scope, &q)?;
            match output {
                OutputKind::Json => {
                    println!("{}", to_json(&serde_json::json!({ "images": items }))?)
                }
                OutputKind::Human => {
                    println!(
                        "{:<38}{:<24}{:<8}{:<9}{:<24}{:>10}",
                        "ID", "NAME", "STATUS", "TYPE", "OS VERSION", "SIZE"
                    );
                    for l in &items {
                        let r = &l.record;
                        println!(
                            "{:<38}{:<24}{:<8}{:<9}{:<24}{:>10}",
                            r.id,
                            r.name,
                            r.status.name(),
                            r.image_type.name(),
                            r.os_version,
                            super::human_size(r.virtual_size)
                        );
                    }
                }
            }
            Ok(())
        }
        ImagesCommand::Show { id } => print_record(output, &ims.show(&scope, &id)?),
        ImagesCommand::Update {
            id,
            name,
            description,
            min_disk,
            min_ram,
            tags,
            clear_tags,
            support_user_data,
            support_disk_hotswap,
            set,
        } => {
            let mut update = RecordUpdate {
                name,
                description,
                min_disk,
                min_ram,
                // As `--set tags=K=V,K=V`: each value may hold several tags.
                tags: (clear_tags || !tags.is_empty())
                    .then(|| parse_tag_list(&tags.join(",")))
                    .transpose()?,
                support_user_data,
                support_disk_hotswap,
            };
            let set = set
                .iter()
                .map(|s| {
                    s.split_once('=').ok_or_else(|| {
                        Error::InvalidArgument(format!("--set '{s}' is not FIELD=VALUE"))
                    })
                })
                .collect::<ims::Result<Vec<_>>>()?;
            for (field, value) in set {
                set_field(&mut update, field, value)?;
            }
            print_record(output, &ims.update(&scope, &id, &update)?)
        }
        ImagesCommand::Delete { id } => {
            ims.delete(&scope, &id)?;
            eprintln!("ims: image {id} deleted");
            Ok(())
        }
        ImagesCommand::Publish {
            id,
            public,
            marketplace: _,
            publisher,
            price_note,
        } => {
            let how = if public {
                Publication::Public
            } else {
                Publication::Marketplace {
                    publisher: publisher.unwrap_or_default(),
                    price_note,
                }
            };
            print_record(output, &ims.publish(&scope, &id, &how)?)
        }
        ImagesCommand::Unpublish { id } => print_record(output, &ims.unpublish(&scope, &id)?),
        ImagesCommand::Share {
            id,
            with,
            member_region,
        } => {
            let region = member_region.unwrap_or_else(|| scope.region.clone());
            print_record(output, &ims.share(&scope, &id, &with, &region)?)
        }
        ImagesCommand::Unshare { id, with } => {
            ims.unshare(&scope, &id, &with)?;
            eprintln!("ims: image {id} no longer shared with {with}");
            Ok(())
        }
        ImagesCommand::Members { id } => {
            let members = ims.members(&scope, &id)?;
            match output {
                OutputKind::Json => {
                    println!("{}", to_json(&serde_json::json!({ "members": members }))?)
                }
                OutputKind::Human => {
                    println!("{:<40}{:<10}SINCE", "PROJECT", "STATUS");
                    for m in &members {
                        println!("{:<40}{:<10}{}", m.project, m.status.name(), m.updated_at);
                    }
                }
            }
            Ok(())
        }
        ImagesCommand::Accept { id } => {
            ims.accept(&scope, &id)?;
            eprintln!("ims: project {} accepted image {id}", scope.project);
            Ok(())
        }
        ImagesCommand::Reject { id } => {
            ims.reject(&scope, &id)?;
            eprintln!("ims: project {} rejected image {id}", scope.project);
            Ok(())
        }
        ImagesCommand::Copy {
            id,
            to_region,
            name,
            kms_key,
        } => {
            let cancel = super::cancel_on_signals();
            let copy = match to_region {
                Some(region) => ims.replicate(
                    &scope,
                    &id,
                    &region,
                    name.as_deref(),
                    kms_key.as_deref(),
                    &cancel,
                )?,
                None if kms_key.is_some() => {
                    return Err(Error::InvalidArgument(
                        "--kms-key is for a copy to another region (--to-region)".into(),
                    )
                    .into());
                }
                None => ims.copy(&scope, &id, name.as_deref(), &cancel)?,
            };
            print_record(output, &copy)
        }
        ImagesCommand::Export {
            id,
            output_format,
            options,
            compress,
            size,
            out,
        } => {
            let format: Format = output_format.parse()?;
            let create = CreateOptions::from_args(format, &options, compress)?;
            let size = size.map(|gb| gb.saturating_mul(1 << 30));
            let r = ims.export(
                &scope,
                &id,
                format,
                &out,
                size,
                &create,
                &mut |_| {},
                &super::cancel_on_signals(),
            )?;
            for path in replicate::export_paths(&r, &out) {
                eprintln!("ims: image {} exported to {}", r.id, path.display());
            }
            Ok(())
        }
    }
}

/// The image to register: a local file, or with the `s3` feature an object `s3://BUCKET/KEY`
/// read with ranged GETs (endpoint and credentials from the AWS_* variables).
/// The image to register: a local file, or (when no file has that name) an object
/// `s3://BUCKET/KEY` or `BUCKET:KEY`, or an `https://` URL (`http://` with `allow_http`).
fn input_of(file: &std::path::Path, allow_http: bool) -> Result<ims::Input> {
    let name = file.to_string_lossy();
    let remote = name.contains("://") || (!file.exists() && name.contains(':'));
    if remote {
        #[cfg(feature = "s3")]
        if ims::register::is_remote(&name) {
            let options = ims::register::SourceOptions::default().allow_http(allow_http);
            return Ok(ims::register::open_source(&name, &options)?);
        }
        #[cfg(not(feature = "s3"))]
        if name.contains("://") {
            let _ = allow_http;
            return Err(Error::unsupported(
                "s3://, https:// and BUCKET:KEY sources: this ims was built without the `s3` feature",
            )
            .into());
        }
    }
    Ok(ims::Input::Path(file.to_path_buf()))
}
