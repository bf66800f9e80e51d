//! A catalog on a PostgreSQL server, shared by many ims processes on many machines.
//!
//! The tables are those of the SQLite catalog (a record as JSON with its searchable columns
//! beside it; members in their own table). SQLite serialises writers with its file lock; here
//! the rules that span rows hold through PostgreSQL's own locks, each taken inside the
//! transaction that writes:
//!
//! - the quota count and the inserts: a transaction-scoped advisory lock per owner and region,
//!   taken before the count, so two registrations of one project take turns;
//! - the member count and the new member: an advisory lock per image, the same way;
//! - a status move: the record's row read `FOR UPDATE`, so the move is a compare-and-set (a
//!   second mover waits, then reads the status the first one wrote).
//!
//! Text columns that are sorted or compared use the "C" collation, so lists come out in the
//! byte order the SQLite catalog gives whatever locale the database was made with.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, GenericClient, NoTls};

use crate::error::{Error, Result};

use super::super::error::{Result as ServiceResult, ServiceError};
use super::super::job::Job;
use super::super::record::{ImageRecord, Member, MemberStatus, Status, now};
use super::{Catalog, VisibleRecords};

/// The connections one catalog keeps open at most; more callers at once wait for one.
const MAX_CONNECTIONS: usize = 8;

/// How many times a transaction that PostgreSQL aborted to break a deadlock (or a
/// serialization conflict) is run again before the error is returned.
const RETRIES: u32 = 5;

/// The first key of every advisory lock ims takes ("IMS" and a purpose byte), so that they do
/// not collide with another application's locks on the same database.
const LOCK_MIGRATE: i32 = 0x494d_5300;
const LOCK_QUOTA: i32 = 0x494d_5301;
const LOCK_MEMBERS: i32 = 0x494d_5302;

/// The schema version [`MIGRATIONS`] reach.
const VERSION: i32 = 2;

/// `MIGRATIONS[v]` brings a database of schema version `v` to `v + 1`; version 0 is a database
/// without ims's tables, version 1 one without jobs.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE images (
    id TEXT COLLATE "C" PRIMARY KEY,
    region TEXT COLLATE "C" NOT NULL,
    owner TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    visibility TEXT COLLATE "C" NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    record TEXT NOT NULL,
    marketplace BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX images_owner ON images (region, owner);
CREATE INDEX images_status ON images (status);
CREATE TABLE members (
    image_id TEXT COLLATE "C" NOT NULL,
    project TEXT COLLATE "C" NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    updated_at TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (image_id, project)
);
CREATE INDEX members_project ON members (project);
"#,
    r#"
CREATE TABLE jobs (
    job_id TEXT COLLATE "C" PRIMARY KEY,
    project TEXT COLLATE "C" NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    owner TEXT COLLATE "C",
    lease_until BIGINT,
    created_at TEXT COLLATE "C" NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX jobs_status ON jobs (status, created_at);
"#,
];

/// A catalog in a PostgreSQL database, opened from a connection string.
pub struct PostgresCatalog {
    config: Config,
    pool: Mutex<Pool>,
    freed: Condvar,
    /// The last answer of `visible_shared` for each region and project, with what it was made
    /// from ([`VisibleEntry`]).
    visible: Mutex<HashMap<(String, String), VisibleEntry>>,
}

/// One visible list as it was answered, and the rows it was made from: each image's id and row
/// version (PostgreSQL's `xmin`, new in every write of the row) and the project's member status.
/// The same rows again (a query of ids and versions only) mean the same list: the answer is
/// reused without fetching or decoding a record; otherwise only the records whose version
/// changed are fetched.
struct VisibleEntry {
    rows: Vec<VisibleRow>,
    records: Arc<VisibleRecords>,
}

/// An image id, its row version, and the member status of the project asking.
type VisibleRow = (String, String, Option<String>);

/// At most this many lists are kept (regions times projects): past it, the cache starts over.
const VISIBLE_ENTRIES: usize = 1024;

/// Connections not in use, and how many are open in all.
struct Pool {
    idle: Vec<Client>,
    open: usize,
}

/// Why a transaction stopped: the database, or the caller's check (returned as it is).
enum Failure {
    Db(postgres::Error),
    Service(ServiceError),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Failure {
        Failure::Db(e)
    }
}

