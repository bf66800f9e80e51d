//! Images: create, list (filters, sort, paging with root-relative links), show, update
//! (json-patch) and delete, over the library's [`Ims`](crate::register::Ims).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::view::{
    self, CONTAINER_FORMATS, CORE, GlanceJson, IMS_FACTS, READ_ONLY, check_property_name,
    custom_properties, parse_tag, property_string,
};
use crate::Format;
use crate::register::{
    ApiFields, ImageRecord, ListQuery, MemberStatus, NewImage, Publication, RecordUpdate, Status,
    Visibility,
};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult};
use crate::server::state::AppState;

/// Glance's default page size, and its largest.
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 1000;

/// An image id from a path: a UUID, else no such image (404, as Glance answers).
pub fn image_id(id: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| ApiError::not_found(format!("no image {id}")))
}

/// A `disk_format` as ims's format: the Glance formats ims reads, plus zvhd and zvhd2.
pub fn disk_format(v: &Value) -> ApiResult<Option<Format>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => match s.as_str() {
            "ami" | "ari" | "aki" | "ploop" => Err(ApiError::bad_request(format!(
                "disk_format {s} is not one ims reads (raw, qcow2, vmdk, vhd, vhdx, vdi, qed, qcow, zvhd, zvhd2, iso)"
            ))),
            _ => s
                .parse::<Format>()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid disk_format '{s}'"))),
        },
        _ => Err(ApiError::bad_request("disk_format must be a string")),
    }
}

fn container_format(v: &Value) -> ApiResult<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if CONTAINER_FORMATS.contains(&s.as_str()) => Ok(Some(s.clone())),
        _ => Err(ApiError::bad_request(format!(
            "invalid container_format {v} ({})",
            CONTAINER_FORMATS.join(", ")
        ))),
    }
}

fn visibility(v: &Value) -> ApiResult<Visibility> {
    match v.as_str() {
        Some("private") => Ok(Visibility::Private),
        Some("shared") => Ok(Visibility::Shared),
        Some("public") => Ok(Visibility::Public),
        Some("community") => Err(ApiError::bad_request(
            "community images are not offered: use shared (members) or public",
        )),
        _ => Err(ApiError::bad_request(format!("invalid visibility {v}"))),
    }
}

fn boolean(name: &str, v: &Value) -> ApiResult<bool> {
    v.as_bool()
        .ok_or_else(|| ApiError::bad_request(format!("{name} must be a boolean")))
}

fn count(name: &str, v: &Value) -> ApiResult<u64> {
    v.as_u64()
        .ok_or_else(|| ApiError::bad_request(format!("{name} must be an integer, 0 or more")))
}

fn tag_list(v: &Value) -> ApiResult<Vec<crate::register::Tag>> {
    let Some(items) = v.as_array() else {
        return Err(ApiError::bad_request("tags must be a list of strings"));
    };
    items
        .iter()
        .map(|t| match t.as_str() {
            Some(s) => parse_tag(s).map_err(ApiError::from),
            None => Err(ApiError::bad_request("tags must be a list of strings")),
        })
        .collect()
}

fn name(v: &Value) -> ApiResult<String> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) if s.chars().count() <= 255 => Ok(s.clone()),
        _ => Err(ApiError::bad_request(
            "name must be a string of at most 255 characters",
        )),
    }
}

/// The import methods offered: glance-direct, and web-download when sources are allowed.
pub fn import_methods(state: &AppState) -> Vec<&'static str> {
    let mut m = vec!["glance-direct"];
    if !state.config.web_download_allow.is_empty() {
        m.push("web-download");
    }
    m
}

