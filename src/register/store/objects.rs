//! The objects of jobs (`bucket:object`: a registration's source, an export's target) in the
//! S3 service the `AWS_*` variables name. Kept apart from `s3.rs` and `source.rs` because it
//! uses both: reads go through the sources' reader, writes through the S3 store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::path::Path;

use super::s3::{S3Options, S3Store, builder_from_env};
use super::source::{SourceOptions, open_source};
use crate::open::Input;
use crate::register::Result;
use crate::register::jobs::{Objects, parse_object_url};

/// The objects of jobs in the S3 service of the `AWS_*` variables, as [`S3Store::open`] takes
/// them: read as [`open_source`] reads them, written with a multipart upload streamed from the
/// file.
pub struct S3Objects {
    buckets: Mutex<HashMap<String, Arc<S3Store>>>,
}

impl Default for S3Objects {
    fn default() -> Self {
        S3Objects::new()
    }
}

impl S3Objects {
    /// Objects of the S3 service of the `AWS_*` variables.
    pub fn new() -> S3Objects {
        S3Objects {
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The store of `bucket` (one client and runtime per bucket, made when first used) and the
    /// object's path.
    fn locate(&self, url: &str) -> Result<(Arc<S3Store>, Path)> {
        let (bucket, object) = parse_object_url(url)?;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let store = match buckets.get(bucket) {
            Some(s) => Arc::clone(s),
            None => {
                let s = Arc::new(S3Store::with_builder(
                    builder_from_env(),
                    bucket,
                    "",
                    S3Options::from_env()?,
                )?);
                buckets.insert(bucket.to_string(), Arc::clone(&s));
                s
            }
        };
        Ok((store, Path::from(object)))
    }
}

impl Objects for S3Objects {
    fn open(&self, url: &str) -> Result<Input> {
        parse_object_url(url)?;
        // As `ims register BUCKET:KEY` reads it: one GET stream or ranged GETs read ahead by
        // the image's map, retried, pinned to the object's ETag.
        Ok(open_source(url, &SourceOptions::default())?)
    }

    fn exists(&self, url: &str) -> Result<bool> {
        let (store, path) = self.locate(url)?;
        Ok(store.object_exists(&path)?)
    }

    fn put(&self, url: &str, file: &std::path::Path) -> Result<()> {
        let (store, path) = self.locate(url)?;
        Ok(store.put_file(&path, file)?)
    }
}
