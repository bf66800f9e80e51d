//! The library as a service links it, with an image store of its own, through the public API
//! only: an in-memory `ImageStore` written here (no crate type), under `Ims::with` and the
//! SQLite catalog. An image given as a `Storage` is registered, replicated to another region,
//! exported and compared with its source; then writes left by a "dead process" are recovered:
//! their records killed and their data dropped, while a live write is left alone.

#![cfg(feature = "sqlite")]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ims::io::AppendSink;
use ims::register::{
    ImageRecord, ImageStore, ImageType, Ims, Limits, RegisterRequest, Scope, SqliteCatalog, Status,
    StoreWriter, UnfinishedWrite,
};
use ims::{CancelToken, CreateOptions, Error, Format, Input, MemoryStorage, Storage};
use sha2::{Digest, Sha256};

/// What the store holds: committed objects, and writes begun and not ended (as an object store
/// holds multipart uploads in progress, with the parts sent so far).
#[derive(Default)]
struct Shelves {
    objects: HashMap<String, Vec<u8>>,
    writes: HashMap<String, Pending>,
    next_write: u64,
}

/// A write in progress: its data so far (none once committed) and its owner, a process token
/// that is alive while the process that began the write is.
struct Pending {
    id: u64,
    data: Vec<u8>,
    owner: Weak<()>,
}

/// An image store in memory. Clones share the shelves, as two services over one object store
/// would. `process` is this process's liveness token; [`MemStore::restart`] replaces it, which
/// is what a crash does to the writes it owned.
#[derive(Clone, Default)]
struct MemStore {
    shelves: Arc<Mutex<Shelves>>,
    process: Arc<Mutex<Arc<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemStore {
    /// The process stops without running any destructor and starts again: the writes it had
    /// begun are left, owned by nobody.
    fn restart(&self) {
        *lock(&self.process) = Arc::new(());
    }

    fn object(&self, key: &str) -> Option<Vec<u8>> {
        lock(&self.shelves).objects.get(key).cloned()
    }

    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.shelves).objects.keys().cloned().collect();
        keys.sort();
        keys
    }

    fn writes(&self) -> Vec<UnfinishedWrite> {
        let mut w = self.unfinished().unwrap();
        w.sort_by(|a, b| a.key.cmp(&b.key));
        w
    }
}

fn missing(key: &str) -> Error {
    Error::io(
        "open",
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("no object {key}")),
    )
}

/// A write of [`MemStore`]: appends go to its pending entry, commit moves them to the objects.
struct MemWriter {
    shelves: Arc<Mutex<Shelves>>,
    key: String,
    id: u64,
    position: u64,
    committed: bool,
}

impl MemWriter {
    fn with_data(&mut self, f: impl FnOnce(&mut Vec<u8>)) -> ims::Result<()> {
        if self.committed {
            return Err(Error::InvalidArgument("appended after commit".into()));
        }
        let mut shelves = lock(&self.shelves);
        match shelves.writes.get_mut(&self.key) {
            Some(p) if p.id == self.id => {
                f(&mut p.data);
                self.position = p.data.len() as u64;
                Ok(())
            }
            _ => Err(Error::InvalidArgument(format!(
                "the write of {} was discarded",
                self.key
            ))),
        }
    }
}

impl AppendSink for MemWriter {
    fn append(&mut self, data: &[u8]) -> ims::Result<()> {
        self.with_data(|d| d.extend_from_slice(data))
    }

    fn append_zeros(&mut self, len: u64) -> ims::Result<()> {
        self.with_data(|d| d.resize(d.len() + len as usize, 0))
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn finish(&mut self) -> ims::Result<()> {
        Ok(())
    }
}

impl StoreWriter for MemWriter {
    fn commit(&mut self) -> ims::Result<u64> {
        let mut data = Vec::new();
        self.with_data(|d| data = std::mem::take(d))?;
        let len = data.len() as u64;
        lock(&self.shelves).objects.insert(self.key.clone(), data);
        self.committed = true;
        Ok(len)
    }

    fn abort(self: Box<Self>) {
        drop(self);
    }
}

impl Drop for MemWriter {
    /// Ends the write: its uncommitted data goes, a committed object stays.
    fn drop(&mut self) {
        let mut shelves = lock(&self.shelves);
        if shelves
            .writes
            .get(&self.key)
            .is_some_and(|p| p.id == self.id)
        {
            shelves.writes.remove(&self.key);
        }
    }
}

impl ImageStore for MemStore {
    fn begin(&self, key: &str) -> ims::Result<Box<dyn StoreWriter>> {
        let owner = Arc::downgrade(&lock(&self.process));
        let mut shelves = lock(&self.shelves);
        shelves.next_write += 1;
        let id = shelves.next_write;
        shelves.writes.insert(
            key.to_string(),
            Pending {
                id,
                data: Vec::new(),
                owner,
            },
        );
        Ok(Box::new(MemWriter {
            shelves: self.shelves.clone(),
            key: key.to_string(),
            id,
            position: 0,
            committed: false,
        }))
    }

    fn open(&self, key: &str) -> ims::Result<Arc<dyn Storage>> {
        let data = self.object(key).ok_or_else(|| missing(key))?;
        Ok(Arc::new(MemoryStorage::new(data)))
    }

    fn remove(&self, key: &str) -> ims::Result<()> {
        lock(&self.shelves).objects.remove(key);
        Ok(())
    }

    fn copy(&self, from: &str, to: &str, cancel: &CancelToken) -> ims::Result<u64> {
        cancel.check()?;
        let data = self.object(from).ok_or_else(|| missing(from))?;
        let len = data.len() as u64;
        lock(&self.shelves).objects.insert(to.to_string(), data);
        Ok(len)
    }

