//! The job record: one asynchronous operation (a registration, a copy, an export, a batch
//! share) as the catalog keeps it and as IMS shows it (`GET /v1/{project_id}/jobs/{job_id}`).
//!
//! A job is made `INIT` with what to do ([`JobSpec`]); a worker claims it (`RUNNING`, with its
//! owner name and a lease it renews while it works), runs it, and ends it `SUCCESS` or `FAIL`
//! with an IMS error code and a reason. Status, owner and lease are what the catalog compares
//! before it writes a job ([`Catalog::replace_job`](super::Catalog::replace_job)), so a job
//! is claimed, renewed and ended by one worker only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::Format;

use super::record::{ImageType, MemberStatus};
use super::register::RegisterRequest;
use super::tag::Tag;

/// Where a job is in its life, as IMS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum JobStatus {
    /// Made, waiting for a worker.
    Init,
    /// Claimed by a worker, which holds its lease.
    Running,
    /// Done.
    Success,
    /// Failed, cancelled or interrupted: `error_code` and `fail_reason` say why.
    Fail,
}

impl JobStatus {
    /// IMS's name (`INIT`, ...), also the catalog column's value.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Init => "INIT",
            JobStatus::Running => "RUNNING",
            JobStatus::Success => "SUCCESS",
            JobStatus::Fail => "FAIL",
        }
    }

    /// Whether the job has ended (`SUCCESS` or `FAIL`).
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Success | JobStatus::Fail)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for JobStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<JobStatus> {
        [
            JobStatus::Init,
            JobStatus::Running,
            JobStatus::Success,
            JobStatus::Fail,
        ]
        .into_iter()
        .find(|v| v.name() == s)
        .ok_or_else(|| Error::InvalidArgument(format!("unknown job status '{s}'")))
    }
}

/// What kind of job, by IMS's `job_type` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JobType {
    /// A system-disk (or ISO) image registered from an object (`POST /v2/cloudimages/action`).
    #[serde(rename = "imsImportImageJob")]
    ImportImage,
    /// A data-disk image registered from an object (`POST /v1/cloudimages/dataimages/action`).
    #[serde(rename = "imsImportDataImageJob")]
    ImportDataImage,
    /// The file of a queued image registered from an object (the two-step register).
    #[serde(rename = "imsNativeImportImageJob")]
    NativeImportImage,
    /// An image exported to an object.
    #[serde(rename = "imsNativeExportImageJob")]
    NativeExportImage,
    /// Images shared with projects.
    #[serde(rename = "imsAddImageMembersJob")]
    AddImageMembers,
    /// A member's answer to shares of several images.
    #[serde(rename = "imsUpdateImageMembersJob")]
    UpdateImageMembers,
    /// Images no longer shared with projects.
    #[serde(rename = "imsDelImageMembersJob")]
    DelImageMembers,
    /// An image copied within its region.
    #[serde(rename = "imsCopyImageInRegionJob")]
    CopyImageInRegion,
    /// An image copied to another region. IMS's documents name no type for it; this name
    /// follows the in-region one.
    #[serde(rename = "imsCopyImageCrossRegionJob")]
    CopyImageCrossRegion,
}

/// One image's outcome in a member job (IMS: `entities.results[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberResult {
    /// The image.
    pub image_id: String,
    /// The member project.
    pub project_id: String,
    /// `success`, or the IMG error code of the refusal.
    pub status: String,
    /// Why it was refused, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a job made or touched (IMS: `entities`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobEntities {
    /// The image made (registration, copy) or exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// Data-disk images made with a system image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_image_ids: Vec<String>,
    /// Per image and project, for member jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<MemberResult>,
    /// How far the job is, 0 to 100.
    #[serde(default)]
    pub process_percent: f64,
    /// What the job is doing now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_task: Option<String>,
}

/// A registration as a job carries it: the fields of a [`RegisterRequest`] in a form the
/// catalog keeps as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterSpec {
    /// The image's name.
    pub name: String,
    /// A description.
    #[serde(default)]
    pub description: String,
    /// `system`, `data` or `iso`.
    pub image_type: ImageType,
    /// The OS version to record instead of what inspection finds.
    #[serde(default)]
    pub os_version: Option<String>,
    /// `x86_64` or `aarch64`.
    #[serde(default)]
    pub architecture: Option<String>,
    /// `bios` or `uefi`.
    #[serde(default)]
    pub firmware: Option<String>,
    /// GiB.
    #[serde(default)]
    pub min_disk: Option<u64>,
    /// MiB.
    #[serde(default)]
    pub min_ram: u64,
    /// `KEY=VALUE` tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The store format's name (`zvhd2` by default).
    #[serde(default)]
    pub store_format: Option<String>,
    /// Record the image as encrypted with this key.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Automatic configuration of the guest after import (IMS's `is_config`), kept as the
    /// image's `__is_config_init` attribute by the caller that shows it.
    #[serde(default)]
    pub is_config: bool,
}

