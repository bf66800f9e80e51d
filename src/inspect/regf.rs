//! The Windows registry hive file (regf): a 4096-byte base block, then hive bins of cells.
//! Keys are `nk` cells; subkeys hang from `lf`/`lh`/`li` lists (or an `ri` list of them);
//! values are `vk` cells listed by a value list, with data inline, in a cell, or in `db`
//! big-data segments. Offsets in cells are relative to the first hive bin (file offset 4096).
//! All fields are little-endian; names are compared ASCII-case-insensitively, as Windows does
//! for the names inspection asks for.
//!
//! Cells are read one at a time from any [`ReadAt`] (a file in the guest's NTFS), so a hive of
//! hundreds of MiB costs only the cells on the path to the values asked for.

use byteorder::{ByteOrder, LittleEndian};

use crate::block::usize_len;
use crate::error::{Error, Result};
use crate::limits::{MAX_REGF_CELL, MAX_REGF_CELLS};

use super::fs::ReadAt;

pub(crate) const REGF_SIGNATURE: &[u8; 4] = b"regf";
pub(crate) const BASE_BLOCK_SIZE: u64 = 4096;
/// `nk` flags: the key name is stored in Latin-1, not UTF-16LE.
pub const KEY_COMP_NAME: u16 = 0x0020;
/// `vk` flags: the value name is stored in Latin-1.
pub const VALUE_COMP_NAME: u16 = 0x0001;
/// Largest data stored in one cell before hives of version 1.4 use big-data segments.
const BIG_DATA_SEGMENT: usize = 16344;

const S: &str = "registry hive";

/// A key node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Where the `nk` cell is, relative to the end of the base block (4096 bytes).
    pub offset: u32,
    /// Key name: the key's name.
    pub name: String,
    /// Number of subkeys: how many subkeys the key has.
    pub number_of_subkeys: u32,
    /// Subkeys list offset: the cell listing the subkeys.
    pub subkeys_list_offset: u32,
    /// Number of key values: how many values the key has.
    pub number_of_values: u32,
    /// Key values list offset: the cell listing the values.
    pub values_list_offset: u32,
}

/// A value's data, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value {
    /// REG_SZ and REG_EXPAND_SZ.
    String(String),
    /// REG_MULTI_SZ.
    MultiString(Vec<String>),
    /// REG_DWORD (and REG_DWORD_BIG_ENDIAN, converted).
    Dword(u32),
    /// REG_QWORD.
    Qword(u64),
    /// Everything else.
    Binary(Vec<u8>),
}

impl Value {
    /// The value as text: strings as they are, numbers in decimal.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::String(s) => Some(s.clone()),
            Value::MultiString(v) => v.first().cloned(),
            Value::Dword(d) => Some(d.to_string()),
            Value::Qword(q) => Some(q.to_string()),
            Value::Binary(_) => None,
        }
    }

    pub(crate) fn as_u32(&self) -> Option<u32> {
        match self {
            Value::Dword(d) => Some(*d),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

fn utf16(b: &[u8]) -> String {
    let units: Vec<u16> = b.chunks_exact(2).map(LittleEndian::read_u16).collect();
    String::from_utf16_lossy(&units)
        .trim_end_matches('\0')
        .to_string()
}

fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}

/// An opened hive.
pub struct Hive<'a> {
    src: &'a mut dyn ReadAt,
    /// Bytes of hive bins after the base block that cells may lie in.
    bins_size: u64,
    root_cell_offset: u32,
    cells_read: u32,
}

