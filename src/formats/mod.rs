//! The image formats. Each one lives in its own module and talks to the rest of the crate only
//! through the traits in [`crate::block`].

pub mod info;
pub mod iso;
pub mod qcow1;
pub mod qcow2;
pub mod qed;
pub mod raw;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;
pub mod zvhd;

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// An image format ims reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// The disk's bytes as they are, nothing else.
    Raw,
    /// QEMU's copy-on-write format, version 2 or 3.
    Qcow2,
    /// VMware's format: a text descriptor with sparse, stream-optimized or flat extents.
    Vmdk,
    /// Microsoft's Virtual Hard Disk (qemu-img calls it `vpc`).
    Vhd,
    /// Microsoft's Virtual Hard Disk v2 (Hyper-V since Windows 8).
    Vhdx,
    /// Huawei Cloud's stream-compressed VHD.
    Zvhd,
    /// Huawei Cloud's block-compressed, indexed VHD.
    Zvhd2,
    /// VirtualBox's Virtual Disk Image.
    Vdi,
    /// QEMU Enhanced Disk.
    Qed,
    /// QEMU's copy-on-write format, version 1.
    Qcow,
    /// An ISO 9660 image (a CD or DVD image, an installation medium): read as the bytes it is,
    /// inspected and registered as an ISO, never converted to or written.
    Iso,
}

impl Format {
    pub(crate) const ALL: [Format; 11] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vhd,
        Format::Vhdx,
        Format::Zvhd,
        Format::Zvhd2,
        Format::Vdi,
        Format::Qed,
        Format::Qcow,
        Format::Iso,
    ];

    /// The name used on the command line and in `info`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Zvhd => "zvhd",
            Format::Zvhd2 => "zvhd2",
            Format::Vdi => "vdi",
            Format::Qed => "qed",
            Format::Qcow => "qcow",
            Format::Iso => "iso",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "vpc" => Ok(Format::Vhd),
            _ => Format::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown image format '{s}' (known: raw, qcow2, vmdk, vhd or vpc, vhdx, zvhd, zvhd2, vdi, qed, qcow, iso)"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_vpc_is_vhd() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        assert_eq!("vpc".parse::<Format>().unwrap(), Format::Vhd);
        assert!("vhdy".parse::<Format>().is_err());
    }
}