    fn unfinished(&self) -> ims::Result<Vec<UnfinishedWrite>> {
        Ok(lock(&self.shelves)
            .writes
            .iter()
            .map(|(key, p)| UnfinishedWrite::new(key, p.owner.upgrade().is_some()))
            .collect())
    }

    fn discard(&self, key: &str) -> ims::Result<()> {
        let mut shelves = lock(&self.shelves);
        if shelves
            .writes
            .get(key)
            .is_some_and(|p| p.owner.upgrade().is_none())
        {
            shelves.writes.remove(key);
        }
        Ok(())
    }
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name),
    )
    .unwrap()
}

/// A record left `saving` by a registration whose process stopped, as the catalog holds it.
fn saving(ims: &Ims, name: &str) -> ImageRecord {
    let mut r = ImageRecord::new(name, "owner", "r1", ImageType::Data);
    r.status = Status::Saving;
    r.store_format = "zvhd2".into();
    r.store_key = format!("r1/{}.zvhd2", r.id);
    ims.operator_put(&r).unwrap();
    r
}

#[test]
fn a_service_store_registers_replicates_exports_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("catalog.db");
    let store = MemStore::default();
    let open = || {
        Ims::with(
            Box::new(SqliteCatalog::open(&db).unwrap()),
            Box::new(store.clone()),
            Limits::default(),
        )
        .unwrap()
    };
    let ims = open();
    let scope = Scope::new("owner", "r1");
    let never = CancelToken::new();

    // Register: a QCOW2 image served from memory, stored as ZVHD2 in the service's store.
    let source = Input::Storage {
        storage: Arc::new(MemoryStorage::new(testdata("sample.qcow2"))),
        name: "sample.qcow2".into(),
    };
    let request = RegisterRequest::new("sample", ImageType::Data);
    let r = ims
        .register(&scope, source, &request, &mut |_| {}, &never)
        .unwrap()
        .record;
    assert_eq!(r.status, Status::Active);
    assert_eq!(
        (r.source_format.as_str(), r.store_format.as_str()),
        ("qcow2", "zvhd2")
    );
    let stored = store
        .object(&r.store_key)
        .expect("the image is in the store");
    assert_eq!(r.checksum.sha256, sha256(&stored));
    assert_eq!(r.store_size, stored.len() as u64);
    assert!(store.writes().is_empty(), "{:?}", store.writes());

    // Replicate: a committed copy under the other region's key, checked against the checksum.
    let copy = ims
        .replicate(&scope, &r.id, "r2", Some("sample-r2"), None, &never)
        .unwrap();
    assert_eq!((copy.region.as_str(), copy.status), ("r2", Status::Active));
    assert!(copy.store_key.starts_with("r2/"), "{}", copy.store_key);
    assert!(store.object(&copy.store_key) == Some(stored.clone()));
    assert_eq!(copy.checksum, r.checksum);
    assert!(store.writes().is_empty(), "{:?}", store.writes());

    // Export, from the store, and from the copy: the disk qemu-img made the QCOW2 from.
    let raw = testdata("sample.raw");
    for (scope, id) in [(&scope, &r.id), (&Scope::new("owner", "r2"), &copy.id)] {
        let out = dir.path().join(format!("{id}.raw"));
        ims.export(
            scope,
            id,
            Format::Raw,
            &out,
            None,
            &CreateOptions::default(),
            &mut |_| {},
            &never,
        )
        .unwrap();
        assert!(std::fs::read(&out).unwrap() == raw, "the export differs");
    }

    // Recover. A registration that died while writing, one that died after its commit (the
    // object is there, the record not active), and one still running in this process.
    let dead = saving(&ims, "dead");
    let mut w = store.begin(&dead.store_key).unwrap();
    w.append(b"half an image").unwrap();
    std::mem::forget(w);
    let committed = saving(&ims, "committed");
    let mut w = store.begin(&committed.store_key).unwrap();
    w.append(b"a whole image").unwrap();
    w.commit().unwrap();
    std::mem::forget(w);
    store.restart();
    let running = saving(&ims, "running");
    let mut live = store.begin(&running.store_key).unwrap();
    live.append(b"being written").unwrap();
    assert_eq!(
        store.writes().iter().filter(|w| !w.live).count(),
        2,
        "{:?}",
        store.writes()
    );

    let mut killed = ims.recover().unwrap().killed;
    killed.sort();
    let mut expected = vec![dead.id.clone(), committed.id.clone()];
    expected.sort();
    assert_eq!(killed, expected);
    for r in [&dead, &committed] {
        let now = ims.show(&scope, &r.id).unwrap();
        assert_eq!(now.status, Status::Killed);
        assert!(
            now.status_reason
                .as_deref()
                .unwrap()
                .contains("interrupted"),
            "{now:?}"
        );
        assert_eq!(
            store.object(&r.store_key),
            None,
            "{}'s data was kept",
            r.name
        );
    }
    // The dead writes are discarded; the live one is untouched, and so are the active images.
    assert_eq!(
        store.writes(),
        [UnfinishedWrite::new(&running.store_key, true)]
    );
    assert_eq!(
        ims.show(&scope, &running.id).unwrap().status,
        Status::Saving
    );
    let mut active = vec![r.store_key.clone(), copy.store_key.clone()];
    active.sort();
    assert_eq!(store.keys(), active);

    // Its write ended without its record being settled (the writer dropped, the process
    // gone): the next service to start over the same catalog and store kills the record.
    drop(live);
    let again = open();
    assert_eq!(
        again.show(&scope, &running.id).unwrap().status,
        Status::Killed
    );
    assert_eq!(again.show(&scope, &r.id).unwrap().status, Status::Active);
    assert!(store.writes().is_empty());
    assert_eq!(store.keys(), active);
}
