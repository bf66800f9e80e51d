//! The one place where an image's references to other files (QCOW2 backing files, VHD parents,
//! VMDK extents and parents) are opened. Formats only name a reference; the [`Resolver`] decides
//! what happens to it under the caller's [`References`] policy:
//!
//! - [`References::Deny`] (the default): the image is refused with
//!   [`Error::ExternalReference`] naming the reference.
//! - [`References::Defer`]: the image opens, and whatever needs the reference fails when it is
//!   read (`info` names references without opening them, as qemu-img does).
//! - [`References::Confined`]: a reference is followed only to a regular file inside the one
//!   named directory, at most [`MAX_CHAIN_DEPTH`] images deep (which also ends loops).
//!
//! A reference name is refused when it is empty, absolute, has a `..` component, looks like a
//! protocol or JSON description (`nbd:`, `http:`, `json:{...}`: a colon before any slash, as
//! qemu reads them), resolves (after following symbolic links) outside the directory, is the
//! referring image itself, or is not a regular file.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::block::{BlockReader, Extent};
use crate::error::{Error, ReferenceKind, Result};
use crate::formats::Format;
use crate::limits::MAX_CHAIN_DEPTH;
use crate::storage::{FileStorage, Storage};

/// What may be done with an image's references to other files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum References {
    /// Refuse an image that refers to another file.
    #[default]
    Deny,
    /// Open the image; reading what lies in another file fails with the reference error.
    Defer,
    /// Follow references to regular files inside this one directory.
    Confined(PathBuf),
}

/// A reference an image makes to another file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// What kind of reference it is.
    pub kind: ReferenceKind,
    /// The name as the image records it.
    pub name: String,
    /// The format the image records for it, if any.
    pub format: Option<Format>,
}

impl Reference {
    /// A reference of `kind` to `name`, of no recorded format.
    pub fn new(kind: ReferenceKind, name: impl Into<String>) -> Reference {
        Reference {
            kind,
            name: name.into(),
            format: None,
        }
    }

    /// The error that refuses this reference.
    pub fn refused(&self) -> Error {
        Error::reference(self.kind, self.name.clone())
    }
}

/// Opens the file a reference leads to as a disk (its format given or probed), under the
/// resolver one level down the chain. The opening layer provides it, so that this module knows
/// nothing of the formats that make references.
pub type DiskOpener =
    fn(Arc<dyn Storage>, &Path, Option<Format>, &Resolver) -> Result<Arc<dyn BlockReader>>;

/// Opens references under a [`References`] policy, counting how deep down a chain it is.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    policy: References,
    depth: usize,
    opener: Option<DiskOpener>,
}

/// A file opened through a reference, with the path it resolved to.
pub(crate) struct Opened {
    pub storage: Arc<dyn Storage>,
    pub path: PathBuf,
}

impl Resolver {
    /// A resolver at the top of a chain that opens disks with `opener`.
    pub fn new(policy: References, opener: DiskOpener) -> Resolver {
        Resolver {
            policy,
            depth: 0,
            opener: Some(opener),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &References {
        &self.policy
    }

    /// Whether references may be opened at all.
    pub fn follows(&self) -> bool {
        matches!(self.policy, References::Confined(_))
    }

    /// Opens the disk an image stacks on (a backing file or parent) as a reader: under
    /// [`References::Defer`] a stand-in of `size` bytes whose reads fail. The disk is opened
    /// with this policy one level deeper, so its own references follow the same rules.
    pub(crate) fn open_disk(
        &self,
        reference: &Reference,
        referrer: &Path,
        size: u64,
    ) -> Result<Arc<dyn BlockReader>> {
        if self.policy == References::Defer {
            return Ok(Arc::new(RefusedReference::new(reference.clone(), size)));
        }
        let Some(opener) = self.opener else {
            return Err(Error::internal("a resolver without a disk opener"));
        };
        let opened = self.open_file(reference, referrer)?;
        let deeper = Resolver {
            depth: self.depth + 1,
            ..self.clone()
        };
        opener(opened.storage, &opened.path, reference.format, &deeper)
    }

    /// Opens the bytes of another file (a VMDK extent). `None` under [`References::Defer`]: the
    /// caller makes the part that lives there fail when it is read.
    pub(crate) fn open_bytes(
        &self,
        reference: &Reference,
        referrer: &Path,
    ) -> Result<Option<Opened>> {
        if self.policy == References::Defer {
            return Ok(None);
        }
        self.open_file(reference, referrer).map(Some)
    }

    /// Resolves and opens the file a reference names, or refuses it.
    fn open_file(&self, reference: &Reference, referrer: &Path) -> Result<Opened> {
        let References::Confined(dir) = &self.policy else {
            return Err(reference.refused());
        };
        if self.depth >= MAX_CHAIN_DEPTH {
            return Err(Error::limit(
                "reference chain",
                0,
                format!(
                    "more than {MAX_CHAIN_DEPTH} images deep (a loop?) at {:?}",
                    reference.name
                ),
            ));
        }
        let path = resolve(reference.kind, &reference.name, referrer, dir)?;
        let file = open_resolved(reference.kind, &reference.name, &path)?;
        let storage = FileStorage::new(file).map_err(|e| e.in_file(&path))?;
        Ok(Opened {
            storage: Arc::new(storage),
            path,
        })
    }
}

/// Whether `name` names a protocol or a JSON description rather than a file: a colon before any
/// slash.
fn has_protocol(name: &str) -> bool {
    match name.find(':') {
        Some(colon) => !name[..colon].contains('/'),
        None => false,
    }
}

/// Resolves `name`, a reference of `kind` made by the image at `referrer`, to the canonical
/// path of a regular file inside `allowed_dir`. Relative names are taken relative to the
/// referring image's directory, as qemu does.
fn resolve(
    kind: ReferenceKind,
    name: &str,
    referrer: &Path,
    allowed_dir: &Path,
) -> Result<PathBuf> {
    let refuse = || Error::reference(kind, name);
    if name.is_empty() || name.contains('\0') || has_protocol(name) {
        return Err(refuse());
    }
    let relative = Path::new(name);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(refuse());
    }
    let base = match referrer.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let candidate = base.join(relative);
    let dir = allowed_dir.canonicalize().map_err(|e| {
        Error::io("resolve the directory references may use", e).in_file(allowed_dir)
    })?;
    let real = candidate
        .canonicalize()
        .map_err(|e| Error::io("resolve reference", e).in_file(&candidate))?;
    if !real.starts_with(&dir) {
        return Err(refuse());
    }
    if referrer.canonicalize().is_ok_and(|r| r == real) {
        return Err(refuse());
    }
    let meta = std::fs::metadata(&real).map_err(|e| Error::io("stat", e).in_file(&real))?;
    if !meta.is_file() {
        return Err(refuse());
    }
    Ok(real)
}

/// Opens a resolved reference for reading, refusing anything that is not a regular file by
/// the time it is opened: the last component is not followed if it became a symbolic link, and
/// a FIFO does not block the open.
fn open_resolved(kind: ReferenceKind, name: &str, path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io("open", e).in_file(path))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("stat", e).in_file(path))?;
    if !meta.is_file() {
        return Err(Error::reference(kind, name));
    }
    Ok(file)
}

