//! The embedded catalog: one SQLite file (WAL journal, so readers never wait for a
//! registration, and a busy timeout, so two writers take turns).
//!
//! A record is kept as JSON with its searchable columns beside it; members in their own table.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{Error, Result};

use super::super::error::Result as ServiceResult;
use super::super::job::Job;
use super::super::record::{ImageRecord, Member, MemberStatus, Status, now};
use super::{Catalog, VisibleRecords};

/// A catalog in one SQLite file.
pub struct SqliteCatalog {
    conn: Mutex<Connection>,
    visible: Mutex<VisibleCache>,
}

/// Decoded answers of `visible`, for lists: valid while the database is unchanged, which
/// SQLite tells exactly by this connection's change count and `PRAGMA data_version` (which
/// moves when another connection, of this process or another, commits).
#[derive(Default)]
struct VisibleCache {
    generation: (u64, i64),
    answers: HashMap<(String, String), Arc<VisibleRecords>>,
}

/// Answers kept at most (one per region and project asking): past it the cache starts over.
const VISIBLE_CACHE_ANSWERS: usize = 256;

fn db(e: rusqlite::Error) -> Error {
    Error::io("use the catalog database", std::io::Error::other(e))
}

/// Whether `e` is SQLite's "busy" (or "locked") answer.
fn is_busy(e: &Error) -> bool {
    let Error::Io { source, .. } = e else {
        return false;
    };
    source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rusqlite::Error>())
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|c| {
            matches!(
                c,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
        })
}

fn json(e: serde_json::Error) -> Error {
    Error::io("decode a catalog record", std::io::Error::other(e))
}

/// The schema of a new catalog; [`MIGRATIONS`] bring an older one to the same shape.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    visibility TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    record TEXT NOT NULL,
    marketplace INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS images_owner ON images (region, owner);
CREATE INDEX IF NOT EXISTS images_status ON images (status);
CREATE TABLE IF NOT EXISTS members (
    image_id TEXT NOT NULL,
    project TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (image_id, project)
);
CREATE INDEX IF NOT EXISTS members_project ON members (project);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    lease_until INTEGER,
    created_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at);
";

/// The schema version [`SCHEMA`] makes (SQLite's `user_version`).
const VERSION: i64 = 2;

/// The steps from each older version: `MIGRATIONS[v]` brings version `v` to `v + 1`. Version
/// 0 is the catalog before marketplace images: its `images` table has no `marketplace`
/// column, which every project's list needs, so it is added and filled from the records.
/// Version 1 is the catalog before jobs: it gets their table.
const MIGRATIONS: &[&str] = &[
    "
ALTER TABLE images ADD COLUMN marketplace INTEGER NOT NULL DEFAULT 0;
UPDATE images SET marketplace = 1 WHERE json_extract(record, '$.marketplace') = 1;
",
    "
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    lease_until INTEGER,
    created_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX jobs_status ON jobs (status, created_at);
",
];

/// Brings the catalog to [`VERSION`], one step per transaction, each step setting the version
/// it reaches, so an interrupted migration resumes where it stopped. A new file gets the
/// current schema at once; a catalog of a newer version is refused rather than misread.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Exclusive)
        .map_err(db)?;
    let fresh: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'images'",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    if fresh == 0 {
        tx.execute_batch(SCHEMA).map_err(db)?;
        tx.pragma_update(None, "user_version", VERSION)
            .map_err(db)?;
        return tx.commit().map_err(db);
    }
    tx.commit().map_err(db)?;
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(db)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db)?;
        if version > VERSION {
            return Err(Error::unsupported(format!(
                "a catalog of schema version {version}, made by a newer ims (this one knows {VERSION})"
            )));
        }
        let Some(step) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            return tx.commit().map_err(db);
        };
        tx.execute_batch(step).map_err(db)?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(db)?;
        tx.commit().map_err(db)?;
    }
}

