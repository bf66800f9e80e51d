//! Output files that appear only when complete: a writer made by [`create`](crate::create) for
//! a file writes under a hidden temporary name beside the final one (`.NAME.ims-partial-PID-N`)
//! and renames it into place when it finishes; dropped unfinished (an error, a cancel, a panic)
//! it removes what it wrote. A failed conversion leaves no output, and a file it would have
//! replaced is left as it was.
//!
//! A path that already names something other than a regular file (a block device, a FIFO,
//! `/dev/null`) is written in place, as a stream is: there is nothing to rename over it; so is
//! an existing file in a directory where no file may be created. A symbolic link is followed:
//! the file it points to is replaced, the link stays.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::block::{BlockWriter, Piece, UnitEncoder};
use crate::error::{Error, Result};
use crate::io::FileSink;

/// What the temporary names of this process end with before their number.
const PARTIAL_TAG: &str = ".ims-partial-";

/// A file being written under a temporary name, renamed to `path` by [`PartialFile::commit`]
/// and removed when dropped uncommitted.
pub(crate) struct PartialFile {
    /// Where the data is written; `None` once committed, or when written in place.
    temp: Option<PathBuf>,
    /// The final name.
    path: PathBuf,
}

impl PartialFile {
    /// Creates the output `path`: a fresh temporary file beside it, or `path` itself when it
    /// names a device or a FIFO. Errors name `path`.
    pub(crate) fn create(path: &Path, durable: bool) -> Result<(PartialFile, FileSink)> {
        let path = match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
            }
            _ => path.to_path_buf(),
        };
        let existing = std::fs::metadata(&path).ok();
        let special = existing.as_ref().is_some_and(|m| {
            let t = m.file_type();
            t.is_block_device() || t.is_char_device() || t.is_fifo() || t.is_socket()
        });
        let temp = match temp_name(&path) {
            Some(temp) if !special => temp,
            _ => {
                let sink = FileSink::create(&path)?.durable(durable);
                return Ok((PartialFile { temp: None, path }, sink));
            }
        };
        let file = match File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
        {
            Ok(file) => file,
            // A file that may be written in a directory that may not: in place, as before.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && existing.is_some() => {
                let sink = FileSink::create(&path)?.durable(durable);
                return Ok((PartialFile { temp: None, path }, sink));
            }
            Err(e) => return Err(Error::io("create", e).in_file(&path)),
        };
        let partial = PartialFile {
            temp: Some(temp),
            path,
        };
        // A file replaced keeps its permissions, as it would if it were truncated.
        if let Some(m) = existing.filter(|m| m.is_file()) {
            file.set_permissions(m.permissions())
                .map_err(|e| Error::io("set permissions of", e).in_file(&partial.path))?;
        }
        let sink = FileSink::from_file(file)
            .named(&partial.path)
            .durable(durable);
        Ok((partial, sink))
    }

    /// Renames the file into place; with `durable`, syncs the directory so the rename lasts.
    fn commit(&mut self, durable: bool) -> Result<()> {
        let Some(temp) = &self.temp else {
            return Ok(());
        };
        std::fs::rename(temp, &self.path)
            .map_err(|e| Error::io("rename into place", e).in_file(&self.path))?;
        self.temp = None;
        if durable {
            let dir = match self.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io("sync directory", e).in_file(dir))?;
        }
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// `.NAME.ims-partial-PID-N` beside `path`; `None` for a path with no file name. A long name
/// is shortened so that the temporary name stays within the usual 255-byte limit.
fn temp_name(path: &Path) -> Option<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name()?.as_bytes();
    let name = &name[..name.len().min(200)];
    let mut temp = Vec::with_capacity(name.len() + 48);
    temp.push(b'.');
    temp.extend_from_slice(name);
    temp.extend_from_slice(
        format!(
            "{PARTIAL_TAG}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
        .as_bytes(),
    );
    Some(path.with_file_name(OsString::from_vec(temp)))
}

