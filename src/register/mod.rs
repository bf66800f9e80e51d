//! Registration and the image catalog: private images from external files, with the rules of
//! an Image Management Service (IMS).
//!
//! [`Ims`] is the service: it keeps records in a [`Catalog`] and image files in an
//! [`ImageStore`] (by default an SQLite file and a local directory under one home directory,
//! so a fresh machine needs no server). Every request names its [`Scope`]: the project that
//! asks and the region it asks in. The rules are in [`rules`], one function and one error code
//! each; a refusal is [`ServiceError::Rule`] with a [`RuleCode`] (the list of codes, with what
//! each means). Every call returns [`Result`]: a refusal, or the image layers' [`crate::Error`]
//! inside [`ServiceError::Image`].
//!
//! - [`Ims::register`] (in [`register`](mod@register)): probe, open strictly, inspect,
//!   validate, convert into the store format while hashing, make durable, record `active`;
//!   [`register_file`] does it once on a home directory.
//! - [`Ims::list`], [`Ims::show`], [`Ims::update`] (a typed [`RecordUpdate`]; tags are
//!   [`Tag`]s), [`Ims::delete`]: search and manage.
//! - [`sharing`]: members; [`replicate`]: copies to other regions and exports.
//! - [`upload`]: images whose data comes after the record (the OpenStack Image API's way):
//!   [`Ims::create_empty`], then [`Ims::upload_as_is`] or [`Ims::register_into`].
//! - [`Ims::recover`] (run by [`Ims::open`] and [`Ims::with`]): records left `queued`/`saving`
//!   by a dead process become `killed`, and their data is removed.
//!
//! A service brings its own catalog and store: [`Ims::with`] takes any [`Catalog`] and any
//! [`ImageStore`] (see [`store`] for what a store implements).

pub mod catalog;
mod error;
mod group;
mod hash;
pub mod ims_errors;
pub mod job;
pub mod jobs;
pub mod publish;
pub mod record;
#[allow(clippy::module_inception)]
pub mod register;
pub mod replicate;
mod resized;
pub mod rules;
pub mod sharing;
mod staging;
pub mod store;
mod tag;
mod update;
pub mod upload;

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::error::Error;
use crate::storage::Storage;

pub use catalog::Catalog;
#[cfg(feature = "postgres")]
pub use catalog::PostgresCatalog;
#[cfg(feature = "sqlite")]
pub use catalog::SqliteCatalog;
pub use error::{Result, RuleCode, ServiceError};
pub use job::{Job, JobEntities, JobSpec, JobStatus, JobType, RegisterSpec};
pub use jobs::{DirObjects, JobPool, Objects, PoolOptions};
pub use record::{
    Checksum, Disk, Features, ImageClass, ImageRecord, ImageType, IsoMedium, Member, MemberStatus,
    Status, Visibility,
};
pub use register::{RegisterRequest, Registered, RegisteredGroup};
pub use rules::{Limits, Publication};
#[cfg(feature = "s3")]
pub use store::{
    AmazonS3Builder, S3Objects, S3Options, S3Store, SourceOptions, is_remote, open_object,
    open_source,
};
pub use store::{ImageStore, LocalStore, StoreWriter, UnfinishedWrite};
pub use tag::Tag;
pub use update::RecordUpdate;
pub use upload::{ApiFields, NewImage};

/// Who asks, and where.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The project that asks.
    pub project: String,
    /// The region it asks in.
    pub region: String,
    /// The caller has operator rights whatever the limits' `operators` say (an HTTP server's
    /// `admin` role); otherwise the project has them only when the limits name it.
    pub operator: bool,
}

impl Scope {
    /// `project` asking in `region`, with operator rights only if the limits name it.
    pub fn new(project: &str, region: &str) -> Scope {
        Scope {
            project: project.to_string(),
            region: region.to_string(),
            operator: false,
        }
    }

