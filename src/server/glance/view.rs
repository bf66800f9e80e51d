//! What an image looks like to Glance's clients, and how their requests are read: the image
//! object (spec 2.4), the statuses, tags as strings, the disk formats the server reports, and
//! the JSON body extractor that answers malformed or oversized bodies in Glance's error shape.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::register::{ImageRecord, MemberStatus, Status, Tag};
use crate::server::error::ApiError;

/// Every `disk_format` the server accepts or reports: Glance's defaults and every format ims
/// reads or stores (zvhd and zvhd2 included), so that clients validating against the schema
/// accept every image it returns.
pub const DISK_FORMATS: &[&str] = &[
    "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop", "zvhd",
    "zvhd2", "qed", "qcow",
];

/// Glance's container formats.
pub const CONTAINER_FORMATS: &[&str] = &[
    "ami",
    "ari",
    "aki",
    "bare",
    "ovf",
    "ova",
    "docker",
    "compressed",
];

/// The statuses the schema admits.
pub const STATUSES: &[&str] = &[
    "queued",
    "saving",
    "active",
    "killed",
    "deleted",
    "uploading",
    "importing",
    "pending_delete",
    "deactivated",
];

/// Fields of the image object that are not custom properties.
pub const CORE: &[&str] = &[
    "id",
    "name",
    "status",
    "visibility",
    "protected",
    "os_hidden",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "owner",
    "size",
    "virtual_size",
    "container_format",
    "disk_format",
    "min_ram",
    "min_disk",
    "created_at",
    "updated_at",
    "tags",
    "self",
    "file",
    "schema",
    "direct_url",
    "locations",
    "location",
    "stores",
];

/// Fields no client may set: 403, as Glance answers.
pub const READ_ONLY: &[&str] = &[
    "status",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "size",
    "virtual_size",
    "created_at",
    "updated_at",
    "self",
    "file",
    "schema",
    "direct_url",
    "locations",
    "location",
    "stores",
    "owner",
];

/// The properties ims itself reports for every image (read-only, as strings), IMS's names.
/// `__os_version` is not among them: a client may give it (an ISO's OS, as IMS takes it), and
/// what inspection finds is shown instead when it finds one.
pub const IMS_FACTS: &[&str] = &[
    "__os_type",
    "__platform",
    "__os_bit",
    "__imagetype",
    "__image_kind",
    "__description",
    "status_reason",
];

/// How the image's life looks to Glance: `queued` with staged data is `uploading`, `saving`
/// while its staged data is imported is `importing`.
pub fn status(r: &ImageRecord) -> &'static str {
    match (r.status, r.staged_size.is_some()) {
        (Status::Queued, true) => "uploading",
        (Status::Saving, true) => "importing",
        (s, _) => s.name(),
    }
}

/// The property that keeps Glance's `protected` flag of a project's own image (ims's own
/// `protected` is an operator's: public images). Either makes the image undeletable here until
/// it is unset, as Glance does.
pub const PROTECTED: &str = "protected";

/// Whether the image is protected, as Glance shows it: ims's flag or the project's.
pub fn protected(r: &ImageRecord) -> bool {
    r.protected || r.properties.get(PROTECTED).is_some_and(|v| v == "true")
}

/// A tag as a string: `KEY` for an empty value, else `KEY=VALUE`.
pub fn tag_string(key: &str, value: &str) -> String {
    if value.is_empty() {
        key.to_string()
    } else {
        format!("{key}={value}")
    }
}

/// A Glance tag (any string) as ims's: `KEY=VALUE` when it holds `=`, else `KEY` with an
/// empty value.
pub fn parse_tag(tag: &str) -> crate::register::Result<Tag> {
    match tag.split_once('=') {
        Some((k, v)) => Tag::new(k, v),
        None => Tag::new(tag, ""),
    }
}