impl SqliteCatalog {
    /// Opens (creating) the catalog in `path`.
    pub fn open(path: &Path) -> Result<SqliteCatalog> {
        let conn = Connection::open(path)
            .map_err(db)
            .map_err(|e| e.in_file(path))?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(db)?;
        let mut conn = conn;
        // Turning on WAL (on a new file) takes its lock without the busy handler's wait when
        // other connections do the same at once, and SQLite answers "busy" rather than risk a
        // deadlock: such answers are waited out here.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let set_up = conn
                .pragma_update(None, "journal_mode", "WAL")
                .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
                .map_err(db)
                .and_then(|()| migrate(&mut conn));
            match set_up {
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other?,
            }
        }
        Ok(SqliteCatalog {
            conn: Mutex::new(conn),
            visible: Mutex::new(VisibleCache::default()),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn decode(text: &str) -> Result<ImageRecord> {
    serde_json::from_str(text).map_err(json)
}

/// The records of `region` that `project` sees, decoded, oldest first.
fn visible_rows(conn: &Connection, region: &str, project: &str) -> Result<VisibleRecords> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT i.record, m.status FROM images i
             LEFT JOIN members m ON m.image_id = i.id AND m.project = ?2
             WHERE i.region = ?1 AND i.status != 'deleted'
               AND (i.owner = ?2 OR i.visibility = 'public' OR i.marketplace = 1
                    OR m.project IS NOT NULL)
             ORDER BY i.created_at, i.id",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![region, project], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (text, status) = row.map_err(db)?;
        let status = status
            .map(|s| s.parse::<MemberStatus>())
            .transpose()
            .map_err(|e| Error::InvalidArgument(format!("catalog member status: {e}")))?;
        out.push((decode(&text)?, status));
    }
    Ok(out)
}

fn write(conn: &Connection, r: &ImageRecord, insert: bool) -> Result<usize> {
    let text = serde_json::to_string(r).map_err(json)?;
    let sql = if insert {
        "INSERT INTO images (id, region, owner, name, visibility, status, created_at, record,
         marketplace) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    } else {
        "UPDATE images SET region = ?2, owner = ?3, name = ?4, visibility = ?5, status = ?6,
         created_at = ?7, record = ?8, marketplace = ?9 WHERE id = ?1"
    };
    conn.execute(
        sql,
        params![
            r.id,
            r.region,
            r.owner,
            r.name,
            r.visibility.name(),
            r.status.name(),
            r.created_at,
            text,
            r.marketplace
        ],
    )
    .map_err(db)
}

fn decode_job(text: &str) -> Result<Job> {
    serde_json::from_str(text).map_err(json)
}

fn write_job(conn: &Connection, job: &Job, insert: bool) -> Result<usize> {
    let text = serde_json::to_string(job).map_err(json)?;
    let sql = if insert {
        "INSERT INTO jobs (job_id, project, status, owner, lease_until, created_at, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    } else {
        "UPDATE jobs SET project = ?2, status = ?3, owner = ?4, lease_until = ?5,
         created_at = ?6, record = ?7 WHERE job_id = ?1"
    };
    conn.execute(
        sql,
        params![
            job.job_id,
            job.project,
            job.status.name(),
            job.owner,
            job.lease_until,
            job.created_at,
            text
        ],
    )
    .map_err(db)
}

fn member_row(row: &rusqlite::Row) -> rusqlite::Result<(String, String, String, String, String)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

impl Catalog for SqliteCatalog {
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
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let mut count = 0u64;
        {
            let mut stmt = tx
                .prepare("SELECT record FROM images WHERE region = ?1 AND owner = ?2 AND status NOT IN ('killed', 'deleted')")
                .map_err(db)?;
            let rows = stmt
                .query_map(params![record.region, record.owner], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(db)?;
            for row in rows {
                if decode(&row.map_err(db)?)?.counts_for_quota() {
                    count += 1;
                }
            }
        }
        check(count)?;
        for r in records {
            write(&tx, r, true)?;
        }
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn update_all(&self, records: &[ImageRecord]) -> ServiceResult<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        for r in records {
            write(&tx, r, false)?;
        }
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn transition(
        &self,
        id: &str,
        from: &[Status],
        to: Status,
        reason: Option<&str>,
    ) -> ServiceResult<bool> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let text: Option<String> = tx
            .query_row("SELECT record FROM images WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        let Some(text) = text else { return Ok(false) };
        let mut r = decode(&text)?;
        if !from.contains(&r.status) {
            return Ok(false);
        }
        r.status = to;
        if let Some(reason) = reason {
            r.status_reason = Some(reason.to_string());
        }
        r.updated_at = now();
        write(&tx, &r, false)?;
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn get(&self, id: &str) -> ServiceResult<Option<ImageRecord>> {
        let text: Option<String> = self
            .conn()
            .query_row("SELECT record FROM images WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        Ok(text.as_deref().map(decode).transpose()?)
    }

    fn visible(&self, region: &str, project: &str) -> ServiceResult<VisibleRecords> {
        Ok(visible_rows(&self.conn(), region, project)?)
    }

    fn visible_shared(&self, region: &str, project: &str) -> ServiceResult<Arc<VisibleRecords>> {
        let conn = self.conn();
        let data_version: i64 = conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(db)?;
        let generation = (conn.total_changes(), data_version);
        let mut cache = self.visible.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation != generation || cache.answers.len() >= VISIBLE_CACHE_ANSWERS {
            cache.generation = generation;
            cache.answers.clear();
        }
        let key = (region.to_string(), project.to_string());
        if let Some(answer) = cache.answers.get(&key) {
            return Ok(Arc::clone(answer));
        }
        let answer = Arc::new(visible_rows(&conn, region, project)?);
        cache.answers.insert(key, Arc::clone(&answer));
        Ok(answer)
    }

    fn unfinished(&self) -> ServiceResult<Vec<ImageRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT record FROM images WHERE status IN ('queued', 'saving')")
            .map_err(db)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode(&row.map_err(db)?)?);
        }
        Ok(out)
    }