    /// The same caller with operator rights (an HTTP server's `admin` role).
    pub fn operator(mut self) -> Scope {
        self.operator = true;
        self
    }
}

/// The image service over a catalog and a store.
pub struct Ims {
    pub(crate) catalog: Box<dyn Catalog>,
    pub(crate) store: Box<dyn ImageStore>,
    pub(crate) limits: Limits,
    /// Where a QCOW2 registration is written before it goes to the store.
    pub(crate) spool_dir: PathBuf,
}

/// What recovery did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    /// Records moved to `killed`.
    pub killed: Vec<String>,
}

/// An image as a project sees it in a list.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// The image.
    #[serde(flatten)]
    pub record: ImageRecord,
    /// The project's member status, for an image shared with it.
    pub member_status: Option<MemberStatus>,
}

/// Filters, sorting and pagination of [`Ims::list`], as the IMS API offers them.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// The image id.
    pub id: Option<String>,
    /// The exact name.
    pub name: Option<String>,
    /// A part of the name.
    pub name_contains: Option<String>,
    /// `linux`, `windows`, `other` (any case).
    pub os_type: Option<String>,
    /// `ubuntu`, `centos`, ... (any case).
    pub platform: Option<String>,
    /// The image type.
    pub image_type: Option<ImageType>,
    /// The visibility.
    pub visibility: Option<Visibility>,
    /// The class, as IMS's `__imagetype` (`gold` for public images, `market` for the
    /// marketplace's).
    pub class: Option<ImageClass>,
    /// The status.
    pub status: Option<Status>,
    /// `KEY` or `KEY=VALUE`.
    pub tag: Option<String>,
    /// Images shared with the project in this member status (default: accepted, plus its own
    /// and public ones).
    pub member_status: Option<MemberStatus>,
    /// `created_at` (default), `updated_at`, `name`, `min_disk`, `virtual_size`, `id`.
    pub sort_key: Option<String>,
    /// Ascending instead of the default descending.
    pub ascending: bool,
    /// At most this many images.
    pub limit: Option<usize>,
    /// The id of the last image of the previous page.
    pub marker: Option<String>,
}

impl ListQuery {
    /// The order of the list: by the sort key (its value, then the id, so that no two
    /// images tie), ascending or descending as asked. An unknown key orders as `created_at`;
    /// [`Ims::list`] refuses it.
    pub fn order(&self, a: &ImageRecord, b: &ImageRecord) -> Ordering {
        let o = match self.sort_key.as_deref().unwrap_or("created_at") {
            "name" => a.name.cmp(&b.name),
            "updated_at" => a.updated_at.cmp(&b.updated_at),
            "min_disk" => a.min_disk.cmp(&b.min_disk),
            "virtual_size" => a.virtual_size.cmp(&b.virtual_size),
            "id" => Ordering::Equal,
            _ => a.created_at.cmp(&b.created_at),
        }
        .then_with(|| a.id.cmp(&b.id));
        if self.ascending { o } else { o.reverse() }
    }
}

impl Ims {
    /// Opens the service on a home directory: `HOME/catalog.db` and `HOME/store/` (a
    /// [`LocalStore`]), created when absent, with the limits of `HOME/limits.json` when it
    /// exists (for example `{"max_file_size": 137438953472, "private_image_quota": 50}`), and
    /// QCOW2 registrations spooled in `HOME/spool/`; then recovers from interrupted
    /// registrations.
    #[cfg(feature = "sqlite")]
    pub fn open(home: &Path) -> Result<Ims> {
        Ims::open_home(
            home,
            || Ok(Box::new(SqliteCatalog::open(&home.join("catalog.db"))?)),
            None,
        )
    }

