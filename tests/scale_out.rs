//! Many processes, many machines: `ims` processes that share only a PostgreSQL catalog and an
//! S3 bucket (Garage's or moto's server), each with a home directory of its own (its own limits file and
//! spool; nothing else in common), register, share and recover at once, and nothing is lost:
//!
//! - 60 registrations at once against a quota of 50: exactly 50 images `active` and 10 clear
//!   `quota_exceeded` refusals, 50 objects in the bucket and no upload or write marker left;
//! - 130 share requests at once: exactly 128 members and 2 `too_many_members` refusals;
//! - a registration killed with SIGKILL mid-upload leaves no `active` record; after its lease,
//!   a process of another machine (the dead one's home removed) kills the record and aborts the
//!   multipart upload, and no record is left `saving`.
//!
//! Each test prints its figures (`cargo test --test scale_out -- --nocapture`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::catalog::{ok_json, random_raw};
use common::postgres::Database;
use common::s;
use common::s3::Server;

const MIB: u64 = 1 << 20;
const BUCKET: &str = "images";
/// The lease of the registration killed: short, so that the test need not wait a minute.
const LEASE: Duration = Duration::from_secs(6);
/// The "machines": a home directory each.
const MACHINES: usize = 3;

/// A PostgreSQL database and an S3 bucket, and the homes of the machines sharing them.
struct Cluster {
    db: Database,
    server: Server,
    homes: Vec<PathBuf>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `None` (the test skipped, saying why) without PostgreSQL or an S3 server.
    fn start(test: &str) -> Option<Cluster> {
        let db = Database::new(test)?;
        let server = Server::start(test)?;
        server.create_bucket(BUCKET);
        let dir = tempfile::tempdir().unwrap();
        let homes: Vec<PathBuf> = (0..MACHINES)
            .map(|i| {
                let home = dir.path().join(format!("machine{i}"));
                std::fs::create_dir_all(&home).unwrap();
                std::fs::write(
                    home.join("limits.json"),
                    r#"{"private_image_quota": 50, "max_members": 128}"#,
                )
                .unwrap();
                home
            })
            .collect();
        Some(Cluster {
            db,
            server,
            homes,
            dir,
        })
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ims ARGS` on machine `machine` as `project` in region r1, on the shared catalog and
    /// store (given by the environment, as a deployment would).
    fn command(&self, machine: usize, project: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ims"));
        c.args(args)
            .env("IMS_HOME", &self.homes[machine % self.homes.len()])
            .env("IMS_PROJECT", project)
            .env("IMS_REGION", "r1")
            .env("IMS_CATALOG", self.db.url())
            .env("IMS_STORE", format!("s3://{BUCKET}/ims"))
            .env("IMS_S3_PART_SIZE", "5242880")
            .env_remove("IMS_TEST_CRASH_AT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                c.env_remove(k);
            }
        }
        for (k, v) in self.server.env() {
            c.env(k, v);
        }
        c
    }

    fn run(&self, machine: usize, project: &str, args: &[&str]) -> Output {
        self.command(machine, project, args).output().unwrap()
    }

    /// One `psql` answer, trimmed.
    fn sql(&self, query: &str) -> String {
        self.db.psql(query).trim().to_string()
    }

    /// Image objects, write markers and multipart uploads in the bucket.
    fn bucket(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let keys = self.server.keys(BUCKET);
        let (markers, objects) = keys.into_iter().partition(|k| k.contains("/.ims-writes/"));
        (objects, markers, self.server.uploads(BUCKET))
    }
}

/// Starts every command, all at once, and waits for them all.
fn all_at_once(commands: Vec<Command>) -> (Vec<Output>, Duration) {
    let start = Instant::now();
    let children: Vec<Child> = commands
        .into_iter()
        .map(|mut c| c.spawn().expect("start ims"))
        .collect();
    let outs = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    (outs, start.elapsed())
}

/// How many outputs succeeded, how many were refused with `code` (exit 1, `ims: CODE: ...`),
/// and the messages of any other failure.
fn tally(outs: &[Output], code: &str) -> (usize, usize, Vec<String>) {
    let (mut ok, mut refused, mut other) = (0, 0, Vec::new());
    let prefix = format!("ims: {code}: ");
    for o in outs {
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.success() {
            ok += 1;
        } else if o.status.code() == Some(1) && err.starts_with(&prefix) {
            refused += 1;
        } else {
            other.push(format!("{:?}: {err}", o.status));
        }
    }
    (ok, refused, other)
}

#[test]
fn sixty_registrations_from_three_machines_stop_at_the_quota_of_fifty() {
    let t = "sixty_registrations_from_three_machines_stop_at_the_quota_of_fifty";
    let Some(c) = Cluster::start(t) else {
        return;
    };
    let disk = c.dir().join("disk.raw");
    random_raw(&disk, 2 * MIB, 1, 31);
    let commands = (0..60)
        .map(|i| {
            let name = format!("q{i}");
            c.command(
                i,
                "owner",
                &["register", s(&disk), "--name", &name, "--type", "data"],
            )
        })
        .collect();
    let (outs, took) = all_at_once(commands);
    let (ok, refused, other) = tally(&outs, "quota_exceeded");
    let statuses = c.sql(
        "SELECT status || '=' || COUNT(*) FROM images WHERE owner = 'owner' \
         GROUP BY status ORDER BY status",
    );
    let (objects, markers, uploads) = c.bucket();
    println!(
        "scale-out: 60 registrations at once from {MACHINES} machines (quota 50) in {:.1} s: \
         {ok} registered, {refused} quota_exceeded, {} other failures; catalog {}; bucket: {} \
         image objects, {} write markers, {} multipart uploads",
        took.as_secs_f64(),
        other.len(),
        statuses.replace('\n', ", "),
        objects.len(),
        markers.len(),
        uploads.len()
    );
    assert!(
        other.is_empty(),
        "failures other than the quota: {other:#?}"
    );
    assert_eq!((ok, refused), (50, 10));
    assert_eq!(statuses, "active=50", "records of the refused stay out");
    assert_eq!(objects.len(), 50, "{objects:?}");
    assert!(
        markers.is_empty() && uploads.is_empty(),
        "{markers:?} {uploads:?}"
    );
    // Every machine sees the same 50.
    for m in 0..MACHINES {
        let listed = ok_json(&c.run(m, "owner", &["images", "list", "--output", "json"]));
        assert_eq!(
            listed["images"].as_array().unwrap().len(),
            50,
            "machine {m}"
        );
    }
}

#[test]
fn a_hundred_and_thirty_shares_from_three_machines_give_128_members() {
    let t = "a_hundred_and_thirty_shares_from_three_machines_give_128_members";
    let Some(c) = Cluster::start(t) else {
        return;
    };
    let disk = c.dir().join("disk.raw");
    random_raw(&disk, 2 * MIB, 1, 37);
    let r = ok_json(&c.run(
        0,
        "owner",
        &[
            "register",
            s(&disk),
            "--name",
            "shared",
            "--type",
            "data",
            "--output",
            "json",
        ],
    ));
    let id = r["id"].as_str().unwrap().to_string();
    let commands = (0..130)
        .map(|i| {
            let member = format!("p{i:03}");
            c.command(i, "owner", &["images", "share", &id, "--with", &member])
        })
        .collect();
    let (outs, took) = all_at_once(commands);
    let (ok, refused, other) = tally(&outs, "too_many_members");
    let members = c.sql(&format!(
        "SELECT COUNT(*) FROM members WHERE image_id = '{id}'"
    ));
    println!(
        "scale-out: 130 share requests at once from {MACHINES} machines in {:.1} s: {ok} \
         shared, {refused} too_many_members, {} other failures; {members} members in the catalog",
        took.as_secs_f64(),
        other.len()
    );
    assert!(
        other.is_empty(),
        "failures other than the limit: {other:#?}"
    );
    assert_eq!((ok, refused), (128, 2));
    assert_eq!(members, "128");
    let listed = ok_json(&c.run(2, "owner", &["images", "members", &id, "--output", "json"]));
    assert_eq!(listed["members"].as_array().unwrap().len(), 128);
}

#[test]
fn a_registration_killed_mid_upload_is_recovered_by_another_machine() {
    let t = "a_registration_killed_mid_upload_is_recovered_by_another_machine";
    let Some(c) = Cluster::start(t) else {
        return;
    };
    let disk = c.dir().join("big.raw");
    random_raw(&disk, 160 * MIB, 160, 41);
    let mut child = c.command(
        0,
        "owner",
        &["register", s(&disk), "--name", "killed", "--type", "data"],
    );
    child.env("IMS_S3_LEASE_SECS", LEASE.as_secs().to_string());
    let mut child = child
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut uploading = false;
    while start.elapsed() < Duration::from_secs(120) && child.try_wait().unwrap().is_none() {
        if !c.server.uploads(BUCKET).is_empty() && c.sql("SELECT COUNT(*) FROM images") == "1" {
            uploading = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        uploading,
        "the registration ended before its upload was seen"
    );
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Its last heartbeat was before this.
    let killed_at = Instant::now();
    // The dead machine is gone, home and all.
    std::fs::remove_dir_all(&c.homes[0]).unwrap();
    let at_kill = c.sql("SELECT status FROM images");
    let (_, markers_at_kill, uploads_at_kill) = c.bucket();
    assert_ne!(at_kill, "active");
    assert_eq!(uploads_at_kill.len(), 1, "{uploads_at_kill:?}");
    assert_eq!(markers_at_kill.len(), 1, "{markers_at_kill:?}");

    // Within the lease the write still counts as live: another machine leaves it alone
    // (checked when that machine's command ended within the lease: a loaded one may not).
    let during = ok_json(&c.run(1, "owner", &["images", "list", "--output", "json"]));
    let during_status = during["images"][0]["status"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let within = killed_at.elapsed() < LEASE;
    if within {
        assert_ne!(during_status, "killed", "{during}");
        assert_eq!(c.server.uploads(BUCKET).len(), 1);
    }

    // Past it, any other machine's recovery (here machine 2's) settles it.
    std::thread::sleep((LEASE + Duration::from_secs(2)).saturating_sub(killed_at.elapsed()));
    let after = ok_json(&c.run(2, "owner", &["images", "list", "--output", "json"]));
    let status = c.sql("SELECT status FROM images");
    let saving = c.sql("SELECT COUNT(*) FROM images WHERE status IN ('queued', 'saving')");
    let (objects, markers, uploads) = c.bucket();
    println!(
        "scale-out: registration SIGKILLed mid-upload on machine 0 (home removed): record \
         '{at_kill}', {} upload(s), {} marker(s) after the kill; machine 1 saw '{during_status}' \
         ({} the {}-s lease); after machine 2's recovery: record '{status}', {saving} queued or \
         saving, {} upload(s), {} marker(s), {} object(s)",
        uploads_at_kill.len(),
        markers_at_kill.len(),
        if within { "within" } else { "past" },
        LEASE.as_secs(),
        uploads.len(),
        markers.len(),
        objects.len()
    );
    assert_eq!(status, "killed", "{after}");
    assert_eq!(saving, "0");
    assert!(uploads.is_empty(), "{uploads:?}");
    assert!(markers.is_empty(), "{markers:?}");
    assert!(objects.is_empty(), "{objects:?}");
}
