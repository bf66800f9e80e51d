//! Jobs: registrations, copies, exports and batch shares run asynchronously by a bounded pool
//! of workers, with the jobs kept in the catalog ([`Job`]).
//!
//! - [`Ims::submit_job`] records a job `INIT`; any [`JobPool`] over the same catalog may run it
//!   (several processes sharing a PostgreSQL catalog share one queue).
//! - A worker claims a job atomically ([`Catalog::claim_job`](super::Catalog::claim_job)),
//!   holding it under its owner name and a lease that the pool renews while the job runs;
//!   progress, the lease and the job's end are written by compare-and-set on status, owner and
//!   lease, so a job is run once and ended once.
//! - A job whose lease ran out, or whose owner is a process of this host that no longer runs,
//!   was interrupted (a crash, a kill): [`Ims::fail_stale_jobs`] ends it `FAIL` with the reason
//!   and then runs [`Ims::recover`], so the image it was writing is `killed` and its data
//!   removed. A pool does it when it starts and then every lease period.
//!
//! Objects named `bucket:object` (a registration's source, an export's target) are read and
//! written through [`Objects`]; [`DirObjects`] keeps them in a local directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cancel::CancelToken;
use crate::error::Error;
use crate::formats::Format;
use crate::open::Input;
use crate::{CreateOptions, Progress};

use super::error::{Result, ServiceError};
use super::ims_errors::{self, ImgCode, img_error};
use super::job::{
    Job, JobEntities, JobSpec, JobStatus, MemberResult, now_millis, owner_name, owner_process,
};
use super::record::{ImageType, MemberStatus};
use super::update::RecordUpdate;
use super::{Ims, Scope};

/// Where the objects of jobs are: a registration's source and an export's target, named
/// `bucket:object` as IMS names them.
pub trait Objects: Send + Sync {
    /// The object `url` to read.
    fn open(&self, url: &str) -> Result<Input>;

    /// Whether the object `url` exists.
    fn exists(&self, url: &str) -> Result<bool>;

    /// Stores the local file `file` as the object `url`.
    fn put(&self, url: &str, file: &Path) -> Result<()>;

    /// The bytes at the web address `url`, read once front to back, for an import's
    /// `web-download`. By default no address is fetched: a service that offers the method
    /// says which addresses it allows.
    fn fetch(&self, url: &str) -> Result<Box<dyn std::io::Read + Send>> {
        Err(Error::InvalidArgument(format!(
            "web-download of {url}: this service fetches no URLs"
        ))
        .into())
    }
}

/// A `bucket:object` name split and checked: a bucket of letters, digits, `-`, `.` and `_`,
/// and an object of `/`-separated parts, none empty, `.` or `..`, and no control characters.
pub fn parse_object_url(url: &str) -> Result<(&str, &str)> {
    let bad = |why: &str| -> ServiceError {
        Error::InvalidArgument(format!("object '{url}' is not bucket:object ({why})")).into()
    };
    let (bucket, object) = url.split_once(':').ok_or_else(|| bad("no ':'"))?;
    if bucket.is_empty()
        || bucket.len() > 63
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        || bucket.starts_with('.')
    {
        return Err(bad("bad bucket name"));
    }
    if object.is_empty() || object.len() > 1024 || object.chars().any(char::is_control) {
        return Err(bad("bad object name"));
    }
    if object
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(bad("empty, '.' or '..' part in the object name"));
    }
    Ok((bucket, object))
}

/// Objects as files: `bucket:dir/name` is `ROOT/bucket/dir/name`.
#[derive(Debug, Clone)]
pub struct DirObjects {
    root: PathBuf,
}

impl DirObjects {
    /// Objects under `root`.
    pub fn new(root: &Path) -> DirObjects {
        DirObjects {
            root: root.to_path_buf(),
        }
    }

