//! Where records and members are kept: the [`Catalog`] trait; `SqliteCatalog`, the embedded
//! default (one SQLite file, feature `sqlite`); and `PostgresCatalog`, a PostgreSQL database
//! shared by many processes on many machines (feature `postgres`). The rules never know which
//! is in use; [`open`] picks one from an address.

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::PostgresCatalog;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteCatalog;

use super::error::Result;
use super::job::Job;
use super::record::{ImageRecord, Member, MemberStatus, Status};

use std::sync::Arc;

/// The records a project sees in a region, each with its member status when it is shared with
/// the project ([`Catalog::visible`]).
pub type VisibleRecords = Vec<(ImageRecord, Option<MemberStatus>)>;

/// Opens the catalog `address` names: `postgres://...` or `postgresql://...` a PostgreSQL
/// database ([`PostgresCatalog::open`], feature `postgres`); any other address with a `://`
/// is refused; anything else is the path of an SQLite file (feature `sqlite`), created when
/// absent (`sqlite:PATH` says so explicitly).
pub fn open(address: &str) -> Result<Box<dyn Catalog>> {
    if address.starts_with("postgres://") || address.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(Box::new(PostgresCatalog::open(address)?));
        #[cfg(not(feature = "postgres"))]
        return Err(crate::Error::unsupported(
            "a PostgreSQL catalog: this ims was built without the `postgres` feature",
        )
        .into());
    }
    if let Some((scheme, _)) = address.split_once("://") {
        return Err(crate::Error::InvalidArgument(format!(
            "unknown catalog address scheme '{scheme}://' (known: postgres://, postgresql://, or an SQLite file's path)"
        ))
        .into());
    }
    let path = address.strip_prefix("sqlite:").unwrap_or(address);
    #[cfg(feature = "sqlite")]
    return Ok(Box::new(SqliteCatalog::open(std::path::Path::new(path))?));
    #[cfg(not(feature = "sqlite"))]
    return Err(crate::Error::unsupported(format!(
        "an SQLite catalog ({path}): this ims was built without the `sqlite` feature"
    ))
    .into());
}

/// Records and members. Every method is atomic; the checks passed to `insert` and `add_member`
/// run inside the same transaction as the write, so concurrent callers cannot both pass them,
/// and a check's refusal ([`ServiceError::Rule`](super::ServiceError::Rule)) is returned as it
/// is. A catalog's own failures are [`ServiceError::Image`](super::ServiceError::Image) (an I/O
/// error: `?` on a [`crate::Error`] makes one).
pub trait Catalog: Send + Sync {
    /// Inserts a new record after `check(count)` passes, `count` being the records of the
    /// same owner and region that count against the quota.
    fn insert(&self, record: &ImageRecord, check: &dyn Fn(u64) -> Result<()>) -> Result<()> {
        self.insert_all(std::slice::from_ref(record), check)
    }

    /// Inserts new records of one owner and region, all or none, after `check(count)` passes
    /// (`count` as for [`insert`](Catalog::insert), before any of them), in one transaction.
    fn insert_all(&self, records: &[ImageRecord], check: &dyn Fn(u64) -> Result<()>) -> Result<()>;

    /// Replaces a record (matched by id).
    fn update(&self, record: &ImageRecord) -> Result<()> {
        self.update_all(std::slice::from_ref(record))
    }

    /// Replaces records (matched by id), all or none, in one transaction: a system image and
    /// its data-disk images become `active` together.
    fn update_all(&self, records: &[ImageRecord]) -> Result<()>;

    /// Moves a record to `to` only if its status is one of `from`; says whether it moved.
    fn transition(
        &self,
        id: &str,
        from: &[Status],
        to: Status,
        reason: Option<&str>,
    ) -> Result<bool>;

    /// The record `id`, in any status, if there is one.
    fn get(&self, id: &str) -> Result<Option<ImageRecord>>;

    /// The records of `region` that `project` may see: its own (not deleted), public ones,
    /// those on the marketplace, and those it is a member of (with its member status).
    fn visible(
        &self,
        region: &str,
        project: &str,
    ) -> Result<Vec<(ImageRecord, Option<MemberStatus>)>>;

    /// [`Catalog::visible`], shared: a catalog may answer from a cache it keeps exact (the
    /// default asks `visible` every time). Lists read it on every request.
    fn visible_shared(&self, region: &str, project: &str) -> Result<Arc<VisibleRecords>> {
        Ok(Arc::new(self.visible(region, project)?))
    }

    /// Records in queued or saving, in every region.
    fn unfinished(&self) -> Result<Vec<ImageRecord>>;

    /// Adds a pending member after `check(count)` passes, `count` being the members now.
    fn add_member(&self, member: &Member, check: &dyn Fn(u64) -> Result<()>) -> Result<()>;

    /// Sets a member's status; says whether the membership exists.
    fn set_member(&self, image_id: &str, project: &str, status: MemberStatus) -> Result<bool>;

    /// Removes a member; says whether it was one.
    fn remove_member(&self, image_id: &str, project: &str) -> Result<bool>;

    /// The members of an image, in any member status.
    fn members(&self, image_id: &str) -> Result<Vec<Member>>;

    /// Removes every member of an image.
    fn remove_members(&self, image_id: &str) -> Result<()>;

    /// Inserts a new job (`INIT`).
    fn insert_job(&self, job: &Job) -> Result<()>;

    /// Claims the oldest `INIT` job for `owner` until `lease_until` (milliseconds since 1970):
    /// it becomes `RUNNING` with its begin time ([`Job::claimed`]). Atomic: of workers claiming
    /// at once, in this process or any other sharing the catalog, each job goes to one.
    fn claim_job(&self, owner: &str, lease_until: i64) -> Result<Option<Job>>;

    /// Replaces job `old.job_id` by `new` only if its status, owner and lease are still those
    /// of `old` (a compare-and-set: a renewal, a progress report, the end of a job, or a
    /// stale job failed by another process, whichever comes first); says whether it did.
    fn replace_job(&self, old: &Job, new: &Job) -> Result<bool>;

    /// The job `job_id`, if there is one.
    fn get_job(&self, job_id: &str) -> Result<Option<Job>>;

    /// The jobs in `RUNNING`, oldest first.
    fn running_jobs(&self) -> Result<Vec<Job>>;

    /// Removes the ended jobs (`SUCCESS`, `FAIL`) made before `created_before` (a job time,
    /// [`ims_time`](super::job::ims_time)); says how many.
    fn remove_ended_jobs(&self, created_before: &str) -> Result<u64>;
}
