//! `GET /v1/cloudimages/quota` (spec 1.10): the project's private images against its quota
//! (`image`), and the members of its most shared image against the members an image may have
//! (`image_member`).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::error::{ImsResult, blocking};
use crate::register::ListQuery;
use crate::server::auth::Caller;
use crate::server::state::AppState;

/// The project's quotas.
#[utoipa::path(get, path = "/v1/cloudimages/quota", tag = "ims",
    responses((status = 200, description = "`{\"quotas\": {\"resources\": [...]}}`")))]
pub async fn quota(State(state): State<AppState>, caller: Caller) -> ImsResult<Json<Value>> {
    let scope = caller.scope.clone();
    let (used, members, limits) = blocking(&state, move |ims| {
        let own: Vec<_> = ims
            .list(&scope, &ListQuery::default())?
            .into_iter()
            .filter(|l| l.record.owner == scope.project)
            .collect();
        let used = own.iter().filter(|l| l.record.counts_for_quota()).count();
        let mut members = 0;
        for l in own
            .iter()
            .filter(|l| l.record.visibility.name() == "shared")
        {
            members = members.max(ims.members(&scope, &l.record.id)?.len());
        }
        Ok((used, members, ims.limits().clone()))
    })
    .await?;
    Ok(Json(json!({"quotas": {"resources": [
        {"type": "image", "used": used, "quota": limits.private_image_quota, "min": 1,
         "max": limits.private_image_quota.max(1)},
        {"type": "image_member", "used": members, "quota": limits.max_members, "min": 1,
         "max": limits.max_members.max(1)},
    ]}})))
}
