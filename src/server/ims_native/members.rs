//! Batch sharing (spec 1.6), asynchronous: `POST /v1/cloudimages/members` shares images with
//! projects, `PUT` is a member's answer (`accepted`/`rejected`) for itself, `DELETE` (with the
//! POST's body) stops sharing. Each is a job whose `entities.results` say how each image and
//! project fared.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ImsError, ImsResult, parse_body};
use super::submit;
use crate::register::{JobSpec, MemberStatus, ims_errors};
use crate::server::auth::Caller;
use crate::server::state::AppState;

/// At most this many images, or projects, in one batch.
const MAX_BATCH: usize = 100;

#[derive(Deserialize)]
struct Batch {
    #[serde(default)]
    images: Vec<String>,
    #[serde(default)]
    projects: Vec<String>,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    images: Vec<String>,
    project_id: Option<String>,
    status: Option<String>,
}

fn check_list(what: &str, v: &[String]) -> ImsResult<()> {
    if v.is_empty() || v.len() > MAX_BATCH {
        return Err(ImsError::bad_request(format!(
            "{what}: 1 to {MAX_BATCH} of them"
        )));
    }
    if v.iter()
        .any(|s| s.is_empty() || s.len() > 255 || s.chars().any(char::is_control))
    {
        return Err(ImsError::bad_request(format!(
            "{what}: an empty or malformed id"
        )));
    }
    Ok(())
}

fn batch(body: &[u8]) -> ImsResult<(Vec<String>, Vec<String>)> {
    let b: Batch = parse_body(body)?;
    check_list("images", &b.images)?;
    check_list("projects", &b.projects)?;
    Ok((b.images, b.projects))
}

/// Shares images with projects, as a job (imsAddImageMembersJob).
#[utoipa::path(post, path = "/v1/cloudimages/members", tag = "ims",
    responses((status = 200, description = "`{\"job_id\"}`")))]
pub async fn add(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ImsResult<Json<Value>> {
    let (images, projects) = batch(&body)?;
    let job = submit(&state, &caller, JobSpec::AddMembers { images, projects }).await?;
    Ok(Json(json!({ "job_id": job })))
}

/// A member's answer to shares, as a job (imsUpdateImageMembersJob).
#[utoipa::path(put, path = "/v1/cloudimages/members", tag = "ims",
    responses((status = 200, description = "`{\"job_id\"}`")))]
pub async fn answer(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ImsResult<Json<Value>> {
    let a: Answer = parse_body(&body)?;
    check_list("images", &a.images)?;
    let project = a.project_id.unwrap_or_else(|| caller.project.clone());
    if project != caller.project {
        return Err(ImsError::new(
            ims_errors::BAD_PROJECT,
            format!("project {project} is not the caller's: a project answers for itself"),
        ));
    }
    let status = match a.status.as_deref() {
        Some("accepted") => MemberStatus::Accepted,
        Some("rejected") => MemberStatus::Rejected,
        other => {
            return Err(ImsError::bad_request(format!(
                "status {other:?} (accepted, rejected)"
            )));
        }
    };
    let spec = JobSpec::UpdateMembers {
        images: a.images,
        project,
        status,
    };
    let job = submit(&state, &caller, spec).await?;
    Ok(Json(json!({ "job_id": job })))
}

/// Stops sharing images with projects, as a job (imsDelImageMembersJob).
#[utoipa::path(delete, path = "/v1/cloudimages/members", tag = "ims",
    responses((status = 200, description = "`{\"job_id\"}`")))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ImsResult<Json<Value>> {
    let (images, projects) = batch(&body)?;
    let job = submit(&state, &caller, JobSpec::DelMembers { images, projects }).await?;
    Ok(Json(json!({ "job_id": job })))
}