    /// Opens the service on a home directory as [`Ims::open`] does, with its records in the
    /// catalog `catalog` names ([`catalog::open`]: `postgres://...` for a PostgreSQL database,
    /// or an SQLite file's path) instead of `HOME/catalog.db`; the store, the limits and the
    /// spool stay in the home directory. Processes that share a catalog must share the store
    /// as well (with this call, the same home directory; [`Ims::open_with`] takes an S3 store
    /// that processes on many machines share): recovery takes a queued or saving record whose
    /// write its own store does not see as live for the record of a dead process.
    pub fn open_with_catalog(home: &Path, catalog: &str) -> Result<Ims> {
        Ims::open_home(home, || catalog::open(catalog), None)
    }

    /// Opens the service on a home directory as [`Ims::open`] does, with its records in the
    /// catalog `catalog` names (as [`Ims::open_with_catalog`]; `None`: `HOME/catalog.db`) and
    /// its image data in the store `store` names ([`store::open`]: `s3://BUCKET/PREFIX` for an
    /// object store, or a directory; `None`: `HOME/store/`). The limits and the QCOW2 spool stay
    /// in the home directory, which holds nothing shared: processes on many machines, each with
    /// its own home, share a PostgreSQL catalog and an S3 store (tests/scale_out.rs). Processes
    /// that share a catalog must share the store.
    pub fn open_with(home: &Path, catalog: Option<&str>, store: Option<&str>) -> Result<Ims> {
        let default_catalog = home.join("catalog.db");
        let catalog = match catalog {
            Some(c) => c.to_string(),
            None => default_catalog.to_string_lossy().into_owned(),
        };
        Ims::open_home(home, || catalog::open(&catalog), store)
    }

    fn open_home(
        home: &Path,
        catalog: impl FnOnce() -> Result<Box<dyn Catalog>>,
        store: Option<&str>,
    ) -> Result<Ims> {
        std::fs::create_dir_all(home)
            .map_err(|e| Error::io("create directory", e).in_file(home))?;
        let limits_path = home.join("limits.json");
        let limits = match std::fs::read(&limits_path) {
            Ok(text) => serde_json::from_slice(&text)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", limits_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Limits::default(),
            Err(e) => return Err(Error::io("read", e).in_file(&limits_path).into()),
        };
        let catalog = catalog()?;
        let store: Box<dyn ImageStore> = match store {
            Some(address) => store::open(address)?,
            None => Box::new(LocalStore::new(&home.join("store"))?),
        };
        let mut ims = Ims::with(catalog, store, limits)?;
        ims.set_spool_dir(&home.join("spool"));
        Ok(ims)
    }

    /// The service over any catalog and store; recovers from interrupted registrations and
    /// replications. QCOW2 registrations are spooled in the system's temporary directory
    /// until [`Ims::set_spool_dir`] says otherwise.
    pub fn with(
        catalog: Box<dyn Catalog>,
        store: Box<dyn ImageStore>,
        limits: Limits,
    ) -> Result<Ims> {
        let ims = Ims {
            catalog,
            store,
            limits,
            spool_dir: std::env::temp_dir(),
        };
        ims.recover()?;
        Ok(ims)
    }

    /// Where a registration stored as QCOW2 is written before it is appended to the store (its
    /// writer seeks; a store's writer only appends): a local directory, created when needed,
    /// with room for one QCOW2 image per registration running. `Ims::open(home)` uses
    /// `HOME/spool`. Spool files are unlinked as soon as they are opened, so none is left.
    pub fn set_spool_dir(&mut self, dir: &Path) {
        self.spool_dir = dir.to_path_buf();
    }