    /// The path of object `url`.
    pub fn path(&self, url: &str) -> Result<PathBuf> {
        let (bucket, object) = parse_object_url(url)?;
        Ok(self.root.join(bucket).join(object))
    }
}

impl Objects for DirObjects {
    fn open(&self, url: &str) -> Result<Input> {
        let path = self.path(url)?;
        if !path.is_file() {
            return Err(Error::io(
                "open the object",
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("no object {url}")),
            )
            .into());
        }
        Ok(Input::Path(path))
    }

    fn exists(&self, url: &str) -> Result<bool> {
        Ok(self.path(url)?.exists())
    }

    fn put(&self, url: &str, file: &Path) -> Result<()> {
        let path = self.path(url)?;
        let fail = |what: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |e: std::io::Error| ServiceError::from(Error::io(what, e).in_file(&p))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail("create directory", dir))?;
        }
        std::fs::copy(file, &path).map_err(fail("copy into", &path))?;
        Ok(())
    }
}

/// Why a job failed: its IMG code and the reason shown.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFailure {
    /// The IMG code.
    pub code: ImgCode,
    /// The reason.
    pub reason: String,
    /// A member job's results, the failed and the done.
    pub results: Vec<MemberResult>,
}

impl JobFailure {
    fn of(e: &ServiceError, registering: bool) -> JobFailure {
        let (code, reason) = img_error(e, registering);
        JobFailure::new(code, reason)
    }

    fn new(code: ImgCode, reason: String) -> JobFailure {
        JobFailure {
            code,
            reason,
            results: Vec::new(),
        }
    }
}

/// The most image and project pairs (or images, for an answer) one member job handles, so that
/// a job's time and its results stay bounded.
pub const MAX_MEMBER_PAIRS: usize = 10_000;

/// The property that records IMS's `is_config` (configure the guest after import).
pub const IS_CONFIG: &str = "__is_config_init";

/// The reason a job interrupted by the end of its process fails with.
pub const INTERRUPTED: &str = "interrupted: the process running the job stopped before it ended";

impl Ims {
    /// Records a job of `scope` to do `spec` (`INIT`) and returns it; a [`JobPool`] over this
    /// catalog runs it. Checked here: what a worker could not fix (a member job's own project,
    /// empty lists, malformed object names).
    pub fn submit_job(&self, scope: &Scope, spec: JobSpec) -> Result<Job> {
        let bad = |m: &str| -> Result<Job> { Err(Error::InvalidArgument(m.to_string()).into()) };
        match &spec {
            JobSpec::Register {
                source,
                data_images,
                ..
            } => {
                parse_object_url(source)?;
                for (s, _) in data_images {
                    parse_object_url(s)?;
                }
            }
            JobSpec::RegisterInto { source, .. } => {
                parse_object_url(source)?;
            }
            JobSpec::Import { format, .. } => {
                format.parse::<Format>()?;
            }
            JobSpec::Export { target, format, .. } => {
                parse_object_url(target)?;
                format.parse::<Format>()?;
            }
            JobSpec::AddMembers { images, projects } | JobSpec::DelMembers { images, projects } => {
                if images.is_empty() || projects.is_empty() {
                    return bad("a member job needs images and projects");
                }
                if images.len().saturating_mul(projects.len()) > MAX_MEMBER_PAIRS {
                    return bad(&format!(
                        "a member job pairs at most {MAX_MEMBER_PAIRS} images and projects"
                    ));
                }
            }
            JobSpec::UpdateMembers {
                images,
                project,
                status,
            } => {
                if images.is_empty() || images.len() > MAX_MEMBER_PAIRS {
                    return bad(&format!(
                        "a member job answers for 1 to {MAX_MEMBER_PAIRS} images"
                    ));
                }
                if *project != scope.project {
                    return bad("a project answers shares for itself only");
                }
                if *status == MemberStatus::Pending {
                    return bad("an answer is accepted or rejected");
                }
            }
            JobSpec::Copy { .. } | JobSpec::Replicate { .. } => {}
        }
        let mut job = Job::new(&scope.project, &scope.region, spec);
        job.operator = scope.operator;
        self.catalog.insert_job(&job)?;
        Ok(job)
    }

