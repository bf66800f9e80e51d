//! Export (spec 1.8): `POST /v1/cloudimages/{image_id}/file` writes the image to the object
//! `bucket_url` (`bucket:object`) as `file_format` (`qcow2`, `vhd`, `zvhd`, `vmdk`; a quick
//! export writes ZVHD2 and takes no format), as a job (imsNativeExportImageJob). An object that
//! exists already fails the job with IMG.0070.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ImsError, ImsResult, blocking, parse_body};
use super::submit;
use crate::register::jobs::parse_object_url;
use crate::register::{JobSpec, ims_errors};
use crate::server::auth::Caller;
use crate::server::state::AppState;

#[derive(Deserialize)]
struct Export {
    bucket_url: Option<String>,
    file_format: Option<String>,
    #[serde(default)]
    is_quick_export: bool,
}

/// The export target: present, with an object name (IMG.0073) of allowed characters
/// (IMG.0075).
fn target(url: Option<&str>) -> ImsResult<String> {
    let url = url.ok_or_else(|| ImsError::new(ims_errors::BAD_URL, "bucket_url is missing"))?;
    match url.split_once(':') {
        Some((_, "")) => Err(ImsError::new(
            ims_errors::EXPORT_NAME_EMPTY,
            format!("{url} names no object"),
        )),
        Some(_) => parse_object_url(url)
            .map(|_| url.to_string())
            .map_err(|e| ImsError::new(ims_errors::EXPORT_NAME_BAD, e.to_string())),
        None => Err(ImsError::new(
            ims_errors::BAD_URL,
            format!("{url} is not bucket:object"),
        )),
    }
}

/// The stored format of an export request.
fn format(file_format: Option<&str>, quick: bool) -> ImsResult<String> {
    match (file_format, quick) {
        (None, true) => Ok("zvhd2".into()),
        (Some(_), true) => Err(ImsError::bad_request(
            "a quick export writes ZVHD2: give no file_format",
        )),
        (Some(f @ ("qcow2" | "vhd" | "zvhd" | "vmdk")), false) => Ok(f.to_string()),
        (Some(f), false) => Err(ImsError::new(
            ims_errors::FORMAT_UNSUPPORTED,
            format!("file_format '{f}' (qcow2, vhd, zvhd, vmdk)"),
        )),
        (None, false) => Err(ImsError::bad_request("file_format is missing")),
    }
}

/// Exports an image to an object, as a job.
#[utoipa::path(post, path = "/v1/cloudimages/{image_id}/file", tag = "ims",
    params(("image_id" = String, Path)),
    responses((status = 200, description = "`{\"job_id\"}`")))]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    body: Bytes,
) -> ImsResult<Json<Value>> {
    let e: Export = parse_body(&body)?;
    let target = target(e.bucket_url.as_deref())?;
    let format = format(e.file_format.as_deref(), e.is_quick_export)?;
    let (scope, id) = (caller.scope.clone(), image_id.clone());
    blocking(&state, move |ims| ims.show(&scope, &id).map(|_| ())).await?;
    let spec = JobSpec::Export {
        image_id,
        target,
        format,
    };
    Ok(Json(
        json!({ "job_id": submit(&state, &caller, spec).await? }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_formats_are_checked() {
        assert_eq!(target(Some("b:dir/x.qcow2")).unwrap(), "b:dir/x.qcow2");
        assert_eq!(target(Some("b:")).unwrap_err().code, "IMG.0073");
        assert_eq!(target(Some("b:../x")).unwrap_err().code, "IMG.0075");
        assert_eq!(target(Some("nocolon")).unwrap_err().code, "IMG.0017");
        assert_eq!(target(None).unwrap_err().code, "IMG.0017");
        assert_eq!(format(Some("vmdk"), false).unwrap(), "vmdk");
        assert_eq!(format(None, true).unwrap(), "zvhd2");
        assert_eq!(format(Some("raw"), false).unwrap_err().code, "IMG.0072");
        assert_eq!(format(Some("vhd"), true).unwrap_err().code, "IMG.0001");
        assert_eq!(format(None, false).unwrap_err().code, "IMG.0001");
    }
}