/// Creates an image, `queued`, without data.
#[utoipa::path(post, path = "/v2/images", tag = "glance",
    request_body(content = Object, description = "name, disk_format, container_format, visibility, protected, min_disk, min_ram, tags, id, custom properties"),
    responses((status = 201, description = "The image, queued"), (status = 400), (status = 403), (status = 409), (status = 413)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    GlanceJson(body): GlanceJson<Map<String, Value>>,
) -> ApiResult<Response> {
    let mut new = NewImage::default();
    for (k, v) in &body {
        match k.as_str() {
            "id" => {
                new.id = Some(
                    v.as_str()
                        .ok_or_else(|| ApiError::bad_request("id must be a string"))?
                        .to_string(),
                )
            }
            "name" => new.name = name(v)?,
            "visibility" => new.visibility = Some(visibility(v)?),
            // An operator's image is protected as ims protects public images; a project's
            // own is protected as Glance does (undeletable until unset).
            "protected" if caller.admin => new.protected = boolean(k, v)?,
            "protected" if boolean(k, v)? => {
                new.properties.insert(view::PROTECTED.into(), "true".into());
            }
            "os_hidden" if boolean(k, v)? => {
                new.properties.insert("os_hidden".into(), "true".into());
            }
            "disk_format" => new.disk_format = disk_format(v)?,
            "container_format" => {
                if let Some(c) = container_format(v)? {
                    new.properties.insert("container_format".into(), c);
                }
            }
            "min_disk" => new.min_disk = count(k, v)?,
            "min_ram" => new.min_ram = count(k, v)?,
            "tags" => new.tags = tag_list(v)?,
            "owner" if v.as_str() == Some(caller.project.as_str()) => {}
            _ if READ_ONLY.contains(&k.as_str()) => {
                return Err(ApiError::forbidden(format!(
                    "Attribute '{k}' is read-only."
                )));
            }
            _ => {}
        }
    }
    new.properties.extend(custom_properties(&body)?);
    // Glance's default since API v2.5: `shared` (members may be added), not `private`.
    new.visibility.get_or_insert(Visibility::Shared);
    let scope = caller.scope.clone();
    let taken = new.id.clone();
    let r = state
        .run(move |ims| ims.create_empty(&scope, &new))
        .await
        .map_err(|e| match (&taken, &e.rule) {
            (Some(id), None) if e.message.contains("is taken") => {
                ApiError::conflict(format!("image id {id} already exists"))
            }
            _ => e,
        })?;
    let base = super::versions::base_url(&headers);
    let mut response = (StatusCode::CREATED, axum::Json(view::ImageObject(&r))).into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/v2/images/{}", r.id)) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&import_methods(&state).join(",")) {
        h.insert("openstack-image-import-methods", v);
    }
    Ok(response)
}

/// What a list asks, parsed from the query.
#[derive(Default, Clone)]
struct ListParams {
    limit: usize,
    marker: Option<String>,
    sort_key: String,
    ascending: bool,
    query: ListQuery,
    member_all: bool,
    /// `visibility=community`: ims has no community images, so none.
    community: bool,
    owner: Option<String>,
    tags: Vec<String>,
    size_min: Option<u64>,
    size_max: Option<u64>,
    checksum: Option<String>,
    os_hash_value: Option<String>,
    disk_format: Option<String>,
    container_format: Option<String>,
    protected: Option<bool>,
    os_hidden: Option<bool>,
    properties: BTreeMap<String, String>,
}

fn parse_bool(k: &str, v: &str) -> ApiResult<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ApiError::bad_request(format!("{k} must be true or false"))),
    }
}

fn parse_u64(k: &str, v: &str) -> ApiResult<u64> {
    v.parse()
        .map_err(|_| ApiError::bad_request(format!("{k} must be an integer, 0 or more")))
}

/// The sort keys ims sorts by.
const SORT_KEYS: &[&str] = &[
    "name",
    "created_at",
    "updated_at",
    "min_disk",
    "virtual_size",
    "id",
];

