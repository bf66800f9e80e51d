//! Image actions: `POST /v2/images/{id}/actions/deactivate` and `.../reactivate` (Image API
//! v2.3). A deactivated image stays listed, with its size and hashes, but its data is withheld:
//! `GET .../file` is 403 but for an admin, and it is neither exported nor copied. Restricted to
//! `admin`, as Glance's default policy has it (`openstack image set --deactivate`).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::images::image_id;
use crate::register::RuleCode;
use crate::server::auth::Caller;
use crate::server::error::ApiResult;
use crate::server::state::AppState;

/// Deactivates or reactivates `id` for `caller`: 204, 403 for a non-admin, 404 for an image it
/// does not see, 400 for an image neither active nor deactivated.
async fn set_deactivated(
    state: &AppState,
    caller: &Caller,
    id: &str,
    deactivated: bool,
) -> ApiResult<Response> {
    let id = image_id(id)?;
    let scope = caller.scope.clone();
    let admin = caller.admin;
    state
        .run(move |ims| {
            // Seen first: an image the caller does not see is 404, whatever its role.
            ims.show(&scope, &id)?;
            if !admin {
                return Err(crate::register::ServiceError::rule(
                    RuleCode::NotOperator,
                    "deactivating and reactivating images is restricted to administrators",
                ));
            }
            ims.set_deactivated(&scope, &id, deactivated)
        })
        .await
        .map_err(|e| match e.rule {
            Some(RuleCode::ImageNotActive) => e.with_status(StatusCode::BAD_REQUEST),
            _ => e,
        })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Withholds an active image's data (204; again on a deactivated image: 204).
#[utoipa::path(post, path = "/v2/images/{image_id}/actions/deactivate", tag = "glance",
    params(("image_id" = String, Path)),
    responses((status = 204, description = "Deactivated"), (status = 400), (status = 403), (status = 404)))]
async fn deactivate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    set_deactivated(&state, &caller, &id, true).await
}

/// Gives a deactivated image's data back (204; again on an active image: 204).
#[utoipa::path(post, path = "/v2/images/{image_id}/actions/reactivate", tag = "glance",
    params(("image_id" = String, Path)),
    responses((status = 204, description = "Reactivated"), (status = 400), (status = 403), (status = 404)))]
async fn reactivate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    set_deactivated(&state, &caller, &id, false).await
}

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/images/{image_id}/actions/deactivate", post(deactivate))
        .route("/v2/images/{image_id}/actions/reactivate", post(reactivate))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(deactivate, reactivate))]
struct Doc;

/// This module's part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}
