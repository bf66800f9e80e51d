//! LVM2 physical volumes and their linear logical volumes: the label (`LABELONE`) in one of the
//! first four sectors, the PV header after it (PV UUID, data and metadata area lists), the
//! metadata area header (` LVM2 x[5A%r0N*>`) whose first raw location holds the volume group's
//! metadata as text, and that text (LVM's configuration syntax: sections, `key = value`,
//! strings, numbers, lists). Logical volumes made of linear ("striped" with one stripe)
//! segments are mapped to runs of the disk; other kinds are named and skipped. Little-endian.

use std::collections::HashMap;

use byteorder::{ByteOrder, LittleEndian};

use crate::error::{Error, Result};
use crate::limits::{MAX_LVM_AREAS, MAX_LVM_DEPTH, MAX_LVM_METADATA, MAX_LVM_SEGMENTS};

use super::disk::{Span, Volume};

pub(crate) const LABEL_ID: &[u8; 8] = b"LABELONE";
pub(crate) const LVM2_TYPE: &[u8; 8] = b"LVM2 001";
pub(crate) const FMTT_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
const SECTOR: u64 = 512;

const S: &str = "lvm2 physical volume";

/// A physical volume and the metadata it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalVolume {
    /// The PV UUID without dashes (32 characters).
    pub uuid: String,
    /// The volume group metadata text, when the PV has a metadata area.
    pub metadata: Option<String>,
}

/// Reads the label, PV header and metadata of the PV on `vol`.
pub fn read_pv(vol: &Volume) -> Result<PhysicalVolume> {
    let head = vol
        .read_vec(0, 4 * SECTOR as usize)?
        .ok_or_else(|| Error::truncated(S, 0, 4 * SECTOR, vol.len))?;
    let (label_at, label) = (0..4)
        .map(|i| {
            (
                i * SECTOR as usize,
                &head[i * SECTOR as usize..(i + 1) * SECTOR as usize],
            )
        })
        .find(|(_, l)| &l[0..8] == LABEL_ID && &l[24..32] == LVM2_TYPE)
        .ok_or_else(|| Error::malformed(S, 0, "no LVM2 label"))?;
    let offset_xl = usize::try_from(LittleEndian::read_u32(&label[20..24])).unwrap_or(usize::MAX);
    // The PV header: UUID, device size, then two lists of (offset, size) ended by zeros.
    let pvh = label
        .get(offset_xl..)
        .filter(|h| h.len() >= 40)
        .ok_or_else(|| Error::malformed(S, label_at as u64 + 20, "PV header offset"))?;
    let uuid = String::from_utf8_lossy(&pvh[0..32]).into_owned();
    let mut pos = 40;
    let mut lists: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            let Some(e) = pvh.get(pos..pos + 16) else {
                return Err(Error::malformed(
                    S,
                    label_at as u64,
                    "area list past the label",
                ));
            };
            pos += 16;
            let (offset, size) = (
                LittleEndian::read_u64(&e[0..8]),
                LittleEndian::read_u64(&e[8..16]),
            );
            if offset == 0 && size == 0 {
                break;
            }
            if list.len() >= MAX_LVM_AREAS {
                return Err(Error::limit(S, label_at as u64, "too many areas"));
            }
            list.push((offset, size));
        }
    }
    let metadata = match lists[1].first() {
        Some(&(offset, size)) => metadata_text(vol, offset, size)?,
        None => None,
    };
    Ok(PhysicalVolume { uuid, metadata })
}