    /// The job `id` if it is `scope`'s project's.
    pub fn job(&self, scope: &Scope, id: &str) -> Result<Option<Job>> {
        Ok(self
            .catalog
            .get_job(id)?
            .filter(|j| j.project == scope.project))
    }

    /// Runs `job` (claimed by the caller): what it made, or why it failed. `progress` gets the
    /// percentage done.
    pub fn run_job(
        &self,
        job: &Job,
        objects: &dyn Objects,
        threads: usize,
        progress: &mut dyn FnMut(f64),
        cancel: &CancelToken,
    ) -> std::result::Result<JobEntities, JobFailure> {
        let scope = Scope {
            project: job.project.clone(),
            region: job.region.clone(),
            operator: job.operator,
        };
        let mut at = 0.0f64;
        let mut on_progress = |p: Progress| {
            if p.total > 0 {
                // Several disks report in turn: the bar never goes back.
                let pct = (p.done as f64 / p.total as f64 * 100.0).clamp(0.0, 99.0);
                if pct > at {
                    at = pct;
                    progress(pct);
                }
            }
        };
        let mut entities = JobEntities::default();
        match &job.spec {
            JobSpec::Register {
                source,
                request,
                data_images,
            } => {
                let registering = |e: ServiceError| JobFailure::of(&e, true);
                let unreadable =
                    |e: ServiceError| JobFailure::new(ims_errors::FILE_UNREADABLE, e.to_string());
                let req = request.to_request(threads).map_err(registering)?;
                let input = objects.open(source).map_err(unreadable)?;
                if data_images.is_empty() {
                    let done = self
                        .register(&scope, input, &req, &mut on_progress, cancel)
                        .map_err(registering)?;
                    entities.image_id = Some(done.record.id);
                    entities.image_name = Some(done.record.name);
                } else {
                    let mut data = Vec::new();
                    for (s, spec) in data_images {
                        let mut r = spec.to_request(threads).map_err(registering)?;
                        r.image_type = ImageType::Data;
                        data.push((objects.open(s).map_err(unreadable)?, r));
                    }
                    let done = self
                        .register_with_data_images(
                            &scope,
                            input,
                            &req,
                            data,
                            &mut on_progress,
                            cancel,
                        )
                        .map_err(registering)?;
                    entities.image_id = Some(done.system.record.id);
                    entities.image_name = Some(done.system.record.name);
                    entities.data_image_ids = done.data.into_iter().map(|d| d.record.id).collect();
                }
                if let Some(id) = &entities.image_id {
                    self.set_property(
                        &scope,
                        id,
                        IS_CONFIG,
                        if request.is_config { "true" } else { "false" },
                    )
                    .map_err(registering)?;
                }
            }
            JobSpec::RegisterInto { image_id, source } => {
                let registering = |e: ServiceError| JobFailure::of(&e, true);
                let input = objects.open(source).map_err(|e| {
                    // The image waits for data no more: its import failed.
                    let _ = self.kill_waiting(&scope, image_id, &e.to_string());
                    JobFailure::new(ims_errors::FILE_UNREADABLE, e.to_string())
                })?;
                let r = self
                    .register_into(
                        &scope,
                        image_id,
                        input,
                        Format::Zvhd2,
                        &mut on_progress,
                        cancel,
                    )
                    .map_err(registering)?;
                entities.image_id = Some(r.id);
                entities.image_name = Some(r.name);
            }
            JobSpec::Import {
                image_id,
                uri,
                format,
            } => {
                let registering = |e: ServiceError| JobFailure::of(&e, true);
                let format = format
                    .parse::<Format>()
                    .map_err(|e| registering(e.into()))?;
                if let Some(uri) = uri {
                    let staged = objects
                        .fetch(uri)
                        .and_then(|mut data| self.stage(&scope, image_id, &mut data));
                    if let Err(e) = staged {
                        // The image waits for data no more: its import failed.
                        let _ = self.abandon_import(image_id, &e.to_string());
                        return Err(JobFailure::new(ims_errors::FILE_UNREADABLE, e.to_string()));
                    }
                }
                let r = self
                    .import_staged(&scope, image_id, format, &mut on_progress, cancel)
                    .map_err(registering)?;
                entities.image_id = Some(r.id);
                entities.image_name = Some(r.name);
            }
            JobSpec::Copy {
                image_id,
                name,
                description,
            } => {
                let fail = |e: ServiceError| JobFailure::of(&e, false);
                let mut r = self
                    .copy(&scope, image_id, Some(name), cancel)
                    .map_err(fail)?;
                if let Some(d) = description {
                    let update = RecordUpdate {
                        description: Some(d.clone()),
                        ..RecordUpdate::default()
                    };
                    r = self.update(&scope, &r.id, &update).map_err(fail)?;
                }
                entities.image_id = Some(r.id);
                entities.image_name = Some(r.name);
            }
            JobSpec::Replicate {
                image_id,
                region,
                name,
                kms_key_id,
            } => {
                let r = self
                    .replicate(
                        &scope,
                        image_id,
                        region,
                        Some(name),
                        kms_key_id.as_deref(),
                        cancel,
                    )
                    .map_err(|e| JobFailure::of(&e, false))?;
                entities.image_id = Some(r.id);
                entities.image_name = Some(r.name);
            }
            JobSpec::Export {
                image_id,
                target,
                format,
            } => {
                let r = self.export_object(
                    &scope,
                    job,
                    image_id,
                    target,
                    format,
                    objects,
                    &mut on_progress,
                    cancel,
                )?;
                entities.image_id = Some(r.0);
                entities.image_name = Some(r.1);
            }
            JobSpec::AddMembers { images, projects } => {
                for image in images {
                    for project in projects {
                        let done = self.share(&scope, image, project, &scope.region);
                        entities
                            .results
                            .push(member_result(image, project, done.map(|_| ())));
                    }
                }
            }
            JobSpec::UpdateMembers {
                images,
                project,
                status,
            } => {
                for image in images {
                    let done = match status {
                        MemberStatus::Accepted => self.accept(&scope, image),
                        _ => self.reject(&scope, image),
                    };
                    entities.results.push(member_result(image, project, done));
                }
            }
            JobSpec::DelMembers { images, projects } => {
                for image in images {
                    for project in projects {
                        let done = self.unshare(&scope, image, project);
                        entities.results.push(member_result(image, project, done));
                    }
                }
            }
        }
        // A member job fails when any of its shares failed, with the first refusal's code;
        // its results say which.
        if let Some(bad) = entities.results.iter().find(|r| r.status != "success") {
            let code = ims_errors::ALL
                .iter()
                .find(|c| c.code == bad.status)
                .copied()
                .unwrap_or(ims_errors::UNKNOWN);
            let reason = format!(
                "{} of {} failed; first: {}",
                entities
                    .results
                    .iter()
                    .filter(|r| r.status != "success")
                    .count(),
                entities.results.len(),
                bad.error.as_deref().unwrap_or("")
            );
            let mut f = JobFailure::new(code, reason);
            f.results = entities.results;
            return Err(f);
        }
        Ok(entities)
    }

