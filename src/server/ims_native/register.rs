//! Registering an image file that is an object (`bucket:object`), spec 1.2: a system disk
//! (or ISO, `type=IsoImage`) with its data-disk images (`POST /v2/cloudimages/action`,
//! `/v2/cloudimages/quickimport/action`) and a data disk alone (`POST
//! /v1/cloudimages/dataimages/action`), and the second step of the two-step registration
//! (`PUT /v1/cloudimages/{image_id}/upload`: the object into an image `POST /v2/images` made
//! `queued`). The request is checked here (IMG codes for what IMS checks before it makes a
//! job), then runs as a job; the answer is `{"job_id"}`.
//!
//! ims always converts into its store format, so a quick import is an import.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ImsError, ImsResult};
use super::submit;
use crate::register::ims_errors;
use crate::register::jobs::parse_object_url;
use crate::register::{ImageType, JobSpec, RegisterSpec, rules};
use crate::server::auth::Caller;
use crate::server::state::AppState;

/// A tag as IMS's `image_tags` gives it.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (may be empty).
    #[serde(default)]
    pub value: String,
}

/// A data-disk image of `data_images`.
#[derive(Debug, Deserialize)]
struct DataImage {
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    image_url: Option<String>,
    min_disk: Option<u64>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    image_tags: Vec<KeyValue>,
}

/// The fields of a registration request ims reads (IMS's others are accepted and ignored).
#[derive(Debug, Deserialize)]
struct Body {
    name: Option<String>,
    image_url: Option<String>,
    min_disk: Option<u64>,
    os_version: Option<String>,
    os_type: Option<String>,
    description: Option<String>,
    #[serde(default)]
    is_config: bool,
    #[serde(rename = "type")]
    kind: Option<String>,
    architecture: Option<String>,
    hw_firmware_type: Option<String>,
    cmk_id: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    image_tags: Vec<KeyValue>,
    #[serde(default)]
    min_ram: u64,
    #[serde(default)]
    data_images: Vec<DataImage>,
    instance_id: Option<String>,
    volume_id: Option<String>,
}

/// `key.value` (IMS's `tags`) and `{key, value}` (its `image_tags`) as ims's `KEY=VALUE`; a
/// tag the rules refuse is IMG.0115 now, not in the job.
pub fn tags(tags: &[String], image_tags: &[KeyValue]) -> ImsResult<Vec<String>> {
    let mut out = Vec::new();
    for t in tags {
        let (k, v) = t.split_once('.').unwrap_or((t.as_str(), ""));
        out.push((k.to_string(), v.to_string()));
    }
    for t in image_tags {
        out.push((t.key.clone(), t.value.clone()));
    }
    out.into_iter()
        .map(|(k, v)| {
            crate::register::Tag::new(k.clone(), v.clone())?;
            Ok(format!("{k}={v}"))
        })
        .collect::<crate::register::Result<Vec<String>>>()
        .map_err(ImsError::from)
}

/// The name: present (IMG.0013) and passing the rules (IMG.0002, IMG.0003).
pub fn name(name: Option<&str>) -> ImsResult<String> {
    let name = name.ok_or_else(|| ImsError::new(ims_errors::NO_NAME, "the name is missing"))?;
    rules::check_name(name)?;
    Ok(name.to_string())
}

/// The object URL: present and `bucket:object` (IMG.0017).
fn image_url(url: Option<&str>) -> ImsResult<String> {
    let url = url.ok_or_else(|| ImsError::new(ims_errors::BAD_URL, "image_url is missing"))?;
    parse_object_url(url).map_err(|e| ImsError::new(ims_errors::BAD_URL, e.to_string()))?;
    Ok(url.to_string())
}

/// min_disk: present and in range (IMG.0055): 1 to 1024 GiB for a system disk, 1 to 2048 for
/// a data disk. Whether the disk fits is checked when its size is known, in the job.
fn min_disk(min_disk: Option<u64>, max: u64) -> ImsResult<u64> {
    match min_disk {
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ImsError::new(
            ims_errors::BAD_DISK_OR_MEMORY,
            format!("min_disk {n} is not 1 to {max} GB"),
        )),
        None => Err(ImsError::new(
            ims_errors::BAD_DISK_OR_MEMORY,
            "min_disk is missing",
        )),
    }
}

fn description(d: Option<String>) -> ImsResult<String> {
    let d = d.unwrap_or_default();
    rules::check_description(&d)?;
    Ok(d)
}

