//! Tags (spec 1.11): the legacy `PUT|GET /v1/cloudimages/tags` (`key.value` strings or
//! `{key, value}`) and the v2 calls under `/v2/{project_id}/images` (add, batch create/delete,
//! delete one, list an image's, list the project's keys with their values). Only the image's
//! owner changes its tags; the tag rules (formats/catalog.md) apply: IMG.0115 for a bad tag,
//! IMG.0116 past 10 tags.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ImsError, ImsResult, blocking, parse_body};
use super::image::tag_text;
use super::register::KeyValue;
use crate::register::{ListQuery, RecordUpdate, Scope, Tag, ims_errors};
use crate::server::auth::Caller;
use crate::server::state::AppState;

/// Changes image `id`'s tags by `change` (which says whether anything changed) and stores them.
async fn change_tags<F>(state: &AppState, scope: Scope, id: String, change: F) -> ImsResult<()>
where
    F: FnOnce(&mut BTreeMap<String, String>) -> ImsResult<bool> + Send + 'static,
{
    let (s, i) = (scope.clone(), id.clone());
    let record = blocking(state, move |ims| ims.show(&s, &i)).await?;
    let mut tags = record.tags.clone();
    if !change(&mut tags)? {
        return Ok(());
    }
    let tags = tags
        .into_iter()
        .map(|(k, v)| Tag::new(k, v))
        .collect::<crate::register::Result<Vec<Tag>>>()?;
    blocking(state, move |ims| {
        ims.update(
            &scope,
            &id,
            &RecordUpdate {
                tags: Some(tags),
                ..RecordUpdate::default()
            },
        )
        .map(|_| ())
    })
    .await
}

fn check_project(caller: &Caller, project: &str) -> ImsResult<()> {
    if project != caller.project {
        return Err(ImsError::new(
            ims_errors::BAD_PROJECT,
            format!("project {project} is not the caller's"),
        ));
    }
    Ok(())
}

/// A new tag, checked by the rules now (IMG.0115).
fn new_tag(key: &str, value: &str) -> ImsResult<(String, String)> {
    Tag::new(key, value)?;
    Ok((key.to_string(), value.to_string()))
}

#[derive(Deserialize)]
struct PutV1 {
    image_id: Option<String>,
    tag: Option<String>,
    image_tag: Option<KeyValue>,
}

/// Adds (or replaces) a tag: `{"image_id", "tag": "k.v"}` or `{"image_id", "image_tag":
/// {key, value}}`; 204.
#[utoipa::path(put, path = "/v1/cloudimages/tags", tag = "ims",
    responses((status = 204, description = "Tagged")))]