impl<'a> Hive<'a> {
    /// Reads and checks the base block.
    pub fn open(src: &'a mut dyn ReadAt) -> Result<Hive<'a>> {
        let len = src.len();
        if len < BASE_BLOCK_SIZE {
            return Err(Error::truncated(S, 0, BASE_BLOCK_SIZE, len));
        }
        let mut base = [0u8; 512];
        src.read_at(0, &mut base)?;
        if &base[0..4] != REGF_SIGNATURE {
            return Err(Error::malformed(S, 0, "no 'regf' signature"));
        }
        let major = LittleEndian::read_u32(&base[20..24]);
        if major != 1 {
            return Err(Error::unsupported(format!("registry hive version {major}")));
        }
        let root_cell_offset = LittleEndian::read_u32(&base[36..40]);
        // A hive whose log was not replayed may have bins past the recorded
        // `hive_bins_data_size`; cells are read wherever the file has them.
        let bins_size = len - BASE_BLOCK_SIZE;
        Ok(Hive {
            src,
            bins_size,
            root_cell_offset,
            cells_read: 0,
        })
    }

    /// The data of the cell at `offset` (without its size field).
    fn cell(&mut self, offset: u32) -> Result<Vec<u8>> {
        self.cells_read += 1;
        if self.cells_read > MAX_REGF_CELLS {
            return Err(Error::limit(
                S,
                0,
                format!("more than {MAX_REGF_CELLS} cells read"),
            ));
        }
        let off = u64::from(offset);
        let at = BASE_BLOCK_SIZE + off;
        if offset == u32::MAX || off.checked_add(4).is_none_or(|e| e > self.bins_size) {
            return Err(Error::malformed(S, at, "cell offset outside the hive bins"));
        }
        let mut size = [0u8; 4];
        self.src.read_at(at, &mut size)?;
        let size = u64::from(LittleEndian::read_i32(&size).unsigned_abs());
        if !(8..=MAX_REGF_CELL as u64).contains(&size) || off + size > self.bins_size {
            return Err(Error::malformed(S, at, format!("cell of {size} bytes")));
        }
        let size = usize_len(size)?;
        let mut data = vec![0u8; size - 4];
        self.src.read_at(at + 4, &mut data)?;
        Ok(data)
    }

    fn key_at(&mut self, offset: u32) -> Result<Key> {
        let c = self.cell(offset)?;
        let at = BASE_BLOCK_SIZE + u64::from(offset);
        if c.len() < 76 || &c[0..2] != b"nk" {
            return Err(Error::malformed(S, at, "not a key node"));
        }
        let flags = LittleEndian::read_u16(&c[2..4]);
        let name_len = usize::from(LittleEndian::read_u16(&c[72..74]));
        let name = c
            .get(76..76 + name_len)
            .ok_or_else(|| Error::malformed(S, at + 72, "key name past the cell"))?;
        Ok(Key {
            offset,
            name: if flags & KEY_COMP_NAME != 0 {
                latin1(name)
            } else {
                utf16(name)
            },
            number_of_subkeys: LittleEndian::read_u32(&c[20..24]),
            subkeys_list_offset: LittleEndian::read_u32(&c[28..32]),
            number_of_values: LittleEndian::read_u32(&c[36..40]),
            values_list_offset: LittleEndian::read_u32(&c[40..44]),
        })
    }

    /// The root key.
    pub fn root(&mut self) -> Result<Key> {
        self.key_at(self.root_cell_offset)
    }

    /// The offsets of the key nodes a subkey list names; `ri` lists are followed one level.
    fn subkey_offsets(&mut self, list: u32, depth: u8) -> Result<Vec<u32>> {
        let c = self.cell(list)?;
        let at = BASE_BLOCK_SIZE + u64::from(list);
        if c.len() < 4 {
            return Err(Error::malformed(S, at, "subkey list too small"));
        }
        let count = usize::from(LittleEndian::read_u16(&c[2..4]));
        let (stride, sig) = match &c[0..2] {
            b"lf" | b"lh" => (8, &c[0..2]),
            b"li" | b"ri" => (4, &c[0..2]),
            _ => return Err(Error::malformed(S, at, "unknown subkey list")),
        };
        if 4 + count * stride > c.len() {
            return Err(Error::malformed(
                S,
                at,
                format!("{count} elements past the cell"),
            ));
        }
        let offsets: Vec<u32> = (0..count)
            .map(|i| LittleEndian::read_u32(&c[4 + i * stride..8 + i * stride]))
            .collect();
        if sig == b"ri" {
            if depth > 0 {
                return Err(Error::malformed(S, at, "index root inside an index root"));
            }
            let mut out = Vec::new();
            for o in offsets {
                out.extend(self.subkey_offsets(o, depth + 1)?);
            }
            return Ok(out);
        }
        Ok(offsets)
    }

    /// The subkey of `key` named `name`.
    pub fn subkey(&mut self, key: &Key, name: &str) -> Result<Option<Key>> {
        if key.number_of_subkeys == 0 {
            return Ok(None);
        }
        for o in self.subkey_offsets(key.subkeys_list_offset, 0)? {
            let k = self.key_at(o)?;
            if k.name.eq_ignore_ascii_case(name) {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// The key at `path` (components separated by `\`) below the root.
    pub fn key(&mut self, path: &str) -> Result<Option<Key>> {
        let mut key = self.root()?;
        for part in path.split('\\').filter(|p| !p.is_empty()) {
            match self.subkey(&key, part)? {
                Some(k) => key = k,
                None => return Ok(None),
            }
        }
        Ok(Some(key))
    }

    /// The value of `key` named `name` (empty: the default value).
    pub fn value(&mut self, key: &Key, name: &str) -> Result<Option<Value>> {
        if key.number_of_values == 0 {
            return Ok(None);
        }
        let list = self.cell(key.values_list_offset)?;
        let at = BASE_BLOCK_SIZE + u64::from(key.values_list_offset);
        let count = usize_len(u64::from(key.number_of_values))?;
        if count.saturating_mul(4) > list.len() {
            return Err(Error::malformed(
                S,
                at,
                format!("{count} values past the cell"),
            ));
        }
        for i in 0..count {
            let vk_offset = LittleEndian::read_u32(&list[i * 4..i * 4 + 4]);
            let vk = self.cell(vk_offset)?;
            let vat = BASE_BLOCK_SIZE + u64::from(vk_offset);
            if vk.len() < 20 || &vk[0..2] != b"vk" {
                return Err(Error::malformed(S, vat, "not a value"));
            }
            let name_len = usize::from(LittleEndian::read_u16(&vk[2..4]));
            let flags = LittleEndian::read_u16(&vk[16..18]);
            let raw = vk
                .get(20..20 + name_len)
                .ok_or_else(|| Error::malformed(S, vat, "value name past the cell"))?;
            let vname = if flags & VALUE_COMP_NAME != 0 {
                latin1(raw)
            } else {
                utf16(raw)
            };
            if !vname.eq_ignore_ascii_case(name) {
                continue;
            }
            let data_size = LittleEndian::read_u32(&vk[4..8]);
            let data_offset = LittleEndian::read_u32(&vk[8..12]);
            let data_type = LittleEndian::read_u32(&vk[12..16]);
            let data = if data_size & 0x8000_0000 != 0 {
                let n = usize_len(u64::from((data_size & 0x7fff_ffff).min(4)))?;
                vk[8..8 + n].to_vec()
            } else {
                self.data(data_offset, usize_len(u64::from(data_size))?)?
            };
            return Ok(Some(decode(data_type, data)));
        }
        Ok(None)
    }

    /// `size` bytes of value data in the cell at `offset`, or in the big-data segments it lists.
    fn data(&mut self, offset: u32, size: usize) -> Result<Vec<u8>> {
        if size > MAX_REGF_CELL {
            return Err(Error::limit(S, 0, format!("value of {size} bytes")));
        }
        let c = self.cell(offset)?;
        let at = BASE_BLOCK_SIZE + u64::from(offset);
        if size > BIG_DATA_SEGMENT && c.len() >= 8 && &c[0..2] == b"db" {
            let segments = usize::from(LittleEndian::read_u16(&c[2..4]));
            let list = self.cell(LittleEndian::read_u32(&c[4..8]))?;
            if segments * 4 > list.len() {
                return Err(Error::malformed(
                    S,
                    at,
                    "big-data segment list past its cell",
                ));
            }
            let mut out = Vec::with_capacity(size);
            for i in 0..segments {
                let seg = self.cell(LittleEndian::read_u32(&list[i * 4..i * 4 + 4]))?;
                let n = (size - out.len()).min(seg.len()).min(BIG_DATA_SEGMENT);
                out.extend_from_slice(&seg[..n]);
                if out.len() == size {
                    break;
                }
            }
            return Ok(out);
        }
        c.get(..size).map(<[u8]>::to_vec).ok_or_else(|| {
            Error::malformed(S, at, format!("value data of {size} bytes past its cell"))
        })
    }
}

fn decode(data_type: u32, data: Vec<u8>) -> Value {
    match data_type {
        1 | 2 => Value::String(utf16(&data)),
        7 => Value::MultiString(
            utf16(&data)
                .split('\0')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        4 if data.len() >= 4 => Value::Dword(LittleEndian::read_u32(&data)),
        5 if data.len() >= 4 => Value::Dword(byteorder::BigEndian::read_u32(&data)),
        11 if data.len() >= 8 => Value::Qword(LittleEndian::read_u64(&data)),
        _ => Value::Binary(data),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a hive with keys at paths and string/dword values, laid out as Windows does
    /// (compressed names, `lh` lists).
    pub struct HiveBuilder {
        bins: Vec<u8>,
    }

    impl HiveBuilder {
        pub fn new() -> Self {
            let mut bins = vec![0u8; 32];
            bins[0..4].copy_from_slice(b"hbin");
            HiveBuilder { bins }
        }

        fn cell(&mut self, data: &[u8]) -> u32 {
            let off = self.bins.len() as u32;
            let size = (data.len() + 4).div_ceil(8) * 8;
            self.bins.extend_from_slice(&(-(size as i32)).to_le_bytes());
            self.bins.extend_from_slice(data);
            self.bins.resize(off as usize + size, 0);
            off
        }

        /// A key named `name` with `subkeys` (already written) and `values` (name, data
        /// type, data).
        pub fn key(&mut self, name: &str, subkeys: &[u32], values: &[(&str, u32, Vec<u8>)]) -> u32 {
            let list = if subkeys.is_empty() {
                u32::MAX
            } else {
                let mut l = b"lh".to_vec();
                l.extend_from_slice(&(subkeys.len() as u16).to_le_bytes());
                for s in subkeys {
                    l.extend_from_slice(&s.to_le_bytes());
                    l.extend_from_slice(&0u32.to_le_bytes());
                }
                self.cell(&l)
            };
            let mut vks = Vec::new();
            for (vname, ty, data) in values {
                let mut vk = b"vk".to_vec();
                vk.extend_from_slice(&(vname.len() as u16).to_le_bytes());
                if data.len() <= 4 {
                    vk.extend_from_slice(&(data.len() as u32 | 0x8000_0000).to_le_bytes());
                    let mut inline = data.clone();
                    inline.resize(4, 0);
                    vk.extend_from_slice(&inline);
                } else {
                    let d = self.cell(data);
                    vk.extend_from_slice(&(data.len() as u32).to_le_bytes());
                    vk.extend_from_slice(&d.to_le_bytes());
                }
                vk.extend_from_slice(&ty.to_le_bytes());
                vk.extend_from_slice(&VALUE_COMP_NAME.to_le_bytes());
                vk.extend_from_slice(&[0, 0]);
                vk.extend_from_slice(vname.as_bytes());
                vks.push(self.cell(&vk));
            }
            let values_list = if vks.is_empty() {
                u32::MAX
            } else {
                let l: Vec<u8> = vks.iter().flat_map(|v| v.to_le_bytes()).collect();
                self.cell(&l)
            };
            let mut nk = vec![0u8; 76];
            nk[0..2].copy_from_slice(b"nk");
            nk[2..4].copy_from_slice(&KEY_COMP_NAME.to_le_bytes());
            nk[20..24].copy_from_slice(&(subkeys.len() as u32).to_le_bytes());
            nk[28..32].copy_from_slice(&list.to_le_bytes());
            nk[36..40].copy_from_slice(&(values.len() as u32).to_le_bytes());
            nk[40..44].copy_from_slice(&values_list.to_le_bytes());
            nk[72..74].copy_from_slice(&(name.len() as u16).to_le_bytes());
            nk.extend_from_slice(name.as_bytes());
            self.cell(&nk)
        }

        pub fn finish(mut self, root: u32) -> Vec<u8> {
            let len = self.bins.len().div_ceil(4096) * 4096;
            self.bins.resize(len, 0);
            self.bins[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            let mut out = vec![0u8; 4096];
            out[0..4].copy_from_slice(REGF_SIGNATURE);
            out[20..24].copy_from_slice(&1u32.to_le_bytes());
            out[24..28].copy_from_slice(&5u32.to_le_bytes());
            out[36..40].copy_from_slice(&root.to_le_bytes());
            out[40..44].copy_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(&self.bins);
            out
        }
    }

    pub fn sz(s: &str) -> Vec<u8> {
        s.encode_utf16()
            .chain([0])
            .flat_map(|u| u.to_le_bytes())
            .collect()
    }

    #[test]
    fn finds_keys_and_values_case_insensitively() {
        let mut b = HiveBuilder::new();
        let cv = b.key(
            "CurrentVersion",
            &[],
            &[
                ("ProductName", 1, sz("Windows Server 2022 Datacenter")),
                ("CurrentBuildNumber", 1, sz("20348")),
                ("CurrentMajorVersionNumber", 4, 10u32.to_le_bytes().to_vec()),
            ],
        );
        let nt = b.key("Windows NT", &[cv], &[]);
        let ms = b.key("Microsoft", &[nt], &[]);
        let root = b.key("ROOT", &[ms], &[]);
        let bytes = b.finish(root);
        let mut src: &[u8] = &bytes;
        let mut hive = Hive::open(&mut src).unwrap();
        let key = hive
            .key(r"microsoft\WINDOWS NT\CurrentVersion")
            .unwrap()
            .unwrap();
        assert_eq!(
            hive.value(&key, "productname").unwrap(),
            Some(Value::String("Windows Server 2022 Datacenter".into()))
        );
        assert_eq!(
            hive.value(&key, "CurrentMajorVersionNumber").unwrap(),
            Some(Value::Dword(10))
        );
        assert_eq!(hive.value(&key, "Nope").unwrap(), None);
        assert_eq!(hive.key(r"Microsoft\Nope").unwrap(), None);
    }

    #[test]
    fn a_key_listing_itself_ends_at_the_cell_budget() {
        let mut b = HiveBuilder::new();
        let root = b.key("ROOT", &[], &[]);
        let mut bytes = b.finish(root);
        // Point the root's subkey list at a list naming the root itself.
        let root_at = 4096 + root as usize + 4;
        // A one-element lh list in free space after the root cell.
        let list_off = (bytes.len() - 4096 - 64) as u32;
        let at = 4096 + list_off as usize;
        bytes[at..at + 4].copy_from_slice(&(-16i32).to_le_bytes());
        bytes[at + 4..at + 6].copy_from_slice(b"lh");
        bytes[at + 6..at + 8].copy_from_slice(&1u16.to_le_bytes());
        bytes[at + 8..at + 12].copy_from_slice(&root.to_le_bytes());
        bytes[root_at + 20..root_at + 24].copy_from_slice(&1u32.to_le_bytes());
        bytes[root_at + 28..root_at + 32].copy_from_slice(&list_off.to_le_bytes());
        let mut src: &[u8] = &bytes;
        let mut hive = Hive::open(&mut src).unwrap();
        // ROOT\ROOT\ROOT... resolves (each is the same key); a long path stops at the budget.
        let path = vec!["ROOT"; 300_000].join("\\");
        assert_eq!(hive.key(&path).unwrap_err().kind(), "limit-exceeded");
    }

    #[test]
    fn refuses_cells_outside_the_bins() {
        let mut b = HiveBuilder::new();
        let root = b.key("ROOT", &[], &[]);
        let mut bytes = b.finish(root);
        bytes[36..40].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
        let mut src: &[u8] = &bytes;
        let mut hive = Hive::open(&mut src).unwrap();
        assert_eq!(hive.root().unwrap_err().kind(), "malformed");
    }
}
