//! File systems (and other volume contents) identified by their superblocks, with their label
//! and UUID: ext2/3/4, XFS, FAT12/16/32, NTFS, btrfs, swap, LVM2 physical volumes, ISO 9660 and
//! LUKS. Offsets and field names follow each file system's own documentation.

use byteorder::{ByteOrder, LittleEndian};
use serde::Serialize;

use crate::error::Result;

use super::disk::Volume;

/// What a volume holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum FsKind {
    /// ext2: no journal, no ext4 features.
    Ext2,
    /// ext3: a journal, no ext4 features.
    Ext3,
    /// ext4: extents, 64-bit block numbers, flex_bg or a newer feature.
    Ext4,
    /// XFS.
    Xfs,
    /// FAT with 12-bit entries.
    Fat12,
    /// FAT with 16-bit entries.
    Fat16,
    /// FAT with 32-bit entries.
    Fat32,
    /// NTFS.
    Ntfs,
    /// Btrfs (recognised, not read).
    Btrfs,
    /// A Linux swap area.
    Swap,
    /// An LVM2 physical volume.
    #[serde(rename = "lvm2_member")]
    Lvm2Member,
    /// An ISO 9660 file system.
    Iso9660,
    /// A LUKS-encrypted volume (not read).
    #[serde(rename = "crypto_luks")]
    CryptoLuks,
}

impl FsKind {
    /// The lowercase name, as the JSON output spells it (`ext4`, `fat32`, `lvm2_member`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Fat12 => "fat12",
            FsKind::Fat16 => "fat16",
            FsKind::Fat32 => "fat32",
            FsKind::Ntfs => "ntfs",
            FsKind::Btrfs => "btrfs",
            FsKind::Swap => "swap",
            FsKind::Lvm2Member => "lvm2_member",
            FsKind::Iso9660 => "iso9660",
            FsKind::CryptoLuks => "crypto_luks",
        }
    }

    pub(crate) fn is_ext(self) -> bool {
        matches!(self, FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4)
    }

    pub(crate) fn is_fat(self) -> bool {
        matches!(self, FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32)
    }
}

/// A file system found on a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsId {
    /// Which file system.
    pub kind: FsKind,
    /// Its label.
    pub label: Option<String>,
    /// Its UUID, or the volume serial number where the file system has no UUID.
    pub uuid: Option<String>,
}

