//! `GET /v2/cloudimages`: the images the caller sees, with the filters, paging and sort of
//! spec 1.3. Filters compare with the attribute as the image shows it ([`super::image::view`]),
//! exactly; `tag` is `KEY=VALUE`; `created_at`/`updated_at` are `OP:TIME` with OP one of `gt gte
//! lt lte eq neq`; `member_status` lists images shared with the caller in that member status.
//! A parameter that is not one of these is refused (IMG.0001), as is a marker not in the list.

use std::cmp::Ordering;
use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use serde_json::{Value, json};

use super::error::{ImsError, ImsResult, blocking};
use super::image::view;
use crate::register::{ListQuery, MemberStatus};
use crate::server::auth::Caller;
use crate::server::state::AppState;

/// Filters compared with the attribute of the same name, exactly.
const EXACT: &[&str] = &[
    "__imagetype",
    "__isregistered",
    "__os_type",
    "__os_bit",
    "__platform",
    "__whole_image",
    "__system__cmkid",
    "__support_kvm",
    "__support_xen",
    "__support_largememory",
    "__support_diskintensive",
    "__support_highperformance",
    "__support_xen_hana",
    "__support_kvm_infiniband",
    "__support_xen_gpu_type",
    "__support_kvm_gpu_type",
    "id",
    "name",
    "owner",
    "status",
    "visibility",
    "protected",
    "container_format",
    "disk_format",
    "min_disk",
    "min_ram",
    "virtual_env_type",
    "enterprise_project_id",
    "architecture",
    "flavor_id",
];

/// The keys a list sorts by.
const SORT_KEYS: &[&str] = &[
    "name",
    "container_format",
    "disk_format",
    "status",
    "id",
    "size",
    "created_at",
    "updated_at",
    "min_disk",
];

/// The most images one page holds, and the default.
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 500;

/// Whether an attribute is the text `want`, as a filter compares them.
fn equals(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Bool(b) => want == if *b { "true" } else { "false" },
        Value::Number(n) => n.to_string() == want,
        _ => false,
    }
}

/// A sort key: numbers before text, numbers by value, text by bytes.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    Missing,
    Number(u64),
    Text(&'a str),
}

fn key<'a>(v: &'a Value, name: &str) -> Key<'a> {
    match &v[name] {
        Value::Number(n) => n.as_u64().map_or(Key::Missing, Key::Number),
        Value::String(s) => Key::Text(s),
        _ => Key::Missing,
    }
}

/// `OP:TIME` against the time `have` (both RFC 3339 UTC, which compare as text).
fn time_matches(filter: &str, have: &str) -> ImsResult<bool> {
    let (op, time) = filter
        .split_once(':')
        .ok_or_else(|| ImsError::bad_request(format!("time filter '{filter}' is not OP:TIME")))?;
    let o = have.cmp(time);
    Ok(match op {
        "gt" => o == Ordering::Greater,
        "gte" => o != Ordering::Less,
        "lt" => o == Ordering::Less,
        "lte" => o != Ordering::Greater,
        "eq" => o == Ordering::Equal,
        "neq" => o != Ordering::Equal,
        _ => {
            return Err(ImsError::bad_request(format!(
                "time filter operator '{op}' (gt, gte, lt, lte, eq, neq)"
            )));
        }
    })
}