    fn add_member(
        &self,
        member: &Member,
        check: &dyn Fn(u64) -> ServiceResult<()>,
    ) -> ServiceResult<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let exists: Option<String> = tx
            .query_row(
                "SELECT status FROM members WHERE image_id = ?1 AND project = ?2",
                params![member.image_id, member.project],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if exists.is_some() {
            // Sharing again is a no-op.
            return Ok(());
        }
        let count: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM members WHERE image_id = ?1",
                [&member.image_id],
                |r| r.get(0),
            )
            .map_err(db)?;
        check(u64::try_from(count).unwrap_or(0))?;
        tx.execute(
            "INSERT INTO members (image_id, project, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                member.image_id,
                member.project,
                member.status.name(),
                member.created_at,
                member.updated_at
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn set_member(
        &self,
        image_id: &str,
        project: &str,
        status: MemberStatus,
    ) -> ServiceResult<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE members SET status = ?3, updated_at = ?4 WHERE image_id = ?1 AND project = ?2",
                params![image_id, project, status.name(), now()],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn remove_member(&self, image_id: &str, project: &str) -> ServiceResult<bool> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM members WHERE image_id = ?1 AND project = ?2",
                params![image_id, project],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn members(&self, image_id: &str) -> ServiceResult<Vec<Member>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT image_id, project, status, created_at, updated_at FROM members WHERE image_id = ?1 ORDER BY created_at, project")
            .map_err(db)?;
        let rows = stmt.query_map([image_id], member_row).map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (image_id, project, status, created_at, updated_at) = row.map_err(db)?;
            out.push(Member {
                image_id,
                project,
                status: status.parse()?,
                created_at,
                updated_at,
            });
        }
        Ok(out)
    }

    fn remove_members(&self, image_id: &str) -> ServiceResult<()> {
        self.conn()
            .execute("DELETE FROM members WHERE image_id = ?1", [image_id])
            .map_err(db)?;
        Ok(())
    }

    fn insert_job(&self, job: &Job) -> ServiceResult<()> {
        write_job(&self.conn(), job, true)?;
        Ok(())
    }

    fn claim_job(&self, owner: &str, lease_until: i64) -> ServiceResult<Option<Job>> {
        let mut conn = self.conn();
        // The write lock from the start: another process claiming waits for the commit, then
        // reads this one's claim.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let text: Option<String> = tx
            .query_row(
                "SELECT record FROM jobs WHERE status = 'INIT' ORDER BY created_at, job_id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        let Some(text) = text else { return Ok(None) };
        let job = decode_job(&text)?.claimed(owner, lease_until);
        write_job(&tx, &job, false)?;
        tx.commit().map_err(db)?;
        Ok(Some(job))
    }

    fn replace_job(&self, old: &Job, new: &Job) -> ServiceResult<bool> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        // `IS` compares NULLs as equal: an unclaimed job has neither owner nor lease.
        let same: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM jobs WHERE job_id = ?1 AND status = ?2 AND owner IS ?3
                 AND lease_until IS ?4",
                params![old.job_id, old.status.name(), old.owner, old.lease_until],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if same.is_none() || new.job_id != old.job_id {
            return Ok(false);
        }
        write_job(&tx, new, false)?;
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn get_job(&self, job_id: &str) -> ServiceResult<Option<Job>> {
        let text: Option<String> = self
            .conn()
            .query_row("SELECT record FROM jobs WHERE job_id = ?1", [job_id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        Ok(text.as_deref().map(decode_job).transpose()?)
    }

    fn remove_ended_jobs(&self, created_before: &str) -> ServiceResult<u64> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM jobs WHERE status IN ('SUCCESS', 'FAIL') AND created_at < ?1",
                [created_before],
            )
            .map_err(db)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn running_jobs(&self) -> ServiceResult<Vec<Job>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT record FROM jobs WHERE status = 'RUNNING' ORDER BY created_at, job_id")
            .map_err(db)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode_job(&row.map_err(db)?)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::register::record::{ImageType, Visibility};

    /// The catalog as ims made it before marketplace images (schema version 0).
    const VERSION_0: &str = "
CREATE TABLE images (id TEXT PRIMARY KEY, region TEXT NOT NULL, owner TEXT NOT NULL,
    name TEXT NOT NULL, visibility TEXT NOT NULL, status TEXT NOT NULL,
    created_at TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX images_owner ON images (region, owner);
CREATE INDEX images_status ON images (status);
CREATE TABLE members (image_id TEXT NOT NULL, project TEXT NOT NULL, status TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (image_id, project));
CREATE INDEX members_project ON members (project);
";

    /// Processes that open one new catalog at the same moment (eight `ims register` into a
    /// fresh home) all open it: the locks that making it and turning on WAL take are waited
    /// for, not refused.
    #[test]
    fn many_connections_open_one_new_catalog_at_once() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("catalog.db");
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                let opened: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            SqliteCatalog::open(&path).map(|_| ())
                        })
                    })
                    .collect();
                for o in opened {
                    o.join().unwrap().unwrap();
                }
            });
        }
    }

    /// The cached answers of `visible_shared` follow every change: this connection's own, and
    /// another connection's (another process on the same file).
    #[test]
    fn shared_visible_answers_follow_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let here = SqliteCatalog::open(&path).unwrap();
        let there = SqliteCatalog::open(&path).unwrap();
        let names = |c: &SqliteCatalog| -> Vec<String> {
            c.visible_shared("r1", "owner")
                .unwrap()
                .iter()
                .map(|(r, _)| r.name.clone())
                .collect()
        };
        let mut a = ImageRecord::new("a", "owner", "r1", ImageType::System);
        a.status = Status::Active;
        here.insert(&a, &|_| Ok(())).unwrap();
        assert_eq!(names(&here), ["a"]);
        let first = here.visible_shared("r1", "owner").unwrap();
        assert!(Arc::ptr_eq(
            &first,
            &here.visible_shared("r1", "owner").unwrap()
        ));

        a.name = "renamed".into();
        here.update(&a).unwrap();
        assert_eq!(names(&here), ["renamed"]);

        let mut b = ImageRecord::new("b", "owner", "r1", ImageType::Data);
        b.status = Status::Active;
        there.insert(&b, &|_| Ok(())).unwrap();
        assert_eq!(names(&here).len(), 2);
        a.name = "again".into();
        there.update(&a).unwrap();
        assert!(names(&here).contains(&"again".to_string()));
        assert_eq!(names(&there), names(&here));
    }

    fn old_record(name: &str, marketplace: bool) -> (String, String) {
        let mut r = ImageRecord::new(name, "owner", "r1", ImageType::System);
        r.status = Status::Active;
        r.marketplace = marketplace;
        let mut v = serde_json::to_value(&r).unwrap();
        // Fields an older ims did not write.
        let m = v.as_object_mut().unwrap();
        for f in ["disks", "protected", "publisher", "price_note"] {
            m.remove(f);
        }
        (r.id, v.to_string())
    }

    #[test]
    fn a_version_0_catalog_is_migrated_and_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let (plain, market) = (old_record("plain", false), old_record("market", true));
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(VERSION_0).unwrap();
            for (id, text) in [&plain, &market] {
                conn.execute(
                    "INSERT INTO images VALUES (?1, 'r1', 'owner', 'n', 'private', 'active', 'c', ?2)",
                    params![id, text],
                )
                .unwrap();
            }
        }
        let catalog = SqliteCatalog::open(&path).unwrap();
        let version: i64 = catalog
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        assert_eq!(catalog.get(&plain.0).unwrap().unwrap().name, "plain");
        // The marketplace image is every project's to see; the private one is not.
        let seen: Vec<String> = catalog
            .visible("r1", "stranger")
            .unwrap()
            .into_iter()
            .map(|(r, _)| r.id)
            .collect();
        assert_eq!(seen, [market.0]);
        drop(catalog);
        // Opening again changes nothing; a new record is written with its column.
        let catalog = SqliteCatalog::open(&path).unwrap();
        let mut r = ImageRecord::new("new", "owner", "r1", ImageType::Data);
        r.visibility = Visibility::Private;
        catalog.insert(&r, &|_| Ok(())).unwrap();
        assert_eq!(catalog.visible("r1", "owner").unwrap().len(), 3);
    }

    #[test]
    fn a_catalog_of_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        drop(SqliteCatalog::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        assert!(SqliteCatalog::open(&path).is_err());
    }
}