impl RegisterSpec {
    /// A registration of `name` as `image_type`, everything else by default.
    pub fn new(name: &str, image_type: ImageType) -> RegisterSpec {
        RegisterSpec {
            name: name.to_string(),
            description: String::new(),
            image_type,
            os_version: None,
            architecture: None,
            firmware: None,
            min_disk: None,
            min_ram: 0,
            tags: Vec::new(),
            store_format: None,
            kms_key_id: None,
            is_config: false,
        }
    }

    /// The request it stands for; a tag or format that does not parse is refused as the rules
    /// refuse it.
    pub fn to_request(&self, threads: usize) -> super::Result<RegisterRequest> {
        let mut r = RegisterRequest::new(&self.name, self.image_type);
        r.description = self.description.clone();
        r.os_version = self.os_version.clone();
        r.architecture = self.architecture.clone();
        r.firmware = self.firmware.clone();
        r.min_disk = self.min_disk;
        r.min_ram = self.min_ram;
        r.tags = self
            .tags
            .iter()
            .map(|t| t.parse::<Tag>())
            .collect::<super::Result<Vec<Tag>>>()?;
        if let Some(f) = &self.store_format {
            r.store_format = f.parse::<Format>()?;
        }
        r.kms_key_id = self.kms_key_id.clone();
        r.threads = threads;
        Ok(r)
    }
}

/// What a job does: the request it was made from, kept with it so that any worker of any
/// process can run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobSpec {
    /// Register the object `source` (`bucket:object`), with data-disk images from other
    /// objects registered together.
    Register {
        /// The object.
        source: String,
        /// The registration.
        request: RegisterSpec,
        /// Data-disk images: object and registration each.
        #[serde(default)]
        data_images: Vec<(String, RegisterSpec)>,
    },
    /// Register the object `source` into the queued image `image_id` (made without data, as
    /// the OpenStack Image API's create does): IMS's two-step registration.
    RegisterInto {
        /// The queued image.
        image_id: String,
        /// The object.
        source: String,
    },
    /// Import data into the queued image `image_id` (the OpenStack Image API's `import`),
    /// converted into `format`: the data staged for it (`glance-direct`), or first the URL `uri`
    /// staged (`web-download`).
    Import {
        /// The queued image.
        image_id: String,
        /// The URL to fetch first (`web-download`); none: the data is staged already.
        #[serde(default)]
        uri: Option<String>,
        /// The store format's name.
        format: String,
    },
    /// Copy an image within its region.
    Copy {
        /// The image.
        image_id: String,
        /// The copy's name.
        name: String,
        /// The copy's description.
        #[serde(default)]
        description: Option<String>,
    },
    /// Copy an image to another region.
    Replicate {
        /// The image.
        image_id: String,
        /// The target region.
        region: String,
        /// The copy's name.
        name: String,
        /// A key of the target region, for an encrypted image.
        #[serde(default)]
        kms_key_id: Option<String>,
    },
    /// Export an image to the object `target` (`bucket:object`) as `format`.
    Export {
        /// The image.
        image_id: String,
        /// The object written.
        target: String,
        /// The format's name (`qcow2`, `vhd`, `zvhd`, `vmdk`, `zvhd2`, `raw`).
        format: String,
    },
    /// Share each image with each project.
    AddMembers {
        /// The images.
        images: Vec<String>,
        /// The projects.
        projects: Vec<String>,
    },
    /// The member `project` answers shares of `images`.
    UpdateMembers {
        /// The images.
        images: Vec<String>,
        /// The member project (the job's own project).
        project: String,
        /// `accepted` or `rejected`.
        status: MemberStatus,
    },
    /// Stop sharing each image with each project.
    DelMembers {
        /// The images.
        images: Vec<String>,
        /// The projects.
        projects: Vec<String>,
    },
}

