//! Interoperable import: `GET /v2/info/import`, `PUT .../stage` (the data waits in
//! `HOME/staging/ID`; the image shows `uploading`) and `POST .../import` (202; `importing`,
//! then `active` or `killed` with a reason). `glance-direct` imports the staged data;
//! `web-download` first fetches a URL from the operator's allowed list into staging. The
//! import converts into the store format as it reads (as Glance's image-conversion plugin
//! does): `disk_format` becomes the stored format and the hashes those of the stored bytes.

use std::io::Write;
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
use crate::cancel::CancelToken;
use crate::register::{ImageRecord, Limits, rules, upload::awaits_data};
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

/// The image `id` if the caller owns it and it waits for data (else 403/404/409).
async fn queued_own(state: &AppState, caller: &Caller, id: &str) -> ApiResult<ImageRecord> {
    let scope = caller.scope.clone();
    let id = id.to_string();
    state
        .run(move |ims| {
            let r = ims.show(&scope, &id)?;
            rules::check_owner(&r, &scope.project)?;
            Ok(r)
        })
        .await
        .and_then(|r| {
            if awaits_data(&r) {
                Ok(r)
            } else {
                Err(ApiError::conflict(format!(
                    "image {} is {}: data is staged and imported only into a queued image",
                    r.id, r.status
                )))
            }
        })
}

/// Copies `reader` into the staging file of `id` (through `ID.part`, renamed when whole),
/// at most the file-size limit.
fn stage_file(
    dir: &std::path::Path,
    id: &str,
    reader: &mut dyn std::io::Read,
    limits: &Limits,
) -> crate::register::Result<u64> {
    std::fs::create_dir_all(dir)
        .map_err(|e| crate::Error::io("create the staging directory", e))?;
    let part = dir.join(format!("{id}.part"));
    let done = dir.join(id);
    let result = (|| {
        let mut file = std::fs::File::create(&part)
            .map_err(|e| crate::Error::io("create a staging file", e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(crate::Error::io("read the staged data", e).into()),
            };
            total = total.saturating_add(n as u64);
            rules::check_sizes(total, 0, limits)?;
            file.write_all(&buf[..n])
                .map_err(|e| crate::Error::io("write a staging file", e))?;
        }
        file.sync_all()
            .map_err(|e| crate::Error::io("write a staging file", e))?;
        std::fs::rename(&part, &done).map_err(|e| crate::Error::io("stage", e))?;
        Ok(total)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Stages an image's data for a later import (204; the image shows `uploading`).
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
    queued_own(&state, &caller, &id).await?;
    if state.is_staged(&id) {
        return Err(ApiError::conflict(format!(
            "image {id} has staged data already"
        )));
    }
    let (mut reader, pump) = body_reader(body);
    let dir = state.staging_dir();
    let call = state.run(move |ims| stage_file(&dir, &id, &mut reader, ims.limits()));
    let (result, ()) = tokio::join!(call, pump);
    result?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Fetches `uri` (on the allowed list) into the staging file of `id`.
fn download(
    uri: &str,
    dir: &std::path::Path,
    id: &str,
    limits: &Limits,
) -> crate::register::Result<u64> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .max_redirects(0)
        .build()
        .into();
    let response = agent
        .get(uri)
        .call()
        .map_err(|e| crate::Error::InvalidArgument(format!("web-download of {uri}: {e}")))?;
    let mut reader = response.into_body().into_reader();
    stage_file(dir, id, &mut reader, limits)
}

/// Imports an image's data (202): the staged data (`glance-direct`) or a URL on the allowed
/// list (`web-download`), converted into the store format.
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
    queued_own(&state, &caller, &id).await?;
    let uri = match name {
        "web-download" => {
            let uri = method
                .get("uri")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("web-download needs a uri"))?;
            if !state
                .config
                .web_download_allow
                .iter()
                .any(|prefix| uri.starts_with(prefix.as_str()))
            {
                return Err(ApiError::bad_request(format!(
                    "{uri} is not on the server's list of allowed download sources"
                )));
            }
            if state.is_staged(&id) {
                return Err(ApiError::conflict(format!(
                    "image {id} has staged data already"
                )));
            }
            Some(uri.to_string())
        }
        _ => {
            if !state.is_staged(&id) {
                return Err(ApiError::conflict(format!(
                    "image {id} has no staged data: PUT it to /v2/images/{id}/stage first"
                )));
            }
            None
        }
    };
    let scope = caller.scope.clone();
    let staged = state.staged_path(&id);
    let dir = state.staging_dir();
    let format = state.config.import_format;
    let worker = state.clone();
    tokio::spawn(async move {
        // Bounded like the job pool: the image stays `importing` until a permit is free.
        let Ok(_permit) = Arc::clone(&worker.imports).acquire_owned().await else {
            return;
        };
        let id2 = id.clone();
        let result = worker
            .run_background(move |ims| {
                if let Some(uri) = &uri
                    && let Err(e) = download(uri, &dir, &id2, ims.limits())
                {
                    ims.kill_waiting(&scope, &id2, &e.to_string())?;
                    return Err(e);
                }
                let result = ims.register_into(
                    &scope,
                    &id2,
                    crate::Input::Path(staged.clone()),
                    format,
                    &mut |_| {},
                    &CancelToken::new(),
                );
                let _ = std::fs::remove_file(&staged);
                result
            })
            .await;
        match result {
            Ok(_) => tracing::info!(image = %id, "import done"),
            Err(e) => tracing::warn!(image = %id, error = %e.message, "import failed"),
        }
    });
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