pub async fn put_v1(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ImsResult<StatusCode> {
    let b: PutV1 = parse_body(&body)?;
    let id = b
        .image_id
        .ok_or_else(|| ImsError::bad_request("image_id is missing"))?;
    let (k, v) = match (b.tag, b.image_tag) {
        (Some(t), None) => {
            let (k, v) = t.split_once('.').unwrap_or((t.as_str(), ""));
            new_tag(k, v)?
        }
        (None, Some(kv)) => new_tag(&kv.key, &kv.value)?,
        _ => return Err(ImsError::bad_request("give one of tag and image_tag")),
    };
    change_tags(&state, caller.scope.clone(), id, move |tags| {
        tags.insert(k, v);
        Ok(true)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The tags of the caller's own images, `key.value`, each once.
#[utoipa::path(get, path = "/v1/cloudimages/tags", tag = "ims",
    responses((status = 200, description = "`{\"tags\": [\"key.value\"]}`")))]
pub async fn list_v1(State(state): State<AppState>, caller: Caller) -> ImsResult<Json<Value>> {
    let tags = own_tags(&state, &caller).await?;
    let list: Vec<String> = tags
        .iter()
        .flat_map(|(k, vs)| vs.iter().map(move |v| tag_text(k, v)))
        .collect();
    Ok(Json(json!({ "tags": list })))
}

/// Every key of the caller's own images with its values.
async fn own_tags(
    state: &AppState,
    caller: &Caller,
) -> ImsResult<BTreeMap<String, BTreeSet<String>>> {
    let scope = caller.scope.clone();
    let listed = blocking(state, move |ims| ims.list(&scope, &ListQuery::default())).await?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in listed.iter().filter(|l| l.record.owner == caller.project) {
        for (k, v) in &l.record.tags {
            out.entry(k.clone()).or_default().insert(v.clone());
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct AddV2 {
    tag: Option<KeyValue>,
}

/// Adds a tag (the same key is overwritten); 204.
#[utoipa::path(post, path = "/v2/{project_id}/images/{image_id}/tags", tag = "ims",
    params(("project_id" = String, Path), ("image_id" = String, Path)),
    responses((status = 204, description = "Tagged")))]
pub async fn add_v2(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
    body: Bytes,
) -> ImsResult<StatusCode> {
    check_project(&caller, &project)?;
    let b: AddV2 = parse_body(&body)?;
    let kv = b
        .tag
        .ok_or_else(|| ImsError::bad_request("tag is missing"))?;
    let (k, v) = new_tag(&kv.key, &kv.value)?;
    change_tags(&state, caller.scope.clone(), id, move |tags| {
        tags.insert(k, v);
        Ok(true)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ActionV2 {
    action: Option<String>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

/// Creates or deletes several tags at once (deleting a missing tag succeeds); 204.
#[utoipa::path(post, path = "/v2/{project_id}/images/{image_id}/tags/action", tag = "ims",
    params(("project_id" = String, Path), ("image_id" = String, Path)),
    responses((status = 204, description = "Done")))]
pub async fn action_v2(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
    body: Bytes,
) -> ImsResult<StatusCode> {
    check_project(&caller, &project)?;
    let b: ActionV2 = parse_body(&body)?;
    if b.tags.is_empty() {
        return Err(ImsError::bad_request("tags is empty"));
    }
    match b.action.as_deref() {
        Some("create") => {
            let new = b
                .tags
                .iter()
                .map(|t| new_tag(&t.key, &t.value))
                .collect::<ImsResult<Vec<_>>>()?;
            change_tags(&state, caller.scope.clone(), id, move |tags| {
                tags.extend(new);
                Ok(true)
            })
            .await?;
        }
        Some("delete") => {
            let keys: Vec<String> = b.tags.into_iter().map(|t| t.key).collect();
            change_tags(&state, caller.scope.clone(), id, move |tags| {
                let before = tags.len();
                tags.retain(|k, _| !keys.contains(k));
                Ok(tags.len() != before)
            })
            .await?;
        }
        other => {
            return Err(ImsError::bad_request(format!(
                "action {other:?} (create, delete)"
            )));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes the tag `key`; 204, or 404 when the image has no such tag.
#[utoipa::path(delete, path = "/v2/{project_id}/images/{image_id}/tags/{key}", tag = "ims",
    params(("project_id" = String, Path), ("image_id" = String, Path), ("key" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such tag")))]
pub async fn delete_v2(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id, key)): Path<(String, String, String)>,
) -> ImsResult<StatusCode> {
    check_project(&caller, &project)?;
    let missing = key.clone();
    change_tags(&state, caller.scope.clone(), id, move |tags| {
        match tags.remove(&key) {
            Some(_) => Ok(true),
            None => Err(ImsError::new(
                ims_errors::IMAGE_UNKNOWN,
                format!("the image has no tag {missing}"),
            )),
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An image's tags as `{key, value}`.
#[utoipa::path(get, path = "/v2/{project_id}/images/{image_id}/tags", tag = "ims",
    params(("project_id" = String, Path), ("image_id" = String, Path)),
    responses((status = 200, description = "`{\"tags\": [{\"key\", \"value\"}]}`")))]
pub async fn list_image_v2(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> ImsResult<Json<Value>> {
    check_project(&caller, &project)?;
    let scope = caller.scope.clone();
    let r = blocking(&state, move |ims| ims.show(&scope, &id)).await?;
    let tags: Vec<Value> = r
        .tags
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    Ok(Json(json!({ "tags": tags })))
}

/// The project's tag keys with their values.
#[utoipa::path(get, path = "/v2/{project_id}/images/tags", tag = "ims",
    params(("project_id" = String, Path)),
    responses((status = 200, description = "`{\"tags\": [{\"key\", \"values\"}]}`")))]
pub async fn list_project_v2(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ImsResult<Json<Value>> {
    check_project(&caller, &project)?;
    let tags: Vec<Value> = own_tags(&state, &caller)
        .await?
        .into_iter()
        .map(|(k, vs)| json!({"key": k, "values": vs}))
        .collect();
    Ok(Json(json!({ "tags": tags })))
}