impl JobSpec {
    /// What a worker does for it, in a few words (IMS's `current_task` while it runs).
    pub fn task(&self) -> &'static str {
        match self {
            JobSpec::Register { .. } | JobSpec::RegisterInto { .. } | JobSpec::Import { .. } => {
                "importing the image file"
            }
            JobSpec::Copy { .. } => "copying the image",
            JobSpec::Replicate { .. } => "copying the image to another region",
            JobSpec::Export { .. } => "exporting the image",
            JobSpec::AddMembers { .. } => "sharing the images",
            JobSpec::UpdateMembers { .. } => "answering the shares",
            JobSpec::DelMembers { .. } => "removing the members",
        }
    }

    /// The IMS job type of this action.
    pub fn job_type(&self) -> JobType {
        match self {
            JobSpec::Register { request, .. } if request.image_type == ImageType::Data => {
                JobType::ImportDataImage
            }
            JobSpec::Register { .. } => JobType::ImportImage,
            JobSpec::RegisterInto { .. } | JobSpec::Import { .. } => JobType::NativeImportImage,
            JobSpec::Copy { .. } => JobType::CopyImageInRegion,
            JobSpec::Replicate { .. } => JobType::CopyImageCrossRegion,
            JobSpec::Export { .. } => JobType::NativeExportImage,
            JobSpec::AddMembers { .. } => JobType::AddImageMembers,
            JobSpec::UpdateMembers { .. } => JobType::UpdateImageMembers,
            JobSpec::DelMembers { .. } => JobType::DelImageMembers,
        }
    }
}

/// One job, as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// 32 hexadecimal digits.
    pub job_id: String,
    /// What kind.
    pub job_type: JobType,
    /// Where it is.
    pub status: JobStatus,
    /// The project that asked; only it sees the job.
    pub project: String,
    /// The region it was asked in.
    pub region: String,
    /// Whether the project asked with operator rights.
    #[serde(default)]
    pub operator: bool,
    /// When it was made ([`ims_time`]).
    pub created_at: String,
    /// When a worker began it.
    pub begin_time: Option<String>,
    /// When it ended.
    pub end_time: Option<String>,
    /// On `FAIL`, the IMG error code ([`super::ims_errors::img_error`]).
    pub error_code: Option<String>,
    /// On `FAIL`, why.
    pub fail_reason: Option<String>,
    /// What it made or touched, and its progress.
    #[serde(default)]
    pub entities: JobEntities,
    /// What to do.
    pub spec: JobSpec,
    /// The worker holding it while `RUNNING` (`HOST:PID:NONCE`, [`owner_name`]).
    pub owner: Option<String>,
    /// Until when (milliseconds since 1970) the owner's claim holds without a renewal.
    pub lease_until: Option<i64>,
}

impl Job {
    /// A new `INIT` job of `project` in `region` to do `spec`.
    pub fn new(project: &str, region: &str, spec: JobSpec) -> Job {
        Job {
            job_id: uuid::Uuid::new_v4().simple().to_string(),
            job_type: spec.job_type(),
            status: JobStatus::Init,
            project: project.to_string(),
            region: region.to_string(),
            operator: false,
            created_at: ims_time(now_millis()),
            begin_time: None,
            end_time: None,
            error_code: None,
            fail_reason: None,
            entities: JobEntities::default(),
            spec,
            owner: None,
            lease_until: None,
        }
    }

    /// The job claimed by `owner` until `lease_until` (milliseconds since 1970), `RUNNING`.
    pub fn claimed(mut self, owner: &str, lease_until: i64) -> Job {
        self.entities.current_task = Some(self.spec.task().to_string());
        self.status = JobStatus::Running;
        self.owner = Some(owner.to_string());
        self.lease_until = Some(lease_until);
        self.begin_time = Some(ims_time(now_millis()));
        self
    }

    /// The job ended `FAIL` with `code` and `reason`; the claim is let go.
    pub fn failed(mut self, code: &str, reason: &str) -> Job {
        self.entities.current_task = None;
        self.status = JobStatus::Fail;
        self.error_code = Some(code.to_string());
        self.fail_reason = Some(reason.to_string());
        self.end_time = Some(ims_time(now_millis()));
        self.lease_until = None;
        self
    }

    /// The job ended `SUCCESS` with `entities`; the claim is let go.
    pub fn succeeded(mut self, entities: JobEntities) -> Job {
        self.status = JobStatus::Success;
        self.entities = entities;
        self.entities.process_percent = 100.0;
        self.entities.current_task = None;
        self.end_time = Some(ims_time(now_millis()));
        self.lease_until = None;
        self
    }
}

/// Now, in milliseconds since 1970.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Milliseconds since 1970 as IMS writes job times: RFC 3339 UTC with milliseconds
/// (`2024-11-06T06:19:43.195Z`).
pub fn ims_time(millis: i64) -> String {
    let millis = u64::try_from(millis).unwrap_or(0);
    let secs = super::record::rfc3339(millis / 1000);
    // `...:43Z` becomes `...:43.195Z`.
    let base = secs.strip_suffix('Z').unwrap_or(&secs);
    format!("{base}.{:03}Z", millis % 1000)
}

