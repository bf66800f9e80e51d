//! One conformance suite for the image stores, run unchanged against the local directory
//! (`LocalStore`) and the object store (`S3Store` on a real S3 server, Garage or moto, a separate process):
//! what `ImageStore` promises (tests/library_store.rs shows a service's own store; this checks
//! the two that come with ims). A backend gives only how to open the store (again, as another
//! process would) and what is left of writes on it; the cases are the same.
//!
//! A dead write is made by a real process: this test binary run again as a child (the ignored
//! test `child_writer`) begins a write, appends, optionally commits, says so, and is killed
//! with SIGKILL, so the store's own liveness (a lock file, a marker's lease) is what is tested.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ims::register::{ImageStore, UnfinishedWrite, store};
use ims::{CancelToken, Storage};

const MIB: usize = 1 << 20;

/// A store to test: how to open it, and what is left of writes in it.
trait Backend {
    /// The store, opened afresh (as another process would open it).
    fn open(&self) -> Box<dyn ImageStore>;
    /// The address and environment `store::open` takes in a child process.
    fn address(&self) -> (String, Vec<(String, String)>);
    /// How long a killed writer's write may still count as live.
    fn lease(&self) -> Duration;
    /// What is left of writes begun (temporary files, markers, multipart uploads).
    fn leftovers(&self) -> Vec<String>;
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut d = vec![0u8; len];
    common::Rng::new(seed).fill(&mut d);
    d
}

fn read_all(storage: &dyn Storage) -> Vec<u8> {
    let mut buf = vec![0u8; storage.len() as usize];
    assert_eq!(storage.read_at(&mut buf, 0).unwrap(), buf.len());
    buf
}

fn object(store: &dyn ImageStore, key: &str) -> Vec<u8> {
    read_all(&*store.open(key).unwrap())
}

fn suite(b: &dyn Backend) {
    write_commit_read_copy_and_remove(b);
    an_aborted_or_dropped_write_leaves_nothing(b);
    a_live_write_is_never_discarded(b);
    killed_writers_leave_dead_writes_that_discard_clears(b);
    writers_of_several_threads_at_once(b);
    an_object_replaced_while_read_never_reads_mixed(b);
    reads_in_an_announced_order(b);
    keys_are_region_and_name(b);
    assert!(b.leftovers().is_empty(), "{:?}", b.leftovers());
}

fn write_commit_read_copy_and_remove(b: &dyn Backend) {
    let store = b.open();
    let mut d = data(12 * MIB + 5, 3);
    let mut w = store.begin("r1/a.raw").unwrap();
    w.append(&d[..7 * MIB]).unwrap();
    w.append_zeros(MIB as u64).unwrap();
    w.append(&d[8 * MIB..]).unwrap();
    assert_eq!(w.position(), d.len() as u64);
    w.finish().unwrap();
    assert!(store.open("r1/a.raw").is_err(), "visible before its commit");
    assert_eq!(w.commit().unwrap(), d.len() as u64);
    assert!(w.append(b"more").is_err(), "appended after the commit");
    // Owned until the writer goes; then nothing is left of the write.
    assert_eq!(
        b.open().unfinished().unwrap(),
        [UnfinishedWrite::new("r1/a.raw", true)]
    );
    drop(w);
    assert!(store.unfinished().unwrap().is_empty());
    d[7 * MIB..8 * MIB].fill(0);
    // Read whole, across blocks, at the end and past it, by another process too.
    let storage = b.open().open("r1/a.raw").unwrap();
    assert_eq!(storage.len(), d.len() as u64);
    assert!(read_all(&*storage) == d);
    let mut buf = vec![0u8; 3 * MIB];
    let at = 5 * MIB + 12_345;
    assert_eq!(storage.read_at(&mut buf, at as u64).unwrap(), buf.len());
    assert!(buf[..] == d[at..at + buf.len()]);
    let end = d.len() as u64;
    assert_eq!(storage.read_at(&mut buf, end - 3).unwrap(), 3);
    assert_eq!(&buf[..3], &d[d.len() - 3..]);
    assert_eq!(storage.read_at(&mut buf, end).unwrap(), 0);
    assert_eq!(storage.read_at(&mut buf, end + 10).unwrap(), 0);

    // A copy is committed under its key; a cancelled one leaves nothing.
    let never = CancelToken::new();
    assert_eq!(
        store.copy("r1/a.raw", "r2/a.raw", &never).unwrap(),
        d.len() as u64
    );
    assert!(object(&*store, "r2/a.raw") == d);
    let cancelled = CancelToken::new();
    cancelled.cancel();
    assert_eq!(
        store
            .copy("r1/a.raw", "r2/b.raw", &cancelled)
            .unwrap_err()
            .kind(),
        "cancelled"
    );
    assert!(store.open("r2/b.raw").is_err());
    assert!(store.copy("r1/none.raw", "r2/c.raw", &never).is_err());
    assert!(store.open("r2/c.raw").is_err());

    // Removed, twice (no error the second time), and gone for every process.
    store.remove("r2/a.raw").unwrap();
    store.remove("r2/a.raw").unwrap();
    assert!(b.open().open("r2/a.raw").is_err());
    store.remove("r1/a.raw").unwrap();
    // An empty object is an object.
    let mut w = store.begin("r1/empty.raw").unwrap();
    w.finish().unwrap();
    assert_eq!(w.commit().unwrap(), 0);
    drop(w);
    assert_eq!(store.open("r1/empty.raw").unwrap().len(), 0);
    store.remove("r1/empty.raw").unwrap();
    assert!(b.leftovers().is_empty(), "{:?}", b.leftovers());
}