    /// Sets one property (IMS's extension attributes that ims gives no meaning to) of image
    /// `id`, keeping the others.
    pub fn set_property(&self, scope: &Scope, id: &str, key: &str, value: &str) -> Result<()> {
        let mut properties = self.show(scope, id)?.properties;
        properties.insert(key.to_string(), value.to_string());
        self.set_api_fields(
            scope,
            id,
            &super::upload::ApiFields {
                properties: Some(properties),
                ..Default::default()
            },
        )?;
        Ok(())
    }

    /// Exports image `image_id` as `format` into a spool file, then stores it as `target`.
    #[allow(clippy::too_many_arguments)]
    fn export_object(
        &self,
        scope: &Scope,
        job: &Job,
        image_id: &str,
        target: &str,
        format: &str,
        objects: &dyn Objects,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> std::result::Result<(String, String), JobFailure> {
        let fail = |e: ServiceError| JobFailure::of(&e, false);
        let format: Format = format.parse().map_err(|e: Error| fail(e.into()))?;
        let r = self.usable(scope, image_id).map_err(fail)?;
        if !r.disks.is_empty() || r.image_type == ImageType::Iso {
            return Err(JobFailure::new(
                ims_errors::UNSUPPORTED,
                format!(
                    "image {image_id} is a {}: it cannot be exported to one object",
                    r.image_type
                ),
            ));
        }
        if objects.exists(target).map_err(fail)? {
            return Err(JobFailure::new(
                ims_errors::EXPORT_EXISTS,
                format!("the object {target} exists"),
            ));
        }
        std::fs::create_dir_all(&self.spool_dir).map_err(|e| {
            fail(
                Error::io("create directory", e)
                    .in_file(&self.spool_dir)
                    .into(),
            )
        })?;
        let spool = self
            .spool_dir
            .join(format!("export-{}.{format}", job.job_id));
        let done = self
            .export(
                scope,
                image_id,
                format,
                &spool,
                None,
                &CreateOptions::default(),
                progress,
                cancel,
            )
            .map_err(fail)
            .and_then(|r| {
                cancel.check().map_err(|e| fail(e.into()))?;
                objects.put(target, &spool).map_err(fail)?;
                Ok((r.id, r.name))
            });
        let _ = std::fs::remove_file(&spool);
        done
    }

    /// Ends `FAIL` every `RUNNING` job whose owner stopped: its lease ran out, or it is a
    /// process of this host that no longer runs. Then settles the images they left
    /// ([`Ims::recover`]). Returns the jobs failed.
    pub fn fail_stale_jobs(&self) -> Result<Vec<String>> {
        let now = now_millis();
        let host = Some(super::job::host_id());
        let mut failed = Vec::new();
        for job in self.catalog.running_jobs()? {
            let expired = job.lease_until.is_none_or(|l| l < now);
            let dead = job
                .owner
                .as_deref()
                .and_then(owner_process)
                .is_some_and(|(h, pid)| Some(h) == host.as_deref() && !process_alive(pid));
            if expired || dead {
                let why = format!(
                    "{INTERRUPTED} ({})",
                    job.owner.as_deref().unwrap_or("no owner")
                );
                let new = job.clone().failed(ims_errors::UNKNOWN.code, &why);
                if self.catalog.replace_job(&job, &new)? {
                    // An import's image waits no more, and its staged data is dropped.
                    if let JobSpec::Import { image_id, .. } = &job.spec {
                        self.abandon_import(image_id, &why)?;
                    }
                    failed.push(job.job_id);
                }
            }
        }
        if !failed.is_empty() {
            self.recover()?;
        }
        Ok(failed)
    }
}

fn member_result(image: &str, project: &str, done: Result<()>) -> MemberResult {
    match done {
        Ok(()) => MemberResult {
            image_id: image.to_string(),
            project_id: project.to_string(),
            status: "success".to_string(),
            error: None,
        },
        Err(e) => {
            let f = JobFailure::of(&e, false);
            MemberResult {
                image_id: image.to_string(),
                project_id: project.to_string(),
                status: f.code.code.to_string(),
                error: Some(f.reason),
            }
        }
    }
}

/// Whether process `pid` of this host runs (a process we may not signal runs too).
fn process_alive(pid: u32) -> bool {
    match i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        Some(pid) => !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    }
}