    /// Changes the limits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Settles what dead processes left, through [`ImageStore::unfinished`] only:
    ///
    /// - each record in `queued`/`saving` whose write no live process owns (dead, or none)
    ///   becomes `killed` ("interrupted") and its data is removed, except a `queued` record
    ///   created without data, which waits for its upload ([`upload`]);
    /// - each dead write is discarded once its record is settled: a record made after the
    ///   records were read is killed the same way; the data of a `killed` or `deleted` record,
    ///   or of none, is removed; an `active` record keeps its data (its process died after
    ///   recording it, before ending the write).
    ///
    /// The records are read before the writes are listed: a write begun after that belongs to
    /// a record not in the list, and every record in it had its write begun already, so a
    /// write that is absent or dead then has ended or will never end. The move to `killed`
    /// only happens from `queued`/`saving`, so an image that became `active` meanwhile is
    /// left alone. A live registration or replication (another process) is left alone.
    pub fn recover(&self) -> Result<Recovery> {
        const REASON: &str =
            "interrupted: the registering process stopped before the image was active";
        let mut out = Recovery::default();
        let records = self.catalog.unfinished()?;
        let writes: HashMap<String, bool> = self
            .store
            .unfinished()?
            .into_iter()
            .map(|w| (w.key, w.live))
            .collect();
        for r in &records {
            // A record created without data waits for its upload (upload::awaits_data).
            if upload::awaits_data(r) {
                continue;
            }
            // A record of several disks is live while any of its writes is.
            if !r.store_keys().iter().any(|k| writes.get(*k) == Some(&true)) {
                self.kill(r, REASON, &mut out)?;
            }
        }
        let mut dead: Vec<&String> = writes
            .iter()
            .filter(|(_, live)| !**live)
            .map(|(key, _)| key)
            .collect();
        dead.sort();
        for key in dead {
            if !records
                .iter()
                .any(|r| r.store_keys().contains(&key.as_str()))
            {
                match id_of_key(key).map(|id| self.catalog.get(id)).transpose()? {
                    Some(Some(r)) if r.store_keys().contains(&key.as_str()) => match r.status {
                        Status::Queued | Status::Saving => self.kill(&r, REASON, &mut out)?,
                        Status::Active | Status::Deactivated => {}
                        Status::Killed | Status::Deleted => self.store.remove(key)?,
                    },
                    // No record holds the key: nothing refers to its data.
                    _ => self.store.remove(key)?,
                }
            }
            self.store.discard(key)?;
        }
        Ok(out)
    }

    fn kill(&self, r: &ImageRecord, reason: &str, out: &mut Recovery) -> Result<()> {
        if self.catalog.transition(
            &r.id,
            &[Status::Queued, Status::Saving],
            Status::Killed,
            Some(reason),
        )? {
            for key in r.store_keys() {
                self.store.remove(key)?;
            }
            out.killed.push(r.id.clone());
        }
        Ok(())
    }

    /// A registration or replication that failed: its record becomes `killed` with `reason`
    /// and its data (committed or not) is removed, before its writer is dropped.
    pub(crate) fn settle_failed(&self, r: &ImageRecord, reason: &str) {
        let _ = self.catalog.transition(
            &r.id,
            &[Status::Queued, Status::Saving],
            Status::Killed,
            Some(reason),
        );
        for key in r.store_keys() {
            let _ = self.store.remove(key);
        }
    }

    /// Whether `scope` has operator rights: asked as one, or named by the limits.
    pub fn is_operator(&self, scope: &Scope) -> bool {
        scope.operator || self.limits.operators.contains(&scope.project)
    }

    /// The record `id` if `scope` may see it: its own, public or on the marketplace (once
    /// active), or shared with it (in any member status).
    pub fn show(&self, scope: &Scope, id: &str) -> Result<ImageRecord> {
        let r = self.catalog.get(id)?;
        let visible = match &r {
            Some(r) => r.region == scope.region && self.may_see(r, &scope.project, false)?,
            None => false,
        };
        rules::check_found(r, id, visible)
    }

    /// Whether `project` may see `r`; `use_it` asks for use (export, copy): members must have
    /// accepted. A public or marketplace image is every project's once active.
    pub(crate) fn may_see(&self, r: &ImageRecord, project: &str, use_it: bool) -> Result<bool> {
        if r.owner == project || r.offered_to_all() {
            return Ok(true);
        }
        Ok(self
            .catalog
            .members(&r.id)?
            .iter()
            .any(|m| m.project == project && (!use_it || m.status == MemberStatus::Accepted)))
    }