impl From<ServiceError> for Failure {
    fn from(e: ServiceError) -> Failure {
        Failure::Service(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Service(e.into())
    }
}

type Step<T> = std::result::Result<T, Failure>;

fn db(e: postgres::Error) -> Error {
    Error::io("use the catalog database", std::io::Error::other(e))
}

fn json(e: serde_json::Error) -> Error {
    Error::io("decode a catalog record", std::io::Error::other(e))
}

/// A query of `$cols` over what project `$2` sees in region `$1` (its own images, public and
/// marketplace ones, and those shared with it, with its member status `m.status`), in the
/// list's order.
macro_rules! visible_query {
    ($cols:literal) => {
        concat!(
            "SELECT ",
            $cols,
            " FROM images i
             LEFT JOIN members m ON m.image_id = i.id AND m.project = $2
             WHERE i.region = $1 AND i.status <> 'deleted'
               AND (i.owner = $2 OR i.visibility = 'public' OR i.marketplace
                    OR m.project IS NOT NULL)
             ORDER BY i.created_at, i.id"
        )
    };
}

/// The ids, row versions and member statuses of what `project` sees in `region`, in the list's
/// order ([`VisibleEntry`]).
fn visible_rows(
    client: &mut impl GenericClient,
    region: &str,
    project: &str,
) -> std::result::Result<Vec<VisibleRow>, postgres::Error> {
    Ok(client
        .query(
            visible_query!("i.id, i.xmin::text, m.status"),
            &[&region, &project],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

fn decode(text: &str) -> Result<ImageRecord> {
    serde_json::from_str(text).map_err(json)
}

/// A row count as the checks take it.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Whether PostgreSQL aborted the transaction only to let another one through, so that running
/// it again is right.
fn retryable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// Brings the database to [`VERSION`], one step per transaction, each holding the migration
/// lock (so processes starting together take turns, and each finds the work done by the one
/// before) and recording the version it reaches. A database of a newer version is refused
/// rather than misread.
fn migrate(client: &mut Client) -> Step<()> {
    loop {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_MIGRATE])?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )?;
        let version: i32 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
            .get(0);
        if version > VERSION {
            return Err(Error::unsupported(format!(
                "a catalog of schema version {version}, made by a newer ims (this one knows {VERSION})"
            ))
            .into());
        }
        let Some(step) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            tx.commit()?;
            return Ok(());
        };
        tx.batch_execute(step)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(version + 1)],
        )?;
        tx.commit()?;
    }
}

fn write(tx: &mut impl GenericClient, r: &ImageRecord, insert: bool) -> Step<u64> {
    let text = serde_json::to_string(r).map_err(json)?;
    let sql = if insert {
        "INSERT INTO images (id, region, owner, name, visibility, status, created_at, record,
         marketplace) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    } else {
        "UPDATE images SET region = $2, owner = $3, name = $4, visibility = $5, status = $6,
         created_at = $7, record = $8, marketplace = $9 WHERE id = $1"
    };
    Ok(tx.execute(
        sql,
        &[
            &r.id,
            &r.region,
            &r.owner,
            &r.name,
            &r.visibility.name(),
            &r.status.name(),
            &r.created_at,
            &text,
            &r.marketplace,
        ],
    )?)
}

fn decode_job(text: &str) -> Result<Job> {
    serde_json::from_str(text).map_err(json)
}

fn write_job(tx: &mut impl GenericClient, job: &Job, insert: bool) -> Step<u64> {
    let text = serde_json::to_string(job).map_err(json)?;
    let sql = if insert {
        "INSERT INTO jobs (job_id, project, status, owner, lease_until, created_at, record)
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    } else {
        "UPDATE jobs SET project = $2, status = $3, owner = $4, lease_until = $5,
         created_at = $6, record = $7 WHERE job_id = $1"
    };
    Ok(tx.execute(
        sql,
        &[
            &job.job_id,
            &job.project,
            &job.status.name(),
            &job.owner,
            &job.lease_until,
            &job.created_at,
            &text,
        ],
    )?)
}