/// How a [`JobPool`] runs.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Jobs run at once (0: one per core).
    pub workers: usize,
    /// Pipeline threads of each conversion (0: one per core; default 1, so that `workers`
    /// conversions share the cores).
    pub threads_per_job: usize,
    /// How long a claim holds without renewal; renewed every third of it. A job whose owner
    /// stops is failed by another pool once it runs out.
    pub lease: Duration,
    /// How often an idle worker looks for jobs that other processes submitted.
    pub poll: Duration,
    /// How often progress is written to the catalog, at most.
    pub progress_interval: Duration,
    /// How long an ended job is kept (then removed, as IMS forgets old jobs).
    pub keep_ended: Duration,
    /// Niceness added to the workers (and so to the conversion threads they start: Linux
    /// keeps it per thread and new threads inherit it). 0 keeps the process's; a server sets
    /// it so that its requests are answered before the conversions run.
    pub nice: i32,
}

impl Default for PoolOptions {
    fn default() -> PoolOptions {
        PoolOptions {
            workers: 0,
            threads_per_job: 1,
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            progress_interval: Duration::from_secs(1),
            keep_ended: Duration::from_secs(7 * 24 * 3600),
            nice: 0,
        }
    }
}

/// Adds `nice` to the calling thread's niceness (Linux: per thread, inherited by the threads
/// it starts). Best effort: a thread that may not change it runs as it is.
pub fn lower_priority(nice: i32) {
    if nice > 0 {
        let _ = rustix::process::nice(nice);
    }
}