/// This process's name as a job owner: `HOST:PID:NONCE`, where HOST is the host name and the
/// process-id namespace (`name#4026531836`: two containers sharing a host name do not see each
/// other's processes, so neither may take the other's ids for dead ones), and the nonce tells
/// apart pools of one process.
pub fn owner_name() -> String {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{}:{}:{}", host_id(), std::process::id(), &nonce[..8])
}

/// The host name and process-id namespace of this process, as [`owner_name`] writes them.
pub fn host_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && !h.contains([':', '#']))
        .unwrap_or_else(|| "localhost".to_string());
    // `pid:[4026531836]`: the namespace's inode.
    let ns: String = std::fs::read_link("/proc/self/ns/pid")
        .map(|l| {
            l.to_string_lossy()
                .chars()
                .filter(char::is_ascii_digit)
                .collect()
        })
        .unwrap_or_default();
    format!("{host}#{ns}")
}

/// The host and process id of an owner name made by [`owner_name`].
pub fn owner_process(owner: &str) -> Option<(&str, u32)> {
    let mut parts = owner.splitn(3, ':');
    let host = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    Some((host, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_milliseconds_as_ims_writes_them() {
        assert_eq!(ims_time(1_730_873_983_195), "2024-11-06T06:19:43.195Z");
        assert_eq!(ims_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(ims_time(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_job_serializes_with_ims_names() {
        let spec = JobSpec::AddMembers {
            images: vec!["i1".into()],
            projects: vec!["p2".into()],
        };
        let job = Job::new("p1", "r1", spec);
        assert_eq!(job.job_id.len(), 32);
        assert!(job.job_id.bytes().all(|b| b.is_ascii_hexdigit()));
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["job_type"], "imsAddImageMembersJob");
        assert_eq!(v["status"], "INIT");
        assert_eq!(v["spec"]["action"], "add_members");
        let back: Job = serde_json::from_value(v).unwrap();
        assert_eq!(back, job);
        let running = job.claimed("h:1:n", 5);
        assert_eq!(serde_json::to_value(&running).unwrap()["status"], "RUNNING");
        let failed = running.failed("IMG.0061", "boom");
        assert_eq!(failed.status, JobStatus::Fail);
        assert_eq!(failed.lease_until, None);
        assert_eq!(failed.entities.current_task, None);
        assert!(failed.end_time.is_some());
    }

    #[test]
    fn job_types_follow_the_action() {
        let reg = |t| JobSpec::Register {
            source: "b:o".into(),
            request: RegisterSpec::new("n", t),
            data_images: vec![],
        };
        assert_eq!(reg(ImageType::System).job_type(), JobType::ImportImage);
        assert_eq!(reg(ImageType::Iso).job_type(), JobType::ImportImage);
        assert_eq!(reg(ImageType::Data).job_type(), JobType::ImportDataImage);
        let names: Vec<String> = [
            JobType::ImportImage,
            JobType::NativeImportImage,
            JobType::NativeExportImage,
            JobType::CopyImageInRegion,
            JobType::UpdateImageMembers,
            JobType::DelImageMembers,
        ]
        .iter()
        .map(|t| {
            serde_json::to_value(t)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
        assert_eq!(
            names,
            [
                "imsImportImageJob",
                "imsNativeImportImageJob",
                "imsNativeExportImageJob",
                "imsCopyImageInRegionJob",
                "imsUpdateImageMembersJob",
                "imsDelImageMembersJob"
            ]
        );
    }

    #[test]
    fn statuses_round_trip_and_unknown_ones_are_refused() {
        for s in ["INIT", "RUNNING", "SUCCESS", "FAIL"] {
            assert_eq!(s.parse::<JobStatus>().unwrap().name(), s);
        }
        assert!("DONE".parse::<JobStatus>().is_err());
        assert!(JobStatus::Fail.is_final() && !JobStatus::Running.is_final());
    }

    #[test]
    fn owners_name_their_process() {
        let o = owner_name();
        let (host, pid) = owner_process(&o).unwrap();
        assert_eq!(host, host_id());
        assert!(host.contains('#'));
        assert_eq!(pid, std::process::id());
        assert_eq!(owner_process("nohost"), None);
        assert_eq!(owner_process("h:x:n"), None);
    }

    #[test]
    fn a_register_spec_becomes_a_request_and_bad_tags_are_refused() {
        let mut spec = RegisterSpec::new("img", ImageType::System);
        spec.tags = vec!["k=v".into()];
        spec.store_format = Some("qcow2".into());
        let r = spec.to_request(2).unwrap();
        assert_eq!(r.store_format, Format::Qcow2);
        assert_eq!(r.tags.len(), 1);
        spec.tags = vec!["novalue".into()];
        assert!(spec.to_request(2).is_err());
    }
}
