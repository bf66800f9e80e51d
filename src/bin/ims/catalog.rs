//! `ims register` and `ims images ...`: the image catalog's commands over `ims::register`.
//! This is the CLI adapter of the service's types: `--tag K=V` becomes a [`Tag`], and
//! `images update`'s flags and `--set FIELD=VALUE` a [`RecordUpdate`].

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ims::register::{
    ImageType, Ims, ListQuery, MemberStatus, RecordUpdate, RegisterRequest, Result, Scope, Status,
    Tag, Visibility, rules,
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
        Ims::open(&home)
    }
}

#[derive(Args)]
pub struct RegisterArgs {
    /// The image file (raw, qcow2, vmdk, vhd, zvhd, zvhd2).
    file: PathBuf,
    /// 1 to 128 characters.
    #[arg(long)]
    name: String,
    /// system, data or iso.
    #[arg(long = "type", default_value = "system")]
    image_type: String,
    /// The OS version to record (default: what inspection finds).
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
        /// private, shared, public.
        #[arg(long)]
        visibility: Option<String>,
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
    /// Delete an image (its members lose it at once).
    Delete { id: String },
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
    /// Replicate an image to another region (a new image there).
    Copy {
        id: String,
        #[arg(long, value_name = "REGION")]
        to_region: String,
        #[arg(long)]
        name: Option<String>,
        /// A key of the target region, for an encrypted image.
        #[arg(long, value_name = "KEY_ID")]
        kms_key: Option<String>,
    },
    /// Export an image as a disk: FORMAT at OUT.
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
    let mut request = RegisterRequest {
        description: args.description,
        os_version: args.os_version,
        architecture: args.architecture,
        firmware: args.firmware,
        min_disk: args.min_disk,
        min_ram: args.min_ram,
        store_format: args.store_format.parse()?,
        kms_key_id: args.kms_key,
        ..RegisterRequest::new(&args.name, args.image_type.parse()?)
    };
    // `--tag K=V` as a Tag: the tag rules are checked as it is parsed.
    request.tags = args
        .tags
        .iter()
        .map(|t| t.parse())
        .collect::<Result<Vec<Tag>>>()?;
    let total = ims::open(&args.file, &Default::default()).map_or(0, |i| i.virtual_size());
    let mut reporter = Reporter::new(args.progress, total);
    let result = ims.register(
        &scope,
        ims::Input::Path(args.file.clone()),
        &request,
        &mut |p| reporter.report(p),
        &super::cancel_on_signals(),
    );
    reporter.finish();
    let done = result?;
    for w in &done.warnings {
        eprintln!("ims: warning: {w}");
    }
    print_record(args.scope.output, &done)
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
                image_type: parse::<ImageType>(&image_type)?,
                visibility: parse::<Visibility>(&visibility)?,
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
        } => print_record(
            output,
            &ims.replicate(
                &scope,
                &id,
                &to_region,
                name.as_deref(),
                kms_key.as_deref(),
                &super::cancel_on_signals(),
            )?,
        ),
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
            eprintln!("ims: image {} exported to {}", r.id, out.display());
            Ok(())
        }
    }
}
