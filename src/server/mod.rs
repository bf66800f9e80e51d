//! `ims serve`: the image service over HTTP(S).
//!
//! The library's [`Ims`] behind two APIs: the OpenStack Image API v2
//! ([`glance`], as Glance answers it, for the `glance`/`openstack` command lines, openstacksdk
//! and the tools built on them) and IMS's own API ([`ims_native`], `/v1|v2/cloudimages...`).
//!
//! - [`router`] builds the whole application: both APIs, `/healthz`, `/openapi.json`, and the
//!   layers every request goes through (outermost first): a request id (`X-OpenStack-Request-Id`,
//!   made when absent and returned), a trace span per request with that id (structured logs
//!   through `tracing`), the token check ([`auth`]), the JSON body cap (413).
//! - [`serve`] opens the service as the other commands do (`--home`, `--catalog`, `--store`),
//!   loads the tokens and serves on `--listen`, over TLS with a certificate and key.
//! - Handlers share an [`AppState`]; blocking library calls go through [`AppState::run`].
//!   Errors become answers in [`error`].

pub mod auth;
pub mod error;
pub mod glance;
pub mod ims_native;
pub mod state;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Request};
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;

pub use state::{AppState, ServeConfig};

use crate::register::Ims;

/// The header that carries a request's id, as OpenStack services name it.
pub const REQUEST_ID: &str = "x-openstack-request-id";

/// Request ids as OpenStack makes them: `req-` and a UUID.
#[derive(Clone, Copy, Default)]
struct MakeReqId;

impl MakeRequestId for MakeReqId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = format!("req-{}", uuid::Uuid::new_v4());
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ims serve",
        description = "The OpenStack Image API v2 and the IMS native API over the ims image service"
    ),
    paths(healthz, openapi_json)
)]
struct ServerDoc;

/// The OpenAPI document of everything the server answers, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ServerDoc::openapi();
    doc.merge(glance::openapi());
    doc.merge(ims_native::openapi());
    doc
}

/// Liveness: 200 while the server answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The server is up")))]
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// The OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "The OpenAPI 3.1 document")))]
async fn openapi_json() -> impl IntoResponse {
    axum::Json(openapi())
}

/// Any other path: 404 in the error shape of the rest.
async fn not_found(uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::not_found(format!("no resource at {}", uri.path()))
}

/// The whole application over `state`.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID);
    let json_cap = state.config.max_json_body;
    let tokens = state.tokens.clone();
    let region: std::sync::Arc<str> = state.config.region.as_str().into();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi_json))
        // The OpenStack Image API v2.
        .merge(glance::routes())
        // ---- The IMS native API (`/v1|v2/cloudimages...`): filled in ims_native. ----
        .merge(ims_native::routes())
        // ----
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(json_cap))
        .layer(axum::middleware::from_fn(move |req, next| {
            auth::require_token(tokens.clone(), region.clone(), req, next)
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        request_id = %id,
                        method = %req.method(),
                        uri = %req.uri(),
                        project = tracing::field::Empty,
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeReqId))
        .with_state(state)
}

/// Opens the service as the command line's other commands do: the catalog and store named,
/// else those of the home directory.
pub fn open_service(config: &ServeConfig) -> crate::register::Result<Ims> {
    Ims::open_with(
        &config.home,
        config.catalog.as_deref(),
        config.store.as_deref(),
    )
}

/// Runs the server until SIGINT or SIGTERM: opens the service and the tokens, binds, prints
/// `ims serve: listening on URL` on standard output (the address actually bound, for port 0),
/// and serves, over TLS when the configuration has a certificate and key.
pub fn serve(config: ServeConfig) -> crate::register::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let tokens = auth::Tokens::load(&config.tokens)?;
    let ims = open_service(&config)?;
    let listener =
        std::net::TcpListener::bind(config.listen).map_err(|e| crate::Error::io("listen", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| crate::Error::io("listen", e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| crate::Error::io("listen", e))?;
    let tls = config.tls.clone();
    let state = AppState::new(ims, config, tokens);
    let pool = ims_native::start_jobs(&state)?;
    let app = router(state.with_jobs(pool));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::Error::io("start the runtime", e))?;
    runtime.block_on(async move {
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("ims serve: listening on {scheme}://{bound}");
        tracing::info!(address = %bound, scheme, "listening");
        let handle = axum_server::Handle::new();
        let stopping = handle.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("stopping");
            stopping.graceful_shutdown(Some(Duration::from_secs(10)));
        });
        let service = app.into_make_service();
        let served = match tls {
            Some((cert, key)) => {
                let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                    .await
                    .map_err(|e| crate::Error::io("load the TLS certificate and key", e))?;
                axum_server::from_tcp_rustls(listener, tls)
                    .map_err(|e| crate::Error::io("listen", e))?
                    .handle(handle)
                    .serve(service)
                    .await
            }
            None => {
                axum_server::from_tcp(listener)
                    .map_err(|e| crate::Error::io("listen", e))?
                    .handle(handle)
                    .serve(service)
                    .await
            }
        };
        served.map_err(|e| crate::Error::io("serve", e))?;
        Ok(())
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