    /// The images `scope` sees in its region, filtered, sorted and paged.
    pub fn list(&self, scope: &Scope, q: &ListQuery) -> Result<Vec<Listed>> {
        self.list_where(scope, q, &|_| true)
    }

    /// [`Ims::list`] with one more filter, `keep`, applied before the marker and the limit (a
    /// caller's own filters, such as the Image API's, page as the list's do). Only the records
    /// returned are copied.
    pub fn list_where(
        &self,
        scope: &Scope,
        q: &ListQuery,
        keep: &dyn Fn(&ImageRecord) -> bool,
    ) -> Result<Vec<Listed>> {
        let lower = |s: &Option<String>| s.as_ref().map(|s| s.to_lowercase());
        let (os_type, platform) = (lower(&q.os_type), lower(&q.platform));
        let tag = q.tag.as_ref().map(|t| match t.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (t.clone(), None),
        });
        let visible = self.catalog.visible_shared(&scope.region, &scope.project)?;
        let mut items: Vec<(&ImageRecord, Option<MemberStatus>)> = visible
            .iter()
            .filter(|(r, m)| {
                let own_or_public = r.owner == scope.project || r.offered_to_all();
                match (q.member_status, m) {
                    (Some(want), Some(have)) => r.owner != scope.project && want == *have,
                    (Some(_), None) => false,
                    (None, Some(have)) => own_or_public || *have == MemberStatus::Accepted,
                    (None, None) => own_or_public,
                }
            })
            .filter(|(r, _)| {
                q.id.as_ref().is_none_or(|v| &r.id == v)
                    && q.name.as_ref().is_none_or(|v| &r.name == v)
                    && q.name_contains
                        .as_ref()
                        .is_none_or(|v| r.name.contains(v.as_str()))
                    && os_type
                        .as_ref()
                        .is_none_or(|v| &r.os_type.to_lowercase() == v)
                    && platform
                        .as_ref()
                        .is_none_or(|v| &r.platform.to_lowercase() == v)
                    && q.image_type.is_none_or(|v| r.image_type == v)
                    && q.visibility.is_none_or(|v| r.visibility == v)
                    && q.class.is_none_or(|v| r.class() == v)
                    && q.status.is_none_or(|v| r.status == v)
                    && tag.as_ref().is_none_or(|(k, v)| match (r.tags.get(k), v) {
                        (Some(have), Some(want)) => have == want,
                        (Some(_), None) => true,
                        (None, _) => false,
                    })
                    && keep(r)
            })
            .map(|(record, member_status)| {
                let status = if record.owner == scope.project {
                    None
                } else {
                    *member_status
                };
                (record, status)
            })
            .collect();
        let key = q.sort_key.as_deref().unwrap_or("created_at");
        if ![
            "created_at",
            "updated_at",
            "name",
            "min_disk",
            "virtual_size",
            "id",
        ]
        .contains(&key)
        {
            return Err(Error::InvalidArgument(format!(
                "cannot sort by '{key}' (created_at, updated_at, name, min_disk, virtual_size, id)"
            ))
            .into());
        }
        let order = |a: &ImageRecord, b: &ImageRecord| q.order(a, b);
        // Only what follows the marker, and of that only the page, is sorted: a page of a
        // long list costs one pass over it, not a sort of all of it. The order is total (the
        // id breaks ties), so this is the page a full sort would give.
        if let Some(marker) = &q.marker {
            let at = items
                .iter()
                .position(|(r, _)| &r.id == marker)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("marker {marker} is not an image of this list"))
                })?;
            let after = items[at].0;
            items.retain(|(r, _)| order(r, after) == Ordering::Greater);
        }
        if let Some(n) = q.limit
            && n < items.len()
        {
            if n == 0 {
                items.clear();
            } else {
                items.select_nth_unstable_by(n - 1, |a, b| order(a.0, b.0));
                items.truncate(n);
            }
        }
        items.sort_unstable_by(|a, b| order(a.0, b.0));
        Ok(items
            .iter()
            .map(|&(record, member_status)| Listed {
                record: record.clone(),
                member_status,
            })
            .collect())
    }

    /// Deletes an image: the record becomes `deleted`, its members go (they need not agree)
    /// and its files are removed. Only the owner may, and a protected (public) image only an
    /// operator. Copies already made of it are images of their own and stay.
    pub fn delete(&self, scope: &Scope, id: &str) -> Result<()> {
        let r = self.show(scope, id)?;
        self.check_may_change(&r, scope)?;
        if !self.catalog.transition(
            id,
            &[
                Status::Active,
                Status::Killed,
                Status::Queued,
                Status::Deactivated,
            ],
            Status::Deleted,
            None,
        )? {
            return Err(ServiceError::rule(
                RuleCode::ImageNotActive,
                format!("image {id} is being saved; delete it when registration ends"),
            ));
        }
        self.catalog.remove_members(id)?;
        for key in r.store_keys() {
            self.store.remove(key)?;
        }
        if upload::awaits_data(&r) {
            self.store.remove(&staging::staging_key(&r.region, &r.id))?;
        }
        Ok(())
    }

    /// Withholds the data of the active image `id` (`deactivated: true`: the OpenStack Image
    /// API's `deactivate`; it stays listed, and nothing reads its data) or gives it back
    /// (`false`, `reactivate`). Its owner's call (an operator's, for a protected image); asking
    /// for the state it is in already changes nothing. Any other status is refused
    /// (`image_not_active`).
    pub fn set_deactivated(
        &self,
        scope: &Scope,
        id: &str,
        deactivated: bool,
    ) -> Result<ImageRecord> {
        let r = self.show(scope, id)?;
        self.check_may_change(&r, scope)?;
        let (from, to) = if deactivated {
            (Status::Active, Status::Deactivated)
        } else {
            (Status::Deactivated, Status::Active)
        };
        if r.status != to && !self.catalog.transition(id, &[from], to, None)? {
            let now = self.show(scope, id)?;
            if now.status != to {
                return Err(ServiceError::rule(
                    RuleCode::ImageNotActive,
                    format!(
                        "image {id} is {}: only an active image is deactivated, and only a \
                         deactivated one reactivated",
                        now.status
                    ),
                ));
            }
        }
        self.show(scope, id)
    }

    /// Who may change or delete `r`: a protected image an operator only (any operator: the
    /// platform's images are the operators'), any other image its owner.
    pub(crate) fn check_may_change(&self, r: &ImageRecord, scope: &Scope) -> Result<()> {
        if r.protected {
            return rules::check_unprotected(r, self.is_operator(scope));
        }
        rules::check_owner(r, &scope.project)
    }

    /// A change of any field, with no rule applied (tests and tools that seed a catalog:
    /// a full-ECS image from a backup). Publishing has its own calls
    /// ([`Ims::publish`](Ims::publish)).
    pub fn operator_put(&self, record: &ImageRecord) -> Result<()> {
        match self.catalog.get(&record.id)? {
            Some(_) => self.catalog.update(record),
            None => self.catalog.insert(record, &|_| Ok(())),
        }
    }

    /// The stored bytes of an image, for positional reads (for tests and tools): open them
    /// with [`open_storage`](crate::open_storage) in the record's `store_format`.
    pub fn stored(&self, record: &ImageRecord) -> Result<Arc<dyn Storage>> {
        Ok(self.store.open(&record.store_key)?)
    }
}

