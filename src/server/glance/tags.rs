//! Tags: `PUT` and `DELETE /v2/images/{id}/tags/{tag}`. A Glance tag `KEY=VALUE` is ims's tag
//! of that key and value; a tag without `=` is a key with an empty value (ims's tag rules and
//! limits apply: at most 10 tags, keys of at most 36 characters; more is 413 or 400).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::put;

use super::images::image_id;
use super::view::parse_tag;
use crate::register::{RecordUpdate, Tag};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult};
use crate::server::state::AppState;

/// The record's tags as ims's, `tag` added (`add`) or removed.
fn changed(
    r: &crate::register::ImageRecord,
    tag: &Tag,
    add: bool,
) -> crate::register::Result<Option<Vec<Tag>>> {
    let mut tags: Vec<Tag> = r
        .tags
        .iter()
        .map(|(k, v)| Tag::new(k.clone(), v.clone()))
        .collect::<crate::register::Result<_>>()?;
    let had = tags.iter().any(|t| t == tag);
    if add {
        tags.retain(|t| t.key() != tag.key());
        tags.push(tag.clone());
    } else if had {
        tags.retain(|t| t != tag);
    } else {
        return Ok(None);
    }
    Ok(Some(tags))
}

/// Adds a tag (204; adding one the image has changes nothing).
#[utoipa::path(put, path = "/v2/images/{image_id}/tags/{tag}", tag = "glance",
    params(("image_id" = String, Path), ("tag" = String, Path)),
    responses((status = 204, description = "Tagged"), (status = 400), (status = 403), (status = 404), (status = 413)))]
async fn add(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<Response> {
    set(state, caller, id, tag, true).await
}

/// Removes a tag (204; 404 when the image has no such tag).
#[utoipa::path(delete, path = "/v2/images/{image_id}/tags/{tag}", tag = "glance",
    params(("image_id" = String, Path), ("tag" = String, Path)),
    responses((status = 204, description = "Untagged"), (status = 403), (status = 404)))]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<Response> {
    set(state, caller, id, tag, false).await
}

async fn set(
    state: AppState,
    caller: Caller,
    id: String,
    tag: String,
    add: bool,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    let tag = parse_tag(&tag)?;
    let scope = caller.scope.clone();
    let found = state
        .run(move |ims| {
            let r = ims.show(&scope, &id)?;
            let Some(tags) = changed(&r, &tag, add)? else {
                return Ok(false);
            };
            ims.update(
                &scope,
                &id,
                &RecordUpdate {
                    tags: Some(tags),
                    ..Default::default()
                },
            )?;
            Ok(true)
        })
        .await?;
    if !found {
        return Err(ApiError::not_found("the image has no such tag"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v2/images/{image_id}/tags/{tag}", put(add).delete(remove))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(add, remove))]
struct Doc;

/// This module's part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}
