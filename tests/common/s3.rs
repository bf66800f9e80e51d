//! A real S3 server for the object-store tests, started as a separate process on free loopback
//! ports and killed when the test's `Server` is dropped:
//!
//! - Garage (`cargo install garage`, found on `PATH` or at `IMS_TEST_GARAGE`): a distributed
//!   object store, run here as a one-node cluster with its own metadata and data directories,
//!   a key the tests use, and the right to create buckets. .ci/run installs it.
//! - otherwise moto's standalone server (`pip install 'moto[server]'`), which takes any
//!   credentials. It copies a whole object for each ranged GET, which makes it unfit for
//!   timings.
//!
//! `IMS_TEST_S3=garage` or `=moto` picks one. Without either a test skips (`super::skip`:
//! fails under CI).
//!
//! `request` is a small HTTP/1.1 client for what the tests check behind the store's back
//! (buckets, the list of multipart uploads, the objects); it signs its requests (SigV4, the
//! `aws-sigv4` crate), as Garage requires.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::skip;

/// The test key (Garage's key ids are `GK` and 24 hexadecimal digits).
const KEY_ID: &str = "GK0123456789abcdef01234567";
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const REGION: &str = "us-east-1";

/// A running S3 server.
pub struct Server {
    child: Child,
    pub port: u16,
    /// Which server it is (`garage` or `moto`).
    pub kind: &'static str,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn succeeds(c: &mut Command) -> bool {
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How to run moto's server here, if it is installed.
fn moto_command() -> Option<Command> {
    if succeeds(Command::new("python3").args(["-c", "import moto.server, flask, werkzeug"])) {
        let mut c = Command::new("python3");
        c.args(["-m", "moto.server"]);
        return Some(c);
    }
    None
}

/// The Garage binary, if installed.
fn garage_binary() -> Option<PathBuf> {
    let named = std::env::var_os("IMS_TEST_GARAGE").map(PathBuf::from);
    let candidate = named.unwrap_or_else(|| PathBuf::from("garage"));
    succeeds(Command::new(&candidate).arg("--version")).then_some(candidate)
}

/// A port free now; taken again by the server a moment later.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Server {
    /// A fresh server; `None` (having said why through `skip`) when neither is installed.
    pub fn start(test: &str) -> Option<Server> {
        let want = std::env::var("IMS_TEST_S3").unwrap_or_default();
        if want != "moto" {
            if let Some(garage) = garage_binary() {
                return Some(Server::start_garage(&garage));
            }
            if want == "garage" {
                skip(test, "IMS_TEST_S3=garage, but garage is not installed");
                return None;
            }
        }
        let Some(mut cmd) = moto_command() else {
            skip(
                test,
                "no S3 server is installed (cargo install garage, or pip install 'moto[server]')",
            );
            return None;
        };
        let port = free_port();
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let server = Server {
            child,
            port,
            kind: "moto",
            _dir: None,
        };
        server.wait_ready();
        Some(server)
    }

    /// A one-node Garage cluster in a temporary directory, with the test key.
    fn start_garage(garage: &Path) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let (rpc, port) = (free_port(), free_port());
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\n\
                 data_dir = \"{data}\"\n\
                 db_engine = \"lmdb\"\n\
                 replication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_secret = \"{SECRET}\"\n\
                 [s3_api]\n\
                 s3_region = \"{REGION}\"\n\
                 api_bind_addr = \"127.0.0.1:{port}\"\n",
                meta = dir.path().join("meta").display(),
                data = dir.path().join("data").display(),
            ),
        )
        .expect("write garage.toml");
        let log = std::fs::File::create(dir.path().join("garage.log")).expect("garage log");
        let child = Command::new(garage)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start garage");
        let server = Server {
            child,
            port,
            kind: "garage",
            _dir: Some(dir),
        };
        let cli = |args: &[&str]| -> String {
            let start = Instant::now();
            loop {
                let out = Command::new(garage)
                    .arg("-c")
                    .arg(&config)
                    .args(args)
                    .output()
                    .expect("run garage");
                if out.status.success() {
                    return String::from_utf8_lossy(&out.stdout).into_owned();
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "garage {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        let node = cli(&["node", "id", "-q"]);
        let node = node
            .trim()
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        cli(&["layout", "assign", "-z", "dc1", "-c", "10G", &node]);
        cli(&["layout", "apply", "--version", "1"]);
        cli(&["key", "import", "--yes", "-n", "ims-tests", KEY_ID, SECRET]);
        cli(&["key", "allow", "--create-bucket", "ims-tests"]);
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self.try_request("GET", "/", b"").is_some() {
                eprintln!("S3 server: {} on port {}", self.kind, self.port);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{}'s server did not answer on port {} within 60 s",
            self.kind, self.port
        );
    }

    /// The endpoint for the `AWS_ENDPOINT` variable.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variables that point an `ims` process at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", REGION.into()),
        ]
    }

    /// An S3 client builder for this server, with the test key.
    #[allow(dead_code)]
    pub fn builder(&self) -> object_store::aws::AmazonS3Builder {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region(REGION)
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
    }

    /// Makes bucket `name`.
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self.request("PUT", &format!("/{name}"), b"");
        assert_eq!(status, 200, "create bucket {name}: {body}");
    }

    /// The keys of the objects in `bucket` (one page: the tests keep buckets small).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let (status, body) = self.request("GET", &format!("/{bucket}?list-type=2"), b"");
        assert_eq!(status, 200, "{body}");
        let mut keys = tags(&body, "Key");
        keys.sort();
        keys
    }

    /// The keys of the multipart uploads in progress in `bucket`.
    pub fn uploads(&self, bucket: &str) -> Vec<String> {
        let (status, body) = self.request("GET", &format!("/{bucket}?uploads"), b"");
        assert_eq!(status, 200, "{body}");
        tags(&body, "Key")
    }

    /// `METHOD PATH` with `body`, signed with the test key; the status and the body of the
    /// answer.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        self.try_request(method, path, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer"))
    }

    fn try_request(&self, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
        let host = format!("127.0.0.1:{}", self.port);
        let mut headers = vec![
            ("host".to_string(), host.clone()),
            ("content-length".to_string(), body.len().to_string()),
        ];
        headers.extend(sign(
            method,
            &format!("http://{host}{path}"),
            &headers,
            body,
        ));
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        conn.write_all(head.as_bytes()).ok()?;
        conn.write_all(body).ok()?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).ok()?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    }
}

/// The headers that sign a request with the test key (SigV4, with the payload's SHA-256).
fn sign(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<(String, String)> {
    use aws_sigv4::http_request::{
        PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
    };
    let identity =
        aws_credential_types::Credentials::new(KEY_ID, SECRET, None, None, "tests").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .expect("signing parameters")
        .into();
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .expect("a signable request");
    let (instructions, _) = sign(request, &params).expect("signed").into_parts();
    instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The texts of the elements `<TAG>...</TAG>` in `xml`, in order.
fn tags(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(rest[..j].to_string());
        rest = &rest[j + close.len()..];
    }
    out
}
