//! Tags: `KEY=VALUE` labels of an image, checked by the tag rules when made.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::error::{Result, RuleCode, ServiceError};
use super::rules;

/// One tag of an image: a key of 1 to 36 characters and a value of at most 43, neither holding
/// control characters. Made only through [`Tag::new`] or [`str::parse`] (`KEY=VALUE`), so a
/// `Tag` always passes the tag rules; the count (at most 10 per image) is checked where a
/// request's tags become the image's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    key: String,
    value: String,
}

impl Tag {
    /// The tag `key=value`, or the rule's refusal: `tag_invalid` (empty key, control
    /// characters in it), `tag_key_too_long`, `tag_value_too_long`.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Result<Tag> {
        let (key, value) = (key.into(), value.into());
        rules::check_tag(&key, &value)?;
        Ok(Tag { key, value })
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value (may be empty).
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// `KEY=VALUE`, key and value trimmed, as the CLI's `--tag` gives it; no `=` is `tag_invalid`.
impl FromStr for Tag {
    type Err = ServiceError;

    fn from_str(spec: &str) -> Result<Tag> {
        let Some((k, v)) = spec.split_once('=') else {
            return Err(ServiceError::rule(
                RuleCode::TagInvalid,
                format!("tag '{spec}' is not KEY=VALUE"),
            ));
        };
        Tag::new(k.trim(), v.trim())
    }
}

/// `KEY=VALUE`.
impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// The tags of a request as the record keeps them: a later tag of a key replaces an earlier
/// one, and at most 10 keys remain (`too_many_tags`).
pub(crate) fn tag_map(tags: &[Tag]) -> Result<BTreeMap<String, String>> {
    let map: BTreeMap<String, String> = tags
        .iter()
        .map(|t| (t.key.clone(), t.value.clone()))
        .collect();
    rules::check_tag_count(map.len())?;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T: std::fmt::Debug>(r: Result<T>) -> &'static str {
        r.unwrap_err().code().expect("a rule's refusal").as_str()
    }

    #[test]
    fn tags_are_checked_when_made_and_counted_when_collected() {
        let t: Tag = " env = prod ".parse().unwrap();
        assert_eq!(
            (t.key(), t.value(), t.to_string().as_str()),
            ("env", "prod", "env=prod")
        );
        assert_eq!(Tag::new("k", "").unwrap().value(), "");
        assert_eq!(code("novalue".parse::<Tag>()), "tag_invalid");
        assert_eq!(code("=v".parse::<Tag>()), "tag_invalid");
        assert_eq!(code(Tag::new("k".repeat(37), "v")), "tag_key_too_long");
        assert_eq!(code(Tag::new("k", "v".repeat(44))), "tag_value_too_long");
        assert!(Tag::new("k".repeat(36), "v".repeat(43)).is_ok());

        let ten: Vec<Tag> = (0..10)
            .map(|i| Tag::new(format!("k{i}"), "v").unwrap())
            .collect();
        assert_eq!(tag_map(&ten).unwrap().len(), 10);
        let mut eleven = ten.clone();
        eleven.push(Tag::new("k10", "v").unwrap());
        assert_eq!(code(tag_map(&eleven)), "too_many_tags");
        // A key given again replaces its value and is counted once.
        let mut again = ten.clone();
        again.push(Tag::new("k0", "w").unwrap());
        assert_eq!(tag_map(&again).unwrap()["k0"], "w");
    }
}