fn parse_list(q: &[(String, String)]) -> ApiResult<ListParams> {
    let mut p = ListParams {
        limit: DEFAULT_LIMIT,
        sort_key: "created_at".into(),
        ..Default::default()
    };
    let mut sort_dir: Option<String> = None;
    let mut sort_key_seen = false;
    for (k, v) in q {
        match k.as_str() {
            "limit" => {
                let n = parse_u64(k, v)?;
                p.limit = usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
            }
            "marker" => p.marker = Some(v.clone()),
            "sort_key" => {
                if !sort_key_seen {
                    p.sort_key = v.clone();
                    sort_key_seen = true;
                }
            }
            "sort_dir" => {
                if sort_dir.is_none() {
                    sort_dir = Some(v.clone());
                }
            }
            "sort" => {
                // `key[:dir],...`: the first key decides (ims sorts by one key, then id).
                let first = v.split(',').next().unwrap_or("");
                let (key, dir) = first.split_once(':').unwrap_or((first, "desc"));
                p.sort_key = key.trim().to_string();
                sort_dir = Some(dir.trim().to_string());
                sort_key_seen = true;
            }
            "name" => p.query.name = Some(v.clone()),
            "id" => p.query.id = Some(v.clone()),
            "visibility" => match v.as_str() {
                "all" => {}
                "community" => p.community = true,
                other => {
                    p.query.visibility = Some(visibility(&json!(other))?);
                }
            },
            "member_status" => match v.as_str() {
                "all" => p.member_all = true,
                s => {
                    p.query.member_status = Some(s.parse::<MemberStatus>().map_err(|_| {
                        ApiError::bad_request(format!(
                            "invalid member_status '{s}' (pending, accepted, rejected, all)"
                        ))
                    })?)
                }
            },
            "status" => {
                p.query.status = Some(
                    v.parse::<Status>()
                        .map_err(|_| ApiError::bad_request(format!("invalid status '{v}'")))?,
                )
            }
            "owner" => p.owner = Some(v.clone()),
            "tag" => p.tags.push(v.clone()),
            "size_min" => p.size_min = Some(parse_u64(k, v)?),
            "size_max" => p.size_max = Some(parse_u64(k, v)?),
            "checksum" => p.checksum = Some(v.clone()),
            "os_hash_value" => p.os_hash_value = Some(v.clone()),
            "disk_format" => p.disk_format = Some(v.clone()),
            "container_format" => p.container_format = Some(v.clone()),
            "protected" => p.protected = Some(parse_bool(k, v)?),
            "os_hidden" => p.os_hidden = Some(parse_bool(k, v)?),
            "created_at" | "updated_at" => {
                return Err(ApiError::bad_request(format!(
                    "filtering by {k} is not offered"
                )));
            }
            other => {
                check_property_name(other)?;
                p.properties.insert(other.to_string(), v.clone());
            }
        }
    }
    if !SORT_KEYS.contains(&p.sort_key.as_str()) {
        return Err(ApiError::bad_request(format!(
            "cannot sort by '{}' ({})",
            p.sort_key,
            SORT_KEYS.join(", ")
        )));
    }
    p.ascending = match sort_dir.as_deref().unwrap_or("desc") {
        "asc" => true,
        "desc" => false,
        d => {
            return Err(ApiError::bad_request(format!(
                "invalid sort_dir '{d}' (asc, desc)"
            )));
        }
    };
    if p.limit == 0 {
        p.limit = DEFAULT_LIMIT;
    }
    Ok(p)
}

/// Whether `r` passes the filters ims's list does not apply itself.
fn passes(p: &ListParams, r: &ImageRecord) -> bool {
    let active = r.has_data();
    let hidden = r.properties.get("os_hidden").is_some_and(|v| v == "true");
    !p.community
        && p.owner.as_ref().is_none_or(|o| &r.owner == o)
        && p.tags.iter().all(|t| match parse_tag(t) {
            Ok(t) => r.tags.get(t.key()).is_some_and(|v| v == t.value()),
            Err(_) => false,
        })
        && p.size_min.is_none_or(|n| active && r.store_size >= n)
        && p.size_max.is_none_or(|n| active && r.store_size <= n)
        && p.checksum
            .as_ref()
            .is_none_or(|c| active && &r.checksum.md5 == c)
        && p.os_hash_value
            .as_ref()
            .is_none_or(|c| active && &r.checksum.sha512 == c)
        && p.disk_format.as_ref().is_none_or(|f| &r.store_format == f)
        && p.container_format
            .as_ref()
            .is_none_or(|f| r.properties.get("container_format") == Some(f))
        && p.protected.is_none_or(|v| view::protected(r) == v)
        && p.os_hidden.unwrap_or(false) == hidden
        && p.properties
            .iter()
            .all(|(k, v)| r.properties.get(k) == Some(v))
}

