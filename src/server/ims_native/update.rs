//! `PATCH /v2/cloudimages/{image_id}` (spec 1.4): a JSON patch (`[{"op", "path", "value"}]`,
//! ops `add`, `replace`, `remove`) of an active image's changeable attributes, by its owner;
//! answers the whole image. `/name`, `/__description`, `/min_ram` and `/min_disk` change the
//! record; `/max_ram`, `/enterprise_project_id`, `/hw_vif_multiqueue_enabled`,
//! `/__is_config_init`, `/__support_*` and other lower-case extension attributes (`/__x`) are
//! kept as the image's properties. `/hw_firmware_type` is what inspection found and is refused
//! (IMG.0105), as is any other path (IMG.0001).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::Value;

use super::error::{ImsError, ImsResult, blocking, parse_body};
use super::image::view;
use crate::register::upload::ApiFields;
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

/// Allowed paths kept as properties.
const PROPERTIES: &[&str] = &[
    "/max_ram",
    "/enterprise_project_id",
    "/hw_vif_multiqueue_enabled",
    "/__is_config_init",
];

/// The most properties an image keeps, and the longest value.
const MAX_PROPERTIES: usize = 64;
const MAX_VALUE: usize = 255;

/// What a patch changes: record fields, and properties set (`Some`) or removed (`None`).
#[derive(Debug, Default)]
struct Change {
    record: RecordUpdate,
    properties: Vec<(String, Option<String>)>,
}

/// A value as the integer IMS sends as a string or a number.
fn int(path: &str, v: Option<&Value>) -> ImsResult<u64> {
    let n = match v {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    n.ok_or_else(|| ImsError::bad_request(format!("{path} takes a whole number")))
}

/// A value as text: IMS sends strings; a number or a boolean is taken as written.
fn text(path: &str, v: Option<&Value>) -> ImsResult<String> {
    let s = match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => return Err(ImsError::bad_request(format!("{path} takes a string"))),
    };
    if s.len() > MAX_VALUE || s.chars().any(char::is_control) {
        return Err(ImsError::bad_request(format!(
            "{path}: at most {MAX_VALUE} bytes, no control characters"
        )));
    }
    Ok(s)
}

/// Whether `path` is a lower-case extension attribute (`/__name`).
fn extension(path: &str) -> bool {
    path.strip_prefix("/__").is_some_and(|n| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// The change a patch asks for.
fn change_of(ops: &[Op]) -> ImsResult<Change> {
    if ops.is_empty() {
        return Err(ImsError::bad_request("the patch is empty"));
    }
    let mut c = Change::default();
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
        let (path, v) = (op.path.as_str(), op.value.as_ref());
        match (path, remove) {
            ("/name", false) => c.record.name = Some(text(path, v)?),
            ("/__description", false) => c.record.description = Some(text(path, v)?),
            ("/__description", true) => c.record.description = Some(String::new()),
            ("/min_ram", false) => c.record.min_ram = Some(int(path, v)?),
            ("/min_ram", true) => c.record.min_ram = Some(0),
            ("/min_disk", false) => c.record.min_disk = Some(int(path, v)?),
            ("/hw_firmware_type", _) => {
                return Err(ImsError::new(
                    ims_errors::UNSUPPORTED,
                    "hw_firmware_type is what inspection found in the image",
                ));
            }
            (p, _) if PROPERTIES.contains(&p) || extension(p) => {
                let value = if remove { None } else { Some(text(p, v)?) };
                c.properties.push((p[1..].to_string(), value));
            }
            (p, _) => {
                return Err(ImsError::bad_request(format!(
                    "{} of {p} is not allowed",
                    op.op
                )));
            }
        }
    }
    Ok(c)
}

/// `properties` with the change applied; too many is refused.
fn apply(
    mut properties: BTreeMap<String, String>,
    change: &[(String, Option<String>)],
) -> crate::register::Result<BTreeMap<String, String>> {
    for (k, v) in change {
        match v {
            Some(v) => properties.insert(k.clone(), v.clone()),
            None => properties.remove(k),
        };
    }
    if properties.len() > MAX_PROPERTIES {
        return Err(crate::Error::InvalidArgument(format!(
            "an image keeps at most {MAX_PROPERTIES} properties"
        ))
        .into());
    }
    Ok(properties)
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
    let change = change_of(&ops)?;
    let scope = caller.scope.clone();
    let r = blocking(&state, move |ims| {
        let r = ims.show(&scope, &id)?;
        rules::check_active(&r)?;
        // Every rule of the record's change passes before the properties change.
        let r = ims.update(&scope, &id, &change.record)?;
        if change.properties.is_empty() {
            return Ok(r);
        }
        let properties = apply(r.properties.clone(), &change.properties)?;
        ims.set_api_fields(
            &scope,
            &id,
            &ApiFields {
                properties: Some(properties),
                ..ApiFields::default()
            },
        )
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
    fn patches_become_changes_or_refusals() {
        let c = change_of(&ops(json!([
            {"op": "replace", "path": "/name", "value": "new"},
            {"op": "add", "path": "/__description", "value": "d"},
            {"op": "replace", "path": "/min_ram", "value": "1024"},
            {"op": "add", "path": "/__support_xen", "value": "true"},
            {"op": "add", "path": "/__is_config_init", "value": true},
            {"op": "remove", "path": "/__mine"},
        ])))
        .unwrap();
        assert_eq!(c.record.name.as_deref(), Some("new"));
        assert_eq!(c.record.description.as_deref(), Some("d"));
        assert_eq!(c.record.min_ram, Some(1024));
        assert_eq!(
            c.properties,
            [
                ("__support_xen".to_string(), Some("true".to_string())),
                ("__is_config_init".to_string(), Some("true".to_string())),
                ("__mine".to_string(), None),
            ]
        );
        let code = |v: Value| change_of(&ops(v)).unwrap_err().code;
        assert_eq!(code(json!([])), "IMG.0001");
        assert_eq!(
            code(json!([{"op": "move", "path": "/name", "value": "x"}])),
            "IMG.0001"
        );
        assert_eq!(
            code(json!([{"op": "replace", "path": "/owner", "value": "x"}])),
            "IMG.0001"
        );
        assert_eq!(
            code(json!([{"op": "add", "path": "/__Upper", "value": "x"}])),
            "IMG.0001"
        );
        assert_eq!(code(json!([{"op": "remove", "path": "/name"}])), "IMG.0001");
        assert_eq!(
            code(json!([{"op": "replace", "path": "/min_ram", "value": "lots"}])),
            "IMG.0001"
        );
        assert_eq!(
            code(json!([{"op": "add", "path": "/__x", "value": "v\n"}])),
            "IMG.0001"
        );
        assert_eq!(
            code(json!([{"op": "replace", "path": "/hw_firmware_type", "value": "uefi"}])),
            "IMG.0105"
        );
    }

    #[test]
    fn properties_change_and_stay_bounded() {
        let p = apply(
            BTreeMap::from([("a".to_string(), "1".to_string())]),
            &[("b".into(), Some("2".into())), ("a".into(), None)],
        )
        .unwrap();
        assert_eq!(p, BTreeMap::from([("b".to_string(), "2".to_string())]));
        let many: Vec<(String, Option<String>)> = (0..65)
            .map(|i| (format!("k{i}"), Some("v".to_string())))
            .collect();
        assert!(apply(BTreeMap::new(), &many).is_err());
    }
}
