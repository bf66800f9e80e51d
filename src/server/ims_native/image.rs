//! An image as IMS's API shows it (spec 1.3): a flat object of the core attributes, then
//! the extension attributes (`__os_version`, `__imagetype`, ...), every one of those a JSON
//! string, then the properties a client set.

use serde_json::{Value, json};

use crate::register::{ImageRecord, ImageType, MemberStatus};

/// IMS's `virtual_env_type` of an image: `FusionCompute` (a server's disk), `DataImage`,
/// `IsoImage`.
pub fn virtual_env_type(t: ImageType) -> &'static str {
    match t {
        ImageType::Data => "DataImage",
        ImageType::Iso => "IsoImage",
        _ => "FusionCompute",
    }
}

/// A tag as IMS writes it in an image's `tags`: `key.value`.
pub fn tag_text(key: &str, value: &str) -> String {
    format!("{key}.{value}")
}

/// The image `r` as IMS shows it; `member_status` for an image shared with the caller.
pub fn view(r: &ImageRecord, member_status: Option<MemberStatus>) -> Value {
    let flag = |b: bool| if b { "true" } else { "false" };
    let tags: Vec<String> = r.tags.iter().map(|(k, v)| tag_text(k, v)).collect();
    let mut v = json!({
        "id": r.id,
        "name": r.name,
        "status": r.status.name(),
        "visibility": r.visibility.name(),
        "protected": r.protected,
        "owner": r.owner,
        "container_format": "bare",
        "disk_format": r.store_format,
        "min_disk": r.min_disk,
        "min_ram": r.min_ram,
        "size": r.store_size,
        "virtual_size": r.virtual_size,
        "checksum": r.checksum.sha256,
        "tags": tags,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "file": format!("/v2/images/{}/file", r.id),
        "self": format!("/v2/images/{}", r.id),
        "schema": "/v2/schemas/image",
        "virtual_env_type": virtual_env_type(r.image_type),
        "enterprise_project_id": "0",
        "hw_firmware_type": r.firmware,
        "architecture": r.architecture,
        "__os_version": r.os_version,
        "__os_type": r.os_type,
        "__os_bit": r.os_bit.map(|b| b.to_string()).unwrap_or_default(),
        "__platform": r.platform,
        "__description": r.description,
        "__imagetype": r.class().name(),
        "__isregistered": "true",
        "__image_size": r.store_size.to_string(),
        "__image_source_type": "uds",
        "__root_origin": "file",
        "__originalimagename": r.copied_from.clone().unwrap_or_default(),
        "__backup_id": r.backup_id.clone().unwrap_or_default(),
        "__lazyloading": "false",
        "__whole_image": flag(r.image_type == ImageType::FullEcs),
        "__support_user_data": flag(r.features.support_user_data),
        "__support_disk_hotswap": flag(r.features.support_disk_hotswap),
    });
    let m = v.as_object_mut().expect("an object");
    if r.encrypted {
        m.insert(
            "__system__cmkid".into(),
            json!(r.kms_key_id.clone().unwrap_or_default()),
        );
    }
    if !r.data_images.is_empty() {
        m.insert("__data_images".into(), json!(r.data_images.join(",")));
    }
    if let Some(s) = member_status {
        m.insert("member_status".into(), json!(s.name()));
    }
    // The properties a client set (`__is_config_init`, Glance's custom properties), as
    // strings, never over an attribute the record itself gives.
    for (k, value) in &r.properties {
        if !m.contains_key(k) {
            m.insert(k.clone(), json!(value));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::register::Status;

    #[test]
    fn extension_attributes_are_strings() {
        let mut r = ImageRecord::new("n", "p1", "r1", ImageType::Data);
        r.status = Status::Active;
        r.store_size = 1234;
        r.os_bit = Some(64);
        r.tags.insert("k".into(), "v".into());
        r.properties
            .insert("__is_config_init".into(), "true".into());
        r.properties
            .insert("name".into(), "not over the name".into());
        let v = view(&r, Some(MemberStatus::Accepted));
        assert_eq!(v["__is_config_init"], "true");
        assert_eq!(v["name"], "n");
        for (k, value) in v.as_object().unwrap() {
            if k.starts_with("__") {
                assert!(value.is_string(), "{k} is {value}");
            }
        }
        assert_eq!(v["__image_size"], "1234");
        assert_eq!(v["__os_bit"], "64");
        assert_eq!(v["virtual_env_type"], "DataImage");
        assert_eq!(v["__imagetype"], "private");
        assert_eq!(v["tags"], json!(["k.v"]));
        assert_eq!(v["member_status"], "accepted");
        assert_eq!(v["self"], format!("/v2/images/{}", r.id));
    }
}