fn an_aborted_or_dropped_write_leaves_nothing(b: &dyn Backend) {
    let store = b.open();
    let d = data(6 * MIB, 5);
    let mut w = store.begin("r1/keep.raw").unwrap();
    w.append(&d).unwrap();
    w.commit().unwrap();
    drop(w);
    // A later write of the same key, aborted: the committed object stays as it was.
    let mut w = store.begin("r1/keep.raw").unwrap();
    w.append(&data(6 * MIB, 6)).unwrap();
    w.abort();
    assert!(object(&*store, "r1/keep.raw") == d);
    // One dropped uncommitted (an error, a panic), after parts went out.
    let mut w = store.begin("r1/dropped.raw").unwrap();
    w.append(&d).unwrap();
    drop(w);
    assert!(store.open("r1/dropped.raw").is_err());
    assert!(store.unfinished().unwrap().is_empty());
    assert!(b.leftovers().is_empty(), "{:?}", b.leftovers());
    store.remove("r1/keep.raw").unwrap();
}

fn a_live_write_is_never_discarded(b: &dyn Backend) {
    let store = b.open();
    let mut w = store.begin("r1/live.raw").unwrap();
    w.append(&data(MIB, 7)).unwrap();
    let other = b.open();
    assert_eq!(
        other.unfinished().unwrap(),
        [UnfinishedWrite::new("r1/live.raw", true)]
    );
    other.discard("r1/live.raw").unwrap();
    // Still live after more than its lease: its writer lives.
    std::thread::sleep(b.lease() + Duration::from_millis(1500));
    assert_eq!(
        other.unfinished().unwrap(),
        [UnfinishedWrite::new("r1/live.raw", true)]
    );
    other.discard("r1/live.raw").unwrap();
    w.append(b"and more").unwrap();
    w.commit().unwrap();
    drop(w);
    assert_eq!(store.open("r1/live.raw").unwrap().len(), MIB as u64 + 8);
    // No write of a key: discard does nothing.
    other.discard("r1/never.raw").unwrap();
    store.remove("r1/live.raw").unwrap();
}

/// Runs `child_writer` in a child process on `key` (`commit`: commits before it waits) and
/// kills it with SIGKILL once it has written.
fn killed_writer(b: &dyn Backend, key: &str, len: usize, commit: bool) {
    let (address, env) = b.address();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_writer", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env("IMS_STORE_CHILD", &address)
        .env("IMS_STORE_CHILD_KEY", key)
        .env("IMS_STORE_CHILD_LEN", len.to_string())
        .env("IMS_STORE_CHILD_COMMIT", if commit { "1" } else { "" })
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let ready = out
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("written"));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(ready, "the child writer did not get to write");
}

