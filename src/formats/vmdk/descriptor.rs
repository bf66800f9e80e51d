//! The VMDK text descriptor: the lines that say what kind of disk this is (`createType`), which
//! extents hold its sectors (`RW 16384 SPARSE "disk.vmdk"`), whether it is a delta of a parent
//! (`parentCID`, `parentFileNameHint`) and the disk database (`ddb.*`). It is either a file of
//! its own or embedded in a hosted sparse extent (see formats/vmdk.md, "The descriptor").
//!
//! Parsing never opens anything: it only records the names; the reader decides what to do with
//! them.

use crate::error::{Error, Result};
use crate::limits::{MAX_DESCRIPTOR_BYTES, MAX_VMDK_EXTENTS};

/// The value of `parentCID` of a disk without a parent.
pub const NO_PARENT_CID: u32 = 0xffff_ffff;

const S: &str = "vmdk descriptor";

/// An extent's access mode (the first word of an extent line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// `RW`: read and write.
    Rw,
    /// `RDONLY`: read only.
    RdOnly,
    /// `NOACCESS`: neither; the extent's sectors cannot be used.
    NoAccess,
}

impl Access {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Access::Rw => "RW",
            Access::RdOnly => "RDONLY",
            Access::NoAccess => "NOACCESS",
        }
    }
}

/// An extent's type (the third word of an extent line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtentType {
    /// A hosted sparse extent (`KDMV` header, grain directory and tables).
    Sparse,
    /// Plain sectors in a file, from an offset.
    Flat,
    /// Sectors that read as zeros; no file.
    Zero,
    /// ESX's flat extent: like `FLAT`.
    Vmfs,
    /// ESX's sparse extent (a `COWD` file, or a hosted sparse one).
    VmfsSparse,
    /// Raw device mappings: refused, they name devices.
    VmfsRdm,
    /// Raw device access (`VMFSRAW`): refused like `VMFSRDM`.
    VmfsRaw,
}

impl ExtentType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ExtentType::Sparse => "SPARSE",
            ExtentType::Flat => "FLAT",
            ExtentType::Zero => "ZERO",
            ExtentType::Vmfs => "VMFS",
            ExtentType::VmfsSparse => "VMFSSPARSE",
            ExtentType::VmfsRdm => "VMFSRDM",
            ExtentType::VmfsRaw => "VMFSRAW",
        }
    }

    fn parse(word: &str) -> Option<ExtentType> {
        Some(match word {
            "SPARSE" => ExtentType::Sparse,
            "FLAT" => ExtentType::Flat,
            "ZERO" => ExtentType::Zero,
            "VMFS" => ExtentType::Vmfs,
            "VMFSSPARSE" => ExtentType::VmfsSparse,
            "VMFSRDM" => ExtentType::VmfsRdm,
            "VMFSRAW" => ExtentType::VmfsRaw,
            _ => return None,
        })
    }
}

/// One extent line: `ACCESS SECTORS TYPE ["FILENAME" [OFFSET]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// Whether the extent may be read and written.
    pub access: Access,
    /// Sectors of the disk this extent holds.
    pub sectors: u64,
    /// How the extent stores its sectors.
    pub kind: ExtentType,
    /// The extent's file, as written (relative to the descriptor's directory); `None` for ZERO.
    pub file_name: Option<String>,
    /// For FLAT and VMFS: the sector in the file where the extent's data starts.
    pub offset: u64,
    /// Where the line starts in the file, for errors.
    pub at: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `version`: the descriptor format's version (1, 2 or 3).
    pub version: u32,
    /// `CID`: content id, changed when the disk is written; a child records its parent's.
    pub cid: u32,
    /// `parentCID`: the parent's content id, or [`NO_PARENT_CID`].
    pub parent_cid: u32,
    /// `createType`: the layout (`monolithicSparse`, `streamOptimized`, `twoGbMaxExtentFlat`, ...).
    pub create_type: Option<String>,
    /// `parentFileNameHint`: the parent's file name, for a child disk.
    pub parent_file_name_hint: Option<String>,
    /// The extent lines, in file order.
    pub extents: Vec<ExtentLine>,
    /// The disk database (`ddb.*` keys) in file order.
    pub ddb: Vec<(String, String)>,
}