/// The record's tags as strings.
pub fn tags(r: &ImageRecord) -> Vec<String> {
    r.tags.iter().map(|(k, v)| tag_string(k, v)).collect()
}

/// The image object of a record, serialized as it is written (a list page writes many of them
/// without building a JSON tree): the custom properties, then ims's facts, then the core
/// fields, each key once (what comes later wins over a property of the same name).
pub struct ImageObject<'a>(pub &'a ImageRecord);

impl serde::Serialize for ImageObject<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.0;
        let active = r.has_data();
        let os_bit = r.os_bit.map(|b| b.to_string()).unwrap_or_default();
        let facts: [(&str, &str); 8] = [
            ("__os_type", &r.os_type),
            ("__os_version", &r.os_version),
            ("__platform", &r.platform),
            ("__os_bit", &os_bit),
            ("__imagetype", r.class().name()),
            ("__image_kind", r.image_type.name()),
            ("__description", &r.description),
            (
                "status_reason",
                r.status_reason.as_deref().unwrap_or_default(),
            ),
        ];
        // What inspection found wins over what a client said; a client's word stays where
        // inspection found nothing.
        let found: [(&str, Option<&str>); 2] = [
            (
                "architecture",
                (active && r.architecture != "unknown").then_some(r.architecture.as_str()),
            ),
            (
                "hw_firmware_type",
                (active && r.firmware != "unknown").then_some(r.firmware.as_str()),
            ),
        ];
        let shown_later = |k: &str| {
            CORE.contains(&k)
                || facts.iter().any(|(f, v)| *f == k && !v.is_empty())
                || found.iter().any(|(f, v)| *f == k && v.is_some())
        };
        let mut m = s.serialize_map(None)?;
        for (k, v) in &r.properties {
            if !shown_later(k) {
                m.serialize_entry(k, v)?;
            }
        }
        for (k, v) in facts {
            if !v.is_empty() {
                m.serialize_entry(k, v)?;
            }
        }
        for (k, v) in found {
            if let Some(v) = v {
                m.serialize_entry(k, v)?;
            }
        }
        m.serialize_entry("id", &r.id)?;
        m.serialize_entry("name", &opt(&r.name))?;
        m.serialize_entry("status", status(r))?;
        m.serialize_entry("visibility", r.visibility.name())?;
        m.serialize_entry("protected", &protected(r))?;
        m.serialize_entry(
            "os_hidden",
            &r.properties.get("os_hidden").is_some_and(|v| v == "true"),
        )?;
        m.serialize_entry("checksum", &opt(&r.checksum.md5).filter(|_| active))?;
        m.serialize_entry(
            "os_hash_algo",
            &(active && !r.checksum.sha512.is_empty()).then_some("sha512"),
        )?;
        m.serialize_entry("os_hash_value", &opt(&r.checksum.sha512).filter(|_| active))?;
        m.serialize_entry("owner", &r.owner)?;
        m.serialize_entry("size", &active.then_some(r.store_size))?;
        m.serialize_entry("virtual_size", &active.then_some(r.virtual_size))?;
        m.serialize_entry("container_format", &r.properties.get("container_format"))?;
        m.serialize_entry("disk_format", &opt(&r.store_format))?;
        m.serialize_entry("min_ram", &r.min_ram)?;
        m.serialize_entry("min_disk", &r.min_disk)?;
        m.serialize_entry("created_at", &r.created_at)?;
        m.serialize_entry("updated_at", &r.updated_at)?;
        m.serialize_entry("tags", &tags(r))?;
        m.serialize_entry("self", &format_args!("/v2/images/{}", r.id))?;
        m.serialize_entry("file", &format_args!("/v2/images/{}/file", r.id))?;
        m.serialize_entry("schema", "/v2/schemas/image")?;
        m.end()
    }
}

