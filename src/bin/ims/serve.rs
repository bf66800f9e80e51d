//! `ims serve`: the command line's options into a [`ServeConfig`], then the server.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use ims::register::Result;
use ims::server::ServeConfig;

/// Options of `ims serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Where to listen, `HOST:PORT` (port 0: a free port, printed at start).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9292")]
    listen: SocketAddr,
    /// The tokens file: `{"TOKEN": {"project": "P", "roles": ["admin"|"member"]}}`.
    #[arg(long, value_name = "FILE")]
    tokens: PathBuf,
    /// The data directory: catalog and stored images (env IMS_HOME, default `./ims-data`).
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Where the records are kept instead of `HOME/catalog.db`: `postgres://USER@HOST/DB` or
    /// an SQLite file (env IMS_CATALOG).
    #[arg(long, value_name = "ADDRESS")]
    catalog: Option<String>,
    /// Where the image data is kept instead of `HOME/store/`: `s3://BUCKET/PREFIX` or a
    /// directory (env IMS_STORE).
    #[arg(long, value_name = "ADDRESS")]
    store: Option<String>,
    /// The region the server answers for (env IMS_REGION, default `local`).
    #[arg(long, value_name = "R")]
    region: Option<String>,
    /// A PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The largest JSON request body, bytes (larger: 413).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_json_body: usize,
    /// A URL prefix `web-download` imports may fetch from (repeat for several; none: the
    /// method is not offered).
    #[arg(long, value_name = "URL")]
    allow_download: Vec<String>,
    /// The format an import converts into: zvhd2 (default), qcow2 or raw.
    #[arg(long, value_name = "FMT", default_value = "zvhd2")]
    import_format: String,
    /// Where IMS's `bucket:object` names point: `s3://` (the S3 service of the AWS_*
    /// variables) or a directory with a folder per bucket (default: the store's S3 service
    /// when --store is s3://, else HOME/objects).
    #[arg(long, value_name = "ADDRESS")]
    source_store: Option<String>,
    /// Jobs (registrations, copies, exports, batch shares) run at once (0: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    workers: usize,
    /// Another region images may be copied to (repeat for several).
    #[arg(long, value_name = "REGION")]
    copy_region: Vec<String>,
}

/// Runs `ims serve`.
pub fn serve(args: ServeArgs) -> Result<()> {
    let env = |v: Option<String>, var: &str| {
        v.or_else(|| std::env::var(var).ok().filter(|s| !s.is_empty()))
    };
    let home = args
        .home
        .or_else(|| std::env::var_os("IMS_HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("ims-data"));
    let mut config = ServeConfig::new(args.listen, args.tokens, home);
    config.catalog = env(args.catalog, "IMS_CATALOG");
    config.store = env(args.store, "IMS_STORE");
    config.region = env(args.region, "IMS_REGION").unwrap_or_else(|| "local".into());
    config.tls = args.tls_cert.zip(args.tls_key);
    config.max_json_body = args.max_json_body;
    config.web_download_allow = args.allow_download;
    config.import_format = match args.import_format.parse()? {
        f @ (ims::Format::Zvhd2 | ims::Format::Qcow2 | ims::Format::Raw) => f,
        other => {
            return Err(ims::Error::InvalidArgument(format!(
                "--import-format {other}: images are stored as zvhd2, qcow2 or raw"
            ))
            .into());
        }
    };
    config.source_store = args.source_store;
    config.workers = args.workers;
    config.copy_regions = args.copy_region;
    ims::server::serve(config)
}