/// A UUID in its usual text form, from 16 bytes in order.
pub fn uuid_text(b: &[u8]) -> Option<String> {
    if b.len() != 16 || b.iter().all(|&x| x == 0) {
        return None;
    }
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// A label from a fixed-size field: up to the first NUL, trailing spaces trimmed.
pub fn label_text(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim_end().to_string();
    (!s.is_empty()).then_some(s)
}

/// Identifies what `vol` holds, or `None` when nothing is recognised (unformatted, or a file
/// system ims does not know).
pub fn identify(vol: &Volume) -> Result<Option<FsId>> {
    // Each check reads only what its signature needs; a volume too small for a structure
    // simply does not hold it.
    if let Some(id) = ext(vol)? {
        return Ok(Some(id));
    }
    if let Some(id) = xfs(vol)? {
        return Ok(Some(id));
    }
    if let Some(id) = luks(vol)? {
        return Ok(Some(id));
    }
    if let Some(id) = ntfs(vol)? {
        return Ok(Some(id));
    }
    if let Some(id) = fat(vol)? {
        return Ok(Some(id));
    }
    if let Some(id) = btrfs(vol)? {
        return Ok(Some(id));
    }
    if let Some(id) = lvm2(vol)? {
        return Ok(Some(id));
    }
    if let Some(id) = iso9660(vol)? {
        return Ok(Some(id));
    }
    swap(vol)
}

/// ext2/3/4: the superblock at 1024, `s_magic` 0xEF53 at 56 within it.
fn ext(vol: &Volume) -> Result<Option<FsId>> {
    let Some(sb) = vol.read_vec(1024, 1024)? else {
        return Ok(None);
    };
    if LittleEndian::read_u16(&sb[56..58]) != 0xef53 {
        return Ok(None);
    }
    let s_feature_compat = LittleEndian::read_u32(&sb[92..96]);
    let s_feature_incompat = LittleEndian::read_u32(&sb[96..100]);
    const COMPAT_HAS_JOURNAL: u32 = 0x4;
    // extents, 64bit, flex_bg, or anything newer than ext3 knew.
    const INCOMPAT_EXT4: u32 = 0x40 | 0x80 | 0x200 | 0x10000 | 0x8000;
    let kind = if s_feature_incompat & INCOMPAT_EXT4 != 0 {
        FsKind::Ext4
    } else if s_feature_compat & COMPAT_HAS_JOURNAL != 0 {
        FsKind::Ext3
    } else {
        FsKind::Ext2
    };
    Ok(Some(FsId {
        kind,
        uuid: uuid_text(&sb[104..120]),
        label: label_text(&sb[120..136]),
    }))
}

/// XFS: the superblock at 0, `sb_magicnum` "XFSB".
fn xfs(vol: &Volume) -> Result<Option<FsId>> {
    let Some(sb) = vol.read_vec(0, 512)? else {
        return Ok(None);
    };
    if &sb[0..4] != b"XFSB" {
        return Ok(None);
    }
    Ok(Some(FsId {
        kind: FsKind::Xfs,
        uuid: uuid_text(&sb[32..48]),
        label: label_text(&sb[108..120]),
    }))
}

/// LUKS: "LUKS\xba\xbe" at 0, the UUID text at 168.
fn luks(vol: &Volume) -> Result<Option<FsId>> {
    let Some(h) = vol.read_vec(0, 512)? else {
        return Ok(None);
    };
    if &h[0..6] != b"LUKS\xba\xbe" {
        return Ok(None);
    }
    Ok(Some(FsId {
        kind: FsKind::CryptoLuks,
        uuid: label_text(&h[168..208]),
        label: None,
    }))
}

/// NTFS: OEM id "NTFS    " at 3; the volume serial number at 0x48. The label lives in the
/// $Volume file and is read by the NTFS module.
fn ntfs(vol: &Volume) -> Result<Option<FsId>> {
    let Some(b) = vol.read_vec(0, 512)? else {
        return Ok(None);
    };
    if &b[3..11] != b"NTFS    " {
        return Ok(None);
    }
    Ok(Some(FsId {
        kind: FsKind::Ntfs,
        uuid: Some(format!("{:016X}", LittleEndian::read_u64(&b[0x48..0x50]))),
        label: super::ntfs::volume_label(vol),
    }))
}

/// FAT: a BIOS parameter block in the boot sector; the type follows from the count of
/// clusters, as the FAT specification defines it.
fn fat(vol: &Volume) -> Result<Option<FsId>> {
    let Some(b) = vol.read_vec(0, 512)? else {
        return Ok(None);
    };
    if b[510..512] != [0x55, 0xaa] || !matches!(b[0], 0xeb | 0xe9) {
        return Ok(None);
    }
    let byts_per_sec = u64::from(LittleEndian::read_u16(&b[11..13]));
    let sec_per_clus = u64::from(b[13]);
    let rsvd_sec_cnt = u64::from(LittleEndian::read_u16(&b[14..16]));
    let num_fats = u64::from(b[16]);
    let root_ent_cnt = u64::from(LittleEndian::read_u16(&b[17..19]));
    let tot_sec16 = u64::from(LittleEndian::read_u16(&b[19..21]));
    let fat_sz16 = u64::from(LittleEndian::read_u16(&b[22..24]));
    let tot_sec32 = u64::from(LittleEndian::read_u32(&b[32..36]));
    let fat_sz32 = u64::from(LittleEndian::read_u32(&b[36..40]));
    if !matches!(byts_per_sec, 512 | 1024 | 2048 | 4096)
        || sec_per_clus == 0
        || !sec_per_clus.is_power_of_two()
        || rsvd_sec_cnt == 0
        || !matches!(num_fats, 1 | 2)
    {
        return Ok(None);
    }
    let fat_sz = if fat_sz16 != 0 { fat_sz16 } else { fat_sz32 };
    let tot_sec = if tot_sec16 != 0 { tot_sec16 } else { tot_sec32 };
    let root_dir_sectors = (root_ent_cnt * 32).div_ceil(byts_per_sec);
    let meta = rsvd_sec_cnt + num_fats * fat_sz + root_dir_sectors;
    let Some(data_sec) = tot_sec.checked_sub(meta) else {
        return Ok(None);
    };
    let clusters = data_sec / sec_per_clus;
    let (kind, ext_at) = if clusters < 4085 {
        (FsKind::Fat12, 36)
    } else if clusters < 65525 {
        (FsKind::Fat16, 36)
    } else {
        (FsKind::Fat32, 64)
    };
    // The extended boot record: signature 0x29, then the volume id and label.
    let (uuid, label) = if b[ext_at + 2] == 0x29 {
        let id = LittleEndian::read_u32(&b[ext_at + 3..ext_at + 7]);
        let label = label_text(&b[ext_at + 7..ext_at + 18]).filter(|l| l != "NO NAME");
        (Some(format!("{:04X}-{:04X}", id >> 16, id & 0xffff)), label)
    } else {
        (None, None)
    };
    Ok(Some(FsId { kind, uuid, label }))
}

/// btrfs: the superblock at 64 KiB, magic "_BHRfS_M" at 0x40 within it.
fn btrfs(vol: &Volume) -> Result<Option<FsId>> {
    let Some(sb) = vol.read_vec(0x10000, 0x1000)? else {
        return Ok(None);
    };
    if &sb[0x40..0x48] != b"_BHRfS_M" {
        return Ok(None);
    }
    Ok(Some(FsId {
        kind: FsKind::Btrfs,
        uuid: uuid_text(&sb[0x20..0x30]),
        label: label_text(&sb[0x12b..0x22b]),
    }))
}

/// LVM2 physical volume: a label "LABELONE" in one of the first four sectors, type
/// "LVM2 001", and the PV header with the PV's UUID (32 characters).
fn lvm2(vol: &Volume) -> Result<Option<FsId>> {
    let Some(head) = vol.read_vec(0, 2048)? else {
        return Ok(None);
    };
    for s in 0..4 {
        let l = &head[s * 512..(s + 1) * 512];
        if &l[0..8] != b"LABELONE" || &l[24..32] != b"LVM2 001" {
            continue;
        }
        let offset_xl = usize::try_from(LittleEndian::read_u32(&l[20..24])).unwrap_or(usize::MAX);
        let uuid = l
            .get(offset_xl..offset_xl.saturating_add(32))
            .filter(|u| u.len() == 32 && u.iter().all(|c| c.is_ascii_alphanumeric()))
            .map(|u| {
                let u = String::from_utf8_lossy(u);
                format!(
                    "{}-{}-{}-{}-{}-{}-{}",
                    &u[0..6],
                    &u[6..10],
                    &u[10..14],
                    &u[14..18],
                    &u[18..22],
                    &u[22..26],
                    &u[26..32]
                )
            });
        return Ok(Some(FsId {
            kind: FsKind::Lvm2Member,
            uuid,
            label: None,
        }));
    }
    Ok(None)
}

/// ISO 9660: the primary volume descriptor at 32 KiB ("\x01CD001"); the label is the volume
/// identifier, the UUID (as blkid makes it) the volume creation date.
pub fn iso9660(vol: &Volume) -> Result<Option<FsId>> {
    let Some(pvd) = vol.read_vec(0x8000, 2048)? else {
        return Ok(None);
    };
    if &pvd[1..6] != b"CD001" || pvd[0] != 1 {
        return Ok(None);
    }
    let date = &pvd[813..829];
    let uuid = date.iter().all(u8::is_ascii_digit).then(|| {
        let d = String::from_utf8_lossy(date);
        format!(
            "{}-{}-{}-{}-{}-{}-{}",
            &d[0..4],
            &d[4..6],
            &d[6..8],
            &d[8..10],
            &d[10..12],
            &d[12..14],
            &d[14..16]
        )
    });
    Ok(Some(FsId {
        kind: FsKind::Iso9660,
        uuid,
        label: label_text(&pvd[40..72]),
    }))
}

/// Linux swap: "SWAPSPACE2" (or the old "SWAP-SPACE") in the last 10 bytes of the first page;
/// the UUID and label in the header at 1024.
fn swap(vol: &Volume) -> Result<Option<FsId>> {
    for page in [4096u64, 8192, 16384, 65536] {
        let Some(sig) = vol.read_vec(page - 10, 10)? else {
            return Ok(None);
        };
        if sig == b"SWAPSPACE2" || sig == b"SWAP-SPACE" {
            let Some(h) = vol.read_vec(1024, 64)? else {
                return Ok(None);
            };
            return Ok(Some(FsId {
                kind: FsKind::Swap,
                uuid: uuid_text(&h[12..28]),
                label: label_text(&h[28..44]),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::disk::tests::mem_disk;

    fn vol(bytes: Vec<u8>) -> Volume {
        Volume::whole(mem_disk(bytes))
    }

    #[test]
    fn ext4_by_features() {
        let mut d = vec![0u8; 8192];
        d[1024 + 56..1024 + 58].copy_from_slice(&0xef53u16.to_le_bytes());
        d[1024 + 96] = 0x40;
        d[1024 + 104..1024 + 120].copy_from_slice(&[0x11; 16]);
        d[1024 + 120..1024 + 124].copy_from_slice(b"root");
        let id = identify(&vol(d.clone())).unwrap().unwrap();
        assert_eq!(id.kind, FsKind::Ext4);
        assert_eq!(id.label.as_deref(), Some("root"));
        assert_eq!(
            id.uuid.as_deref(),
            Some("11111111-1111-1111-1111-111111111111")
        );
        d[1024 + 96] = 0;
        d[1024 + 92] = 4;
        assert_eq!(
            identify(&vol(d.clone())).unwrap().unwrap().kind,
            FsKind::Ext3
        );
        d[1024 + 92] = 0;
        assert_eq!(identify(&vol(d)).unwrap().unwrap().kind, FsKind::Ext2);
    }

    #[test]
    fn swap_and_xfs_and_nothing() {
        let mut d = vec![0u8; 8192];
        d[4086..4096].copy_from_slice(b"SWAPSPACE2");
        d[1024 + 28..1024 + 32].copy_from_slice(b"swap");
        let id = identify(&vol(d)).unwrap().unwrap();
        assert_eq!((id.kind, id.label.as_deref()), (FsKind::Swap, Some("swap")));
        let mut d = vec![0u8; 8192];
        d[0..4].copy_from_slice(b"XFSB");
        d[108..112].copy_from_slice(b"data");
        assert_eq!(identify(&vol(d)).unwrap().unwrap().kind, FsKind::Xfs);
        assert_eq!(identify(&vol(vec![0u8; 100_000])).unwrap(), None);
        // Too small for any superblock.
        assert_eq!(identify(&vol(vec![0u8; 100])).unwrap(), None);
    }

    #[test]
    fn lvm2_label_in_the_second_sector() {
        let mut d = vec![0u8; 4096];
        d[512..520].copy_from_slice(b"LABELONE");
        d[512 + 20..512 + 24].copy_from_slice(&32u32.to_le_bytes());
        d[512 + 24..512 + 32].copy_from_slice(b"LVM2 001");
        d[512 + 32..512 + 64].copy_from_slice(b"abcdefghijklmnopqrstuvwxyz012345");
        let id = identify(&vol(d)).unwrap().unwrap();
        assert_eq!(id.kind, FsKind::Lvm2Member);
        assert_eq!(
            id.uuid.as_deref(),
            Some("abcdef-ghij-klmn-opqr-stuv-wxyz-012345")
        );
    }
}