fn killed_writers_leave_dead_writes_that_discard_clears(b: &dyn Backend) {
    killed_writer(b, "r1/dead.raw", 7 * MIB, false);
    killed_writer(b, "r1/done.raw", 2 * MIB, true);
    std::thread::sleep(b.lease() + Duration::from_millis(1100));
    let store = b.open();
    assert_eq!(
        store.unfinished().unwrap(),
        [
            UnfinishedWrite::new("r1/dead.raw", false),
            UnfinishedWrite::new("r1/done.raw", false)
        ]
    );
    assert!(!b.leftovers().is_empty());
    store.discard("r1/dead.raw").unwrap();
    store.discard("r1/done.raw").unwrap();
    assert!(store.unfinished().unwrap().is_empty());
    assert!(b.leftovers().is_empty(), "{:?}", b.leftovers());
    // Uncommitted data never shows; a committed object stays for the service to remove.
    assert!(store.open("r1/dead.raw").is_err());
    assert!(object(&*store, "r1/done.raw") == data(2 * MIB, 11));
    store.remove("r1/done.raw").unwrap();
}

fn writers_of_several_threads_at_once(b: &dyn Backend) {
    let store: Arc<dyn ImageStore> = Arc::from(b.open());
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                let key = format!("r1/t{i}.raw");
                let mut w = store.begin(&key).unwrap();
                for piece in 0..3 {
                    w.append(&data(2 * MIB, i * 10 + piece)).unwrap();
                }
                w.commit().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for i in 0..4u64 {
        let key = format!("r1/t{i}.raw");
        let want: Vec<u8> = (0..3).flat_map(|p| data(2 * MIB, i * 10 + p)).collect();
        assert!(object(&*store, &key) == want, "{key}");
        store.remove(&key).unwrap();
    }
}

fn an_object_replaced_while_read_never_reads_mixed(b: &dyn Backend) {
    let store = b.open();
    let (old, new) = (data(4 * MIB, 12), data(4 * MIB, 13));
    for (d, key) in [(&old, "r1/x.raw"), (&new, "r1/y.raw")] {
        let mut w = store.begin(key).unwrap();
        w.append(d).unwrap();
        w.commit().unwrap();
    }
    let storage = store.open("r1/x.raw").unwrap();
    let mut first = vec![0u8; MIB];
    assert_eq!(storage.read_at(&mut first, 0).unwrap(), MIB);
    store
        .copy("r1/y.raw", "r1/x.raw", &CancelToken::new())
        .unwrap();
    // The rest: the old object's bytes (a local file stays open) or an error (an object
    // store's reads are pinned to the version opened), never the new object's.
    let mut rest = vec![0u8; 3 * MIB];
    if let Ok(n) = storage.read_at(&mut rest, MIB as u64) {
        assert_eq!(n, rest.len());
        assert!(rest[..] == old[MIB..], "read bytes of the new object");
    }
    assert!(object(&*store, "r1/x.raw") == new);
    store.remove("r1/x.raw").unwrap();
    store.remove("r1/y.raw").unwrap();
}

/// `will_read` (an image's map, announced before a conversion reads it) changes nothing but
/// speed: reads in that order, out of it and past it give the object's bytes.
fn reads_in_an_announced_order(b: &dyn Backend) {
    let store = b.open();
    let d = data(20 * MIB + 77, 17);
    let mut w = store.begin("r1/map.raw").unwrap();
    w.append(&d).unwrap();
    w.commit().unwrap();
    drop(w);
    let storage = store.open("r1/map.raw").unwrap();
    // Scattered, out of order, overlapping, and partly past the end.
    let plan: Vec<std::ops::Range<u64>> = [(15, 2), (3, 1), (9, 4), (0, 1), (16, 10), (3, 2)]
        .iter()
        .map(|&(at, len)| at * MIB as u64 + 100..(at + len) * MIB as u64 + 100)
        .collect();
    storage.will_read(&plan[..3]);
    storage.will_read(&plan[3..]);
    for r in &plan {
        let end = r.end.min(d.len() as u64);
        let mut buf = vec![0u8; (end - r.start) as usize];
        assert_eq!(storage.read_at(&mut buf, r.start).unwrap(), buf.len());
        assert!(buf[..] == d[r.start as usize..end as usize], "{r:?}");
    }
    assert!(read_all(&*storage) == d);
    store.remove("r1/map.raw").unwrap();
}

