//! A real PostgreSQL server for the catalog tests: made with `initdb` in a temporary directory,
//! listening only on a Unix socket there (no TCP port to collide on), stopped and removed when
//! the last test using it ends. The tests of one binary running at once share it, each in a
//! database of its own.
//!
//! PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user that
//! Debian's package makes (through `runuser`), and the directory is given to it.
//! The binaries are found through `IMS_TEST_PG_BIN`, then `initdb` on the PATH, then Debian's
//! `/usr/lib/postgresql/VERSION/bin`. Without them a test skips (`super::skip`: fails under CI).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::{s, skip};

/// A running server.
pub struct Server {
    bin: PathBuf,
    /// As root, the user the server runs as.
    user: Option<String>,
    dir: tempfile::TempDir,
}

/// A database of its own on a shared server; the server lives while any of these does.
pub struct Database {
    pub server: Arc<Server>,
    pub name: String,
}

static SHARED: Mutex<Weak<Server>> = Mutex::new(Weak::new());
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The directory of PostgreSQL's server binaries, if they are installed.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("IMS_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("initdb"))
            .find(|p| p.is_file())
    });
    if let Some(initdb) = on_path {
        // Debian links it from elsewhere; its neighbours are in the directory it links to.
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        return real.parent().map(Path::to_path_buf);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Server {
    /// A server shared with the other tests of this binary running now, started if there is
    /// none; `None` (having said why through `skip`) when PostgreSQL is not installed.
    pub fn shared(test: &str) -> Option<Arc<Server>> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = shared.upgrade() {
            return Some(server);
        }
        let server = Arc::new(Server::start(test)?);
        *shared = Arc::downgrade(&server);
        Some(server)
    }

    fn start(test: &str) -> Option<Server> {
        let Some(bin) = bin_dir().filter(|bin| bin.join("initdb").is_file()) else {
            skip(
                test,
                "PostgreSQL's server is not installed (apt-get install postgresql)",
            );
            return None;
        };
        let user = if is_root() {
            let exists = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .is_ok_and(|o| o.status.success());
            if !exists {
                skip(
                    test,
                    "running as root, PostgreSQL needs another user and there is no `postgres` user",
                );
                return None;
            }
            Some("postgres".to_string())
        } else {
            None
        };
        let dir = tempfile::Builder::new().prefix("ims-pg").tempdir().unwrap();
        let server = Server { bin, user, dir };
        if let Some(user) = &server.user {
            let out = Command::new("chown")
                .args([&format!("{user}:"), s(server.dir.path())])
                .output()
                .unwrap();
            assert!(out.status.success(), "chown: {out:?}");
        }
        let data = server.data();
        server.as_server(
            "initdb",
            &[
                "-D",
                s(&data),
                "-U",
                "ims",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        // Only the socket in the directory; durability is not what these tests are about.
        let options = format!(
            "-k {} -c listen_addresses= -c fsync=off -c max_connections=200",
            s(server.dir.path())
        );
        let log = server.dir.path().join("server.log");
        server.as_server(
            "pg_ctl",
            &[
                "-D",
                s(&data),
                "-l",
                s(&log),
                "-w",
                "-t",
                "120",
                "-o",
                &options,
                "start",
            ],
        );
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of the server's programs as the user the server runs as; fails the test if it
    /// fails.
    fn as_server(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        // The server's user may not be allowed into the test's directory.
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `psql` on `database` as the superuser `ims`: runs `sql`, returns what it prints
    /// (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", s(self.dir.path()), "-U", "ims", "-d", database])
            .args(["-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The address of `database` for `--catalog` and `PostgresCatalog::open`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql:///{database}?host={}&user=ims",
            s(self.dir.path())
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let data = self.data();
        // Immediate: the data is thrown away with the directory.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.as_server("pg_ctl", &["-D", s(&data), "-m", "immediate", "-w", "stop"])
        }));
    }
}

impl Database {
    /// A new empty database on the shared server; `None` when PostgreSQL is not installed.
    pub fn new(test: &str) -> Option<Database> {
        let server = Server::shared(test)?;
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        server.psql("postgres", &format!("CREATE DATABASE {name}"));
        Some(Database { server, name })
    }

    /// Its address for `--catalog` and `PostgresCatalog::open`.
    pub fn url(&self) -> String {
        self.server.url(&self.name)
    }

    /// Runs `sql` in it through `psql`; returns what it prints.
    pub fn psql(&self, sql: &str) -> String {
        self.server.psql(&self.name, sql)
    }
}