impl PostgresCatalog {
    /// Connects to the database `url` names (`postgres://USER:PASSWORD@HOST:PORT/DB`, or the
    /// `key=value` form; a socket directory as `host=/run/postgresql`) and brings its schema to
    /// the version this ims knows. The connection is not encrypted: use a socket, or a network
    /// that is trusted.
    pub fn open(url: &str) -> Result<PostgresCatalog> {
        let mut config: Config = url.parse().map_err(|e| {
            Error::InvalidArgument(format!("the catalog's PostgreSQL address: {e}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(30));
        }
        if config.get_application_name().is_none() {
            config.application_name("ims");
        }
        let catalog = PostgresCatalog {
            config,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            visible: Mutex::new(HashMap::new()),
        };
        // A migration fails only on the database or on a version it does not know.
        catalog.run(migrate).map_err(|e| match e {
            ServiceError::Image(e) => e,
            e => Error::internal(e.to_string()),
        })?;
        Ok(catalog)
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection: an idle one, a new one while fewer than [`MAX_CONNECTIONS`] are open, or
    /// the next one given back.
    fn take(&self) -> Result<Lease<'_>> {
        let mut pool = self.pool();
        loop {
            if let Some(client) = pool.idle.pop() {
                return Ok(Lease {
                    catalog: self,
                    client: Some(client),
                });
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                return match self.config.connect(NoTls) {
                    Ok(client) => Ok(Lease {
                        catalog: self,
                        client: Some(client),
                    }),
                    Err(e) => {
                        self.pool().open -= 1;
                        self.freed.notify_one();
                        Err(Error::io(
                            "connect to the catalog database",
                            std::io::Error::other(e),
                        ))
                    }
                };
            }
            pool = self.freed.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Runs `f` on a connection, again (up to [`RETRIES`] times) when PostgreSQL aborted it to
    /// break a deadlock. `f` runs whole transactions: a retry starts from nothing.
    fn run<T>(&self, mut f: impl FnMut(&mut Client) -> Step<T>) -> ServiceResult<T> {
        let mut lease = self.take()?;
        let mut attempt = 0;
        loop {
            match f(lease.client()) {
                Ok(v) => return Ok(v),
                Err(Failure::Service(e)) => return Err(e),
                Err(Failure::Db(e)) if retryable(&e) && attempt < RETRIES => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(5 << attempt));
                }
                Err(Failure::Db(e)) => return Err(db(e).into()),
            }
        }
    }
}

/// A connection taken from the pool, given back when dropped (or closed, if it broke).
struct Lease<'a> {
    catalog: &'a PostgresCatalog,
    client: Option<Client>,
}

impl Lease<'_> {
    fn client(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a lease holds its client until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut pool = self.catalog.pool();
        match self.client.take() {
            Some(client) if !client.is_closed() && !std::thread::panicking() => {
                pool.idle.push(client)
            }
            _ => pool.open -= 1,
        }
        drop(pool);
        self.catalog.freed.notify_one();
    }
}

impl Catalog for PostgresCatalog {
    fn insert_all(
        &self,
        records: &[ImageRecord],
        check: &dyn Fn(u64) -> ServiceResult<()>,
    ) -> ServiceResult<()> {
        let Some(record) = records.first() else {
            return Ok(());
        };
        if records
            .iter()
            .any(|r| r.owner != record.owner || r.region != record.region)
        {
            return Err(
                Error::internal("records inserted together have one owner and region").into(),
            );
        }
        self.run(|client| {
            let mut tx = client.transaction()?;
            // The owner's inserts take turns from here to the commit; the count below sees every
            // record committed before.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2 || E'\\n' || $3))",
                &[&LOCK_QUOTA, &record.region, &record.owner],
            )?;
            let mut n = 0u64;
            for row in tx.query(
                "SELECT record FROM images WHERE region = $1 AND owner = $2
                 AND status NOT IN ('killed', 'deleted')",
                &[&record.region, &record.owner],
            )? {
                if decode(row.get(0))?.counts_for_quota() {
                    n += 1;
                }
            }
            check(n)?;
            for r in records {
                write(&mut tx, r, true)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn update_all(&self, records: &[ImageRecord]) -> ServiceResult<()> {
        // Rows locked in one order by every caller cannot deadlock each other.
        let mut sorted: Vec<&ImageRecord> = records.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        self.run(|client| {
            let mut tx = client.transaction()?;
            for r in &sorted {
                write(&mut tx, r, false)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn transition(
        &self,
        id: &str,
        from: &[Status],
        to: Status,
        reason: Option<&str>,
    ) -> ServiceResult<bool> {
        self.run(|client| {
            let mut tx = client.transaction()?;
            // The row stays locked to the commit; a concurrent mover waits here and then reads
            // the status this one wrote.
            let Some(row) =
                tx.query_opt("SELECT record FROM images WHERE id = $1 FOR UPDATE", &[&id])?
            else {
                return Ok(false);
            };
            let mut r = decode(row.get(0))?;
            if !from.contains(&r.status) {
                return Ok(false);
            }
            r.status = to;
            if let Some(reason) = reason {
                r.status_reason = Some(reason.to_string());
            }
            r.updated_at = now();
            write(&mut tx, &r, false)?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn get(&self, id: &str) -> ServiceResult<Option<ImageRecord>> {
        self.run(|client| {
            let row = client.query_opt("SELECT record FROM images WHERE id = $1", &[&id])?;
            Ok(row.map(|row| decode(row.get(0))).transpose()?)
        })
    }

    fn visible(
        &self,
        region: &str,
        project: &str,
    ) -> ServiceResult<Vec<(ImageRecord, Option<MemberStatus>)>> {
        self.run(|client| {
            let rows = client.query(visible_query!("i.record, m.status"), &[&region, &project])?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let status: Option<&str> = row.get(1);
                let status = status.map(str::parse).transpose()?;
                out.push((decode(row.get(0))?, status));
            }
            Ok(out)
        })
    }

    fn visible_shared(&self, region: &str, project: &str) -> ServiceResult<Arc<VisibleRecords>> {
        let key = (region.to_string(), project.to_string());
        let cached = |rows: &[VisibleRow]| -> Option<Arc<VisibleRecords>> {
            let cache = self.visible.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(&key)
                .filter(|entry| entry.rows == rows)
                .map(|entry| Arc::clone(&entry.records))
        };
        self.run(|client| {
            // The common case: nothing changed, one light query.
            let rows = visible_rows(client, region, project)?;
            if let Some(records) = cached(&rows) {
                return Ok(records);
            }
            // Rebuilt in one snapshot, so that the versions and the records agree.
            let mut tx = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let rows = visible_rows(&mut tx, region, project)?;
            // The records of the last answer, by id and version: moved out of it when no list
            // holds it any more, else copied.
            let mut known: HashMap<(String, String), ImageRecord> = HashMap::new();
            let last = self
                .visible
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            if let Some(entry) = last {
                let records =
                    Arc::try_unwrap(entry.records).unwrap_or_else(|shared| (*shared).clone());
                for ((id, version, _), (record, _)) in entry.rows.into_iter().zip(records) {
                    known.insert((id, version), record);
                }
            }
            let missing: Vec<&str> = rows
                .iter()
                .filter(|(id, version, _)| !known.contains_key(&(id.clone(), version.clone())))
                .map(|(id, _, _)| id.as_str())
                .collect();
            let mut fetched: HashMap<String, ImageRecord> = HashMap::new();
            if !missing.is_empty() {
                for row in tx.query(
                    "SELECT id, record FROM images WHERE id = ANY($1)",
                    &[&missing],
                )? {
                    fetched.insert(row.get(0), decode(row.get(1))?);
                }
            }
            tx.commit()?;
            let mut records = Vec::with_capacity(rows.len());
            for (id, version, status) in &rows {
                let record = match known.remove(&(id.clone(), version.clone())) {
                    Some(r) => r,
                    None => fetched.remove(id).ok_or_else(|| {
                        Error::Internal(format!("catalog record {id} went missing"))
                    })?,
                };
                let status = status.as_deref().map(str::parse).transpose()?;
                records.push((record, status));
            }
            let records = Arc::new(records);
            let mut cache = self.visible.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= VISIBLE_ENTRIES {
                cache.clear();
            }
            cache.insert(
                key.clone(),
                VisibleEntry {
                    rows,
                    records: Arc::clone(&records),
                },
            );
            Ok(records)
        })
    }

    fn unfinished(&self) -> ServiceResult<Vec<ImageRecord>> {
        self.run(|client| {
            let mut out = Vec::new();
            for row in client.query(
                "SELECT record FROM images WHERE status IN ('queued', 'saving')",
                &[],
            )? {
                out.push(decode(row.get(0))?);
            }
            Ok(out)
        })
    }

    fn add_member(
        &self,
        member: &Member,
        check: &dyn Fn(u64) -> ServiceResult<()>,
    ) -> ServiceResult<()> {
        self.run(|client| {
            let mut tx = client.transaction()?;
            // The image's new members take turns from here to the commit.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&LOCK_MEMBERS, &member.image_id],
            )?;
            let exists = tx.query_opt(
                "SELECT status FROM members WHERE image_id = $1 AND project = $2",
                &[&member.image_id, &member.project],
            )?;
            if exists.is_some() {
                // Sharing again is a no-op.
                return Ok(());
            }
            let n: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM members WHERE image_id = $1",
                    &[&member.image_id],
                )?
                .get(0);
            check(count(n))?;
            tx.execute(
                "INSERT INTO members (image_id, project, status, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &member.image_id,
                    &member.project,
                    &member.status.name(),
                    &member.created_at,
                    &member.updated_at,
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn set_member(
        &self,
        image_id: &str,
        project: &str,
        status: MemberStatus,
    ) -> ServiceResult<bool> {
        let t = now();
        self.run(|client| {
            let n = client.execute(
                "UPDATE members SET status = $3, updated_at = $4 WHERE image_id = $1 AND project = $2",
                &[&image_id, &project, &status.name(), &t],
            )?;
            Ok(n > 0)
        })
    }

    fn remove_member(&self, image_id: &str, project: &str) -> ServiceResult<bool> {
        self.run(|client| {
            let n = client.execute(
                "DELETE FROM members WHERE image_id = $1 AND project = $2",
                &[&image_id, &project],
            )?;
            Ok(n > 0)
        })
    }

    fn members(&self, image_id: &str) -> ServiceResult<Vec<Member>> {
        self.run(|client| {
            let mut out = Vec::new();
            for row in client.query(
                "SELECT image_id, project, status, created_at, updated_at FROM members
                 WHERE image_id = $1 ORDER BY created_at, project",
                &[&image_id],
            )? {
                let status: &str = row.get(2);
                out.push(Member {
                    image_id: row.get(0),
                    project: row.get(1),
                    status: status.parse()?,
                    created_at: row.get(3),
                    updated_at: row.get(4),
                });
            }
            Ok(out)
        })
    }

    fn remove_members(&self, image_id: &str) -> ServiceResult<()> {
        self.run(|client| {
            client.execute("DELETE FROM members WHERE image_id = $1", &[&image_id])?;
            Ok(())
        })
    }

    fn insert_job(&self, job: &Job) -> ServiceResult<()> {
        self.run(|client| {
            write_job(client, job, true)?;
            Ok(())
        })
    }

    fn claim_job(&self, owner: &str, lease_until: i64) -> ServiceResult<Option<Job>> {
        self.run(|client| {
            let mut tx = client.transaction()?;
            // The row stays locked to the commit; a worker claiming at the same time skips it
            // and takes the next one rather than waiting for this one.
            let Some(row) = tx.query_opt(
                "SELECT record FROM jobs WHERE status = 'INIT' ORDER BY created_at, job_id
                 LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[],
            )?
            else {
                return Ok(None);
            };
            let job = decode_job(row.get(0))?.claimed(owner, lease_until);
            write_job(&mut tx, &job, false)?;
            tx.commit()?;
            Ok(Some(job))
        })
    }

    fn replace_job(&self, old: &Job, new: &Job) -> ServiceResult<bool> {
        if new.job_id != old.job_id {
            return Ok(false);
        }
        self.run(|client| {
            let mut tx = client.transaction()?;
            // Locked to the commit: a concurrent replacer waits, then sees this one's status.
            let same = tx.query_opt(
                "SELECT 1 FROM jobs WHERE job_id = $1 AND status = $2
                 AND owner IS NOT DISTINCT FROM $3 AND lease_until IS NOT DISTINCT FROM $4
                 FOR UPDATE",
                &[
                    &old.job_id,
                    &old.status.name(),
                    &old.owner,
                    &old.lease_until,
                ],
            )?;
            if same.is_none() {
                return Ok(false);
            }
            write_job(&mut tx, new, false)?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn get_job(&self, job_id: &str) -> ServiceResult<Option<Job>> {
        self.run(|client| {
            let row = client.query_opt("SELECT record FROM jobs WHERE job_id = $1", &[&job_id])?;
            Ok(row.map(|row| decode_job(row.get(0))).transpose()?)
        })
    }

    fn remove_ended_jobs(&self, created_before: &str) -> ServiceResult<u64> {
        self.run(|client| {
            Ok(client.execute(
                "DELETE FROM jobs WHERE status IN ('SUCCESS', 'FAIL') AND created_at < $1",
                &[&created_before],
            )?)
        })
    }

    fn running_jobs(&self) -> ServiceResult<Vec<Job>> {
        self.run(|client| {
            let mut out = Vec::new();
            for row in client.query(
                "SELECT record FROM jobs WHERE status = 'RUNNING' ORDER BY created_at, job_id",
                &[],
            )? {
                out.push(decode_job(row.get(0))?);
            }
            Ok(out)
        })
    }
}
