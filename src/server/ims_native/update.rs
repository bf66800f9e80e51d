//! `PATCH /v2/cloudimages/{image_id}` (spec 1.4): a JSON patch (`[{"op", "path", "value"}]`,
//! ops `add`, `replace`, `remove`) of an active image's changeable attributes, by its owner;
//! answers the whole image. Paths ims keeps: `/name`, `/__description`, `/min_ram`,
//! `/min_disk`. IMS's other allowed paths (`/max_ram`, `/hw_firmware_type`,
//! `/__support_*`, ...) describe things ims does not keep and are refused (IMG.0105), as are
//! paths IMS does not allow (IMG.0001).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::Value;

use super::error::{ImsError, ImsResult, blocking, parse_body};
use super::image::view;
use crate::register::{RecordUpdate, ims_errors, rules};
use crate::server::auth::Caller;
use crate::server::state::AppState;

/// One operation.
#[derive(Debug, Deserialize)]
struct Op {
    op: String,
    path: String,
    #[serde(default)]
    value: Option<Value>,
}

/// Paths IMS allows that ims keeps no attribute for.
const NOT_KEPT: &[&str] = &[
    "/max_ram",
    "/enterprise_project_id",
    "/hw_firmware_type",
    "/hw_vif_multiqueue_enabled",
    "/__is_config_init",
];

/// A value as the integer IMS sends as a string or a number.
fn int(path: &str, v: Option<&Value>) -> ImsResult<u64> {
    let n = match v {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    n.ok_or_else(|| ImsError::bad_request(format!("{path} takes a whole number")))
}

fn text(path: &str, v: Option<&Value>) -> ImsResult<String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(ImsError::bad_request(format!("{path} takes a string"))),
    }
}

/// The update a patch asks for.
fn update_of(ops: &[Op]) -> ImsResult<RecordUpdate> {
    if ops.is_empty() {
        return Err(ImsError::bad_request("the patch is empty"));
    }
    let mut u = RecordUpdate::default();
    for op in ops {
        let remove = match op.op.as_str() {
            "add" | "replace" => false,
            "remove" => true,
            other => {
                return Err(ImsError::bad_request(format!(
                    "op '{other}' (add, replace, remove)"
                )));
            }
        };
        let v = op.value.as_ref();
        match (op.path.as_str(), remove) {
            ("/name", false) => u.name = Some(text(&op.path, v)?),
            ("/__description", false) => u.description = Some(text(&op.path, v)?),
            ("/__description", true) => u.description = Some(String::new()),
            ("/min_ram", false) => u.min_ram = Some(int(&op.path, v)?),
            ("/min_ram", true) => u.min_ram = Some(0),
            ("/min_disk", false) => u.min_disk = Some(int(&op.path, v)?),
            (p, _) if NOT_KEPT.contains(&p) || p.starts_with("/__support_") => {
                return Err(ImsError::new(
                    ims_errors::UNSUPPORTED,
                    format!("ims keeps no {} attribute", &p[1..]),
                ));
            }
            (p, _) => {
                return Err(ImsError::bad_request(format!(
                    "{} of {p} is not allowed",
                    op.op
                )));
            }
        }
    }
    Ok(u)
}

/// Changes an active image's attributes; answers the image.
#[utoipa::path(patch, path = "/v2/cloudimages/{image_id}", tag = "ims",
    params(("image_id" = String, Path)),
    responses((status = 200, description = "The image, changed")))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ImsResult<Json<Value>> {
    let ops: Vec<Op> = parse_body(&body)?;
    let u = update_of(&ops)?;
    let scope = caller.scope.clone();
    let r = blocking(&state, move |ims| {
        rules::check_active(&ims.show(&scope, &id)?)?;
        ims.update(&scope, &id, &u)
    })
    .await?;
    Ok(Json(view(&r, None)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(v: Value) -> Vec<Op> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn patches_become_updates_or_refusals() {
        let u = update_of(&ops(json!([
            {"op": "replace", "path": "/name", "value": "new"},
            {"op": "add", "path": "/__description", "value": "d"},
            {"op": "replace", "path": "/min_ram", "value": "1024"},
        ])))
        .unwrap();
        assert_eq!(u.name.as_deref(), Some("new"));
        assert_eq!(u.description.as_deref(), Some("d"));
        assert_eq!(u.min_ram, Some(1024));
        let code = |v: Value| update_of(&ops(v)).unwrap_err().code;
        assert_eq!(code(json!([])), "IMG.0001");
        assert_eq!(
            code(json!([{"op": "move", "path": "/name", "value": "x"}])),
            "IMG.0001"
        );
        assert_eq!(
            code(json!([{"op": "replace", "path": "/owner", "value": "x"}])),
            "IMG.0001"
        );
        assert_eq!(code(json!([{"op": "remove", "path": "/name"}])), "IMG.0001");
        assert_eq!(
            code(json!([{"op": "replace", "path": "/min_ram", "value": "lots"}])),
            "IMG.0001"
        );
        assert_eq!(
            code(json!([{"op": "add", "path": "/__support_xen", "value": "true"}])),
            "IMG.0105"
        );
    }
}
