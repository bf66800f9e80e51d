//! Following a reference from one image file to another (a QCOW2 backing file; later VMDK
//! extents and VHD parents), which [`crate::open`] does only when the caller names a directory
//! in [`OpenOptions::allow_references`](crate::OpenOptions::allow_references), and then only to
//! regular files inside that directory.
//!
//! A reference name is refused when it is empty, absolute, has a `..` component, looks like a
//! protocol or JSON description (`nbd:`, `http:`, `json:{...}`: a colon before any slash, as
//! qemu reads them), resolves (after following symbolic links) outside the directory, or is not
//! a regular file. Chains are at most [`MAX_CHAIN_DEPTH`] images deep, which also ends loops.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::OpenOptions;
use crate::block::BlockReader;
use crate::error::{Error, ReferenceKind, Result};
use crate::formats::Format;
use crate::limits::MAX_CHAIN_DEPTH;

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
pub fn resolve(
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
pub fn open_resolved(kind: ReferenceKind, name: &str, path: &Path) -> Result<File> {
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

/// Opens the backing image `name` (of `format`, when the referring image records it; probed
/// otherwise) that the image at `referrer`, itself `depth` levels down a chain, refers to,
/// if `options` allow references. Its own references are followed under the same options.
pub(crate) fn open_backing(
    name: &str,
    format: Option<&str>,
    referrer: &Path,
    options: &OpenOptions,
    depth: usize,
) -> Result<Arc<dyn BlockReader>> {
    let kind = ReferenceKind::BackingFile;
    let Some(dir) = &options.allow_references else {
        return Err(Error::reference(kind, name));
    };
    if depth >= MAX_CHAIN_DEPTH {
        return Err(Error::limit(
            "backing chain",
            0,
            format!("more than {MAX_CHAIN_DEPTH} backing images (a loop?) at {name:?}"),
        ));
    }
    let path = resolve(kind, name, referrer, dir)?;
    let file = open_resolved(kind, name, &path)?;
    let format = match format {
        None => None,
        Some(f) => Some(f.parse::<Format>().map_err(|_| {
            Error::unsupported(format!("backing file format '{f}'")).in_file(&path)
        })?),
    };
    let backing_options = OpenOptions {
        format,
        allow_references: options.allow_references.clone(),
        defer_references: false,
    };
    let storage = crate::storage::FileStorage::new(file).map_err(|e| e.in_file(&path))?;
    let image = crate::open_file(Arc::new(storage), &path, &backing_options, depth + 1)?;
    let described = image.format();
    image.reader().ok_or_else(|| {
        Error::unsupported(format!(
            "a {described} backing file (it can only be read front to back)"
        ))
        .in_file(&path)
    })
}

/// Stands in for a file the open options do not let ims follow, so that an image can still be
/// opened for `info`: every read or map of it fails with the reference error.
pub struct RefusedReference {
    kind: ReferenceKind,
    name: String,
    size: u64,
}

impl RefusedReference {
    pub fn new(kind: ReferenceKind, name: &str, size: u64) -> Self {
        RefusedReference {
            kind,
            name: name.to_string(),
            size,
        }
    }
}

impl BlockReader for RefusedReference {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<()> {
        Err(Error::reference(self.kind, self.name.clone()))
    }

    fn map(&self, _offset: u64, _len: u64) -> Result<Vec<crate::block::Extent>> {
        Err(Error::reference(self.kind, self.name.clone()))
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
