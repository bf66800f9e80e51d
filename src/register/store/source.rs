//! Images to register that are not local files: an object `s3://BUCKET/KEY`, the IMS form
//! `BUCKET:KEY` (the same, on the endpoint the `AWS_*` variables name: the configured
//! store's), and any `https://` URL (a presigned link); `http://` only when allowed.
//!
//! The formats read front to back (raw, streamOptimized VMDK, ZVHD) come as one GET stream
//! ([`Input::Stream`]); the others as a [`Storage`] of ranged GETs with read-ahead
//! ([`Input::Storage`]), which registration drives by the image's map. See `remote.rs`.

use std::sync::Arc;

use tokio::runtime::Runtime;

use crate::error::{Error, Result};
use crate::formats::Format;
use crate::formats::vmdk::header::{HEADER_SIZE, SparseHeader};
use crate::open::Input;
use crate::storage::{Storage, read_exact_at};

use super::remote::{HttpRemote, Remote, RemoteStorage, RemoteStream};
use super::s3::{S3Options, S3Store};
use object_store::aws::AmazonS3Builder;

/// How remote sources are opened.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SourceOptions {
    /// Allow plain `http://` URLs (for a server on a trusted network or a test). Without it
    /// they are refused, unless `IMS_ALLOW_HTTP=1` is set: an image fetched without TLS can
    /// be changed on the way. (An S3 endpoint's scheme is the `AWS_ENDPOINT`'s own.)
    pub allow_http: bool,
    /// The S3 client of `s3://` and `BUCKET:KEY` sources (endpoint, region, credentials);
    /// `None`: the `AWS_*` variables', as the S3 store takes them.
    pub s3: Option<AmazonS3Builder>,
}

impl SourceOptions {
    /// `s3://` and `BUCKET:KEY` sources through `builder` instead of the `AWS_*` variables.
    pub fn s3(mut self, builder: AmazonS3Builder) -> SourceOptions {
        self.s3 = Some(builder);
        self
    }

    /// Plain `http://` allowed or not.
    pub fn allow_http(mut self, allow: bool) -> SourceOptions {
        self.allow_http = allow;
        self
    }
}

/// Whether `name` is a bucket name as S3 allows it: 3 to 63 lowercase letters, digits, dots
/// and hyphens, starting and ending with a letter or a digit.
fn bucket_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (3..=63).contains(&name.len())
        && name.chars().all(|c| alnum(c) || c == '.' || c == '-')
        && name.starts_with(alnum)
        && name.ends_with(alnum)
}

/// `address` as `s3://BUCKET/KEY` when it is the IMS form `BUCKET:KEY`.
fn bucket_key(address: &str) -> Option<String> {
    let (bucket, key) = address.split_once(':')?;
    (bucket_name(bucket) && !key.is_empty() && !key.starts_with("//"))
        .then(|| format!("s3://{bucket}/{key}"))
}

/// Whether `address` names a source [`open_source`] opens: `s3://`, `https://`, `http://`,
/// or `BUCKET:KEY`. (A caller that also takes local files tries a file of that name first.)
pub fn is_remote(address: &str) -> bool {
    ["s3://", "https://", "http://"]
        .iter()
        .any(|p| address.starts_with(p))
        || bucket_key(address).is_some()
}

/// The runtime of a source's GETs.
fn runtime() -> Result<Arc<Runtime>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ims-source")
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the HTTP runtime", e))?;
    Ok(Arc::new(rt))
}

/// Whether `storage` holds a streamOptimized VMDK (compressed grains and markers), which
/// reads front to back; other VMDKs are read by their tables.
fn stream_optimized(storage: &dyn Storage) -> bool {
    let mut head = [0u8; HEADER_SIZE];
    read_exact_at(storage, &mut head, 0, "VMDK header").is_ok()
        && SparseHeader::parse(&head, 0).is_ok_and(|h| h.compressed() && h.has_markers())
}

/// Opens the image at `address` (see the module documentation) for registration: one GET
/// stream for a format read front to back, ranged GETs for the others. The object is pinned
/// to the version seen now; one that changes while it is read fails the read.
pub fn open_source(address: &str, options: &SourceOptions) -> Result<Input> {
    let s3 = bucket_key(address)
        .filter(|_| !address.contains("://"))
        .or_else(|| address.starts_with("s3://").then(|| address.to_string()));
    let read = S3Options::from_env()?;
    let (rt, remote, len): (Arc<Runtime>, Arc<dyn Remote>, u64) = if let Some(url) = &s3 {
        let (rt, remote, len) = S3Store::object(url, options.s3.clone())?;
        (rt, Arc::new(remote), len)
    } else if address.starts_with("https://")
        || (address.starts_with("http://") && (options.allow_http || allow_http_from_env()))
    {
        let rt = runtime()?;
        let (remote, len) = HttpRemote::open(&rt, address)?;
        (rt, Arc::new(remote), len)
    } else if address.starts_with("http://") {
        return Err(Error::InvalidArgument(format!(
            "{}: plain http:// is refused (the image could be changed on the way); use \
             https://, or allow it (--allow-http, IMS_ALLOW_HTTP=1)",
            address.split('?').next().unwrap_or(address)
        )));
    } else {
        return Err(Error::InvalidArgument(format!(
            "'{address}' is not s3://BUCKET/KEY, BUCKET:KEY or an https:// URL"
        )));
    };
    let name = remote.name().to_string();
    let storage = Arc::new(RemoteStorage::new(
        Arc::clone(&rt),
        Arc::clone(&remote),
        len,
        read.read_options(),
    ));
    // What the probe cannot name is opened as a storage, for the open to say why.
    let stream = match crate::probe::probe_storage(&*storage) {
        Ok(f @ (Format::Raw | Format::Zvhd)) => Some(f),
        Ok(Format::Vmdk) if stream_optimized(&*storage) => Some(Format::Vmdk),
        _ => None,
    };
    Ok(match stream {
        Some(format) => Input::Stream {
            reader: Box::new(RemoteStream::new(rt, remote, len)),
            format,
            name,
            size: (format == Format::Raw).then_some(len),
        },
        None => Input::Storage { storage, name },
    })
}

fn allow_http_from_env() -> bool {
    std::env::var("IMS_ALLOW_HTTP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ims_form_is_a_bucket_and_a_key() {
        assert_eq!(
            bucket_key("uploads:disks/a.qcow2").as_deref(),
            Some("s3://uploads/disks/a.qcow2")
        );
        assert_eq!(
            bucket_key("my.bucket-1:a").as_deref(),
            Some("s3://my.bucket-1/a")
        );
        for not in [
            "uploads",
            "uploads:",
            "Uploads:a",
            "ab:a",
            "-bucket:a",
            "bucket-:a",
            "./disk:a",
            "https://x/y",
            "bucket_x:a",
        ] {
            assert_eq!(bucket_key(not), None, "{not}");
        }
        assert!(is_remote("s3://b/k") && is_remote("https://h/p") && is_remote("bkt:k"));
        assert!(!is_remote("disk.qcow2") && !is_remote("/tmp/a:b"));
    }
}
