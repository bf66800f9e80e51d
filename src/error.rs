//! The crate's one error type.
//!
//! Every variant says what went wrong in terms a user can act on: which file, which on-disk
//! structure, at which offset. Parsers do not know the file name they are reading, so they build
//! errors with an empty name and the opener fills it in with [`Error::in_file`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The name of the file an error is about; empty until the opener knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileName(pub Option<PathBuf>);

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(p) => write!(f, "{}: ", p.display()),
            None => Ok(()),
        }
    }
}

/// What kind of reference to another file an image made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReferenceKind {
    /// A QCOW2 backing file, or a VMDK/VHD parent.
    BackingFile,
    /// A QCOW2 external data file.
    DataFile,
    /// A VMDK extent stored in another file.
    Extent,
    /// A VHD differencing disk's parent locator.
    ParentLocator,
}

impl fmt::Display for ReferenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReferenceKind::BackingFile => "backing file",
            ReferenceKind::DataFile => "external data file",
            ReferenceKind::Extent => "extent file",
            ReferenceKind::ParentLocator => "parent locator",
        })
    }
}

/// Everything that can go wrong in `ims`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error while doing `action` on a file.
    #[error("{file}{action}: {source}")]
    Io {
        /// The file, when known.
        file: FileName,
        /// What ims was doing ("read", "create output", ...).
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The image is malformed: a structure at an offset holds a value that cannot be right.
    #[error("{file}malformed {structure} at offset {offset:#x}: {problem}")]
    Malformed {
        /// The file, when known.
        file: FileName,
        /// The on-disk structure ("qcow2 header", "vhd footer", ...).
        structure: &'static str,
        /// Where the structure (or the bad value) is in the file.
        offset: u64,
        /// What is wrong with it.
        problem: String,
    },

    /// The file ends before a structure it needs.
    #[error(
        "{file}truncated: {structure} at offset {offset:#x} needs {needed} bytes, the file has {available}"
    )]
    Truncated {
        /// The file, when known.
        file: FileName,
        /// The structure that does not fit.
        structure: &'static str,
        /// Where the structure starts in the file.
        offset: u64,
        /// Bytes the structure needs.
        needed: u64,
        /// The file's length.
        available: u64,
    },

    /// The image is recognised but uses something ims does not do (a format, an encryption, a feature).
    #[error("{file}unsupported: {what}")]
    Unsupported {
        /// The file, when known.
        file: FileName,
        /// The format, feature or value that ims does not handle.
        what: String,
    },

    /// The image refers to another file, which the open options do not allow.
    #[error(
        "{file}{kind} reference {reference:?} refused (other files are opened only when references are allowed inside a named directory)"
    )]
    ExternalReference {
        /// The file that holds the reference, when known.
        file: FileName,
        /// What the other file would have been.
        kind: ReferenceKind,
        /// The name the image gives, as written in it.
        reference: String,
    },

    /// A structure exceeds one of ims's safety limits (a table, a descriptor, a decompressed unit too large).
    #[error("{file}{structure} at offset {offset:#x} exceeds a limit: {problem}")]
    LimitExceeded {
        /// The file, when known.
        file: FileName,
        /// The structure that is too large.
        structure: &'static str,
        /// Where the structure is in the file.
        offset: u64,
        /// Which limit, and by how much.
        problem: String,
    },

    /// The file matches more than one format: the caller must name one, or (a polyglot, whose
    /// signatures are both strong) it is refused whatever the caller names.
    #[error("{file}ambiguous format: the file looks like {first} and like {second}{hint}")]
    Ambiguous {
        /// The file, when known.
        file: FileName,
        /// One format it matches.
        first: &'static str,
        /// Another format it matches.
        second: &'static str,
        /// What the caller can do: "; name the format with -f", or why naming it does not help.
        hint: &'static str,
    },

    /// The caller asked for something impossible (an unknown option, a bad value, a pipe for a
    /// format that needs to seek).
    #[error("{0}")]
    InvalidArgument(String),

    /// ims broke one of its own invariants (a bug, not a problem of the image or the request).
    #[error("internal error: {0}")]
    Internal(String),

    /// The caller cancelled the work through its [`CancelToken`](crate::CancelToken).
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Names the file this error is about, unless it already names one.
    pub fn in_file(mut self, path: &Path) -> Self {
        let slot = match &mut self {
            Error::Io { file, .. }
            | Error::Malformed { file, .. }
            | Error::Truncated { file, .. }
            | Error::Unsupported { file, .. }
            | Error::ExternalReference { file, .. }
            | Error::LimitExceeded { file, .. }
            | Error::Ambiguous { file, .. } => file,
            Error::InvalidArgument(_) | Error::Internal(_) | Error::Cancelled => {
                return self;
            }
        };
        if slot.0.is_none() {
            slot.0 = Some(path.to_path_buf());
        }
        self
    }

    /// An I/O error during `action`, for a file not yet named.
    pub fn io(action: &'static str, source: io::Error) -> Self {
        Error::Io {
            file: FileName::default(),
            action,
            source,
        }
    }

    /// A malformed structure.
    pub fn malformed(structure: &'static str, offset: u64, problem: impl Into<String>) -> Self {
        Error::Malformed {
            file: FileName::default(),
            structure,
            offset,
            problem: problem.into(),
        }
    }

    /// A recognised but unsupported feature or format.
    pub fn unsupported(what: impl Into<String>) -> Self {
        Error::Unsupported {
            file: FileName::default(),
            what: what.into(),
        }
    }

    /// A refused reference to another file.
    pub fn reference(kind: ReferenceKind, reference: impl Into<String>) -> Self {
        Error::ExternalReference {
            file: FileName::default(),
            kind,
            reference: reference.into(),
        }
    }

    /// A structure over one of the safety limits.
    pub fn limit(structure: &'static str, offset: u64, problem: impl Into<String>) -> Self {
        Error::LimitExceeded {
            file: FileName::default(),
            structure,
            offset,
            problem: problem.into(),
        }
    }

    /// A structure that runs past the end of the file.
    pub fn truncated(structure: &'static str, offset: u64, needed: u64, available: u64) -> Self {
        Error::Truncated {
            file: FileName::default(),
            structure,
            offset,
            needed,
            available,
        }
    }

    /// A broken invariant of ims's own.
    pub fn internal(problem: impl Into<String>) -> Self {
        Error::Internal(problem.into())
    }

    /// A short, stable name of the variant, for JSON output and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Malformed { .. } => "malformed",
            Error::Truncated { .. } => "truncated",
            Error::Unsupported { .. } => "unsupported",
            Error::ExternalReference { .. } => "external-reference",
            Error::LimitExceeded { .. } => "limit-exceeded",
            Error::Ambiguous { .. } => "ambiguous",
            Error::InvalidArgument(_) => "invalid-argument",
            Error::Internal(_) => "internal",
            Error::Cancelled => "cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_file_structure_and_offset() {
        let e = Error::malformed("qcow2 header", 0x24, "l1_size too large")
            .in_file(Path::new("a.qcow2"));
        assert_eq!(
            e.to_string(),
            "a.qcow2: malformed qcow2 header at offset 0x24: l1_size too large"
        );
    }

    #[test]
    fn in_file_keeps_the_first_name() {
        let e = Error::unsupported("vhdx")
            .in_file(Path::new("inner"))
            .in_file(Path::new("outer"));
        assert_eq!(e.to_string(), "inner: unsupported: vhdx");
    }

    #[test]
    fn cancelled_says_so_and_names_no_file() {
        let e = Error::Cancelled.in_file(Path::new("a.qcow2"));
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            ("cancelled", "cancelled")
        );
    }

    #[test]
    fn reference_names_what_it_refers_to() {
        let e = Error::reference(ReferenceKind::BackingFile, "/etc/passwd");
        assert!(
            e.to_string()
                .contains("backing file reference \"/etc/passwd\" refused")
        );
        assert_eq!(e.kind(), "external-reference");
    }
}
