//! Helpers shared by the integration tests: running the `ims` binary and qemu-img, making
//! deterministic test images.
#![allow(dead_code)]

pub mod catalog;
pub mod postgres;
pub mod s3;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A path as the `&str` argument of a command.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Whether `qemu-img compare` finds the two images identical.
pub fn qemu_compare(a: &Path, fa: &str, b: &Path, fb: &str) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", fa, "-F", fb, s(a), s(b)])
        .status()
        .expect("run qemu-img")
        .success()
}

/// Runs the `ims` binary built for these tests.
pub fn ims(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ims"))
        .args(args)
        .output()
        .expect("run ims")
}

/// Says why a test skips because a tool it needs is missing; under CI (`CI=true`), where
/// .ci/run installs every tool the tests use, a missing tool fails the test instead.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs a tool CI must have: {why}");
    }
    eprintln!("skipping {test}: {why}");
}

/// Whether qemu-img is installed; prints why a test is skipped when it is not.
pub fn have_qemu_img(test: &str) -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(
            test,
            "qemu-img is not installed (apt-get install qemu-utils)",
        );
    }
    ok
}

/// Runs qemu-img and returns its output, failing the test when it fails.
pub fn qemu_img(args: &[&str]) -> Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A deterministic pseudo-random generator (xorshift), so test images are the same every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes a raw image of `size` bytes whose 64 KiB pieces cycle through random data, zeros,
/// text and a half-random piece, leaving the zero pieces as holes.
pub fn mixed_raw(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut rng = Rng::new(seed);
    let mut data = vec![0u8; size as usize];
    for (i, piece) in data.chunks_mut(64 << 10).enumerate() {
        match i % 4 {
            0 => rng.fill(piece),
            1 => {}
            2 => {
                for (j, b) in piece.iter_mut().enumerate() {
                    *b = b"ims test text "[j % 14];
                }
            }
            _ => {
                let half = piece.len() / 2;
                rng.fill(&mut piece[..half]);
            }
        }
    }
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, piece) in data.chunks(64 << 10).enumerate() {
        if i % 4 != 1 {
            f.write_all_at(piece, (i as u64) * (64 << 10)).unwrap();
        }
    }
    data
}

/// A sparse file of `len` bytes holding `data` at `at` and holes everywhere else.
pub fn sparse_file(path: &Path, len: u64, at: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
    f.write_all_at(data, at).unwrap();
}

/// `(start, length)` of each data extent of an `ims map --output json` answer (data that is not
/// a hole of the file, as qemu-img's human map prints).
pub fn data_runs(map: &[serde_json::Value]) -> Vec<(u64, u64)> {
    map.iter()
        .filter(|e| e["data"] == true && e["zero"] == false)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

/// Asserts that an `ims map --output json` answer covers `size` bytes and that its data is the
/// 4 KiB written at `at` and little else (a file system may allocate a few blocks around it).
pub fn assert_only_block_is_data(map_json: &[u8], at: u64, size: u64) {
    let map: Vec<serde_json::Value> = serde_json::from_slice(map_json).unwrap();
    let data = data_runs(&map);
    assert!(
        data.iter().any(|&(a, n)| a <= at && a + n >= at + 4096),
        "{data:?}"
    );
    assert!(data.iter().map(|d| d.1).sum::<u64>() < 4 << 20, "{data:?}");
    let covered: u64 = map.iter().map(|e| e["length"].as_u64().unwrap()).sum();
    assert_eq!(covered, size);
}

/// Bytes a file occupies on disk.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Whether every tool is installed (on PATH or in /usr/sbin, /sbin); prints why the test skips
/// when one is not.
pub fn have(test: &str, tools: &[&str]) -> bool {
    for t in tools {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(t).is_file()))
            || Path::new("/usr/sbin").join(t).is_file()
            || Path::new("/sbin").join(t).is_file();
        if !found {
            skip(
                test,
                &format!(
                    "{t} is not installed (.ci/run installs gdisk fdisk dosfstools mtools xfsprogs ntfs-3g genisoimage e2fsprogs lvm2 xorriso)"
                ),
            );
            return false;
        }
    }
    true
}

/// Runs a tool that builds a guest, failing the test when it fails.
pub fn run(cmd: &str, args: &[&str]) {
    run_env(cmd, args, &[]);
}

/// [`run`] with extra environment variables. The sbin directories are on PATH (mkfs and
/// friends live there) and mtools skips its geometry check.
pub fn run_env(cmd: &str, args: &[&str], env: &[(&str, &str)]) {
    let out = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .envs(env.iter().copied())
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `data` at `rel` under `root`, making the directories.
pub fn put(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// A minimal 64-bit little-endian ELF header for `e_machine` (0x3e x86-64, 0xb7 AArch64).
pub fn elf64(e_machine: u16) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[0..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[6] = 1;
    b[16] = 2;
    b[18..20].copy_from_slice(&e_machine.to_le_bytes());
    b
}

/// The gunzipped bytes of the committed fixture `testdata/DIR/NAME.gz`.
pub fn gunzipped(dir: &str, name: &str) -> Vec<u8> {
    use std::io::Read;
    let gz = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(dir)
        .join(format!("{name}.gz"));
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

/// `ims convert -O raw ARGS... OUT`, which must succeed; returns what it wrote.
pub fn convert_to_raw(args: &[&str], out: &Path) -> Vec<u8> {
    let mut all = vec!["convert", "-O", "raw"];
    all.extend_from_slice(args);
    all.push(s(out));
    let r = ims(&all);
    assert!(
        r.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    std::fs::read(out).unwrap()
}

/// A self-signed server certificate for `localhost` and its key, made by `openssl` in `dir`
/// (`cert.pem`, `key.pem`): a server's, not a CA's, which rustls refuses as a server's.
#[allow(dead_code)]
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}