/// Filters, sorts and pages `images` (already the caller's view) by the query `q`.
pub fn select(mut images: Vec<Value>, q: &HashMap<String, String>) -> ImsResult<Vec<Value>> {
    for (k, want) in q {
        match k.as_str() {
            "marker" | "limit" | "sort_key" | "sort_dir" | "member_status" => {}
            "tag" => {
                let (key, value) = want.split_once('=').unwrap_or((want.as_str(), ""));
                let tag = super::image::tag_text(key, value);
                images.retain(|i| {
                    i["tags"].as_array().is_some_and(|t| {
                        t.iter().any(|t| {
                            t.as_str().is_some_and(|t| {
                                t == tag
                                    || (!want.contains('=') && t.starts_with(&format!("{key}.")))
                            })
                        })
                    })
                });
            }
            "created_at" | "updated_at" => {
                let mut kept = Vec::with_capacity(images.len());
                for i in images {
                    if time_matches(want, i[k.as_str()].as_str().unwrap_or(""))? {
                        kept.push(i);
                    }
                }
                images = kept;
            }
            key if EXACT.contains(&key) => {
                images.retain(|i| equals(&i[key], want));
            }
            other => {
                return Err(ImsError::bad_request(format!(
                    "unknown query parameter '{other}'"
                )));
            }
        }
    }
    let sort_key = q.get("sort_key").map_or("created_at", String::as_str);
    if !SORT_KEYS.contains(&sort_key) {
        return Err(ImsError::bad_request(format!(
            "cannot sort by '{sort_key}' ({})",
            SORT_KEYS.join(", ")
        )));
    }
    let ascending = match q.get("sort_dir").map(String::as_str) {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(ImsError::bad_request(format!(
                "sort_dir '{other}' (asc, desc)"
            )));
        }
    };
    // Each image's key once, then the order of the keys (ties by id).
    let mut order: Vec<(Key, &str, usize)> = images
        .iter()
        .enumerate()
        .map(|(i, v)| (key(v, sort_key), v["id"].as_str().unwrap_or(""), i))
        .collect();
    order.sort_by(|a, b| {
        let o = (&a.0, a.1).cmp(&(&b.0, b.1));
        if ascending { o } else { o.reverse() }
    });
    let order: Vec<usize> = order.into_iter().map(|(_, _, i)| i).collect();
    let mut slots: Vec<Option<Value>> = images.into_iter().map(Some).collect();
    let mut images: Vec<Value> = order.into_iter().filter_map(|i| slots[i].take()).collect();
    if let Some(marker) = q.get("marker") {
        let at = images
            .iter()
            .position(|i| i["id"].as_str() == Some(marker.as_str()))
            .ok_or_else(|| ImsError::bad_request(format!("marker {marker} is not in the list")))?;
        images.drain(..=at);
    }
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ImsError::bad_request(format!("limit '{l}' is not 1 to {MAX_LIMIT}")))?,
        None => DEFAULT_LIMIT,
    };
    images.truncate(limit);
    Ok(images)
}

/// The images the caller sees, filtered, sorted and paged (spec 1.3).
#[utoipa::path(get, path = "/v2/cloudimages", tag = "ims",
    responses((status = 200, description = "`{\"images\": [...]}`"),
              (status = 400, description = "A parameter IMS does not know, or a bad value")))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ImsResult<Json<Value>> {
    let member_status = match q.get("member_status") {
        Some(s) => Some(
            s.parse::<MemberStatus>()
                .map_err(|e| ImsError::bad_request(e.to_string()))?,
        ),
        None => None,
    };
    let scope = caller.scope.clone();
    let listed = blocking(&state, move |ims| {
        ims.list(
            &scope,
            &ListQuery {
                member_status,
                ..ListQuery::default()
            },
        )
    })
    .await?;
    let images = listed
        .iter()
        .map(|l| view(&l.record, l.member_status))
        .collect();
    Ok(Json(json!({ "images": select(images, &q)? })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, name: &str, created: &str, size: u64) -> Value {
        json!({"id": id, "name": name, "created_at": created, "size": size,
               "__os_type": "Linux", "protected": false, "tags": ["k.v"]})
    }

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ids(v: &[Value]) -> Vec<&str> {
        v.iter().map(|i| i["id"].as_str().unwrap()).collect()
    }

    #[test]
    fn filters_sort_and_pages() {
        let all = vec![
            img("a", "x", "2026-01-01T00:00:00Z", 10),
            img("b", "y", "2026-01-02T00:00:00Z", 30),
            img("c", "x", "2026-01-03T00:00:00Z", 20),
        ];
        assert_eq!(ids(&select(all.clone(), &q(&[])).unwrap()), ["c", "b", "a"]);
        assert_eq!(
            ids(&select(all.clone(), &q(&[("name", "x"), ("sort_dir", "asc")])).unwrap()),
            ["a", "c"]
        );
        assert_eq!(
            ids(&select(
                all.clone(),
                &q(&[("sort_key", "size"), ("sort_dir", "asc")])
            )
            .unwrap()),
            ["a", "c", "b"]
        );
        assert_eq!(
            ids(&select(
                all.clone(),
                &q(&[("created_at", "gte:2026-01-02T00:00:00Z")])
            )
            .unwrap()),
            ["c", "b"]
        );
        assert_eq!(
            ids(&select(all.clone(), &q(&[("marker", "c"), ("limit", "1")])).unwrap()),
            ["b"]
        );
        assert_eq!(
            ids(&select(all.clone(), &q(&[("protected", "false"), ("tag", "k=v")])).unwrap()).len(),
            3
        );
        assert!(
            select(all.clone(), &q(&[("tag", "k=w")]))
                .unwrap()
                .is_empty()
        );
        for bad in [
            ("bogus", "1"),
            ("limit", "0"),
            ("limit", "x"),
            ("marker", "zz"),
            ("sort_key", "owner_secret"),
            ("sort_dir", "up"),
            ("created_at", "2026"),
            ("created_at", "after:2026"),
        ] {
            let e = select(all.clone(), &q(&[bad])).unwrap_err();
            assert_eq!(e.code, "IMG.0001", "{bad:?}");
        }
    }
}
