//! An `ims serve` for the server tests: started on a free loopback port (`--listen
//! 127.0.0.1:0`, the address read from its first line of output) with a temporary home and a
//! tokens file, ready once `/healthz` answers, killed when dropped. `request` is a small HTTP
//! client over it that never treats a status as an error.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The admin token: project `ops`, role `admin`.
pub const ADMIN: &str = "admin-token-0123456789";
/// A member of project `alice`.
pub const ALICE: &str = "alice-token-0123456789";
/// A member of project `bob`.
pub const BOB: &str = "bob-token-0123456789";
/// A member of project `carol`.
pub const CAROL: &str = "carol-token-0123456789";

/// The tokens file's text for the four tokens above.
pub fn tokens_json() -> String {
    serde_json::json!({
        ADMIN: {"project": "ops", "roles": ["admin"]},
        ALICE: {"project": "alice", "roles": ["member"]},
        BOB: {"project": "bob", "roles": ["member"]},
        CAROL: {"project": "carol", "roles": ["member"]},
    })
    .to_string()
}

/// A running `ims serve`.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    /// Its home directory (catalog, store, limits).
    pub home: PathBuf,
    /// Where its log (standard error) goes.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// A server on a fresh home with the default limits.
    pub fn start() -> Server {
        Server::start_with(None, &[])
    }

    /// A server whose home holds `limits` as `limits.json` (when given), started with the extra
    /// arguments `args`.
    pub fn start_with(limits: Option<&serde_json::Value>, args: &[&str]) -> Server {
        Server::start_env(limits, args, &[])
    }

    /// As [`Server::start_with`], with the variables `env` set for the server (an S3 service's).
    pub fn start_env(
        limits: Option<&serde_json::Value>,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        if let Some(limits) = limits {
            std::fs::write(home.join("limits.json"), limits.to_string()).unwrap();
        }
        let tokens = dir.path().join("tokens.json");
        std::fs::write(&tokens, tokens_json()).unwrap();
        Server::spawn(dir, home, args, env)
    }

    /// The server on `home` with the variables `env`, its log appended to `DIR/server.log`,
    /// `https` with a certificate.
    fn spawn(
        dir: tempfile::TempDir,
        home: PathBuf,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Server {
        let tokens = dir.path().join("tokens.json");
        let log = dir.path().join("server.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ims"))
            .args(["serve", "--listen", "127.0.0.1:0", "--tokens"])
            .arg(&tokens)
            .arg("--home")
            .arg(&home)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start ims serve");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's first line");
        let url = line
            .trim()
            .strip_prefix("ims serve: listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        let server = Server {
            child,
            url,
            home,
            log,
            _dir: dir,
        };
        if server.url.starts_with("http://") {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if server.get("/healthz", None).status == 200 {
                    break;
                }
                assert!(Instant::now() < deadline, "/healthz never answered");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        server
    }

    /// Kills the server at once (SIGKILL, as a crash) and starts another on the same home.
    pub fn crash_and_restart(mut self, args: &[&str]) -> Server {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("temp dir");
        let old = std::mem::replace(&mut self._dir, dir);
        Server::spawn(old, self.home.clone(), args, &[])
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A request to `path` (appended to the server's URL).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        request(method, &format!("{}{path}", self.url), token, headers, body)
    }

    /// `GET path`.
    pub fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.request("GET", path, token, &[], None)
    }

    /// A JSON request: `body` sent as `application/json` (or `content_type`).
    pub fn json(
        &self,
        method: &str,
        path: &str,
        token: &str,
        content_type: Option<&str>,
        body: &serde_json::Value,
    ) -> Reply {
        let text = body.to_string();
        self.request(
            method,
            path,
            Some(token),
            &[("content-type", content_type.unwrap_or("application/json"))],
            Some(text.as_bytes()),
        )
    }
}

impl Server {
    /// `PUT` of `data` as a chunked body (no size declared), as glanceclient sends uploads.
    /// `None` when the server closed the connection before the client could finish sending
    /// (it refused the upload midway).
    pub fn put_chunked(&self, path: &str, token: &str, data: Vec<u8>) -> Option<Reply> {
        self.put_reader(path, token, std::io::Cursor::new(data))
    }

    /// `PUT` of what `reader` gives, as a chunked body; `None` when the connection failed.
    pub fn put_reader(
        &self,
        path: &str,
        token: &str,
        reader: impl Read + 'static,
    ) -> Option<Reply> {
        let agent = agent();
        let body = ureq::SendBody::from_owned_reader(reader);
        let request = ureq::http::Request::builder()
            .method("PUT")
            .uri(format!("{}{path}", self.url))
            .header("x-auth-token", token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .unwrap();
        agent.run(request).ok().map(reply)
    }
}

/// `PUT` of what `reader` gives to the absolute base `url` + `path`, chunked; `None` when the
/// connection failed.
pub fn put_reader_at(
    url: &str,
    path: &str,
    token: &str,
    reader: impl Read + 'static,
) -> Option<Reply> {
    let body = ureq::SendBody::from_owned_reader(reader);
    let request = ureq::http::Request::builder()
        .method("PUT")
        .uri(format!("{url}{path}"))
        .header("x-auth-token", token)
        .header("content-type", "application/octet-stream")
        .body(body)
        .unwrap();
    agent().run(request).ok().map(reply)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn reply(response: ureq::http::Response<ureq::Body>) -> Reply {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .read_to_end(&mut body)
        .expect("read the body");
    Reply {
        status,
        headers,
        body,
    }
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics, showing it, if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request to an absolute URL; `body` sized (a `Content-Length`).
pub fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let agent = agent();
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        builder = builder.header("x-auth-token", t);
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = match body {
        Some(b) => agent.run(builder.body(b.to_vec()).unwrap()),
        None => agent.run(builder.body(()).unwrap()),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    reply(response)
}

/// Whether the Python clients are installed (`python3 -m pip install python-glanceclient
/// openstacksdk python-openstackclient`); says why a test skips when not (fails under CI).
pub fn have_clients(test: &str) -> bool {
    let ok = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let have = ok("glance", &["--version"])
        && ok("openstack", &["--version"])
        && ok("python3", &["-c", "import openstack, glanceclient"]);
    if !have {
        super::skip(
            test,
            "the OpenStack clients are not installed (python3 -m pip install python-glanceclient openstacksdk python-openstackclient)",
        );
    }
    have
}

/// Runs a client command with a clean client environment (no OS_* variables, a temporary
/// HOME so glanceclient's schema cache starts empty); returns its output.
pub fn client(cmd: &str, args: &[&str], home: &Path) -> std::process::Output {
    client_with_input(cmd, args, home, None)
}

/// [`client`] with `input` as its standard input (the image data glanceclient reads from a
/// pipe or a redirected file), else none.
pub fn client_with_input(
    cmd: &str,
    args: &[&str],
    home: &Path,
    input: Option<&Path>,
) -> std::process::Output {
    let mut c = Command::new(cmd);
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("OS_") {
            c.env_remove(k);
        }
    }
    let stdin = match input {
        Some(file) => Stdio::from(std::fs::File::open(file).expect("the client's input")),
        None => Stdio::null(),
    };
    c.env("HOME", home)
        .stdin(stdin)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}
