//! A real S3 server for the object-store tests: moto's standalone server (`pip install
//! 'moto[server]'`), started as a separate process on a free loopback port and killed when the
//! test's `Server` is dropped. It speaks the S3 protocol over plain HTTP and takes any
//! credentials. Without moto a test skips (`super::skip`: fails under CI).
//!
//! `request` is a bare HTTP/1.1 client for what the tests check behind the store's back
//! (buckets, the list of multipart uploads, the objects); moto does not check signatures.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::skip;

/// A running moto server.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to run moto's server here, if it is installed.
fn moto_command() -> Option<Command> {
    let ok = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok(Command::new("python3").args(["-c", "import moto.server, flask, werkzeug"])) {
        let mut c = Command::new("python3");
        c.args(["-m", "moto.server"]);
        return Some(c);
    }
    None
}

impl Server {
    /// A fresh server; `None` (having said why through `skip`) when moto is not installed.
    pub fn start(test: &str) -> Option<Server> {
        let Some(mut cmd) = moto_command() else {
            skip(
                test,
                "moto's S3 server is not installed (pip install 'moto[server]')",
            );
            return None;
        };
        // A port free now; taken again by the server a moment later.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let server = Server { child, port };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if server.try_request("GET", "/", b"").is_some() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto's server did not answer on port {port} within 60 s");
    }

    /// The endpoint for the `AWS_ENDPOINT` variable.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variables that point an `ims` process at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
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

    /// `METHOD PATH` with `body`; the status and the body of the answer.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        self.try_request(method, path, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer"))
    }

    fn try_request(&self, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
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
