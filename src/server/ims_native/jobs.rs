//! Jobs as IMS shows them (spec 1.9): `GET /v1/{project_id}/jobs/{job_id}` and, with the
//! progress (`entities.process_percent`), `GET /v1/cloudimages/job/{job_id}`. A project sees
//! only its own jobs: any other is 404, as one that does not exist.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::error::{ImsError, ImsResult, blocking};
use crate::register::Job;
use crate::server::auth::Caller;
use crate::server::state::AppState;

/// The job as IMS shows it; `progress` adds `process_percent` and `current_task`.
pub fn view(job: &Job, progress: bool) -> Value {
    let e = &job.entities;
    let mut entities = json!({});
    let m = entities.as_object_mut().expect("an object");
    if let Some(id) = &e.image_id {
        m.insert("image_id".into(), json!(id));
    }
    if let Some(name) = &e.image_name {
        m.insert("image_name".into(), json!(name));
    }
    if !e.data_image_ids.is_empty() {
        m.insert("data_image_ids".into(), json!(e.data_image_ids));
    }
    if !e.results.is_empty() {
        let results: Vec<Value> = e
            .results
            .iter()
            .map(|r| {
                let mut v =
                    json!({"image_id": r.image_id, "project_id": r.project_id, "status": r.status});
                if let Some(err) = &r.error {
                    v["error"] = json!(err);
                }
                v
            })
            .collect();
        m.insert("results".into(), json!(results));
    }
    if progress {
        m.insert("process_percent".into(), json!(e.process_percent));
        m.insert("current_task".into(), json!(e.current_task));
    }
    json!({
        "job_id": job.job_id,
        "job_type": job.job_type,
        "status": job.status,
        "begin_time": job.begin_time,
        "end_time": job.end_time,
        "error_code": job.error_code,
        "fail_reason": job.fail_reason,
        "entities": entities,
    })
}

async fn find(state: &AppState, caller: &Caller, id: String) -> ImsResult<Job> {
    let scope = caller.scope.clone();
    let wanted = id.clone();
    blocking(state, move |ims| ims.job(&scope, &wanted))
        .await?
        .ok_or_else(|| ImsError::not_found(format!("no job {id}")))
}

/// A job of the caller's project; another project's id in the path is 404.
#[utoipa::path(get, path = "/v1/{project_id}/jobs/{job_id}", tag = "ims",
    params(("project_id" = String, Path), ("job_id" = String, Path)),
    responses((status = 200, description = "The job"), (status = 404, description = "No such job of the project")))]
pub async fn job(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> ImsResult<Json<Value>> {
    if project != caller.project {
        return Err(ImsError::not_found(format!("no job {id}")));
    }
    Ok(Json(view(&find(&state, &caller, id).await?, false)))
}

/// A job of the caller's project with its progress.
#[utoipa::path(get, path = "/v1/cloudimages/job/{job_id}", tag = "ims",
    params(("job_id" = String, Path)),
    responses((status = 200, description = "The job with entities.process_percent"), (status = 404, description = "No such job of the project")))]
pub async fn progress(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ImsResult<Json<Value>> {
    Ok(Json(view(&find(&state, &caller, id).await?, true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::register::JobSpec;

    #[test]
    fn a_job_shows_as_ims_shows_it() {
        let job = Job::new(
            "p",
            "r",
            JobSpec::Copy {
                image_id: "i".into(),
                name: "n".into(),
                description: None,
            },
        );
        let v = view(&job, false);
        assert_eq!(v["status"], "INIT");
        assert_eq!(v["job_type"], "imsCopyImageInRegionJob");
        assert!(v["error_code"].is_null() && v["end_time"].is_null());
        assert!(v["entities"].get("process_percent").is_none());
        let v = view(&job.failed("IMG.0027", "gone"), true);
        assert_eq!(v["status"], "FAIL");
        assert_eq!(v["error_code"], "IMG.0027");
        assert_eq!(v["fail_reason"], "gone");
        assert_eq!(v["entities"]["process_percent"], 0.0);
    }
}