/// The text at the metadata area's first raw location (which may wrap around the area's end).
fn metadata_text(vol: &Volume, mda_offset: u64, mda_size: u64) -> Result<Option<String>> {
    const M: &str = "lvm2 metadata area";
    let h = vol
        .read_vec(mda_offset, 512)?
        .ok_or_else(|| Error::truncated(M, mda_offset, 512, vol.len.saturating_sub(mda_offset)))?;
    if &h[4..20] != FMTT_MAGIC {
        return Err(Error::malformed(M, mda_offset, "bad magic"));
    }
    let offset = LittleEndian::read_u64(&h[40..48]);
    let size = LittleEndian::read_u64(&h[48..56]);
    if offset == 0 || size == 0 {
        return Ok(None);
    }
    if size > MAX_LVM_METADATA || offset < 512 || offset >= mda_size {
        return Err(Error::malformed(
            M,
            mda_offset + 40,
            format!("metadata of {size} bytes at {offset}"),
        ));
    }
    let first = size.min(mda_size - offset);
    let mut text = vol
        .read_vec(mda_offset + offset, crate::block::usize_len(first)?)?
        .ok_or_else(|| Error::truncated(M, mda_offset + offset, first, 0))?;
    if first < size {
        // The circular buffer wraps to just after the header.
        let rest = size - first;
        if rest > mda_size - 512 {
            return Err(Error::malformed(
                M,
                mda_offset + 48,
                "metadata larger than its area",
            ));
        }
        let more = vol
            .read_vec(mda_offset + 512, crate::block::usize_len(rest)?)?
            .ok_or_else(|| Error::truncated(M, mda_offset + 512, rest, 0))?;
        text.extend_from_slice(&more);
    }
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    text.truncate(end);
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

/// A value of the metadata text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum ConfigValue {
    Number(i64),
    String(String),
    List(Vec<ConfigValue>),
    Section(Vec<(String, ConfigValue)>),
}