/// A running job of this pool: the job as last written, and its cancel token.
struct Running {
    job: Mutex<Job>,
    cancel: CancelToken,
}

impl Running {
    fn job(&self) -> MutexGuard<'_, Job> {
        self.job.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Shared {
    ims: Arc<Ims>,
    objects: Arc<dyn Objects>,
    owner: String,
    options: PoolOptions,
    stop: AtomicBool,
    /// Counts submissions, so a worker that was busy does not sleep through one.
    wake: Mutex<u64>,
    woken: Condvar,
    running: Mutex<HashMap<String, Arc<Running>>>,
}

impl Shared {
    fn running(&self) -> MutexGuard<'_, HashMap<String, Arc<Running>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `change` of the running job, compare-and-set on what was last written; says
    /// whether the pool still holds the job.
    fn save(&self, run: &Running, change: impl FnOnce(Job) -> Job) -> bool {
        let mut current = run.job();
        if current.status.is_final() {
            // Ended already: a late renewal or progress report writes nothing.
            return true;
        }
        let new = change(current.clone());
        match self.ims.catalog.replace_job(&current, &new) {
            Ok(true) => {
                *current = new;
                true
            }
            Ok(false) => false,
            // The catalog is unreachable: the claim stands until its lease runs out.
            Err(_) => true,
        }
    }

