//! Interoperable import: `GET /v2/info/import`, `PUT .../stage` (the data waits in the image
//! store, [`Ims::stage`](crate::register::Ims::stage); the image shows `uploading`) and
//! `POST .../import` (202; a persisted job of the pool, so any server sharing the catalog and
//! the store runs it, and a crash fails it with a reason; the image shows `importing`, then
//! `active` or `killed` with a reason). `glance-direct` imports the staged data;
//! `web-download` first fetches a URL from the operator's allowed list into staging. The
//! import converts into the store format as it reads (as Glance's image-conversion plugin
//! does): `disk_format` becomes the stored format and the hashes those of the stored bytes.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Map, Value, json};

use super::data::{body_reader, require_octet_stream};
use super::images::{image_id, import_methods};
use super::view::GlanceJson;
use crate::register::jobs::Objects;
use crate::register::{ImageRecord, JobSpec, rules, upload::awaits_data};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult};
use crate::server::state::AppState;

/// The import methods (the description is compared literally by some installers).
#[utoipa::path(get, path = "/v2/info/import", tag = "glance",
    responses((status = 200, description = "The import methods offered")))]
async fn info(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(json!({
        "import-methods": {
            "description": "Import methods available.",
            "type": "array",
            "value": import_methods(&state),
        }
    }))
}

/// The image `id` if the caller owns it and it waits for data (else 403/404/409), and whether
/// it has staged data.
async fn queued_own(state: &AppState, caller: &Caller, id: &str) -> ApiResult<(ImageRecord, bool)> {
    let scope = caller.scope.clone();
    let id = id.to_string();
    state
        .run(move |ims| {
            let r = ims.show(&scope, &id)?;
            rules::check_owner(&r, &scope.project)?;
            let staged = r.staged_size.is_some();
            Ok((r, staged))
        })
        .await
        .and_then(|(r, staged)| {
            if awaits_data(&r) {
                Ok((r, staged))
            } else {
                Err(ApiError::conflict(format!(
                    "image {} is {}: data is staged and imported only into a queued image",
                    r.id, r.status
                )))
            }
        })
}

/// Stages an image's data for a later import (204; the image shows `uploading`). The data
/// waits in the image store, so any server sharing it may run the import.
#[utoipa::path(put, path = "/v2/images/{image_id}/stage", tag = "glance",
    params(("image_id" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "Staged"), (status = 404), (status = 409), (status = 413), (status = 415)))]
async fn stage(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    require_octet_stream(&headers)?;
    if queued_own(&state, &caller, &id).await?.1 {
        return Err(ApiError::conflict(format!(
            "image {id} has staged data already"
        )));
    }
    let (mut reader, pump) = body_reader(body);
    let scope = caller.scope.clone();
    let call = state.run(move |ims| ims.stage(&scope, &id, &mut reader));
    let (result, ()) = tokio::join!(call, pump);
    result?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The objects of the server's jobs, with the addresses `web-download` may fetch: those that
/// begin with one of the operator's allowed prefixes, over plain HTTP (ureq, no redirects).
pub struct WebDownloadObjects {
    /// The objects of `bucket:object` names.
    pub inner: Arc<dyn Objects>,
    /// The allowed URL prefixes.
    pub allow: Vec<String>,
}

impl WebDownloadObjects {
    /// Whether `uri` is on the allowed list.
    pub fn allows(allow: &[String], uri: &str) -> bool {
        allow.iter().any(|prefix| uri.starts_with(prefix.as_str()))
    }
}

impl Objects for WebDownloadObjects {
    fn open(&self, url: &str) -> crate::register::Result<crate::Input> {
        self.inner.open(url)
    }

    fn exists(&self, url: &str) -> crate::register::Result<bool> {
        self.inner.exists(url)
    }

    fn put(&self, url: &str, file: &std::path::Path) -> crate::register::Result<()> {
        self.inner.put(url, file)
    }

    fn fetch(&self, url: &str) -> crate::register::Result<Box<dyn std::io::Read + Send>> {
        if !Self::allows(&self.allow, url) {
            return Err(crate::Error::InvalidArgument(format!(
                "{url} is not on the server's list of allowed download sources"
            ))
            .into());
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(true)
            .max_redirects(0)
            .build()
            .into();
        let response = agent
            .get(url)
            .call()
            .map_err(|e| crate::Error::InvalidArgument(format!("web-download of {url}: {e}")))?;
        Ok(Box::new(response.into_body().into_reader()))
    }
}

/// Imports an image's data (202): the staged data (`glance-direct`) or a URL on the allowed
/// list (`web-download`), converted into the store format by a job of the pool, which any
/// server sharing the catalog may run.
#[utoipa::path(post, path = "/v2/images/{image_id}/import", tag = "glance",
    params(("image_id" = String, Path)),
    request_body(content = Object, description = "{\"method\": {\"name\": \"glance-direct\"|\"web-download\", \"uri\": URL}}"),
    responses((status = 202, description = "Importing"), (status = 400), (status = 404), (status = 409)))]
async fn import(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    GlanceJson(body): GlanceJson<Map<String, Value>>,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    let method = body
        .get("method")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("import needs a method: {\"name\": ...}"))?;
    let name = method.get("name").and_then(Value::as_str).unwrap_or("");
    if !import_methods(&state).contains(&name) {
        return Err(ApiError::bad_request(format!(
            "import method '{name}' is not offered ({})",
            import_methods(&state).join(", ")
        )));
    }
    let pool = state.jobs.clone().ok_or_else(|| {
        ApiError::internal("this server runs no imports")
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
    })?;
    let staged = queued_own(&state, &caller, &id).await?.1;
    let uri = match name {
        "web-download" => {
            let uri = method
                .get("uri")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("web-download needs a uri"))?;
            if !WebDownloadObjects::allows(&state.config.web_download_allow, uri) {
                return Err(ApiError::bad_request(format!(
                    "{uri} is not on the server's list of allowed download sources"
                )));
            }
            if staged {
                return Err(ApiError::conflict(format!(
                    "image {id} has staged data already"
                )));
            }
            Some(uri.to_string())
        }
        _ => {
            if !staged {
                return Err(ApiError::conflict(format!(
                    "image {id} has no staged data: PUT it to /v2/images/{id}/stage first"
                )));
            }
            None
        }
    };
    let spec = JobSpec::Import {
        image_id: id.clone(),
        uri,
        format: state.config.import_format.name().to_string(),
    };
    let scope = caller.scope.clone();
    let job = state.run(move |_| pool.submit(&scope, spec)).await?;
    tracing::info!(image = %id, job = %job.job_id, "import queued");
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/info/import", get(info))
        .route("/v2/images/{image_id}/stage", put(stage))
        .route("/v2/images/{image_id}/import", post(import))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(info, stage, import))]
struct Doc;

/// This module's part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}