/// Registers the image file `file` as a private image of `scope` in the catalog under `home`
/// (an SQLite file and a store directory, made when absent: [`Ims::open`]) and returns its
/// active record; the crate root re-exports it as `ims::register`.
#[cfg(feature = "sqlite")]
pub fn register_file(
    home: &Path,
    scope: &Scope,
    file: &Path,
    request: &RegisterRequest,
) -> Result<Registered> {
    Ims::open(home)?.register(
        scope,
        file,
        request,
        &mut |_| {},
        &crate::cancel::CancelToken::new(),
    )
}

/// The store key of image `id` of `region` stored as `format`: `REGION/ID.FORMAT`.
pub(crate) fn store_key(region: &str, id: &str, format: impl std::fmt::Display) -> String {
    format!("{region}/{id}.{format}")
}

/// The image id in a key made by [`store_key`].
fn id_of_key(key: &str) -> Option<&str> {
    let name = key.rsplit_once('/')?.1;
    Some(name.split_once('.').map_or(name, |(id, _)| id))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_name_their_image() {
        let key = super::store_key("r1", "abc-1", crate::Format::Zvhd2);
        assert_eq!(key, "r1/abc-1.zvhd2");
        assert_eq!(super::id_of_key(&key), Some("abc-1"));
        assert_eq!(super::id_of_key("nokey"), None);
    }

    /// Pages read one after the other through their markers give the list a full sort gives,
    /// for every sort key and direction, with ties (names, sizes) broken by the id.
    #[cfg(feature = "sqlite")]
    #[test]
    fn pages_through_markers_are_the_fully_sorted_list() {
        use super::upload::NewImage;
        use super::{Ims, ListQuery, Scope};
        let dir = tempfile::tempdir().unwrap();
        let mut ims = Ims::open(dir.path()).unwrap();
        let mut limits = ims.limits().clone();
        limits.private_image_quota = 100;
        ims.set_limits(limits);
        let scope = Scope::new("p1", "r1");
        for i in 0..60u64 {
            let new = NewImage {
                name: ["b", "a", "e", "c", "d"][(i * 7 % 5) as usize].to_string(),
                min_disk: i % 4,
                ..Default::default()
            };
            ims.create_empty(&scope, &new).unwrap();
        }
        for key in [
            "name",
            "created_at",
            "updated_at",
            "id",
            "min_disk",
            "virtual_size",
        ] {
            for ascending in [true, false] {
                let q = ListQuery {
                    sort_key: Some(key.to_string()),
                    ascending,
                    ..Default::default()
                };
                let ids = |l: Vec<super::Listed>| -> Vec<String> {
                    l.into_iter().map(|l| l.record.id).collect()
                };
                let full = ims.list(&scope, &q).unwrap();
                assert_eq!(full.len(), 60);
                // Sorted: each record's key is in order with the next's (ties by id).
                for w in full.windows(2) {
                    let (a, b) = (&w[0].record, &w[1].record);
                    let k = |r: &super::ImageRecord| match key {
                        "name" => r.name.clone(),
                        "min_disk" => format!("{:08}", r.min_disk),
                        "virtual_size" => format!("{:020}", r.virtual_size),
                        "created_at" => r.created_at.clone(),
                        "updated_at" => r.updated_at.clone(),
                        _ => String::new(),
                    };
                    let o = k(a).cmp(&k(b)).then_with(|| a.id.cmp(&b.id));
                    let o = if ascending { o } else { o.reverse() };
                    assert_eq!(o, std::cmp::Ordering::Less, "{key} {ascending}");
                }
                let full = ids(full);
                let mut paged = Vec::new();
                let mut marker = None;
                loop {
                    let page = ims
                        .list(
                            &scope,
                            &ListQuery {
                                limit: Some(7),
                                marker: marker.clone(),
                                ..q.clone()
                            },
                        )
                        .unwrap();
                    if page.is_empty() {
                        break;
                    }
                    marker = page.last().map(|l| l.record.id.clone());
                    paged.extend(ids(page));
                }
                assert_eq!(paged, full, "{key} {ascending}");
                let none = ListQuery {
                    limit: Some(0),
                    ..q.clone()
                };
                assert!(ims.list(&scope, &none).unwrap().is_empty());
            }
        }
    }
}