impl Descriptor {
    /// Parses the descriptor `text`, which starts at file offset `base`. It ends at the first NUL
    /// (an embedded descriptor is padded with them).
    pub fn parse(text: &[u8], base: u64) -> Result<Descriptor> {
        if u64::try_from(text.len()).map_or(true, |l| l > MAX_DESCRIPTOR_BYTES) {
            return Err(Error::limit(
                S,
                base,
                format!("descriptor over {MAX_DESCRIPTOR_BYTES} bytes"),
            ));
        }
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let text = text.get(..end).unwrap_or_default();
        let mut d = Descriptor {
            version: 1,
            cid: 0,
            parent_cid: NO_PARENT_CID,
            create_type: None,
            parent_file_name_hint: None,
            extents: Vec::new(),
            ddb: Vec::new(),
        };
        let mut seen_version = false;
        let mut pos = 0u64;
        for raw in text.split(|&b| b == b'\n') {
            let at = base.saturating_add(pos);
            pos = pos
                .saturating_add(u64::try_from(raw.len()).unwrap_or(u64::MAX))
                .saturating_add(1);
            let line = String::from_utf8_lossy(raw);
            let line = line.trim_matches(|c: char| c.is_ascii_whitespace());
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_ascii_whitespace().next().unwrap_or_default();
            if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
                if d.extents.len() >= MAX_VMDK_EXTENTS {
                    return Err(Error::limit(
                        S,
                        at,
                        format!("more than {MAX_VMDK_EXTENTS} extents"),
                    ));
                }
                d.extents.push(parse_extent(line, at)?);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(Error::malformed(
                    S,
                    at,
                    format!("line {:?} is neither key=value nor an extent", clip(line)),
                ));
            };
            let key = key.trim();
            let value = unquote(value.trim());
            match key {
                "version" => {
                    d.version = match value {
                        "1" => 1,
                        "2" => 2,
                        "3" => 3,
                        _ => {
                            return Err(Error::unsupported(format!(
                                "vmdk descriptor version {:?}",
                                clip(value)
                            )));
                        }
                    };
                    seen_version = true;
                }
                "CID" => d.cid = parse_cid(value, at)?,
                "parentCID" => d.parent_cid = parse_cid(value, at)?,
                "createType" => d.create_type = Some(value.to_string()),
                "parentFileNameHint" => d.parent_file_name_hint = Some(value.to_string()),
                k if k.starts_with("ddb.") => d.ddb.push((k.to_string(), value.to_string())),
                // encoding, isNativeSnapshot, changeTrackPath and others change nothing here.
                _ => {}
            }
        }
        if !seen_version {
            return Err(Error::malformed(S, base, "no version= line"));
        }
        Ok(d)
    }

    /// The `ddb.` value of `key`, if present.
    pub fn ddb(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a delta (child) disk: it names a parent by CID or file name.
    pub fn is_delta(&self) -> bool {
        self.parent_cid != NO_PARENT_CID || self.parent_file_name_hint.is_some()
    }

    /// The disk's sectors: the sum of its extents'.
    pub fn sectors(&self) -> Result<u64> {
        self.extents.iter().try_fold(0u64, |acc, e| {
            acc.checked_add(e.sectors)
                .ok_or_else(|| Error::malformed(S, e.at, "extent sizes overflow"))
        })
    }

    /// The descriptor as text, in the order and spelling VMware writes it.
    pub fn to_text(&self) -> String {
        let mut s = String::from("# Disk DescriptorFile\n");
        s.push_str(&format!("version={}\n", self.version));
        s.push_str("encoding=\"UTF-8\"\n");
        s.push_str(&format!("CID={:08x}\n", self.cid));
        s.push_str(&format!("parentCID={:08x}\n", self.parent_cid));
        if let Some(t) = &self.create_type {
            s.push_str(&format!("createType=\"{t}\"\n"));
        }
        if let Some(h) = &self.parent_file_name_hint {
            s.push_str(&format!("parentFileNameHint=\"{h}\"\n"));
        }
        s.push_str("\n# Extent description\n");
        for e in &self.extents {
            s.push_str(&format!(
                "{} {} {}",
                e.access.name(),
                e.sectors,
                e.kind.name()
            ));
            if let Some(name) = &e.file_name {
                s.push_str(&format!(" \"{name}\""));
                if matches!(e.kind, ExtentType::Flat | ExtentType::Vmfs) {
                    s.push_str(&format!(" {}", e.offset));
                }
            }
            s.push('\n');
        }
        s.push_str("\n# The Disk Data Base\n#DDB\n\n");
        for (k, v) in &self.ddb {
            s.push_str(&format!("{k} = \"{v}\"\n"));
        }
        s
    }
}

