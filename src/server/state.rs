//! What every handler shares: the image service, the server's configuration and the tokens.
//!
//! The library's calls block (SQLite, PostgreSQL's synchronous client, file and object I/O,
//! conversion), so handlers run them through [`AppState::run`], on tokio's blocking pool,
//! never on the threads that drive connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::auth::Tokens;
use super::error::{ApiError, ApiResult};
use crate::register::Ims;

/// How `ims serve` runs (the command line's options).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen (`127.0.0.1:9292`; port 0 picks a free one, printed at start).
    pub listen: SocketAddr,
    /// The tokens file.
    pub tokens: PathBuf,
    /// The data directory (limits, spool, and the catalog and store unless named).
    pub home: PathBuf,
    /// The catalog's address (`postgres://...` or an SQLite file), else `HOME/catalog.db`.
    pub catalog: Option<String>,
    /// The store's address (`s3://BUCKET/PREFIX` or a directory), else `HOME/store/`.
    pub store: Option<String>,
    /// The region this server answers for.
    pub region: String,
    /// The TLS certificate chain and private key (PEM); plain HTTP without them.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The largest JSON body a request may carry, bytes (larger: 413).
    pub max_json_body: usize,
    /// URL prefixes `web-download` imports may fetch from (none: the method is not offered).
    pub web_download_allow: Vec<String>,
    /// Where IMS's `bucket:object` names point (`s3://` for the S3 service of the `AWS_*`
    /// variables, or a directory holding a folder per bucket); else the store's S3 service
    /// when the store is `s3://`, or `HOME/objects`.
    pub source_store: Option<String>,
    /// Jobs run at once (0: one per core).
    pub workers: usize,
    /// The other regions images may be copied to (IMS's cross-region copy).
    pub copy_regions: Vec<String>,
    /// The format an `import` converts into (the store format, as Glance's image-conversion
    /// plugin converts to its output format): zvhd2 by default.
    pub import_format: crate::Format,
}

impl ServeConfig {
    /// A configuration with the defaults: region `local`, a 1 MiB JSON cap, no TLS, no
    /// web-download sources.
    pub fn new(listen: SocketAddr, tokens: PathBuf, home: PathBuf) -> ServeConfig {
        ServeConfig {
            listen,
            tokens,
            home,
            catalog: None,
            store: None,
            region: "local".into(),
            tls: None,
            max_json_body: 1 << 20,
            web_download_allow: Vec::new(),
            source_store: None,
            workers: 0,
            copy_regions: Vec::new(),
            import_format: crate::Format::Zvhd2,
        }
    }
}

/// Niceness added to the threads that run jobs (conversions among them): lists and other requests
/// keep answering quickly while conversions use the cores.
pub const BACKGROUND_NICE: i32 = 10;

/// The state handlers share (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    /// The image service.
    pub ims: Arc<Ims>,
    /// The configuration.
    pub config: Arc<ServeConfig>,
    /// The known tokens.
    pub tokens: Arc<Tokens>,
    /// The pool that runs the jobs: the IMS API's, and the Image API's imports (none: those
    /// calls answer 503).
    pub jobs: Option<Arc<crate::register::JobPool>>,
}

impl AppState {
    /// State over an open service.
    pub fn new(ims: Ims, config: ServeConfig, tokens: Tokens) -> AppState {
        AppState {
            ims: Arc::new(ims),
            config: Arc::new(config),
            tokens: Arc::new(tokens),
            jobs: None,
        }
    }

    /// The same state with a job pool.
    pub fn with_jobs(mut self, pool: crate::register::JobPool) -> AppState {
        self.jobs = Some(Arc::new(pool));
        self
    }

    /// Runs a blocking library call on the blocking pool; its error becomes an answer.
    pub async fn run<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Ims) -> crate::register::Result<T> + Send + 'static,
    {
        let ims = self.ims.clone();
        tokio::task::spawn_blocking(move || f(&ims))
            .await
            .map_err(|e| ApiError::internal(format!("a library call failed: {e}")))?
            .map_err(ApiError::from)
    }
}