/// The job of a registration request; `data` for the data-disk endpoint.
fn spec(body: Body, data: bool) -> ImsResult<JobSpec> {
    if body.instance_id.is_some() || body.volume_id.is_some() {
        return Err(ImsError::new(
            ims_errors::UNSUPPORTED,
            "ims registers image files; images of servers and volumes are not supported",
        ));
    }
    let image_type = match (data, body.kind.as_deref()) {
        (true, _) | (false, Some("DataImage")) => ImageType::Data,
        (false, None | Some("ECS" | "FusionCompute" | "BMS" | "Ironic")) => ImageType::System,
        (false, Some("IsoImage")) => ImageType::Iso,
        (false, Some(other)) => {
            return Err(ImsError::new(
                ims_errors::BAD_IMAGE_TYPE,
                format!("type '{other}' (ECS, BMS, IsoImage, DataImage)"),
            ));
        }
    };
    if let Some(t) = &body.os_type
        && !["Linux", "Windows", "Other"].contains(&t.as_str())
    {
        return Err(ImsError::new(
            ims_errors::BAD_OS_TYPE,
            format!("os_type '{t}' (Linux, Windows, Other)"),
        ));
    }
    let architecture = match body.architecture.as_deref() {
        None => None,
        Some("x86" | "x86_64") => Some("x86_64".to_string()),
        Some("arm" | "aarch64") => Some("aarch64".to_string()),
        Some(other) => {
            return Err(ImsError::new(
                ims_errors::BAD_ARCHITECTURE,
                format!("architecture '{other}' (x86, arm)"),
            ));
        }
    };
    let firmware = match body.hw_firmware_type.as_deref() {
        None => None,
        Some(f @ ("bios" | "uefi")) => Some(f.to_string()),
        Some(other) => {
            return Err(ImsError::new(
                ims_errors::BAD_FIRMWARE,
                format!("hw_firmware_type '{other}' (bios, uefi)"),
            ));
        }
    };
    if image_type == ImageType::Iso && body.os_version.is_none() {
        return Err(ImsError::new(
            ims_errors::ISO_WITHOUT_OS,
            "an ISO image needs os_version",
        ));
    }
    let mut request = RegisterSpec::new(&name(body.name.as_deref())?, image_type);
    request.description = description(body.description)?;
    request.min_disk = Some(min_disk(
        body.min_disk,
        if image_type == ImageType::Data {
            2048
        } else {
            1024
        },
    )?);
    rules::check_min_ram(body.min_ram)?;
    request.min_ram = body.min_ram;
    request.os_version = body.os_version;
    request.architecture = architecture;
    request.firmware = firmware;
    request.kms_key_id = body.cmk_id;
    request.is_config = body.is_config;
    request.tags = tags(&body.tags, &body.image_tags)?;
    let source = image_url(body.image_url.as_deref())?;
    if body.data_images.len() > 3 {
        return Err(ImsError::new(
            ims_errors::TOO_MANY_IMPORTS,
            format!("{} data_images: at most 3", body.data_images.len()),
        ));
    }
    let mut data_images = Vec::new();
    for d in body.data_images {
        let mut r = RegisterSpec::new(&name(d.name.as_deref())?, ImageType::Data);
        r.description = description(d.description)?;
        r.min_disk = Some(min_disk(d.min_disk, 2048)?);
        r.tags = tags(&d.tags, &d.image_tags)?;
        let url = image_url(d.image_url.as_deref())?;
        if url == source || data_images.iter().any(|(u, _)| *u == url) {
            return Err(ImsError::new(
                ims_errors::BAD_URL,
                format!("the object {url} is given twice"),
            ));
        }
        data_images.push((url, r));
    }
    if image_type != ImageType::System && !data_images.is_empty() {
        return Err(ImsError::new(
            ims_errors::BAD_IMAGE_TYPE,
            "data_images go with a system disk",
        ));
    }
    Ok(JobSpec::Register {
        source,
        request,
        data_images,
    })
}

/// Registers a system disk (or ISO) from an object, with its data-disk images, as a job.
#[utoipa::path(post, path = "/v2/cloudimages/action", tag = "ims",
    responses((status = 200, description = "`{\"job_id\"}`: an imsImportImageJob"),
              (status = 400, description = "`{\"error\": {\"code\": \"IMG.xxxx\", \"message\"}}`")))]
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ImsResult<Json<Value>> {
    let body: Body = super::error::parse_body(&body)?;
    let job = submit(&state, &caller, spec(body, false)?).await?;
    Ok(Json(json!({ "job_id": job })))
}

/// Registers a data disk from an object, as a job.
#[utoipa::path(post, path = "/v1/cloudimages/dataimages/action", tag = "ims",
    responses((status = 200, description = "`{\"job_id\"}`: an imsImportDataImageJob"),
              (status = 400, description = "`{\"error\": {\"code\": \"IMG.xxxx\", \"message\"}}`")))]
