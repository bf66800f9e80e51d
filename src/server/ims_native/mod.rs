//! The IMS native API (`/v1|v2/cloudimages...`, jobs, quota): spec section 1, one idea per
//! module. Its error bodies are IMS's (`{"error": {"code": "IMG.xxxx", "message": ...}}`,
//! [`error`]), the codes those of formats/ims-errors.md.
//!
//! - [`register`]: registering objects (`POST /v2/cloudimages/action`,
//!   `/v2/cloudimages/quickimport/action`, `/v1/cloudimages/dataimages/action`, the two-step
//!   `PUT /v1/cloudimages/{image_id}/upload`) → job;
//! - [`list`]: `GET /v2/cloudimages` with IMS's filters, paging and sort;
//! - [`update`]: `PATCH /v2/cloudimages/{image_id}` (JSON patch on the allowed paths);
//! - [`members`]: batch sharing and its answers (`/v1/cloudimages/members`) → job;
//! - [`copy`]: in-region and cross-region copies → job;
//! - [`export`]: `POST /v1/cloudimages/{image_id}/file` → job;
//! - [`quota`]: `GET /v1/cloudimages/quota`;
//! - [`tags`]: the v1 and v2 tag calls;
//! - [`jobs`]: `GET /v1/{project_id}/jobs/{job_id}` and `GET /v1/cloudimages/job/{job_id}`.
//!
//! Jobs run in the state's [`JobPool`], which [`start_jobs`] makes: its objects (`bucket:object`)
//! are in `--source-store`, else the store's S3 service, else `HOME/objects`.

pub mod copy;
pub mod error;
pub mod export;
pub mod image;
pub mod jobs;
pub mod list;
pub mod members;
pub mod quota;
pub mod register;
pub mod tags;
pub mod update;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, patch, post};
use utoipa::OpenApi;

use self::error::{ImsError, ImsResult};
use super::auth::Caller;
use super::state::AppState;
use crate::register::jobs::{DirObjects, Objects, PoolOptions};
use crate::register::{JobPool, JobSpec};

/// The objects of `bucket:object` names for this server (see the module doc).
pub fn objects(config: &super::ServeConfig) -> Arc<dyn Objects> {
    let s3 = |a: &str| a.starts_with("s3://");
    match config.source_store.as_deref() {
        #[cfg(feature = "s3")]
        Some(a) if s3(a) => Arc::new(crate::register::S3Objects::new()),
        Some(dir) if !s3(dir) => Arc::new(DirObjects::new(std::path::Path::new(dir))),
        #[cfg(feature = "s3")]
        None if config.store.as_deref().is_some_and(s3) => {
            Arc::new(crate::register::S3Objects::new())
        }
        _ => Arc::new(DirObjects::new(&config.home.join("objects"))),
    }
}

/// Starts the pool that runs the jobs: `--workers` at once, failing first the jobs of processes
/// that stopped.
pub fn start_jobs(state: &AppState) -> crate::register::Result<JobPool> {
    let objects = crate::server::glance::import::WebDownloadObjects {
        inner: objects(&state.config),
        allow: state.config.web_download_allow.clone(),
    };
    JobPool::start(
        state.ims.clone(),
        Arc::new(objects),
        PoolOptions {
            workers: state.config.workers,
            nice: crate::server::state::BACKGROUND_NICE,
            ..PoolOptions::default()
        },
    )
}

/// Records a job of the caller (checked, `INIT`), for the pool to run; its id.
pub async fn submit(state: &AppState, caller: &Caller, spec: JobSpec) -> ImsResult<String> {
    let pool = state.jobs.clone().ok_or_else(|| {
        ImsError::new(
            crate::register::ims_errors::UNKNOWN,
            "this server runs no jobs",
        )
        .with_status(axum::http::StatusCode::SERVICE_UNAVAILABLE)
    })?;
    let scope = caller.scope.clone();
    let job = tokio::task::spawn_blocking(move || pool.submit(&scope, spec))
        .await
        .map_err(|e| {
            ImsError::new(
                crate::register::ims_errors::UNKNOWN,
                format!("submitting the job failed: {e}"),
            )
            .with_status(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
        })??;
    Ok(job.job_id)
}

#[derive(OpenApi)]
#[openapi(paths(
    register::register,
    register::register_data,
    register::upload,
    list::list,
    update::update,
    members::add,
    members::answer,
    members::remove,
    copy::copy,
    copy::cross_region_copy,
    export::export,
    quota::quota,
    tags::put_v1,
    tags::list_v1,
    tags::add_v2,
    tags::action_v2,
    tags::delete_v2,
    tags::list_image_v2,
    tags::list_project_v2,
    jobs::job,
    jobs::progress,
))]
struct Doc;

/// The IMS native API's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/cloudimages", get(list::list))
        .route("/v2/cloudimages/action", post(register::register))
        .route(
            "/v2/cloudimages/quickimport/action",
            post(register::register),
        )
        .route(
            "/v1/cloudimages/dataimages/action",
            post(register::register_data),
        )
        .route("/v2/cloudimages/{image_id}", patch(update::update))
        .route(
            "/v1/cloudimages/members",
            post(members::add)
                .put(members::answer)
                .delete(members::remove),
        )
        .route("/v1/cloudimages/{image_id}/copy", post(copy::copy))
        .route(
            "/v1/cloudimages/{image_id}/cross_region_copy",
            post(copy::cross_region_copy),
        )
        .route("/v1/cloudimages/{image_id}/file", post(export::export))
        .route(
            "/v1/cloudimages/{image_id}/upload",
            axum::routing::put(register::upload),
        )
        .route("/v1/cloudimages/quota", get(quota::quota))
        .route("/v1/cloudimages/tags", get(tags::list_v1).put(tags::put_v1))
        .route("/v2/{project_id}/images/tags", get(tags::list_project_v2))
        .route(
            "/v2/{project_id}/images/{image_id}/tags",
            get(tags::list_image_v2).post(tags::add_v2),
        )
        .route(
            "/v2/{project_id}/images/{image_id}/tags/action",
            post(tags::action_v2),
        )
        .route(
            "/v2/{project_id}/images/{image_id}/tags/{key}",
            axum::routing::delete(tags::delete_v2),
        )
        .route("/v1/{project_id}/jobs/{job_id}", get(jobs::job))
        .route("/v1/cloudimages/job/{job_id}", get(jobs::progress))
}

/// The IMS native API's part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}
