//! Members: the owner shares an image with projects of its region (`POST`, `DELETE`), a
//! member answers (`PUT` its own status), both list. ims's sharing rules apply (at most 128
//! members: 413; encrypted, full-ECS without a backup, marketplace and public images are not
//! shareable: 403; a project already a member: 409, as Glance answers).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::images::image_id;
use super::view::{GlanceJson, member};
use crate::register::{Member, MemberStatus};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult};
use crate::server::state::AppState;

fn member_json(m: &Member) -> Value {
    member(
        &m.image_id,
        &m.project,
        m.status,
        &m.created_at,
        &m.updated_at,
    )
}

fn project_id(v: Option<&Value>) -> ApiResult<String> {
    match v.and_then(Value::as_str) {
        Some(p) if !p.is_empty() && p.len() <= 255 && !p.chars().any(char::is_control) => {
            Ok(p.to_string())
        }
        _ => Err(ApiError::bad_request("member must be a project id")),
    }
}

/// Shares the image with a project (200, the member `pending`).
#[utoipa::path(post, path = "/v2/images/{image_id}/members", tag = "glance",
    params(("image_id" = String, Path)),
    request_body(content = Object, description = "{\"member\": PROJECT}"),
    responses((status = 200, description = "The member, pending"), (status = 403), (status = 404),
        (status = 409, description = "Already a member"), (status = 413, description = "Too many members")))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    GlanceJson(body): GlanceJson<Map<String, Value>>,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    let project = project_id(body.get("member"))?;
    let scope = caller.scope.clone();
    let m = state
        .run(move |ims| {
            let r = ims.show(&scope, &id)?;
            if r.owner == scope.project
                && ims
                    .members(&scope, &id)?
                    .iter()
                    .any(|m| m.project == project)
            {
                return Ok(None);
            }
            ims.share(&scope, &id, &project, &r.region).map(Some)
        })
        .await?;
    let m = m.ok_or_else(|| ApiError::conflict("the project is a member of the image already"))?;
    Ok(axum::Json(member_json(&m)).into_response())
}

/// The members: all of them for the owner, the caller's own membership for a member.
#[utoipa::path(get, path = "/v2/images/{image_id}/members", tag = "glance",
    params(("image_id" = String, Path)),
    responses((status = 200, description = "The members"), (status = 404)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    let scope = caller.scope.clone();
    let members = state.run(move |ims| ims.members(&scope, &id)).await?;
    Ok(axum::Json(json!({
        "members": members.iter().map(member_json).collect::<Vec<_>>(),
        "schema": "/v2/schemas/members",
    }))
    .into_response())
}

async fn find(state: &AppState, caller: &Caller, id: String, project: String) -> ApiResult<Member> {
    let scope = caller.scope.clone();
    let members = state.run(move |ims| ims.members(&scope, &id)).await?;
    members
        .into_iter()
        .find(|m| m.project == project)
        .ok_or_else(|| ApiError::not_found("no such member of the image"))
}

/// One member.
#[utoipa::path(get, path = "/v2/images/{image_id}/members/{member_id}", tag = "glance",
    params(("image_id" = String, Path), ("member_id" = String, Path)),
    responses((status = 200, description = "The member"), (status = 404)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, project)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    let m = find(&state, &caller, id, project).await?;
    Ok(axum::Json(member_json(&m)).into_response())
}

/// A member's answer: `accepted`, `rejected` or back to `pending` (only the member project
/// answers).
#[utoipa::path(put, path = "/v2/images/{image_id}/members/{member_id}", tag = "glance",
    params(("image_id" = String, Path), ("member_id" = String, Path)),
    request_body(content = Object, description = "{\"status\": \"accepted\"|\"rejected\"|\"pending\"}"),
    responses((status = 200, description = "The member"), (status = 400), (status = 403), (status = 404)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, project)): Path<(String, String)>,
    GlanceJson(body): GlanceJson<Map<String, Value>>,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    let status: MemberStatus = body
        .get("status")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::bad_request("status must be pending, accepted or rejected"))?;
    if project != caller.project {
        // The owner sees its members but does not answer for them.
        find(&state, &caller, id, project).await?;
        return Err(ApiError::forbidden(
            "only the member project may change its member status",
        ));
    }
    let scope = caller.scope.clone();
    let id2 = id.clone();
    state
        .run(move |ims| match status {
            MemberStatus::Accepted => ims.accept(&scope, &id2),
            MemberStatus::Rejected => ims.reject(&scope, &id2),
            _ => ims.reconsider(&scope, &id2),
        })
        .await?;
    let m = find(&state, &caller, id, project).await?;
    Ok(axum::Json(member_json(&m)).into_response())
}

/// Stops sharing the image with a project (the owner's call; 204).
#[utoipa::path(delete, path = "/v2/images/{image_id}/members/{member_id}", tag = "glance",
    params(("image_id" = String, Path), ("member_id" = String, Path)),
    responses((status = 204, description = "Removed"), (status = 403), (status = 404)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, project)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    let scope = caller.scope.clone();
    state
        .run(move |ims| ims.unshare(&scope, &id, &project))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/images/{image_id}/members", get(list).post(create))
        .route(
            "/v2/images/{image_id}/members/{member_id}",
            get(show).put(update).delete(delete),
        )
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, show, update, delete))]
struct Doc;

/// This module's part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}