/// The query string without `marker`, for the `first` and `next` links.
fn query_without_marker(q: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in q.iter().filter(|(k, _)| k != "marker") {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&encode(k));
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

/// Percent-encodes a query component.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Lists the images the project sees: its own, public ones, and those shared with it.
#[utoipa::path(get, path = "/v2/images", tag = "glance",
    params(
        ("limit" = Option<u32>, Query, description = "page size (default 25, at most 1000)"),
        ("marker" = Option<String>, Query, description = "the last image of the previous page"),
        ("sort_key" = Option<String>, Query, description = "name, created_at, updated_at, min_disk, virtual_size, id"),
        ("sort_dir" = Option<String>, Query, description = "asc or desc"),
        ("visibility" = Option<String>, Query, description = "public, private, shared, all"),
        ("member_status" = Option<String>, Query, description = "pending, accepted, rejected, all")
    ),
    responses((status = 200, description = "A page of images with first, next and schema links"), (status = 400)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let p = parse_list(&q)?;
    let scope = caller.scope.clone();
    let mut query = p.query.clone();
    query.sort_key = Some(p.sort_key.clone());
    query.ascending = p.ascending;
    let member_all = p.member_all;
    if !member_all {
        // The common case in one pass: the filters, the marker and the page (one more image
        // than the page tells whether there is a next one) applied before anything is copied.
        query.marker = p.marker.clone();
        query.limit = Some(p.limit.saturating_add(1));
        let params = p.clone();
        let mut items: Vec<ImageRecord> = state
            .run(move |ims| ims.list_where(&scope, &query, &|r| passes(&params, r)))
            .await?
            .into_iter()
            .map(|l| l.record)
            .collect();
        let more = items.len() > p.limit;
        items.truncate(p.limit);
        return Ok(page(&q, &items, more));
    }
    let records = state
        .run(move |ims| {
            let mut all = ims.list(&scope, &query)?;
            if member_all {
                for status in [MemberStatus::Pending, MemberStatus::Rejected] {
                    let more = ims.list(
                        &scope,
                        &ListQuery {
                            member_status: Some(status),
                            ..query.clone()
                        },
                    )?;
                    all.extend(more);
                }
                all.sort_by(|a, b| query.order(&a.record, &b.record));
            }
            Ok(all)
        })
        .await?;
    let mut items: Vec<ImageRecord> = records
        .into_iter()
        .map(|l| l.record)
        .filter(|r| passes(&p, r))
        .collect();
    if let Some(marker) = &p.marker {
        let at = items.iter().position(|r| &r.id == marker).ok_or_else(|| {
            ApiError::bad_request(format!("marker {marker} is not an image of this list"))
        })?;
        items.drain(..=at);
    }
    let more = items.len() > p.limit;
    items.truncate(p.limit);
    Ok(page(&q, &items, more))
}

/// A page of the list: its images, the `first` link and, when `more`, the `next` one.
fn page(q: &[(String, String)], items: &[ImageRecord], more: bool) -> Response {
    /// A page as it is written: the images straight from their records.
    #[derive(serde::Serialize)]
    struct Page<'a> {
        images: Vec<view::ImageObject<'a>>,
        first: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<String>,
        schema: &'static str,
    }
    let base_query = query_without_marker(q);
    let first = if base_query.is_empty() {
        "/v2/images".to_string()
    } else {
        format!("/v2/images?{base_query}")
    };
    let next = items.last().filter(|_| more).map(|last| {
        let sep = if base_query.is_empty() { "" } else { "&" };
        format!("/v2/images?{base_query}{sep}marker={}", last.id)
    });
    axum::Json(Page {
        images: items.iter().map(view::ImageObject).collect(),
        first,
        next,
        schema: "/v2/schemas/images",
    })
    .into_response()
}

/// Shows an image the project sees (any other is 404).
#[utoipa::path(get, path = "/v2/images/{image_id}", tag = "glance",
    params(("image_id" = String, Path, description = "The image id")),
    responses((status = 200, description = "The image"), (status = 404)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    let scope = caller.scope.clone();
    let r = state.run(move |ims| ims.show(&scope, &id)).await?;
    Ok(axum::Json(view::ImageObject(&r)).into_response())
}