/// A text field shown as null when empty.
fn opt(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

/// A member object.
pub fn member(
    image_id: &str,
    project: &str,
    status: MemberStatus,
    created: &str,
    updated: &str,
) -> Value {
    json!({
        "image_id": image_id,
        "member_id": project,
        "status": status.name(),
        "created_at": created,
        "updated_at": updated,
        "schema": "/v2/schemas/member",
    })
}

/// A property value as the string ims keeps: strings as they are, numbers and booleans as
/// their JSON text; anything else is refused.
pub fn property_string(name: &str, v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(ApiError::bad_request(format!(
            "property '{name}' must be a string"
        ))),
    }
}

/// A custom property's name: 1 to 255 characters, no control characters.
pub fn check_property_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "property name '{name}' is not 1 to 255 printable characters"
        )));
    }
    Ok(())
}

/// Custom properties of a request: every member of `body` that is not core, as strings.
pub fn custom_properties(body: &Map<String, Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for (k, v) in body {
        if CORE.contains(&k.as_str()) || v.is_null() {
            continue;
        }
        if IMS_FACTS.contains(&k.as_str()) {
            return Err(ApiError::forbidden(format!(
                "Attribute '{k}' is read-only: ims reports it from the image's data"
            )));
        }
        check_property_name(k)?;
        out.insert(k.clone(), property_string(k, v)?);
    }
    Ok(out)
}

/// A JSON body, read under the server's JSON cap: a body over it is 413, one that is not the
/// JSON expected is 400, both in Glance's error shape. Any content type is taken (clients
/// send `application/json`, with or without a charset, or the json-patch types).
pub struct GlanceJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for GlanceJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is over the server's JSON size cap",
                )
            } else {
                ApiError::bad_request(format!("the request body could not be read: {e}"))
            }
        })?;
        serde_json::from_slice(&bytes).map(GlanceJson).map_err(|e| {
            ApiError::bad_request(format!("the request body is not the JSON expected: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The image object of `r`, as a JSON value.
    fn image(r: &ImageRecord) -> Value {
        serde_json::to_value(ImageObject(r)).unwrap()
    }
    use crate::register::ImageType;

    #[test]
    fn tags_round_trip_as_strings() {
        let t = parse_tag("env=prod").unwrap();
        assert_eq!(tag_string(t.key(), t.value()), "env=prod");
        let t = parse_tag("gold").unwrap();
        assert_eq!((t.key(), t.value()), ("gold", ""));
        assert_eq!(tag_string(t.key(), t.value()), "gold");
    }

    #[test]
    fn a_queued_image_has_null_data_fields_and_flat_properties() {
        let mut r = ImageRecord::new("", "p1", "local", ImageType::Data);
        r.properties
            .insert("container_format".into(), "bare".into());
        r.properties.insert("hw_disk_bus".into(), "virtio".into());
        r.properties.insert("status".into(), "sneaky".into());
        let v = image(&r);
        assert_eq!(v["status"], "queued");
        assert_eq!(v["name"], Value::Null);
        assert_eq!(v["checksum"], Value::Null);
        assert_eq!(v["size"], Value::Null);
        assert_eq!(v["container_format"], "bare");
        assert_eq!(v["hw_disk_bus"], "virtio");
        assert_eq!(v["self"], format!("/v2/images/{}", r.id));
        r.staged_size = Some(4096);
        assert_eq!(image(&r)["status"], "uploading");
        r.status = crate::register::Status::Saving;
        assert_eq!(image(&r)["status"], "importing");
    }

    #[test]
    fn read_only_and_ims_facts_are_refused_as_properties() {
        let body: Map<String, Value> =
            serde_json::from_str(r#"{"name": "x", "__os_type": "Linux"}"#).unwrap();
        assert_eq!(
            custom_properties(&body).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        let body: Map<String, Value> =
            serde_json::from_str(r#"{"name": "x", "k": 5, "b": true}"#).unwrap();
        let p = custom_properties(&body).unwrap();
        assert_eq!((p["k"].as_str(), p["b"].as_str()), ("5", "true"));
    }
}
