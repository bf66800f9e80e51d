//! The JSON schemas clients fetch and validate against (`/v2/schemas/...`): glanceclient
//! checks create, update and member answers with them, so they admit everything the server
//! returns: every disk format it reports (zvhd2 included), nullable data fields, custom
//! properties as strings.

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use super::view::{CONTAINER_FORMATS, DISK_FORMATS, STATUSES};
use crate::server::state::AppState;

/// The image schema.
pub fn image_schema() -> Value {
    let nullable_string = |description: &str, max: Option<u64>| {
        let mut v =
            json!({"type": ["null", "string"], "readOnly": true, "description": description});
        if let Some(max) = max {
            v["maxLength"] = json!(max);
        }
        v
    };
    let mut disk_formats: Vec<Value> = DISK_FORMATS.iter().map(|f| json!(f)).collect();
    disk_formats.push(Value::Null);
    let mut container_formats: Vec<Value> = CONTAINER_FORMATS.iter().map(|f| json!(f)).collect();
    container_formats.push(Value::Null);
    json!({
        "name": "image",
        "additionalProperties": {"type": "string"},
        "links": [
            {"href": "{self}", "rel": "self"},
            {"href": "{file}", "rel": "enclosure"},
            {"href": "{schema}", "rel": "describedby"}
        ],
        "properties": {
            "id": {"type": "string", "description": "An identifier for the image",
                   "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
            "name": {"type": ["null", "string"], "maxLength": 255, "description": "Descriptive name for the image"},
            "status": {"type": "string", "readOnly": true, "enum": STATUSES, "description": "Status of the image"},
            "visibility": {"type": "string", "enum": ["community", "public", "private", "shared"], "description": "Scope of image accessibility"},
            "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
            "os_hidden": {"type": "boolean", "description": "If true, image will not appear in default image list response."},
            "checksum": nullable_string("md5 hash of image contents.", Some(32)),
            "os_hash_algo": nullable_string("Algorithm to calculate the os_hash_value", Some(64)),
            "os_hash_value": nullable_string("Hexdigest of the image contents using the algorithm specified by the os_hash_algo", Some(128)),
            "owner": {"type": ["null", "string"], "maxLength": 255, "description": "Owner of the image"},
            "size": {"type": ["null", "integer"], "readOnly": true, "description": "Size of image file in bytes"},
            "virtual_size": {"type": ["null", "integer"], "readOnly": true, "description": "Virtual size of image in bytes"},
            "container_format": {"type": ["null", "string"], "enum": container_formats, "description": "Format of the container"},
            "disk_format": {"type": ["null", "string"], "enum": disk_formats, "description": "Format of the disk"},
            "created_at": {"type": "string", "readOnly": true, "description": "Date and time of image registration"},
            "updated_at": {"type": "string", "readOnly": true, "description": "Date and time of the last image modification"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}, "description": "List of strings related to the image"},
            "direct_url": {"type": "string", "readOnly": true, "description": "URL to access the image file kept in external store"},
            "min_ram": {"type": "integer", "description": "Amount of ram (in MB) required to boot image."},
            "min_disk": {"type": "integer", "description": "Amount of disk space (in GB) required to boot image."},
            "self": {"type": "string", "readOnly": true, "description": "An image self url"},
            "file": {"type": "string", "readOnly": true, "description": "An image file url"},
            "stores": {"type": "string", "readOnly": true, "description": "Store in which image data resides."},
            "schema": {"type": "string", "readOnly": true, "description": "An image schema url"},
            "locations": {"type": "array", "items": {"type": "object"}, "description": "A set of URLs to access the image file kept in external store"}
        }
    })
}

/// The images (list) schema.
pub fn images_schema() -> Value {
    json!({
        "name": "images",
        "properties": {
            "images": {"type": "array", "items": image_schema()},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"}
        },
        "links": [
            {"href": "{first}", "rel": "first"},
            {"href": "{next}", "rel": "next"},
            {"href": "{schema}", "rel": "describedby"}
        ]
    })
}

/// The member schema.
pub fn member_schema() -> Value {
    json!({
        "name": "member",
        "properties": {
            "created_at": {"type": "string", "description": "Date and time of image member creation"},
            "image_id": {"type": "string", "description": "An identifier for the image",
                         "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
            "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
            "status": {"type": "string", "enum": ["pending", "accepted", "rejected"], "description": "The status of this image member"},
            "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
            "schema": {"type": "string", "readOnly": true}
        }
    })
}

/// The members (list) schema.
pub fn members_schema() -> Value {
    json!({
        "name": "members",
        "properties": {
            "members": {"type": "array", "items": member_schema()},
            "schema": {"type": "string"}
        },
        "links": [{"href": "{schema}", "rel": "describedby"}]
    })
}

/// The image schema.
#[utoipa::path(get, path = "/v2/schemas/image", tag = "glance",
    responses((status = 200, description = "The JSON schema of an image")))]
async fn image() -> impl IntoResponse {
    axum::Json(image_schema())
}

/// The images schema.
#[utoipa::path(get, path = "/v2/schemas/images", tag = "glance",
    responses((status = 200, description = "The JSON schema of a list of images")))]
async fn images() -> impl IntoResponse {
    axum::Json(images_schema())
}

/// The member schema.
#[utoipa::path(get, path = "/v2/schemas/member", tag = "glance",
    responses((status = 200, description = "The JSON schema of an image member")))]
async fn member() -> impl IntoResponse {
    axum::Json(member_schema())
}

/// The members schema.
#[utoipa::path(get, path = "/v2/schemas/members", tag = "glance",
    responses((status = 200, description = "The JSON schema of a list of members")))]
async fn members() -> impl IntoResponse {
    axum::Json(members_schema())
}

/// The metadata-definition schemas glanceclient fetches on its first run (it falls back to
/// API v1 when all of them fail): minimal schemas, as ims has no metadata definitions.
#[utoipa::path(get, path = "/v2/schemas/metadefs/{name}", tag = "glance",
    params(("name" = String, Path, description = "namespace or resource_type")),
    responses((status = 200, description = "A minimal schema")))]
async fn metadefs(
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<impl IntoResponse, crate::server::error::ApiError> {
    if !matches!(
        name.as_str(),
        "namespace"
            | "namespaces"
            | "resource_type"
            | "resource_types"
            | "object"
            | "objects"
            | "property"
            | "properties"
            | "tag"
            | "tags"
    ) {
        return Err(crate::server::error::ApiError::not_found(format!(
            "no schema '{name}'"
        )));
    }
    Ok(axum::Json(
        json!({"name": name, "properties": {}, "additionalProperties": false}),
    ))
}

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/schemas/image", get(image))
        .route("/v2/schemas/images", get(images))
        .route("/v2/schemas/member", get(member))
        .route("/v2/schemas/members", get(members))
        .route("/v2/schemas/metadefs/{name}", get(metadefs))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(image, images, member, members, metadefs))]
struct Doc;

/// This module's part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_schema_admits_every_reported_format() {
        let s = image_schema();
        let formats = s["properties"]["disk_format"]["enum"].as_array().unwrap();
        for f in [
            "zvhd2", "zvhd", "qcow2", "raw", "vmdk", "vhd", "vhdx", "iso",
        ] {
            assert!(formats.contains(&json!(f)), "{f}");
        }
        assert_eq!(s["additionalProperties"]["type"], "string");
    }
}