/// Deletes an image (204).
#[utoipa::path(delete, path = "/v2/images/{image_id}", tag = "glance",
    params(("image_id" = String, Path, description = "The image id")),
    responses((status = 204, description = "Deleted"), (status = 403), (status = 404), (status = 409)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    let scope = caller.scope.clone();
    state
        .run(move |ims| {
            let r = ims.show(&scope, &id)?;
            if view::protected(&r) {
                return Err(crate::register::ServiceError::rule(
                    crate::register::RuleCode::ImageProtected,
                    format!("Image {id} is protected and cannot be deleted: unset protected first"),
                ));
            }
            ims.delete(&scope, &id)
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The media types of a PATCH body.
const PATCH_TYPES: &str =
    "application/openstack-images-v2.0-json-patch, application/openstack-images-v2.1-json-patch";

/// One operation of a json-patch body: `{"op": OP, "path": "/NAME", "value": V}` (v2.1) or
/// `{OP: "/NAME", "value": V}` (v2.0).
fn operation(op: &Value) -> ApiResult<(String, String, Option<Value>)> {
    let o = op
        .as_object()
        .ok_or_else(|| ApiError::bad_request("each patch operation is an object"))?;
    let (kind, path) = match (o.get("op").and_then(Value::as_str), o.get("path")) {
        (Some(kind), Some(path)) => (kind.to_string(), path.clone()),
        _ => ["add", "replace", "remove"]
            .iter()
            .find_map(|k| o.get(*k).map(|p| (k.to_string(), p.clone())))
            .ok_or_else(|| ApiError::bad_request("a patch operation needs op and path"))?,
    };
    if !matches!(kind.as_str(), "add" | "replace" | "remove") {
        return Err(ApiError::bad_request(format!(
            "patch operation '{kind}' is not offered (add, replace, remove)"
        )));
    }
    let path = path
        .as_str()
        .and_then(|p| p.strip_prefix('/'))
        .ok_or_else(|| ApiError::bad_request("a patch path is a string starting with /"))?;
    // JSON pointer escapes.
    let path = path.replace("~1", "/").replace("~0", "~");
    let value = o.get("value").cloned();
    if kind != "remove" && value.is_none() {
        return Err(ApiError::bad_request(format!(
            "{kind} {path} needs a value"
        )));
    }
    Ok((kind, path, value))
}

/// Updates an image with a json-patch (v2.1 or v2.0 media type; any other is 415).
#[utoipa::path(patch, path = "/v2/images/{image_id}", tag = "glance",
    params(("image_id" = String, Path, description = "The image id")),
    request_body(content = Vec<Object>, content_type = "application/openstack-images-v2.1-json-patch"),
    responses((status = 200, description = "The image"), (status = 400), (status = 403), (status = 404), (status = 409), (status = 415)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    GlanceJson(ops): GlanceJson<Value>,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/openstack-images-v2.1-json-patch")
        && !ctype.starts_with("application/openstack-images-v2.0-json-patch")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Unsupported Content-Type '{ctype}': send a json-patch ({PATCH_TYPES})"),
        )
        .with_header(
            HeaderName::from_static("accept-patch"),
            HeaderValue::from_static(PATCH_TYPES),
        ));
    }
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a json-patch body is a list of operations"))?
        .iter()
        .map(operation)
        .collect::<ApiResult<Vec<_>>>()?;
    let scope = caller.scope.clone();
    let id2 = id.clone();
    let current = state.run(move |ims| ims.show(&scope, &id2)).await?;

    let mut update = RecordUpdate::default();
    let mut fields = ApiFields::default();
    let mut properties = current.properties.clone();
    let mut props_changed = false;
    let mut publish: Option<bool> = None;
    let mut tags: Option<Vec<crate::register::Tag>> = None;
    for (kind, path, value) in ops {
        let v = value.unwrap_or(Value::Null);
        match path.as_str() {
            "name" if kind != "remove" => update.name = Some(name(&v)?),
            "min_disk" if kind != "remove" => update.min_disk = Some(count(&path, &v)?),
            "min_ram" if kind != "remove" => update.min_ram = Some(count(&path, &v)?),
            "tags" if kind != "remove" => tags = Some(tag_list(&v)?),
            "disk_format" if kind != "remove" => fields.disk_format = disk_format(&v)?,
            "protected" if kind != "remove" && caller.admin => {
                let on = boolean(&path, &v)?;
                fields.protected = Some(on);
                if !on && properties.remove(view::PROTECTED).is_some() {
                    props_changed = true;
                }
            }
            "protected" if kind != "remove" => {
                props_changed = true;
                if boolean(&path, &v)? {
                    properties.insert(view::PROTECTED.into(), "true".into());
                } else {
                    properties.remove(view::PROTECTED);
                }
            }
            "os_hidden" if kind != "remove" => {
                props_changed = true;
                if boolean(&path, &v)? {
                    properties.insert("os_hidden".into(), "true".into());
                } else {
                    properties.remove("os_hidden");
                }
            }
            "container_format" if kind != "remove" => {
                props_changed = true;
                match container_format(&v)? {
                    Some(c) => properties.insert("container_format".into(), c),
                    None => properties.remove("container_format"),
                };
            }
            "visibility" if kind != "remove" => match visibility(&v)? {
                Visibility::Public => publish = Some(true),
                other if current.visibility == Visibility::Public => {
                    publish = Some(false);
                    if other == Visibility::Shared {
                        fields.visibility = Some(other);
                    }
                }
                other => fields.visibility = Some(other),
            },
            p if READ_ONLY.contains(&p) || p == "id" || IMS_FACTS.contains(&p) => {
                return Err(ApiError::forbidden(format!(
                    "Attribute '{p}' is read-only."
                )));
            }
            p if CORE.contains(&p) => {
                return Err(ApiError::forbidden(format!(
                    "Attribute '{p}' cannot be removed."
                )));
            }
            p => {
                check_property_name(p)?;
                props_changed = true;
                match kind.as_str() {
                    "remove" => {
                        if properties.remove(p).is_none() {
                            return Err(ApiError::conflict(format!(
                                "Property {p} does not exist."
                            )));
                        }
                    }
                    "replace" if !properties.contains_key(p) => {
                        return Err(ApiError::conflict(format!("Property {p} does not exist.")));
                    }
                    _ => {
                        properties.insert(p.to_string(), property_string(p, &v)?);
                    }
                }
            }
        }
    }
    if let Some(tags) = tags {
        update.tags = Some(tags);
    }
    if props_changed {
        fields.properties = Some(properties);
    }
    let scope = caller.scope.clone();
    let r = state
        .run(move |ims| {
            if publish == Some(false) {
                ims.unpublish(&scope, &id)?;
            }
            if update != RecordUpdate::default() {
                ims.update(&scope, &id, &update)?;
            }
            if fields.properties.is_some()
                || fields.disk_format.is_some()
                || fields.visibility.is_some()
                || fields.protected.is_some()
            {
                ims.set_api_fields(&scope, &id, &fields)?;
            }
            if publish == Some(true) {
                let r = ims.show(&scope, &id)?;
                if r.visibility != Visibility::Public {
                    ims.publish(&scope, &id, &Publication::Public)?;
                }
            }
            ims.show(&scope, &id)
        })
        .await?;
    Ok(axum::Json(view::ImageObject(&r)).into_response())
}

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/images", get(list).post(create))
        .route(
            "/v2/images/{image_id}",
            get(show).patch(update).delete(delete),
        )
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, show, update, delete))]
struct Doc;