    fn lease_until(&self) -> i64 {
        let lease = i64::try_from(self.options.lease.as_millis()).unwrap_or(i64::MAX);
        now_millis().saturating_add(lease)
    }
}

/// A bounded pool of workers that run the catalog's jobs (see the module doc). Dropping it
/// (or [`JobPool::shutdown`]) cancels the jobs it runs, which end `FAIL`, and joins its
/// threads.
pub struct JobPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl JobPool {
    /// Starts the workers over `ims`, with `objects` for the jobs' objects; fails the jobs
    /// that stopped with their process first ([`Ims::fail_stale_jobs`]).
    pub fn start(
        ims: Arc<Ims>,
        objects: Arc<dyn Objects>,
        options: PoolOptions,
    ) -> Result<JobPool> {
        ims.fail_stale_jobs()?;
        let workers = match options.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let shared = Arc::new(Shared {
            ims,
            objects,
            owner: owner_name(),
            options,
            stop: AtomicBool::new(false),
            wake: Mutex::new(0),
            woken: Condvar::new(),
            running: Mutex::new(HashMap::new()),
        });
        let mut threads = Vec::new();
        for i in 0..workers {
            let s = Arc::clone(&shared);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ims-job-{i}"))
                    .spawn(move || {
                        lower_priority(s.options.nice);
                        worker(&s)
                    })
                    .map_err(|e| Error::io("start a job worker", e))?,
            );
        }
        let s = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .name("ims-job-lease".into())
                .spawn(move || keeper(&s))
                .map_err(|e| Error::io("start the job lease keeper", e))?,
        );
        Ok(JobPool { shared, threads })
    }

    /// The service the pool runs jobs of.
    pub fn ims(&self) -> &Arc<Ims> {
        &self.shared.ims
    }

    /// This pool's owner name, as its claimed jobs record it.
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// Records a job ([`Ims::submit_job`]) and wakes a worker.
    pub fn submit(&self, scope: &Scope, spec: JobSpec) -> Result<Job> {
        let job = self.shared.ims.submit_job(scope, spec)?;
        self.notify();
        Ok(job)
    }

    /// The job `id` if it is `scope`'s project's.
    pub fn job(&self, scope: &Scope, id: &str) -> Result<Option<Job>> {
        self.shared.ims.job(scope, id)
    }

    /// Cancels job `id` of `scope`'s project: one not begun ends `FAIL` at once; one this pool
    /// runs is stopped and ends `FAIL`. Says whether it was cancelled (not when it has ended
    /// already, or runs in another process).
    pub fn cancel(&self, scope: &Scope, id: &str) -> Result<bool> {
        let Some(job) = self.job(scope, id)? else {
            return Ok(false);
        };
        match job.status {
            JobStatus::Init => {
                let new = job.clone().failed(ims_errors::UNKNOWN.code, "cancelled");
                self.shared.ims.catalog.replace_job(&job, &new)
            }
            JobStatus::Running => match self.shared.running().get(id) {
                Some(run) => {
                    run.cancel.cancel();
                    Ok(true)
                }
                None => Ok(false),
            },
            _ => Ok(false),
        }
    }

    /// Waits until job `id` ends or `timeout` passes; returns it as last read.
    pub fn wait(&self, scope: &Scope, id: &str, timeout: Duration) -> Result<Option<Job>> {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.job(scope, id)?;
            if job.as_ref().is_none_or(|j| j.status.is_final()) || Instant::now() >= deadline {
                return Ok(job);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn notify(&self) {
        let mut n = self.shared.wake.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.wrapping_add(1);
        self.shared.woken.notify_all();
    }

    /// Stops the pool: cancels its running jobs (they end `FAIL`) and joins its threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for run in self.shared.running().values() {
            run.cancel.cancel();
        }
        self.notify();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for JobPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A worker: claims a job, runs it, ends it; sleeps when there is none.
fn worker(s: &Shared) {
    while !s.stop.load(Ordering::SeqCst) {
        let seen = *s.wake.lock().unwrap_or_else(|p| p.into_inner());
        match s.ims.catalog.claim_job(&s.owner, s.lease_until()) {
            Ok(Some(job)) => run_one(s, job),
            Ok(None) | Err(_) => {
                let guard = s.wake.lock().unwrap_or_else(|p| p.into_inner());
                if *guard == seen && !s.stop.load(Ordering::SeqCst) {
                    let _ = s.woken.wait_timeout(guard, s.options.poll);
                }
            }
        }
    }
}

fn run_one(s: &Shared, job: Job) {
    let id = job.job_id.clone();
    let run = Arc::new(Running {
        job: Mutex::new(job.clone()),
        cancel: CancelToken::new(),
    });
    s.running().insert(id.clone(), Arc::clone(&run));
    if s.stop.load(Ordering::SeqCst) {
        run.cancel.cancel();
    }
    let mut last = Instant::now();
    let mut progress = |pct: f64| {
        if last.elapsed() >= s.options.progress_interval {
            last = Instant::now();
            if !s.save(&run, |mut j| {
                j.entities.process_percent = pct;
                j
            }) {
                // Another process failed the job as stale: stop working on it.
                run.cancel.cancel();
            }
        }
    };
    let outcome = s.ims.run_job(
        &job,
        s.objects.as_ref(),
        s.options.threads_per_job,
        &mut progress,
        &run.cancel,
    );
    s.save(&run, |j| match outcome {
        Ok(entities) => j.succeeded(entities),
        Err(f) => {
            let mut j = j.failed(f.code.code, &f.reason);
            j.entities.results = f.results;
            if let Some(image) = match &j.spec {
                JobSpec::Copy { image_id, .. }
                | JobSpec::Replicate { image_id, .. }
                | JobSpec::Export { image_id, .. } => Some(image_id.clone()),
                _ => None,
            } {
                j.entities.image_id.get_or_insert(image);
            }
            j
        }
    });
    s.running().remove(&id);
}

/// Renews the leases of the pool's running jobs every third of a lease (a job whose renewal
/// is refused was failed as stale elsewhere: it is cancelled here), and every lease fails stale
/// jobs of other owners, settles what dead processes left in the store ([`Ims::recover`]) and
/// removes the jobs that ended long ago (`keep_ended`).
fn keeper(s: &Shared) {
    let tick = (s.options.lease / 3).max(Duration::from_millis(10));
    let mut last_sweep = Instant::now();
    while !s.stop.load(Ordering::SeqCst) {
        {
            let guard = s.wake.lock().unwrap_or_else(|p| p.into_inner());
            let _ = s.woken.wait_timeout(guard, tick);
        }
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        let runs: Vec<Arc<Running>> = s.running().values().cloned().collect();
        for run in runs {
            let until = s.lease_until();
            if !s.save(&run, |mut j| {
                j.lease_until = Some(until);
                j
            }) {
                run.cancel.cancel();
            }
        }
        if last_sweep.elapsed() >= s.options.lease {
            last_sweep = Instant::now();
            // A write another process left is settled once the store sees it dead, which for
            // an object store is a lease after its process stopped: look again every period
            // (failing stale jobs recovers already when it failed any).
            if !s
                .ims
                .fail_stale_jobs()
                .is_ok_and(|failed| !failed.is_empty())
            {
                let _ = s.ims.recover();
            }
            let keep = i64::try_from(s.options.keep_ended.as_millis()).unwrap_or(i64::MAX);
            let _ = s
                .ims
                .catalog
                .remove_ended_jobs(&super::job::ims_time(now_millis().saturating_sub(keep)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_checked() {
        assert_eq!(
            parse_object_url("b:dir/f.qcow2").unwrap(),
            ("b", "dir/f.qcow2")
        );
        for bad in [
            "nocolon", ":o", "b:", "b:../x", "b:a//b", "b:./x", "b/c:o", ".b:o", "b:x\n",
        ] {
            assert!(parse_object_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dir_objects_stay_under_their_root() {
        let dir = tempfile::tempdir().unwrap();
        let objects = DirObjects::new(dir.path());
        assert_eq!(
            objects.path("bkt:a/b").unwrap(),
            dir.path().join("bkt").join("a").join("b")
        );
        assert!(objects.path("bkt:../../etc/passwd").is_err());
        assert!(!objects.exists("bkt:a").unwrap());
        assert!(objects.open("bkt:a").is_err());
        let f = dir.path().join("f");
        std::fs::write(&f, b"data").unwrap();
        objects.put("bkt:x/y", &f).unwrap();
        assert!(objects.exists("bkt:x/y").unwrap());
        assert!(matches!(objects.open("bkt:x/y").unwrap(), Input::Path(_)));
    }

    #[test]
    fn this_process_is_alive_and_a_huge_pid_is_not() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
        assert!(!process_alive(4_000_000));
    }
}
