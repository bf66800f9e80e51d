//! The parent locator: the metadata item of a differencing VHDX that says which file its
//! parent is (`relative_path`, `volume_path`, `absolute_win32_path`) and which data it must
//! hold (`parent_linkage`: the parent's `DataWriteGuid`). A 20-byte header (locator type,
//! reserved, `KeyValueCount`), then 12-byte entries pointing at UTF-16LE keys and values inside
//! the item.

use byteorder::{ByteOrder, LittleEndian};
use uuid::Uuid;

use super::guid;
use crate::error::{Error, Result};

/// The VHDX parent locator type, the only one the specification defines.
pub const VHDX_LOCATOR_TYPE: Uuid = uuid::uuid!("B04AEFB7-D19E-4A81-B789-25B8E9445913");
const HEADER_SIZE: usize = 20;
const ENTRY_SIZE: usize = 12;

/// A parent locator's key-value pairs, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocator {
    /// The pairs, in the item's order.
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// Parses the item's bytes (`at`: its file offset, for errors): the VHDX locator type,
    /// every key and value inside the item with a nonzero even length, keys unique,
    /// `parent_linkage` present.
    pub fn parse(item: &[u8], at: u64) -> Result<ParentLocator> {
        let bad = |off: usize, problem: String| {
            Error::malformed("vhdx parent locator", at + off as u64, problem)
        };
        let Some(h) = item.get(..HEADER_SIZE) else {
            return Err(bad(
                0,
                format!("{} bytes, shorter than its header", item.len()),
            ));
        };
        let kind = guid(&h[..16]);
        if kind != VHDX_LOCATOR_TYPE {
            return Err(Error::unsupported(format!(
                "vhdx parent locator type {kind} (ims follows VHDX parents only)"
            )));
        }
        let count = usize::from(LittleEndian::read_u16(&h[18..]));
        let mut entries: Vec<(String, String)> = Vec::new();
        for i in 0..count {
            let off = HEADER_SIZE + i * ENTRY_SIZE;
            let Some(e) = item.get(off..off + ENTRY_SIZE) else {
                return Err(bad(off, format!("entry {i} lies past the item's end")));
            };
            let text = |o: u32, l: u16| -> Option<String> {
                let (o, l) = (o as usize, usize::from(l));
                if o == 0 || l == 0 || l % 2 == 1 {
                    return None;
                }
                let units: Vec<u16> = item
                    .get(o..o.checked_add(l)?)?
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16(&units).ok()
            };
            let key = text(LittleEndian::read_u32(e), LittleEndian::read_u16(&e[8..]));
            let value = text(
                LittleEndian::read_u32(&e[4..]),
                LittleEndian::read_u16(&e[10..]),
            );
            let (Some(key), Some(value)) = (key, value) else {
                return Err(bad(
                    off,
                    format!(
                        "entry {i}'s key or value is empty, odd-sized, outside the item or not UTF-16"
                    ),
                ));
            };
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(bad(off, format!("key {key:?} is listed twice")));
            }
            entries.push((key, value));
        }
        let locator = ParentLocator { entries };
        if locator.get("parent_linkage").is_none() {
            return Err(bad(0, "no parent_linkage entry".into()));
        }
        Ok(locator)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The `DataWriteGuid`s the parent may have: `parent_linkage` and `parent_linkage2`.
    pub fn linkages(&self) -> Vec<Uuid> {
        ["parent_linkage", "parent_linkage2"]
            .iter()
            .filter_map(|k| self.get(k))
            .filter_map(|v| Uuid::parse_str(v.trim_start_matches('{').trim_end_matches('}')).ok())
            .collect()
    }

    /// The names to look for the parent by, in the specification's order: the relative path,
    /// then the file names of the volume and absolute paths (found beside the child, since an
    /// absolute path is never followed). Windows separators become `/`.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        if let Some(rel) = self.get("relative_path") {
            let p = rel.replace('\\', "/");
            let p = p.strip_prefix("./").unwrap_or(&p).to_string();
            if !p.is_empty() {
                names.push(p);
            }
        }
        for key in ["volume_path", "absolute_win32_path"] {
            if let Some(path) = self.get(key)
                && let Some(name) = path.rsplit(['\\', '/']).next()
                && !name.is_empty()
                && !names.iter().any(|n| n == name)
            {
                names.push(name.to_string());
            }
        }
        names
    }

    /// The locator as one line, for errors.
    pub fn description(&self) -> String {
        self.entries
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The item's bytes for `entries`.
    pub fn to_bytes(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE + entries.len() * ENTRY_SIZE];
        b[..16].copy_from_slice(&VHDX_LOCATOR_TYPE.to_bytes_le());
        LittleEndian::write_u16(&mut b[18..], entries.len() as u16);
        for (i, (k, v)) in entries.iter().enumerate() {
            let place = |s: &str, b: &mut Vec<u8>| {
                let at = b.len() as u32;
                for u in s.encode_utf16() {
                    b.extend_from_slice(&u.to_le_bytes());
                }
                (at, (b.len() as u32 - at) as u16)
            };
            let (ko, kl) = place(k, &mut b);
            let (vo, vl) = place(v, &mut b);
            let e = HEADER_SIZE + i * ENTRY_SIZE;
            LittleEndian::write_u32(&mut b[e..], ko);
            LittleEndian::write_u32(&mut b[e + 4..], vo);
            LittleEndian::write_u16(&mut b[e + 8..], kl);
            LittleEndian::write_u16(&mut b[e + 10..], vl);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: &str = "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}";

    #[test]
    fn keys_and_values_decode_and_name_the_parent() {
        let b = ParentLocator::to_bytes(&[
            ("parent_linkage", LINK),
            ("relative_path", ".\\base.vhdx"),
            ("absolute_win32_path", "\\\\?\\d:\\vms\\other.vhdx"),
        ]);
        assert_eq!(&b[..4], &[0xb7, 0xef, 0x4a, 0xb0]);
        assert_eq!(b[18], 3);
        let l = ParentLocator::parse(&b, 0).unwrap();
        assert_eq!(
            l.linkages(),
            [Uuid::parse_str("83ed0ec3-24c8-49a6-a959-5e4bf1288bfb").unwrap()]
        );
        assert_eq!(l.names(), ["base.vhdx", "other.vhdx"]);
        assert!(l.description().contains("relative_path=.\\base.vhdx"));
    }

    #[test]
    fn bad_locators_are_refused() {
        let good = ParentLocator::to_bytes(&[("parent_linkage", LINK)]);
        let mut b = good.clone();
        b[0] ^= 1;
        assert_eq!(
            ParentLocator::parse(&b, 0).unwrap_err().kind(),
            "unsupported"
        );
        let mut b = good.clone();
        LittleEndian::write_u32(&mut b[24..], 4000);
        assert!(
            ParentLocator::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("outside")
        );
        let mut b = good.clone();
        LittleEndian::write_u16(&mut b[30..], 3);
        assert!(ParentLocator::parse(&b, 0).is_err());
        let mut b = good.clone();
        // More entries than the item holds: the table runs into the strings, then past the end.
        LittleEndian::write_u16(&mut b[18..], 9);
        assert_eq!(ParentLocator::parse(&b, 0).unwrap_err().kind(), "malformed");
        let e = ParentLocator::parse(&good[..30], 0).unwrap_err();
        assert!(e.to_string().contains("past the item's end"), "{e}");
        let twice = ParentLocator::to_bytes(&[("parent_linkage", LINK), ("parent_linkage", LINK)]);
        assert!(
            ParentLocator::parse(&twice, 0)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let none = ParentLocator::to_bytes(&[("relative_path", "a.vhdx")]);
        assert!(
            ParentLocator::parse(&none, 7)
                .unwrap_err()
                .to_string()
                .contains("parent_linkage")
        );
    }
}