/// This module's part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn list_parameters_are_checked() {
        let p = parse_list(&q(&[
            ("limit", "5000"),
            ("sort_key", "name"),
            ("sort_dir", "asc"),
        ]))
        .unwrap();
        assert_eq!(
            (p.limit, p.sort_key.as_str(), p.ascending),
            (1000, "name", true)
        );
        assert!(parse_list(&q(&[("limit", "-1")])).is_err());
        assert!(parse_list(&q(&[("sort_key", "bogus")])).is_err());
        assert!(parse_list(&q(&[("sort_dir", "up")])).is_err());
        assert!(parse_list(&q(&[("member_status", "maybe")])).is_err());
        let p = parse_list(&q(&[("sort", "name:asc,created_at")])).unwrap();
        assert_eq!((p.sort_key.as_str(), p.ascending), ("name", true));
        let p = parse_list(&q(&[("hw_disk_bus", "virtio")])).unwrap();
        assert_eq!(p.properties["hw_disk_bus"], "virtio");
    }

    #[test]
    fn next_links_keep_the_query_and_drop_the_marker() {
        assert_eq!(
            query_without_marker(&q(&[("limit", "2"), ("marker", "x"), ("name", "a b&c")])),
            "limit=2&name=a%20b%26c"
        );
    }

    #[test]
    fn patch_operations_in_both_syntaxes() {
        let (k, p, v) =
            operation(&json!({"op": "replace", "path": "/name", "value": "x"})).unwrap();
        assert_eq!(
            (k.as_str(), p.as_str(), v),
            ("replace", "name", Some(json!("x")))
        );
        let (k, p, _) = operation(&json!({"remove": "/a~1b"})).unwrap();
        assert_eq!((k.as_str(), p.as_str()), ("remove", "a/b"));
        assert!(operation(&json!({"op": "move", "path": "/x"})).is_err());
        assert!(operation(&json!({"op": "add", "path": "/x"})).is_err());
    }
}