/// The output files of a writer being made: staged ([`PartialFile`]) or written in place.
pub(crate) struct Staging {
    stage: bool,
    durable: bool,
    files: Vec<PartialFile>,
}

impl Staging {
    /// Output files under temporary names (`stage`), or under their own names for a caller
    /// that writes to a temporary place already (a store's upload). `durable` makes every
    /// file sync on finish.
    pub(crate) fn new(stage: bool, durable: bool) -> Self {
        Staging {
            stage,
            durable,
            files: Vec::new(),
        }
    }

    /// Creates the output file `path`.
    pub(crate) fn create(&mut self, path: &Path) -> Result<FileSink> {
        if !self.stage {
            return Ok(FileSink::create(path)?.durable(self.durable));
        }
        let (partial, sink) = PartialFile::create(path, self.durable)?;
        self.files.push(partial);
        Ok(sink)
    }

    /// `writer`, which now also renames the files into place (in the order they were created)
    /// when it finishes, and removes them when it is dropped unfinished.
    pub(crate) fn wrap(self, writer: Box<dyn BlockWriter>) -> Box<dyn BlockWriter> {
        if self.files.is_empty() {
            return writer;
        }
        Box::new(StagedWriter {
            inner: writer,
            files: self.files,
            durable: self.durable,
        })
    }
}

/// A writer whose output files are renamed into place after it finishes.
struct StagedWriter {
    inner: Box<dyn BlockWriter>,
    files: Vec<PartialFile>,
    durable: bool,
}

impl BlockWriter for StagedWriter {
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }

    fn unit_size(&self) -> u64 {
        self.inner.unit_size()
    }

    fn encoder(&self) -> Option<Arc<dyn UnitEncoder>> {
        self.inner.encoder()
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        self.inner.write_piece(piece)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let StagedWriter {
            inner,
            mut files,
            durable,
        } = *self;
        // On an error `files` is dropped: the temporary files go.
        inner.finish()?;
        for i in 0..files.len() {
            if let Err(e) = files[i].commit(durable) {
                // A file renamed already (a VMDK's extent) is of no use without the rest.
                for done in &files[..i] {
                    let _ = std::fs::remove_file(&done.path);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::AppendSink;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn temp_name_is_hidden_beside_the_file() {
        let t = temp_name(Path::new("/a/b/disk.qcow2")).unwrap();
        assert_eq!(t.parent(), Some(Path::new("/a/b")));
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".disk.qcow2.ims-partial-"), "{name}");
        let relative = temp_name(Path::new("x")).unwrap();
        assert!(relative.to_string_lossy().starts_with(".x.ims-partial-"));
        let long = "n".repeat(255);
        assert!(temp_name(Path::new(&long)).unwrap().as_os_str().len() <= 255);
        assert!(temp_name(Path::new("/")).is_none());
    }

    #[test]
    fn committed_file_replaces_the_old_one_and_dropped_one_leaves_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();

        let (partial, mut sink) = PartialFile::create(&path, false).unwrap();
        sink.append(b"new but unfinished").unwrap();
        assert_eq!(names(dir.path()).len(), 2);
        drop((partial, sink));
        assert_eq!(names(dir.path()), ["out"]);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");

        let (mut partial, mut sink) = PartialFile::create(&path, true).unwrap();
        sink.append(b"new").unwrap();
        sink.finish().unwrap();
        partial.commit(true).unwrap();
        drop(partial);
        assert_eq!(names(dir.path()), ["out"]);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn a_link_is_followed_and_a_device_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let (mut partial, mut sink) = PartialFile::create(&link, false).unwrap();
        sink.append(b"new").unwrap();
        sink.finish().unwrap();
        partial.commit(false).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&real).unwrap(), b"new");

        let (partial, _sink) = PartialFile::create(Path::new("/dev/null"), false).unwrap();
        assert!(partial.temp.is_none());
    }

    #[test]
    fn errors_name_the_final_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("out");
        let e = PartialFile::create(&path, false).err().unwrap();
        assert!(e.to_string().contains("missing-dir/out:"), "{e}");
    }
}
