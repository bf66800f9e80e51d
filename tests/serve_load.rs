//! A bounded load test of `ims serve` on loopback, run by hand in release (it takes a few
//! minutes and most of the machine):
//!
//! ```text
//! cargo test --release --test serve_load -- --ignored --nocapture
//! ```
//!
//! 1,000 images in the catalog; 64 clients list them with filters and paging for 30 s while 8
//! registrations of a 1 GiB qcow2 run through Glance's stage and import (converted to the store
//! format, as `ims register` does). It prints the list latencies (p50, p99), the registrations'
//! time against the same 8 registrations through the CLI, and the server's peak memory; it fails
//! on any failed request or registration, and when a goal is missed by far (p99 over 250 ms, peak
//! memory over 512 MiB).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::server::{ALICE, Server};
use common::{mixed_raw, qemu_img, s};

const IMAGES: usize = 1000;
const LISTERS: usize = 64;
const LIST_FOR: Duration = Duration::from_secs(30);
const REGISTRATIONS: usize = 8;
const BIG: u64 = 1 << 30;
const FORMATS: [&str; 4] = ["raw", "qcow2", "vmdk", "vhd"];

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

/// One request on a kept-alive agent: (status, body).
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> (u16, Vec<u8>) {
    let builder = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("x-auth-token", ALICE);
    let response = match body {
        Some(b) => agent.run(
            builder
                .header("content-type", "application/json")
                .body(b.to_string().into_bytes())
                .unwrap(),
        ),
        None => agent.run(builder.body(()).unwrap()),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let mut out = Vec::new();
    response
        .into_body()
        .into_reader()
        .read_to_end(&mut out)
        .unwrap();
    (status, out)
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// Resident-set high-water mark of a process, in MiB.
fn peak_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Glance's two-step import of `file`: create, stage (streamed from the file), import, then
/// poll until the image is active; panics on any other end.
fn register_through_glance(url: &str, name: &str, file: &Path) {
    let agent = agent();
    let (status, body) = call(
        &agent,
        "POST",
        &format!("{url}/v2/images"),
        Some(serde_json::json!({"name": name, "disk_format": "qcow2", "container_format": "bare"})),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let staged = agent
        .run(
            ureq::http::Request::builder()
                .method("PUT")
                .uri(format!("{url}/v2/images/{id}/stage"))
                .header("x-auth-token", ALICE)
                .header("content-type", "application/octet-stream")
                .body(ureq::SendBody::from_owned_reader(
                    std::fs::File::open(file).unwrap(),
                ))
                .unwrap(),
        )
        .unwrap();
    assert_eq!(staged.status().as_u16(), 204, "stage {name}");
    let (status, body) = call(
        &agent,
        "POST",
        &format!("{url}/v2/images/{id}/import"),
        Some(serde_json::json!({"method": {"name": "glance-direct"}})),
    );
    assert_eq!(
        status,
        202,
        "import {name}: {}",
        String::from_utf8_lossy(&body)
    );
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let (status, body) = call(&agent, "GET", &format!("{url}/v2/images/{id}"), None);
        assert_eq!(status, 200);
        match json(&body)["status"].as_str().unwrap() {
            "active" => return,
            "killed" | "deleted" => panic!("{name} ended {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
        assert!(Instant::now() < deadline, "{name} never became active");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
#[ignore = "a load test of a few minutes: run in release with --ignored --nocapture"]
fn list_latency_and_registrations_under_load() {
    if !common::have_qemu_img("list_latency_and_registrations_under_load") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("big.raw");
    mixed_raw(&raw, BIG, 7);
    let big = dir.path().join("big.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&raw),
        s(&big),
    ]);
    std::fs::remove_file(&raw).unwrap();

    // The same registrations through the CLI, each into the same fresh home, at once.
    let cli_home = dir.path().join("cli-home");
    let started = Instant::now();
    let children: Vec<_> = (0..REGISTRATIONS)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_ims"))
                .args([
                    "register",
                    s(&big),
                    "--name",
                    &format!("cli-{i}"),
                    "--type",
                    "data",
                ])
                .env("IMS_HOME", &cli_home)
                .env("IMS_PROJECT", "alice")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let c = c.wait_with_output().unwrap();
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    }
    let cli_time = started.elapsed();
    std::fs::remove_dir_all(&cli_home).unwrap();

    let server = Server::start_with(
        Some(&serde_json::json!({"private_image_quota": 100000})),
        &[],
    );
    let url = server.url.clone();

    // 1,000 records, made by 8 clients.
    let made = Arc::new(AtomicU64::new(0));
    std::thread::scope(|scope| {
        for t in 0..8 {
            let url = &url;
            let made = &made;
            scope.spawn(move || {
                let agent = agent();
                for i in (t..IMAGES).step_by(8) {
                    let disk_format = FORMATS[i % FORMATS.len()];
                    let (status, body) = call(
                        &agent,
                        "POST",
                        &format!("{url}/v2/images"),
                        Some(serde_json::json!({
                            "name": format!("img-{i:04}"),
                            "disk_format": disk_format,
                            "container_format": "bare",
                            "tags": [format!("batch-{}", i % 10)],
                        })),
                    );
                    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
                    made.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(made.load(Ordering::Relaxed), IMAGES as u64);

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let registered = Instant::now();
    let (latencies, registration_time) = std::thread::scope(|scope| {
        let registrations: Vec<_> = (0..REGISTRATIONS)
            .map(|i| {
                let url = &url;
                let big = &big;
                scope.spawn(move || register_through_glance(url, &format!("big-{i}"), big))
            })
            .collect();
        let listers: Vec<_> = (0..LISTERS)
            .map(|c| {
                let (url, stop, failures) = (&url, &stop, &failures);
                scope.spawn(move || {
                    let agent = agent();
                    let queries = [
                        "limit=25&sort_key=name&sort_dir=asc".to_string(),
                        format!("limit=50&disk_format={}", FORMATS[c % FORMATS.len()]),
                        format!("limit=20&tag=batch-{}", c % 10),
                        "limit=25&status=queued&visibility=private&sort=created_at:desc"
                            .to_string(),
                        format!("name=img-{:04}", (c * 13) % IMAGES),
                    ];
                    let mut times = Vec::new();
                    let mut q = c;
                    while !stop.load(Ordering::Relaxed) {
                        let mut next = format!("/v2/images?{}", queries[q % queries.len()]);
                        q += 1;
                        // The first page and up to two more, through the `next` links.
                        for _ in 0..3 {
                            let at = Instant::now();
                            let (status, body) = call(&agent, "GET", &format!("{url}{next}"), None);
                            times.push(at.elapsed());
                            if status != 200 {
                                failures.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            match json(&body)["next"].as_str() {
                                Some(n) => next = n.to_string(),
                                None => break,
                            }
                        }
                    }
                    times
                })
            })
            .collect();
        std::thread::sleep(LIST_FOR);
        stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Duration> = listers
            .into_iter()
            .flat_map(|l| l.join().unwrap())
            .collect();
        for r in registrations {
            r.join().unwrap();
        }
        let registration_time = registered.elapsed();
        all.sort();
        (all, registration_time)
    });
    let peak = peak_mib(server.pid());
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    println!(
        "lists: {} requests in {:?} by {LISTERS} clients, {} failed; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        LIST_FOR,
        failures.load(Ordering::Relaxed),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    println!(
        "registrations of {REGISTRATIONS} x 1 GiB qcow2: server (stage + import, while listing) {:.1} s, CLI (8 at once) {:.1} s, ratio {:.2}",
        registration_time.as_secs_f64(),
        cli_time.as_secs_f64(),
        registration_time.as_secs_f64() / cli_time.as_secs_f64()
    );
    println!("server peak memory (VmHWM): {peak} MiB");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "failed list requests");
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?}");
    assert!(peak < 512, "peak {peak} MiB");
}