/// Parses one extent line.
fn parse_extent(line: &str, at: u64) -> Result<ExtentLine> {
    let bad = |problem: String| Error::malformed("vmdk descriptor extent", at, problem);
    let (head, quoted) = match line.split_once('"') {
        Some((head, rest)) => {
            let (name, tail) = rest
                .split_once('"')
                .ok_or_else(|| bad("unterminated file name".into()))?;
            (head, Some((name, tail)))
        }
        None => (line, None),
    };
    let words: Vec<&str> = head.split_ascii_whitespace().collect();
    let (access, sectors, kind) = match words.as_slice() {
        [a, s, k] => (*a, *s, *k),
        _ => {
            return Err(bad(format!(
                "expected ACCESS SECTORS TYPE in {:?}",
                clip(line)
            )));
        }
    };
    let access = match access {
        "RW" => Access::Rw,
        "RDONLY" => Access::RdOnly,
        _ => Access::NoAccess,
    };
    let sectors: u64 = sectors
        .parse()
        .map_err(|_| bad(format!("sector count {:?} is not a number", clip(sectors))))?;
    let kind = ExtentType::parse(kind)
        .ok_or_else(|| bad(format!("unknown extent type {:?}", clip(kind))))?;
    let (file_name, offset) = match quoted {
        None => (None, 0),
        Some((name, tail)) => {
            let tail = tail.trim();
            let offset = if tail.is_empty() {
                0
            } else {
                tail.parse()
                    .map_err(|_| bad(format!("extent offset {:?} is not a number", clip(tail))))?
            };
            (Some(name.to_string()), offset)
        }
    };
    match (kind, &file_name) {
        (ExtentType::Zero, _) => {}
        (_, None) => return Err(bad(format!("a {} extent needs a file name", kind.name()))),
        (_, Some(n)) if n.is_empty() => return Err(bad("empty file name".into())),
        _ => {}
    }
    if offset != 0 && !matches!(kind, ExtentType::Flat | ExtentType::Vmfs) {
        return Err(bad(format!("a {} extent takes no offset", kind.name())));
    }
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file_name,
        offset,
        at,
    })
}

fn parse_cid(value: &str, at: u64) -> Result<u32> {
    u32::from_str_radix(value, 16)
        .map_err(|_| Error::malformed(S, at, format!("CID {:?} is not 8 hex digits", clip(value))))
}

/// Strips one pair of surrounding double quotes.
fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// At most 80 characters of `s`, for error messages.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// createTypes whose extents are devices or raw device mappings: never opened.
const DEVICE_TYPES: [&str; 5] = [
    "fullDevice",
    "partitionedDevice",
    "vmfsRaw",
    "vmfsRawDeviceMap",
    "vmfsPassthroughRawDeviceMap",
];

/// createTypes of a disk in one hosted sparse file, the only ones an embedded descriptor may give.
const SPARSE_TYPES: [&str; 4] = [
    "monolithicSparse",
    "streamOptimized",
    "twoGbMaxExtentSparse",
    "vmfsSparse",
];

/// createTypes of a descriptor file ims reads (the device types above are known and refused).
pub(crate) const DESCRIPTOR_TYPES: [&str; 7] = [
    "monolithicSparse",
    "streamOptimized",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "vmfs",
    "vmfsSparse",
];

/// Checks an embedded descriptor against the sparse file holding it (`capacity` sectors): a
/// sparse createType, and one SPARSE extent that is the file itself and fits in it.
pub(crate) fn check_embedded(d: &Descriptor, capacity: u64) -> Result<()> {
    check_create_type(d, &SPARSE_TYPES)?;
    // The one extent is this file. Its name is the one the file had when it was made (a
    // renamed file keeps it), so it is not compared with the file's; but a name with a
    // directory in it is some other file, never this one.
    match d.extents.as_slice() {
        [] => return Err(Error::malformed("vmdk descriptor", 0, "no extents")),
        [e] if matches!(e.kind, ExtentType::Sparse | ExtentType::VmfsSparse) => {
            if let Some(name) = e.file_name.as_deref()
                && !is_own_name(name)
            {
                return Err(Error::malformed(
                    "vmdk descriptor extent",
                    e.at,
                    format!("the embedded descriptor names another file, {name:?}, as its extent"),
                ));
            }
            if e.sectors > capacity {
                return Err(Error::malformed(
                    "vmdk descriptor extent",
                    e.at,
                    format!(
                        "extent of {} sectors in a file of {} sectors",
                        e.sectors, capacity
                    ),
                ));
            }
        }
        _ => {
            return Err(Error::malformed(
                "vmdk descriptor",
                d.extents.first().map_or(0, |e| e.at),
                "an embedded descriptor lists other extents than its own file",
            ));
        }
    }
    Ok(())
}

/// Refuses createTypes that name devices, that ims does not know, or that are not among
/// `allowed` (the layouts this kind of file can hold). A descriptor without one is read by its
/// extent lines, as qemu-img and VMware's tools read it.
pub(crate) fn check_create_type(d: &Descriptor, allowed: &[&str]) -> Result<()> {
    let Some(t) = d.create_type.as_deref() else {
        return Ok(());
    };
    if DEVICE_TYPES.contains(&t) {
        return Err(Error::unsupported(format!(
            "VMDK createType {t:?} (its extents are devices)"
        )));
    }
    if !DESCRIPTOR_TYPES.contains(&t) {
        return Err(Error::unsupported(format!(
            "VMDK createType {t:?}: not a layout ims knows (formats/vmdk.md lists them)"
        )));
    }
    if !allowed.contains(&t) {
        return Err(Error::malformed(
            "vmdk descriptor",
            0,
            format!("createType {t:?} does not describe a disk in one sparse file"),
        ));
    }
    Ok(())
}

