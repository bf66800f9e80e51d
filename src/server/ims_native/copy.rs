//! Replication (spec 1.7): `POST /v1/cloudimages/{image_id}/copy` copies an image the caller
//! may use within the region, `POST /v1/cloudimages/{image_id}/cross_region_copy` into another
//! region this server was configured to copy to (`--copy-region`); either is a job whose
//! `entities.image_id` is the copy. The copy is the caller's project's, in the target region.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ImsError, ImsResult, blocking, parse_body};
use super::register::name;
use super::submit;
use crate::register::{JobSpec, ims_errors, rules};
use crate::server::auth::Caller;
use crate::server::state::AppState;

#[derive(Deserialize)]
struct Copy {
    name: Option<String>,
    description: Option<String>,
    cmk_id: Option<String>,
}

#[derive(Deserialize)]
struct CrossRegion {
    name: Option<String>,
    description: Option<String>,
    region: Option<String>,
    project_name: Option<String>,
    cmk_id: Option<String>,
}

/// The image, if the caller sees it (404 IMG.0027 otherwise), before a job is made for it.
async fn seen(state: &AppState, caller: &Caller, id: &str) -> ImsResult<()> {
    let (scope, id) = (caller.scope.clone(), id.to_string());
    blocking(state, move |ims| ims.show(&scope, &id).map(|_| ())).await
}

/// Copies an image within the region, as a job (imsCopyImageInRegionJob).
#[utoipa::path(post, path = "/v1/cloudimages/{image_id}/copy", tag = "ims",
    params(("image_id" = String, Path)),
    responses((status = 200, description = "`{\"job_id\"}`")))]
pub async fn copy(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    body: Bytes,
) -> ImsResult<Json<Value>> {
    let c: Copy = parse_body(&body)?;
    let name = name(c.name.as_deref())?;
    if let Some(d) = &c.description {
        rules::check_description(d)?;
    }
    if c.cmk_id.is_some() {
        return Err(ImsError::new(
            ims_errors::UNSUPPORTED,
            "a copy keeps the encryption of its image; another key is not supported",
        ));
    }
    seen(&state, &caller, &image_id).await?;
    let spec = JobSpec::Copy {
        image_id,
        name,
        description: c.description,
    };
    Ok(Json(
        json!({ "job_id": submit(&state, &caller, spec).await? }),
    ))
}

/// Copies an image into another configured region, as a job.
#[utoipa::path(post, path = "/v1/cloudimages/{image_id}/cross_region_copy", tag = "ims",
    params(("image_id" = String, Path)),
    responses((status = 200, description = "`{\"job_id\"}`")))]
pub async fn cross_region_copy(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    body: Bytes,
) -> ImsResult<Json<Value>> {
    let c: CrossRegion = parse_body(&body)?;
    let name = name(c.name.as_deref())?;
    if let Some(d) = &c.description {
        rules::check_description(d)?;
    }
    let region = c
        .region
        .ok_or_else(|| ImsError::bad_request("region is missing"))?;
    if region == state.config.region {
        return Err(ImsError::new(
            ims_errors::TARGET_IS_SOURCE,
            format!("region {region} is the image's own"),
        ));
    }
    if !state.config.copy_regions.contains(&region) {
        return Err(ImsError::new(
            ims_errors::OTHER_REGION,
            format!("this server does not copy to region {region}"),
        ));
    }
    if let Some(p) = &c.project_name
        && *p != caller.project
    {
        return Err(ImsError::new(
            ims_errors::BAD_PROJECT,
            format!("project {p}: a copy belongs to the caller's own project"),
        ));
    }
    seen(&state, &caller, &image_id).await?;
    let spec = JobSpec::Replicate {
        image_id,
        region,
        name,
        kms_key_id: c.cmk_id,
    };
    Ok(Json(
        json!({ "job_id": submit(&state, &caller, spec).await? }),
    ))
}
