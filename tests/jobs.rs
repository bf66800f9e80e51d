//! Jobs: the catalogs' job tables (SQLite and a real PostgreSQL), workers of several pools
//! (several processes) sharing one queue, each job run once, and a job whose process was
//! killed failed with its reason on the next start, with no image left `saving` and no data
//! left in the store.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::catalog::{random_raw, stray_files};
use common::postgres::Database;
use ims::cancel::CancelToken;
use ims::open::Input;
use ims::register::catalog::PostgresCatalog;
use ims::register::job::now_millis;
use ims::register::{
    Catalog, DirObjects, ImageType, Ims, Job, JobPool, JobSpec, JobStatus, Objects, PoolOptions,
    RegisterRequest, RegisterSpec, Result, Scope, SqliteCatalog, Status,
};
use ims::storage::Storage;

const MIB: u64 = 1 << 20;

fn scope(project: &str) -> Scope {
    Scope::new(project, "r1")
}

fn members_job(n: usize) -> Job {
    Job::new(
        "p1",
        "r1",
        JobSpec::AddMembers {
            images: vec![format!("img{n}")],
            projects: vec!["p2".into()],
        },
    )
}

/// The job table's contract, on any catalog.
fn job_table(c: &dyn Catalog) {
    assert!(c.claim_job("w", 10).unwrap().is_none(), "no job yet");
    let a = members_job(1);
    // Made a millisecond apart at least, so that the order is the order of making.
    std::thread::sleep(Duration::from_millis(3));
    let b = members_job(2);
    c.insert_job(&b).unwrap();
    c.insert_job(&a).unwrap();
    assert!(c.insert_job(&a).is_err(), "a job id is inserted once");
    assert_eq!(c.get_job(&a.job_id).unwrap().unwrap(), a);
    assert!(c.get_job("nope").unwrap().is_none());

    // Oldest first, claimed once each.
    let first = c.claim_job("w1", 1000).unwrap().unwrap();
    assert_eq!(first.job_id, a.job_id);
    assert_eq!(first.status, JobStatus::Running);
    assert_eq!(first.owner.as_deref(), Some("w1"));
    assert_eq!(first.lease_until, Some(1000));
    assert!(first.begin_time.is_some());
    let second = c.claim_job("w2", 2000).unwrap().unwrap();
    assert_eq!(second.job_id, b.job_id);
    assert!(c.claim_job("w3", 3000).unwrap().is_none());
    let running: Vec<String> = c
        .running_jobs()
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(running, [a.job_id.clone(), b.job_id.clone()]);

    // Compare-and-set on status, owner and lease.
    let mut renewed = first.clone();
    renewed.lease_until = Some(5000);
    assert!(c.replace_job(&first, &renewed).unwrap());
    assert!(
        !c.replace_job(&first, &renewed).unwrap(),
        "the old lease no longer matches"
    );
    let mut thief = renewed.clone();
    thief.owner = Some("w9".into());
    let failed = thief.clone().failed("IMG.0061", "x");
    assert!(
        !c.replace_job(&thief, &failed).unwrap(),
        "another owner cannot end it"
    );
    let done = renewed.clone().failed("IMG.0057", "no object");
    assert!(c.replace_job(&renewed, &done).unwrap());
    let stored = c.get_job(&a.job_id).unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Fail);
    assert_eq!(stored.error_code.as_deref(), Some("IMG.0057"));
    assert_eq!(stored.fail_reason.as_deref(), Some("no object"));
    assert!(stored.end_time.is_some());
    assert_eq!(c.running_jobs().unwrap().len(), 1);
    // An ended job stays ended.
    let again = stored.clone().claimed("w1", 9);
    assert!(!c.replace_job(&renewed, &again).unwrap());
    // An INIT job (no owner, no lease) is matched with its NULLs.
    let d = members_job(3);
    c.insert_job(&d).unwrap();
    let cancelled = d.clone().failed("IMG.0061", "cancelled");
    assert!(c.replace_job(&d, &cancelled).unwrap());
    assert!(
        c.claim_job("w", 1).unwrap().is_none(),
        "a cancelled job is not claimed"
    );

    // Ended jobs made before a time go; running ones stay, whatever their age.
    assert_eq!(c.remove_ended_jobs("1970-01-01T00:00:00.000Z").unwrap(), 0);
    let far = ims::register::job::ims_time(now_millis() + 60_000);
    assert_eq!(c.remove_ended_jobs(&far).unwrap(), 2);
    assert!(c.get_job(&a.job_id).unwrap().is_none());
    assert!(c.get_job(&d.job_id).unwrap().is_none());
    assert_eq!(c.running_jobs().unwrap().len(), 1);
}