/// Whether an embedded descriptor's extent name can be the file's own: a bare file name, not a
/// path into another directory.
fn is_own_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_SPARSE: &str = "# Disk DescriptorFile\nversion=1\nCID=324c7a54\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\n\n# Extent description\nRW 16384 SPARSE \"q.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"16\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n";

    #[test]
    fn parses_qemu_img_descriptor() {
        let mut text = QEMU_SPARSE.as_bytes().to_vec();
        text.resize(10240, 0);
        let d = Descriptor::parse(&text, 512).unwrap();
        assert_eq!(d.version, 1);
        assert_eq!(d.cid, 0x324c7a54);
        assert!(!d.is_delta());
        assert_eq!(d.create_type.as_deref(), Some("monolithicSparse"));
        assert_eq!(d.extents.len(), 1);
        let e = &d.extents[0];
        assert_eq!(
            (e.access, e.sectors, e.kind),
            (Access::Rw, 16384, ExtentType::Sparse)
        );
        assert_eq!(e.file_name.as_deref(), Some("q.vmdk"));
        assert_eq!(d.ddb("ddb.adapterType"), Some("ide"));
        assert_eq!(d.sectors().unwrap(), 16384);
    }

    #[test]
    fn parses_flat_zero_and_names_with_spaces() {
        let text = b"version=1\r\nCID=fffffffe\r\nparentCID=12345678\r\nparentFileNameHint=\"base disk.vmdk\"\r\nRW 100 FLAT \"my disk-flat.vmdk\" 2048\r\nRDONLY 50 ZERO\r\nNOACCESS 8 VMFS \"v.vmdk\"\r\n";
        let d = Descriptor::parse(text, 0).unwrap();
        assert!(d.is_delta());
        assert_eq!(d.parent_file_name_hint.as_deref(), Some("base disk.vmdk"));
        assert_eq!(d.extents[0].file_name.as_deref(), Some("my disk-flat.vmdk"));
        assert_eq!(d.extents[0].offset, 2048);
        assert_eq!(d.extents[1].kind, ExtentType::Zero);
        assert_eq!(d.extents[1].file_name, None);
        assert_eq!(d.extents[2].access, Access::NoAccess);
        assert_eq!(d.sectors().unwrap(), 158);
    }

    #[test]
    fn refuses_bad_lines() {
        for bad in [
            "version=1\nRW x SPARSE \"a\"\n",
            "version=1\nRW 10 FOO \"a\"\n",
            "version=1\nRW 10 SPARSE\n",
            "version=1\nRW 10 FLAT \"a\n",
            "version=1\nRW 10 SPARSE \"a\" 7\n",
            "version=1\nCID=xyz\n",
            "version=1\nthis is not a line\n",
            "CID=12345678\n",
            "version=1\nRW 18446744073709551615 ZERO\nRW 1 ZERO\n",
        ] {
            let r = Descriptor::parse(bad.as_bytes(), 0).and_then(|d| d.sectors());
            assert!(r.is_err(), "{bad:?}");
        }
        assert_eq!(
            Descriptor::parse(b"version=9\n", 0).unwrap_err().kind(),
            "unsupported"
        );
        let huge = vec![b'#'; MAX_DESCRIPTOR_BYTES as usize + 1];
        assert_eq!(
            Descriptor::parse(&huge, 0).unwrap_err().kind(),
            "limit-exceeded"
        );
    }

    #[test]
    fn written_text_parses_back() {
        let d = Descriptor {
            version: 1,
            cid: 0xdeadbeef,
            parent_cid: NO_PARENT_CID,
            create_type: Some("monolithicFlat".into()),
            parent_file_name_hint: None,
            extents: vec![ExtentLine {
                access: Access::Rw,
                sectors: 2048,
                kind: ExtentType::Flat,
                file_name: Some("d-flat.vmdk".into()),
                offset: 0,
                at: 0,
            }],
            ddb: vec![("ddb.adapterType".into(), "lsilogic".into())],
        };
        let text = d.to_text();
        assert!(text.starts_with("# Disk DescriptorFile\n"));
        assert!(text.contains("RW 2048 FLAT \"d-flat.vmdk\" 0\n"));
        let mut back = Descriptor::parse(text.as_bytes(), 0).unwrap();
        back.extents[0].at = 0;
        assert_eq!(back, d);
    }
}