fn keys_are_region_and_name(b: &dyn Backend) {
    let store = b.open();
    for bad in ["../x", "r1/.hidden", "r1", "r1/a/b", "/x", "r1/", ""] {
        assert!(store.begin(bad).is_err(), "{bad}");
        assert!(store.open(bad).is_err(), "{bad}");
    }
}

/// The child process of `killed_writer`: begins the write the variables name, appends, commits
/// if asked, says "written", and waits to be killed. Run by the suite, not on its own.
#[test]
#[ignore = "the child process of the dead-write cases; the store suite runs it"]
fn child_writer() {
    let Ok(address) = std::env::var("IMS_STORE_CHILD") else {
        return;
    };
    let key = std::env::var("IMS_STORE_CHILD_KEY").unwrap();
    let len: usize = std::env::var("IMS_STORE_CHILD_LEN")
        .unwrap()
        .parse()
        .unwrap();
    let store = store::open(&address).unwrap();
    let mut w = store.begin(&key).unwrap();
    w.append(&data(len, 11)).unwrap();
    if std::env::var("IMS_STORE_CHILD_COMMIT").is_ok_and(|c| !c.is_empty()) {
        w.commit().unwrap();
    } else {
        // The parts appended so far are sent, and one is in the making.
        w.append(b"x").unwrap();
    }
    println!("written");
    std::thread::sleep(Duration::from_secs(600));
    drop(w);
}

/// The local directory store.
struct Local {
    root: tempfile::TempDir,
}

impl Backend for Local {
    fn open(&self) -> Box<dyn ImageStore> {
        Box::new(ims::register::LocalStore::new(self.root.path()).unwrap())
    }

    fn address(&self) -> (String, Vec<(String, String)>) {
        (common::s(self.root.path()).to_string(), vec![])
    }

    fn lease(&self) -> Duration {
        // A lock dies with its process.
        Duration::ZERO
    }

    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for region in std::fs::read_dir(self.root.path()).unwrap().flatten() {
            if let Ok(entries) = std::fs::read_dir(region.path().join(".tmp")) {
                out.extend(entries.flatten().map(|e| e.path().display().to_string()));
            }
        }
        out
    }
}

#[test]
fn the_local_store() {
    suite(&Local {
        root: tempfile::tempdir().unwrap(),
    });
}

#[cfg(feature = "s3")]
mod s3 {
    use super::*;
    use common::s3::Server;
    use ims::register::{S3Options, S3Store};

    const BUCKET: &str = "store";
    /// The lease of the child writers (and of this process's), short so the suite is quick.
    const LEASE: Duration = Duration::from_secs(2);

    /// The S3 store on the test's S3 server, under the prefix `ims`, parts of 5 MiB (S3's smallest).
    struct S3 {
        server: Server,
    }

    impl Backend for S3 {
        fn open(&self) -> Box<dyn ImageStore> {
            let builder = self.server.builder();
            let mut options = S3Options::default();
            options.part_size = 5 << 20;
            options.lease = LEASE;
            Box::new(S3Store::with_builder(builder, BUCKET, "ims", options).unwrap())
        }

        fn address(&self) -> (String, Vec<(String, String)>) {
            let mut env: Vec<(String, String)> = self
                .server
                .env()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            env.push(("IMS_S3_PART_SIZE".into(), (5 << 20).to_string()));
            env.push(("IMS_S3_LEASE_SECS".into(), LEASE.as_secs().to_string()));
            (format!("s3://{BUCKET}/ims"), env)
        }

        fn lease(&self) -> Duration {
            LEASE
        }

        fn leftovers(&self) -> Vec<String> {
            let mut out: Vec<String> = self
                .server
                .keys(BUCKET)
                .into_iter()
                .filter(|k| k.contains(".ims-writes"))
                .collect();
            out.extend(
                self.server
                    .uploads(BUCKET)
                    .into_iter()
                    .map(|u| format!("upload {u}")),
            );
            out
        }
    }

    #[test]
    fn the_s3_store() {
        let Some(server) = Server::start("the_s3_store") else {
            return;
        };
        server.create_bucket(BUCKET);
        let b = S3 { server };
        suite(&b);
        // Nothing but what the suite left committed: nothing.
        assert!(
            b.server.keys(BUCKET).is_empty(),
            "{:?}",
            b.server.keys(BUCKET)
        );
    }
}