#[test]
fn sqlite_job_table() {
    let dir = tempfile::tempdir().unwrap();
    job_table(&SqliteCatalog::open(&dir.path().join("c.db")).unwrap());
}

#[test]
fn postgres_job_table() {
    let Some(db) = Database::new("postgres_job_table") else {
        return;
    };
    job_table(&PostgresCatalog::open(&db.url()).unwrap());
}

/// `catalogs` catalogs (as many processes would have), `threads` workers on each, claiming
/// 300 jobs as fast as they can: each job is claimed exactly once.
fn claims_are_exclusive(open: &(dyn Fn() -> Box<dyn Catalog> + Sync), catalogs: usize) {
    let jobs: Vec<Job> = (0..300).map(members_job).collect();
    let first = open();
    for j in &jobs {
        first.insert_job(j).unwrap();
    }
    let handles: Vec<Box<dyn Catalog>> = (0..catalogs).map(|_| open()).collect();
    let threads = 4;
    let start = Barrier::new(catalogs * threads);
    let claimed: Vec<Vec<(String, String)>> = std::thread::scope(|s| {
        let ts: Vec<_> = (0..catalogs * threads)
            .map(|i| {
                let (c, start) = (&*handles[i % catalogs], &start);
                s.spawn(move || {
                    start.wait();
                    let owner = format!("w{i}");
                    let mut got = Vec::new();
                    while let Some(j) = c.claim_job(&owner, i64::MAX).unwrap() {
                        assert_eq!(j.owner.as_deref(), Some(owner.as_str()));
                        got.push((j.job_id, owner.clone()));
                    }
                    got
                })
            })
            .collect();
        ts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut workers_used = 0;
    for got in &claimed {
        if !got.is_empty() {
            workers_used += 1;
        }
        for (id, _) in got {
            *count.entry(id.clone()).or_default() += 1;
        }
    }
    assert_eq!(count.len(), jobs.len(), "every job claimed");
    assert!(count.values().all(|&n| n == 1), "a job claimed twice");
    assert!(workers_used > 1, "the workers shared the queue");
    // Each stored job names the worker that claimed it.
    for got in &claimed {
        for (id, owner) in got {
            let stored = first.get_job(id).unwrap().unwrap();
            assert_eq!(stored.owner.as_deref(), Some(owner.as_str()));
            assert_eq!(stored.status, JobStatus::Running);
        }
    }
}

#[test]
fn sqlite_claims_are_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    claims_are_exclusive(
        &|| -> Box<dyn Catalog> { Box::new(SqliteCatalog::open(&path).unwrap()) },
        2,
    );
}

#[test]
fn postgres_claims_are_exclusive() {
    let Some(db) = Database::new("postgres_claims_are_exclusive") else {
        return;
    };
    let url = db.url();
    claims_are_exclusive(
        &|| -> Box<dyn Catalog> { Box::new(PostgresCatalog::open(&url).unwrap()) },
        3,
    );
}

fn fast_pool() -> PoolOptions {
    PoolOptions {
        workers: 2,
        lease: Duration::from_secs(3),
        poll: Duration::from_millis(50),
        progress_interval: Duration::from_millis(10),
        ..PoolOptions::default()
    }
}

fn wait_all(ims: &Ims, s: &Scope, ids: &[String], timeout: Duration) -> Vec<Job> {
    let deadline = Instant::now() + timeout;
    loop {
        let jobs: Vec<Job> = ids
            .iter()
            .map(|id| ims.job(s, id).unwrap().expect("the job"))
            .collect();
        if jobs.iter().all(|j| j.status.is_final()) {
            return jobs;
        }
        assert!(Instant::now() < deadline, "jobs still running: {jobs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Registers a data disk of `mib` MiB straight through the library.
fn registered(ims: &Ims, dir: &Path, name: &str) -> String {
    let disk = dir.join(format!("{name}.raw"));
    random_raw(&disk, 4 * MIB, 1, 7);
    ims.register(
        &scope("p1"),
        disk.as_path(),
        &RegisterRequest::new(name, ImageType::Data),
        &mut |_| {},
        &CancelToken::new(),
    )
    .unwrap()
    .record
    .id
}

/// Two pools (two processes' worth: two services, two catalogs, two owner names) over one
/// PostgreSQL catalog and one store run 16 copy jobs: every job ends SUCCESS once, and there
/// is exactly one copy of each.
#[test]
fn postgres_two_pools_run_each_job_once() {
    let Some(db) = Database::new("postgres_two_pools_run_each_job_once") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = || Arc::new(Ims::open_with(&home, Some(&db.url()), None).unwrap());
    let (ims1, ims2) = (open(), open());
    let src = registered(&ims1, dir.path(), "source");
    let objects: Arc<dyn Objects> = Arc::new(DirObjects::new(&dir.path().join("objects")));
    let p1 = JobPool::start(ims1.clone(), objects.clone(), fast_pool()).unwrap();
    let p2 = JobPool::start(ims2.clone(), objects, fast_pool()).unwrap();
    assert_ne!(p1.owner(), p2.owner());
    let s = scope("p1");
    let ids: Vec<String> = (0..16)
        .map(|i| {
            let pool = if i % 2 == 0 { &p1 } else { &p2 };
            pool.submit(
                &s,
                JobSpec::Copy {
                    image_id: src.clone(),
                    name: format!("copy-{i}"),
                    description: Some(format!("copy {i}")),
                },
            )
            .unwrap()
            .job_id
        })
        .collect();
    let jobs = wait_all(&ims1, &s, &ids, Duration::from_secs(120));
    let mut owners = std::collections::HashSet::new();
    for j in &jobs {
        assert_eq!(j.status, JobStatus::Success, "{j:?}");
        assert_eq!(j.entities.process_percent, 100.0);
        assert!(j.end_time.is_some() && j.begin_time.is_some());
        owners.insert(j.owner.clone().unwrap());
    }
    assert!(owners.len() == 2, "both pools ran jobs: {owners:?}");
    let listed = ims1.list(&s, &Default::default()).unwrap();
    for i in 0..16 {
        let name = format!("copy-{i}");
        let copies: Vec<_> = listed.iter().filter(|l| l.record.name == name).collect();
        assert_eq!(copies.len(), 1, "{name} made {} times", copies.len());
        assert_eq!(copies[0].record.status, Status::Active);
        assert_eq!(copies[0].record.description, format!("copy {i}"));
        let job = jobs
            .iter()
            .find(|j| j.entities.image_name.as_deref() == Some(&name));
        assert_eq!(
            job.and_then(|j| j.entities.image_id.clone()),
            Some(copies[0].record.id.clone())
        );
    }
    p1.shutdown();
    p2.shutdown();
}

/// Registration, export and batch sharing as jobs, with their IMG codes when they fail.
#[test]
fn jobs_register_export_share_and_fail_with_codes() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let ims = Arc::new(Ims::open(&home).unwrap());
    let objects_dir = dir.path().join("objects");
    std::fs::create_dir_all(objects_dir.join("bkt")).unwrap();
    random_raw(&objects_dir.join("bkt/disk.raw"), 8 * MIB, 2, 3);
    let objects = Arc::new(DirObjects::new(&objects_dir));
    let pool = JobPool::start(ims.clone(), objects.clone(), fast_pool()).unwrap();
    let s = scope("p1");
    let wait = |id: &str| {
        pool.wait(&s, id, Duration::from_secs(60))
            .unwrap()
            .expect("the job")
    };

    let mut spec = RegisterSpec::new("from-object", ImageType::Data);
    spec.tags = vec!["team=qa".into()];
    let reg = pool
        .submit(
            &s,
            JobSpec::Register {
                source: "bkt:disk.raw".into(),
                request: spec.clone(),
                data_images: vec![],
            },
        )
        .unwrap();
    assert_eq!(reg.status, JobStatus::Init);
    let reg = wait(&reg.job_id);
    assert_eq!(reg.status, JobStatus::Success, "{reg:?}");
    assert_eq!(
        serde_json::to_value(reg.job_type).unwrap(),
        "imsImportDataImageJob"
    );
    let id = reg.entities.image_id.clone().unwrap();
    let r = ims.show(&s, &id).unwrap();
    assert_eq!((r.status, r.name.as_str()), (Status::Active, "from-object"));
    assert_eq!(r.virtual_size, 8 * MIB);

    // A missing object, and a tag the rules refuse.
    let missing = pool
        .submit(
            &s,
            JobSpec::Register {
                source: "bkt:nothing.raw".into(),
                request: spec.clone(),
                data_images: vec![],
            },
        )
        .unwrap();
    let missing = wait(&missing.job_id);
    assert_eq!(missing.status, JobStatus::Fail);
    assert_eq!(missing.error_code.as_deref(), Some("IMG.0057"));
    assert!(missing.fail_reason.unwrap().contains("nothing.raw"));
    let mut bad = spec.clone();
    bad.tags = vec![format!("{}=v", "k".repeat(40))];
    let bad = pool
        .submit(
            &s,
            JobSpec::Register {
                source: "bkt:disk.raw".into(),
                request: bad,
                data_images: vec![],
            },
        )
        .unwrap();
    let bad = wait(&bad.job_id);
    assert_eq!(bad.error_code.as_deref(), Some("IMG.0115"));
    assert!(
        bad.fail_reason.unwrap().starts_with("tag_key_too_long: "),
        "the rule's code leads the reason"
    );
    assert!(
        pool.submit(
            &s,
            JobSpec::Register {
                source: "no-colon".into(),
                request: spec,
                data_images: vec![],
            },
        )
        .is_err()
    );

    // Export to an object, then again to the same object.
    let export = |target: &str| {
        let j = pool
            .submit(
                &s,
                JobSpec::Export {
                    image_id: id.clone(),
                    target: target.into(),
                    format: "qcow2".into(),
                },
            )
            .unwrap();
        wait(&j.job_id)
    };
    let done = export("out:exports/disk.qcow2");
    assert_eq!(done.status, JobStatus::Success, "{done:?}");
    assert_eq!(done.entities.image_id.as_deref(), Some(id.as_str()));
    let out = objects.path("out:exports/disk.qcow2").unwrap();
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"QFI\xfb");
    let again = export("out:exports/disk.qcow2");
    assert_eq!(again.error_code.as_deref(), Some("IMG.0070"));
    assert!(
        std::fs::read_dir(home.join("spool"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "no export left in the spool"
    );

    // A batch share: one good member, one refused (the owner itself).
    let share = pool
        .submit(
            &s,
            JobSpec::AddMembers {
                images: vec![id.clone()],
                projects: vec!["p2".into(), "p1".into()],
            },
        )
        .unwrap();
    let share = wait(&share.job_id);
    assert_eq!(share.status, JobStatus::Fail);
    assert_eq!(share.error_code.as_deref(), Some("IMG.0076"));
    let statuses: Vec<&str> = share
        .entities
        .results
        .iter()
        .map(|r| r.status.as_str())
        .collect();
    assert_eq!(statuses, ["success", "IMG.0076"]);
    let members = ims.members(&s, &id).unwrap();
    assert_eq!(members.len(), 1);
    // The member accepts through a job of its own; another project cannot see the jobs.
    let p2 = scope("p2");
    let accept = pool
        .submit(
            &p2,
            JobSpec::UpdateMembers {
                images: vec![id.clone()],
                project: "p2".into(),
                status: ims::register::MemberStatus::Accepted,
            },
        )
        .unwrap();
    let accept = pool
        .wait(&p2, &accept.job_id, Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert_eq!(accept.status, JobStatus::Success, "{accept:?}");
    assert!(ims.job(&s, &accept.job_id).unwrap().is_none());
    assert!(
        pool.submit(
            &p2,
            JobSpec::UpdateMembers {
                images: vec![id.clone()],
                project: "p1".into(),
                status: ims::register::MemberStatus::Accepted,
            },
        )
        .is_err()
    );
    // An answer is accepted or rejected; a batch is bounded.
    let pending = JobSpec::UpdateMembers {
        images: vec![id.clone()],
        project: "p2".into(),
        status: ims::register::MemberStatus::Pending,
    };
    assert!(pool.submit(&p2, pending).is_err());
    let huge = JobSpec::AddMembers {
        images: (0..101).map(|i| format!("i{i}")).collect(),
        projects: (0..100).map(|i| format!("p{i}")).collect(),
    };
    assert!(pool.submit(&s, huge).is_err());
    pool.shutdown();
}

/// A storage over a file whose large reads are slow, so that a registration stays `saving`
/// long enough to be killed in.
struct Slow(std::fs::File, u64);

impl Storage for Slow {
    fn len(&self) -> u64 {
        self.1
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> ims::Result<usize> {
        use std::os::unix::fs::FileExt;
        if buf.len() >= 64 * 1024 {
            std::thread::sleep(Duration::from_millis(100));
        }
        let n = buf.len().min(self.1.saturating_sub(offset) as usize);
        self.0
            .read_exact_at(&mut buf[..n], offset)
            .map_err(|e| ims::Error::io("read", e))?;
        Ok(n)
    }
}

struct SlowObjects(DirObjects);

impl Objects for SlowObjects {
    fn open(&self, url: &str) -> Result<Input> {
        let path: PathBuf = self.0.path(url)?;
        let f = std::fs::File::open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        Ok(Input::Storage {
            storage: Arc::new(Slow(f, len)),
            name: url.to_string(),
        })
    }
    fn exists(&self, url: &str) -> Result<bool> {
        self.0.exists(url)
    }
    fn put(&self, url: &str, file: &Path) -> Result<()> {
        self.0.put(url, file)
    }
}

const CHILD_HOME: &str = "IMS_TEST_JOBS_CHILD_HOME";
const CHILD_CATALOG: &str = "IMS_TEST_JOBS_CHILD_CATALOG";
const CHILD_FAST: &str = "IMS_TEST_JOBS_CHILD_FAST";

/// Not a test on its own: the process that the crash tests start and kill. It runs a pool over
/// the home and catalog they name, with slow objects, until it is killed.
#[test]
#[ignore]
fn child_runs_jobs_until_killed() {
    let Some(home) = std::env::var_os(CHILD_HOME) else {
        return;
    };
    let catalog = std::env::var(CHILD_CATALOG).ok();
    let home = PathBuf::from(home);
    let ims = Arc::new(Ims::open_with(&home, catalog.as_deref(), None).unwrap());
    let dir = DirObjects::new(&home.join("objects"));
    let objects: Arc<dyn Objects> = if std::env::var_os(CHILD_FAST).is_some() {
        Arc::new(dir)
    } else {
        Arc::new(SlowObjects(dir))
    };
    let _pool = JobPool::start(ims, objects, fast_pool()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

/// Starts the child test process running a pool on `home` and `catalog`.
fn child(home: &Path, catalog: Option<&str>, fast: bool) -> std::process::Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "child_runs_jobs_until_killed",
        "--ignored",
        "--nocapture",
    ])
    .env(CHILD_HOME, home)
    .envs(catalog.map(|c| (CHILD_CATALOG, c)));
    if fast {
        c.env(CHILD_FAST, "1");
    }
    c.spawn().unwrap()
}

/// Two processes running pools over one PostgreSQL catalog and one store: 20 copy jobs
/// submitted by a third all end SUCCESS, each run by one of the two, each copy made once.
#[test]
fn postgres_two_processes_run_each_job_once() {
    let Some(db) = Database::new("postgres_two_processes_run_each_job_once") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let url = db.url();
    let ims = Ims::open_with(&home, Some(&url), None).unwrap();
    let src = registered(&ims, dir.path(), "source");
    let s = scope("p1");
    let ids: Vec<String> = (0..20)
        .map(|i| {
            ims.submit_job(
                &s,
                JobSpec::Copy {
                    image_id: src.clone(),
                    name: format!("copy-{i}"),
                    description: None,
                },
            )
            .unwrap()
            .job_id
        })
        .collect();
    let mut children = [
        child(&home, Some(&url), true),
        child(&home, Some(&url), true),
    ];
    let jobs = wait_all(&ims, &s, &ids, Duration::from_secs(120));
    for c in &mut children {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let pids: std::collections::HashSet<u32> = jobs
        .iter()
        .map(|j| {
            assert_eq!(j.status, JobStatus::Success, "{j:?}");
            let owner = j.owner.as_deref().unwrap();
            ims::register::job::owner_process(owner).unwrap().1
        })
        .collect();
    let child_pids: std::collections::HashSet<u32> = children.iter().map(|c| c.id()).collect();
    assert!(pids.is_subset(&child_pids), "{pids:?} {child_pids:?}");
    let listed = ims.list(&s, &Default::default()).unwrap();
    for i in 0..20 {
        let name = format!("copy-{i}");
        assert_eq!(
            listed.iter().filter(|l| l.record.name == name).count(),
            1,
            "{name}"
        );
    }
    eprintln!("jobs run by {} processes", pids.len());
}

/// A registration job whose process is killed (-9) while the image is `saving`: on the next
/// start the job is `FAIL` with IMG.0061 and the reason, the image `killed`, the store empty.
fn killed_job_is_failed_on_restart(home: &Path, catalog: Option<&str>) {
    let objects = home.join("objects/bkt");
    std::fs::create_dir_all(&objects).unwrap();
    random_raw(&objects.join("big.raw"), 64 * MIB, 48, 9);
    let ims = Ims::open_with(home, catalog, None).unwrap();
    let s = scope("p1");
    let job = ims
        .submit_job(
            &s,
            JobSpec::Register {
                source: "bkt:big.raw".into(),
                request: RegisterSpec::new("doomed", ImageType::Data),
                data_images: vec![],
            },
        )
        .unwrap();
    let mut child = child(home, catalog, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = ims.job(&s, &job.job_id).unwrap().unwrap();
        let saving = ims
            .list(&s, &Default::default())
            .unwrap()
            .iter()
            .any(|l| l.record.status == Status::Saving);
        // Saving, with its progress written to the catalog.
        if j.status == JobStatus::Running && saving && j.entities.process_percent > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child never got to saving: {j:?}"
        );
        assert!(child.try_wait().unwrap().is_none(), "the child ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(ims);

    // The next start: recovery of the image, then of the job.
    let ims = Arc::new(Ims::open_with(home, catalog, None).unwrap());
    let pool = JobPool::start(
        ims.clone(),
        Arc::new(DirObjects::new(&home.join("objects"))),
        fast_pool(),
    )
    .unwrap();
    let j = ims.job(&s, &job.job_id).unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Fail, "{j:?}");
    assert_eq!(j.error_code.as_deref(), Some("IMG.0061"));
    let reason = j.fail_reason.unwrap();
    assert!(reason.starts_with("interrupted: "), "{reason}");
    assert!(j.end_time.is_some());
    let records = ims.list(&s, &Default::default()).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record.status, Status::Killed);
    assert!(stray_files(home).is_empty(), "{:?}", stray_files(home));
    // Committed images: none either.
    let stored: Vec<_> = walk(&home.join("store"));
    assert!(stored.is_empty(), "{stored:?}");
    pool.shutdown();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn sqlite_killed_job_is_failed_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    killed_job_is_failed_on_restart(dir.path(), None);
}

#[test]
fn postgres_killed_job_is_failed_on_restart() {
    let Some(db) = Database::new("postgres_killed_job_is_failed_on_restart") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    killed_job_is_failed_on_restart(dir.path(), Some(&db.url()));
}

/// A job whose owner is on another host (so its process cannot be checked) is failed once its
/// lease runs out, not before; a live pool's jobs are never failed by another pool.
#[test]
fn an_expired_lease_is_failed_and_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let ims = Ims::open(dir.path()).unwrap();
    let s = scope("p1");
    let job = ims
        .submit_job(
            &s,
            JobSpec::AddMembers {
                images: vec!["x".into()],
                projects: vec!["p2".into()],
            },
        )
        .unwrap();
    let other = "elsewhere-host:1:abcd";
    let c = SqliteCatalog::open(&dir.path().join("catalog.db")).unwrap();
    let claimed = c.claim_job(other, now_millis() + 60_000).unwrap().unwrap();
    assert!(ims.fail_stale_jobs().unwrap().is_empty(), "the lease holds");
    let mut expired = claimed.clone();
    expired.lease_until = Some(now_millis() - 1);
    assert!(c.replace_job(&claimed, &expired).unwrap());
    assert_eq!(
        ims.fail_stale_jobs().unwrap(),
        std::slice::from_ref(&job.job_id)
    );
    let j = ims.job(&s, &job.job_id).unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Fail);
    assert!(j.fail_reason.unwrap().contains(other));
    // The old owner's late end is refused: the job stays failed as stale.
    let late = expired.clone().succeeded(Default::default());
    assert!(!c.replace_job(&expired, &late).unwrap());

    // Owners of this host: a process that no longer runs is failed at once, lease or not;
    // one of another process-id namespace (a container sharing the host name) is not, since
    // its processes cannot be seen from here.
    let host = ims::register::job::host_id();
    let (name, _) = host.split_once('#').unwrap();
    let dead = format!("{host}:4000000:dead");
    let elsewhere = format!("{name}#1:4000000:ns");
    for owner in [&dead, &elsewhere] {
        let j = ims
            .submit_job(
                &s,
                JobSpec::AddMembers {
                    images: vec!["x".into()],
                    projects: vec!["p2".into()],
                },
            )
            .unwrap();
        let claimed = c.claim_job(owner, now_millis() + 60_000).unwrap().unwrap();
        assert_eq!(claimed.job_id, j.job_id);
    }
    let failed = ims.fail_stale_jobs().unwrap();
    assert_eq!(failed.len(), 1);
    let j = ims.job(&s, &failed[0]).unwrap().unwrap();
    assert_eq!(j.owner.as_deref(), Some(dead.as_str()));
    assert_eq!(
        c.running_jobs().unwrap()[0].owner.as_deref(),
        Some(elsewhere.as_str())
    );
}

/// Cancelling: a job not begun ends at once; a running one stops and ends FAIL.
#[test]
fn jobs_are_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let ims = Arc::new(Ims::open(&home).unwrap());
    let objects_dir = home.join("objects/bkt");
    std::fs::create_dir_all(&objects_dir).unwrap();
    random_raw(&objects_dir.join("big.raw"), 64 * MIB, 48, 9);
    // No worker yet: the job waits in INIT and is cancelled there.
    let s = scope("p1");
    let spec = JobSpec::Register {
        source: "bkt:big.raw".into(),
        request: RegisterSpec::new("slow", ImageType::Data),
        data_images: vec![],
    };
    let waiting = ims.submit_job(&s, spec.clone()).unwrap();
    let objects = Arc::new(SlowObjects(DirObjects::new(&home.join("objects"))));
    let pool = JobPool::start(
        ims.clone(),
        objects,
        PoolOptions {
            workers: 1,
            ..fast_pool()
        },
    )
    .unwrap();
    // The one worker takes `waiting` first; cancel it while it runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ims.job(&s, &waiting.job_id).unwrap().unwrap().status != JobStatus::Running {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let queued = pool.submit(&s, spec).unwrap();
    assert!(pool.cancel(&s, &queued.job_id).unwrap());
    let q = ims.job(&s, &queued.job_id).unwrap().unwrap();
    assert_eq!(
        (q.status, q.fail_reason.as_deref()),
        (JobStatus::Fail, Some("cancelled"))
    );
    assert!(pool.cancel(&s, &waiting.job_id).unwrap());
    let w = pool
        .wait(&s, &waiting.job_id, Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert_eq!(w.status, JobStatus::Fail, "{w:?}");
    assert!(w.fail_reason.unwrap().contains("cancelled"));
    assert!(!pool.cancel(&s, &waiting.job_id).unwrap(), "ended already");
    assert!(!pool.cancel(&scope("p2"), &queued.job_id).unwrap());
    // Nothing left saving or stored.
    assert!(
        ims.list(&s, &Default::default())
            .unwrap()
            .iter()
            .all(|l| l.record.status == Status::Killed)
    );
    assert!(stray_files(&home).is_empty());
    pool.shutdown();
}