pub async fn register_data(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ImsResult<Json<Value>> {
    let body: Body = super::error::parse_body(&body)?;
    let job = submit(&state, &caller, spec(body, true)?).await?;
    Ok(Json(json!({ "job_id": job })))
}

#[derive(Deserialize)]
struct Upload {
    image_url: Option<String>,
}

/// Registers an object into a queued image (made without data by `POST /v2/images`), as a
/// job (imsNativeImportImageJob); an image that is not waiting for data is IMG.0046.
#[utoipa::path(put, path = "/v1/cloudimages/{image_id}/upload", tag = "ims",
    params(("image_id" = String, Path)),
    responses((status = 200, description = "`{\"job_id\"}`: an imsNativeImportImageJob"),
              (status = 400, description = "`{\"error\": {\"code\": \"IMG.xxxx\", \"message\"}}`")))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    body: Bytes,
) -> ImsResult<Json<Value>> {
    let u: Upload = super::error::parse_body(&body)?;
    let source = image_url(u.image_url.as_deref())?;
    let (scope, id) = (caller.scope.clone(), image_id.clone());
    super::error::blocking(&state, move |ims| {
        let r = ims.show(&scope, &id)?;
        rules::check_owner(&r, &scope.project)?;
        if !crate::register::upload::awaits_data(&r) {
            return Err(crate::register::ServiceError::rule(
                crate::register::RuleCode::ImageNotActive,
                format!("image {id} is {}, not waiting for its file", r.status),
            ));
        }
        Ok(())
    })
    .await?;
    let spec = JobSpec::RegisterInto { image_id, source };
    let job = submit(&state, &caller, spec).await?;
    Ok(Json(json!({ "job_id": job })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Body {
        serde_json::from_value(v).unwrap()
    }

    fn code(v: Value) -> &'static str {
        spec(body(v), false).unwrap_err().code
    }

    #[test]
    fn requests_are_checked_with_ims_codes() {
        let ok = json!({"name": "img", "image_url": "b:disk.qcow2", "min_disk": 40,
                        "tags": ["team.qa"], "image_tags": [{"key": "k", "value": "v"}],
                        "is_config": true, "architecture": "x86", "os_type": "Linux"});
        let JobSpec::Register {
            source, request, ..
        } = spec(body(ok.clone()), false).unwrap()
        else {
            panic!("a registration")
        };
        assert_eq!(source, "b:disk.qcow2");
        assert_eq!(request.tags, ["team=qa", "k=v"]);
        assert_eq!(request.min_disk, Some(40));
        assert_eq!(request.architecture.as_deref(), Some("x86_64"));
        assert!(request.is_config);
        let with = |k: &str, v: Value| {
            let mut b = ok.clone();
            b[k] = v;
            b
        };
        let without = |k: &str| {
            let mut b = ok.clone();
            b.as_object_mut().unwrap().remove(k);
            b
        };
        assert_eq!(code(without("name")), "IMG.0013");
        assert_eq!(code(with("name", json!("x".repeat(129)))), "IMG.0002");
        assert_eq!(code(without("image_url")), "IMG.0017");
        assert_eq!(code(with("image_url", json!("nocolon"))), "IMG.0017");
        assert_eq!(code(without("min_disk")), "IMG.0055");
        assert_eq!(code(with("min_disk", json!(1025))), "IMG.0055");
        assert_eq!(code(with("type", json!("Floppy"))), "IMG.0024");
        assert_eq!(code(with("type", json!("IsoImage"))), "IMG.0166");
        assert_eq!(code(with("os_type", json!("Plan9"))), "IMG.0122");
        assert_eq!(code(with("architecture", json!("mips"))), "IMG.0212");
        assert_eq!(
            code(with("hw_firmware_type", json!("coreboot"))),
            "IMG.0141"
        );
        assert_eq!(
            code(with("tags", json!([format!("{}.v", "k".repeat(37))]))),
            "IMG.0115"
        );
        assert_eq!(
            code(with("description", json!("d".repeat(1025)))),
            "IMG.0004"
        );
        assert_eq!(code(with("instance_id", json!("srv"))), "IMG.0105");
        let four = json!(vec![
            json!({"name": "d", "image_url": "b:1", "min_disk": 1});
            4
        ]);
        assert_eq!(code(with("data_images", four)), "IMG.0194");
        let twice = json!([{"name": "d", "image_url": "b:disk.qcow2", "min_disk": 1}]);
        assert_eq!(code(with("data_images", twice)), "IMG.0017");
        // The data-disk endpoint makes a data image, allowing a larger min_disk.
        let JobSpec::Register { request, .. } =
            spec(body(with("min_disk", json!(2000))), true).unwrap()
        else {
            panic!()
        };
        assert_eq!(request.image_type, ImageType::Data);
    }
}