impl ConfigValue {
    pub fn get(&self, key: &str) -> Option<&ConfigValue> {
        match self {
            ConfigValue::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn number(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            ConfigValue::Number(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }
    pub fn string(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            ConfigValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn items(&self) -> &[(String, ConfigValue)] {
        match self {
            ConfigValue::Section(items) => items,
            _ => &[],
        }
    }
}

/// Parses LVM's configuration syntax into a section.
pub(crate) fn parse_config(text: &str) -> Result<ConfigValue> {
    let mut p = Parser {
        b: text.as_bytes(),
        pos: 0,
    };
    let items = p.section(0, false)?;
    Ok(ConfigValue::Section(items))
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> Error {
        Error::malformed("lvm2 metadata text", self.pos as u64, what.to_string())
    }

    fn skip(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if c == b'#' {
                while self.b.get(self.pos).is_some_and(|&c| c != b'\n') {
                    self.pos += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while self
            .b
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_alphanumeric() || b"_-.+".contains(c))
        {
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.b[start..self.pos]).into_owned()
    }

    fn section(&mut self, depth: usize, nested: bool) -> Result<Vec<(String, ConfigValue)>> {
        if depth > MAX_LVM_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        let mut items = Vec::new();
        loop {
            self.skip();
            match self.b.get(self.pos) {
                None if !nested => return Ok(items),
                None => return Err(self.err("section not closed")),
                Some(b'}') if nested => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => {}
            }
            let key = self.word();
            if key.is_empty() {
                return Err(self.err("expected a name"));
            }
            self.skip();
            match self.b.get(self.pos) {
                Some(b'{') => {
                    self.pos += 1;
                    let inner = self.section(depth + 1, true)?;
                    items.push((key, ConfigValue::Section(inner)));
                }
                Some(b'=') => {
                    self.pos += 1;
                    self.skip();
                    let v = self.value(depth)?;
                    items.push((key, v));
                }
                _ => return Err(self.err("expected '{' or '='")),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<ConfigValue> {
        match self.b.get(self.pos) {
            Some(b'"') => {
                self.pos += 1;
                let mut s = Vec::new();
                loop {
                    match self.b.get(self.pos) {
                        None => return Err(self.err("string not closed")),
                        Some(b'"') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b'\\') => {
                            if let Some(&c) = self.b.get(self.pos + 1) {
                                s.push(c);
                            }
                            self.pos += 2;
                        }
                        Some(&c) => {
                            s.push(c);
                            self.pos += 1;
                        }
                    }
                }
                Ok(ConfigValue::String(
                    String::from_utf8_lossy(&s).into_owned(),
                ))
            }
            Some(b'[') => {
                if depth > MAX_LVM_DEPTH {
                    return Err(self.err("nested too deeply"));
                }
                self.pos += 1;
                let mut list = Vec::new();
                loop {
                    self.skip();
                    match self.b.get(self.pos) {
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(ConfigValue::List(list));
                        }
                        Some(b',') => self.pos += 1,
                        None => return Err(self.err("list not closed")),
                        _ => list.push(self.value(depth + 1)?),
                    }
                }
            }
            _ => {
                let w = self.word();
                w.parse::<i64>()
                    .map(ConfigValue::Number)
                    .or_else(|_| w.parse::<f64>().map(|_| ConfigValue::String(w.clone())))
                    .map_err(|_| self.err("expected a value"))
            }
        }
    }
}

/// A linear logical volume's place: runs of its physical volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalVolume {
    /// The volume group's name.
    pub vg: String,
    /// The logical volume's name.
    pub name: String,
    /// (offset in the LV, PV UUID without dashes, offset in the PV, length), in LV order.
    pub runs: Vec<(u64, String, u64, u64)>,
}

/// The logical volumes the metadata describes, and a note for each one that cannot be mapped
/// (thin, RAID, mirrored or striped over several PVs).
pub fn logical_volumes(metadata: &str) -> Result<(Vec<LogicalVolume>, Vec<String>)> {
    let config = parse_config(metadata)?;
    let bad = |what: String| Error::malformed("lvm2 metadata text", 0, what);
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (vg_name, vg) in config.items() {
        let (Some(pvs), Some(lvs)) = (vg.get("physical_volumes"), vg.get("logical_volumes")) else {
            continue;
        };
        let extent_bytes = vg
            .number("extent_size")
            .and_then(|n| n.checked_mul(SECTOR))
            .filter(|&n| n > 0)
            .ok_or_else(|| bad(format!("volume group {vg_name}: extent size")))?;
        let mut pv_map: HashMap<&str, (String, u64)> = HashMap::new();
        for (pv_name, pv) in pvs.items() {
            let id = pv.string("id").unwrap_or("").replace('-', "");
            let pe_start = pv
                .number("pe_start")
                .and_then(|n| n.checked_mul(SECTOR))
                .ok_or_else(|| bad(format!("{pv_name}: pe_start")))?;
            pv_map.insert(pv_name, (id, pe_start));
        }
        'lv: for (lv_name, lv) in lvs.items() {
            let mut runs = Vec::new();
            for (seg_name, seg) in lv.items() {
                if !matches!(seg, ConfigValue::Section(_)) {
                    continue;
                }
                if runs.len() >= MAX_LVM_SEGMENTS {
                    return Err(bad(format!(
                        "{lv_name}: more than {MAX_LVM_SEGMENTS} segments"
                    )));
                }
                let linear =
                    seg.string("type") == Some("striped") && seg.number("stripe_count") == Some(1);
                let stripes = match seg.get("stripes") {
                    Some(ConfigValue::List(l)) => l.as_slice(),
                    _ => &[],
                };
                let (Some(ConfigValue::String(pv_name)), Some(ConfigValue::Number(pe))) =
                    (stripes.first(), stripes.get(1))
                else {
                    notes.push(format!(
                        "logical volume {vg_name}/{lv_name} ({seg_name}) is not linear; not read"
                    ));
                    continue 'lv;
                };
                if !linear {
                    notes.push(format!(
                        "logical volume {vg_name}/{lv_name} is not linear; not read"
                    ));
                    continue 'lv;
                }
                let (Some(start), Some(count)) =
                    (seg.number("start_extent"), seg.number("extent_count"))
                else {
                    return Err(bad(format!("{lv_name}/{seg_name}: extents")));
                };
                let (pv_id, pe_start) = pv_map
                    .get(pv_name.as_str())
                    .ok_or_else(|| bad(format!("{lv_name}/{seg_name}: unknown {pv_name}")))?;
                let pe = u64::try_from(*pe).map_err(|_| bad(format!("{lv_name}: extent {pe}")))?;
                let (Some(lv_off), Some(len), Some(pv_off)) = (
                    start.checked_mul(extent_bytes),
                    count.checked_mul(extent_bytes),
                    pe.checked_mul(extent_bytes)
                        .and_then(|o| o.checked_add(*pe_start)),
                ) else {
                    return Err(bad(format!("{lv_name}/{seg_name}: extents overflow")));
                };
                runs.push((lv_off, pv_id.clone(), pv_off, len));
            }
            runs.sort_by_key(|r| r.0);
            out.push(LogicalVolume {
                vg: vg_name.clone(),
                name: lv_name.clone(),
                runs,
            });
        }
    }
    Ok((out, notes))
}

/// The volume of `lv`, given the volumes of the PVs by UUID; `None` when a PV is missing.
pub fn lv_volume(lv: &LogicalVolume, pvs: &HashMap<String, Volume>) -> Result<Option<Volume>> {
    let mut spans = Vec::new();
    let mut disk = None;
    for (lv_off, pv, pv_off, len) in &lv.runs {
        let Some(vol) = pvs.get(pv) else {
            return Ok(None);
        };
        // A PV is one run of the disk (a partition or the whole disk).
        let start = vol.disk_offset(0).unwrap_or(0);
        if pv_off.checked_add(*len).is_none_or(|e| e > vol.len) {
            return Err(Error::malformed(
                "lvm2 logical volume",
                *pv_off,
                format!("{}/{} runs past its physical volume", lv.vg, lv.name),
            ));
        }
        spans.push(Span {
            offset: *lv_off,
            disk_offset: start + pv_off,
            len: *len,
        });
        disk = Some(vol.disk.clone());
    }
    match disk {
        Some(d) => Volume::mapped(d, spans).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"centos {
id = "hhhhhh-bbbb-cccc-dddd-eeee-ffff-gggggg"
seqno = 2
status = ["RESIZEABLE", "READ", "WRITE"]
extent_size = 8192  # 4 MiB
physical_volumes {
pv0 {
id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg"
pe_start = 2048
pe_count = 15
}
}
logical_volumes {
root {
segment_count = 2
segment1 {
start_extent = 0
extent_count = 4
type = "striped"
stripe_count = 1
stripes = [
"pv0", 6
]
}
segment2 {
start_extent = 4
extent_count = 4
type = "striped"
stripe_count = 1
stripes = ["pv0", 1]
}
}
pool {
segment_count = 1
segment1 {
start_extent = 0
extent_count = 1
type = "thin-pool"
}
}
}
}
contents = "Text Format Volume Group"
version = 1
"#;

    #[test]
    fn maps_linear_segments_and_names_the_rest() {
        let (lvs, notes) = logical_volumes(TEXT).unwrap();
        assert_eq!(lvs.len(), 1);
        let lv = &lvs[0];
        assert_eq!((lv.vg.as_str(), lv.name.as_str()), ("centos", "root"));
        let mib = 1 << 20;
        let pv = "aaaaaabbbbccccddddeeeeffffgggggg".to_string();
        assert_eq!(
            lv.runs,
            vec![
                (0, pv.clone(), mib + 24 * mib, 16 * mib),
                (16 * mib, pv, mib + 4 * mib, 16 * mib)
            ]
        );
        assert!(notes[0].contains("centos/pool"), "{notes:?}");
    }

    #[test]
    fn bad_text_is_an_error() {
        assert!(parse_config("a { b = ").is_err());
        assert!(parse_config("a { b = \"x }").is_err());
        assert!(parse_config(&"a {".repeat(100)).is_err());
        assert!(parse_config("= 3").is_err());
    }
}