/// Stands in for a disk the policy does not let ims open, so that an image can still be opened
/// for `info`: every read or map of it fails with the reference error.
struct RefusedReference {
    reference: Reference,
    size: u64,
}

impl RefusedReference {
    fn new(reference: Reference, size: u64) -> Self {
        RefusedReference { reference, size }
    }
}

impl BlockReader for RefusedReference {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<()> {
        Err(self.reference.refused())
    }

    fn map(&self, _offset: u64, _len: u64) -> Result<Vec<Extent>> {
        Err(self.reference.refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir_all(allowed.join("sub")).unwrap();
        std::fs::write(allowed.join("base.img"), b"base").unwrap();
        std::fs::write(allowed.join("sub/deep.img"), b"deep").unwrap();
        std::fs::write(dir.path().join("outside.img"), b"out").unwrap();
        (dir, allowed)
    }

    #[test]
    fn resolves_relative_names_inside_the_directory() {
        let (_t, allowed) = setup();
        let child = allowed.join("child.qcow2");
        let kind = ReferenceKind::BackingFile;
        let p = resolve(kind, "base.img", &child, &allowed).unwrap();
        assert_eq!(p, allowed.canonicalize().unwrap().join("base.img"));
        assert!(resolve(kind, "./sub/deep.img", &child, &allowed).is_ok());
        // Relative to the referring image's own directory.
        let deep_child = allowed.join("sub/child.qcow2");
        assert!(resolve(kind, "deep.img", &deep_child, &allowed).is_ok());
        open_resolved(kind, "base.img", &p).unwrap();
    }

    #[test]
    fn refuses_names_that_leave_the_directory() {
        let (t, allowed) = setup();
        let child = allowed.join("child.qcow2");
        let kind = ReferenceKind::BackingFile;
        let outside = t.path().join("outside.img");
        for name in [
            "",
            "../outside.img",
            "sub/../base.img",
            outside.to_str().unwrap(),
            "/etc/passwd",
            "nbd:localhost:10809",
            "json:{\"file.filename\":\"/etc/passwd\"}",
            "http://example.com/disk.img",
            "file:base.img",
            "a\0b",
        ] {
            let e = resolve(kind, name, &child, &allowed).unwrap_err();
            assert_eq!(e.kind(), "external-reference", "{name:?}: {e}");
        }
        // A symbolic link inside the directory pointing out of it.
        std::os::unix::fs::symlink(&outside, allowed.join("link.img")).unwrap();
        assert_eq!(
            resolve(kind, "link.img", &child, &allowed)
                .unwrap_err()
                .kind(),
            "external-reference"
        );
        // A directory, a FIFO and a device are not image files.
        assert_eq!(
            resolve(kind, "sub", &child, &allowed).unwrap_err().kind(),
            "external-reference"
        );
        let fifo = allowed.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(
            resolve(kind, "fifo", &child, &allowed).unwrap_err().kind(),
            "external-reference"
        );
        assert_eq!(
            open_resolved(kind, "fifo", &fifo).unwrap_err().kind(),
            "external-reference"
        );
        std::os::unix::fs::symlink("/dev/zero", allowed.join("zero.img")).unwrap();
        assert_eq!(
            resolve(kind, "zero.img", &child, &allowed)
                .unwrap_err()
                .kind(),
            "external-reference"
        );
        // A missing file is an I/O error naming it.
        assert_eq!(
            resolve(kind, "missing.img", &child, &allowed)
                .unwrap_err()
                .kind(),
            "io"
        );
        // An image referring to itself.
        std::fs::write(&child, b"x").unwrap();
        assert_eq!(
            resolve(kind, "child.qcow2", &child, &allowed)
                .unwrap_err()
                .kind(),
            "external-reference"
        );
    }

    #[test]
    fn protocol_detection_follows_qemu() {
        assert!(has_protocol("nbd:host:1"));
        assert!(has_protocol("json:{}"));
        assert!(!has_protocol("dir/a:b"));
        assert!(!has_protocol("plain.img"));
    }
}
