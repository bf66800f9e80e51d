//! Images that are not local files, through the public API only: bytes a caller's storage
//! serves, and byte streams read once, front to back.

use std::path::Path;
use std::sync::Arc;

use ims::{CreateOptions, Format, Input, MemoryStorage, OpenOptions, Target};

/// The bundled sample (testdata/README.md): a 2 MiB data disk qemu-img made.
fn sample(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name),
    )
    .unwrap()
}

/// Converts `input` to raw in memory (through a stream sink) and returns the disk's bytes.
fn to_raw(input: Input) -> ims::Result<Vec<u8>> {
    let image = ims::open_input(input, &OpenOptions::default())?;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    let writer = ims::create(
        Format::Raw,
        Target::File(out.clone()),
        image.virtual_size(),
        &CreateOptions::default(),
    )?;
    ims::convert(image, writer, &Default::default(), &mut |_| {})?;
    Ok(std::fs::read(out).unwrap())
}

#[test]
fn an_image_in_memory_reads_as_its_file_does() {
    let want = sample("sample.raw");
    let storage = Arc::new(MemoryStorage::new(sample("sample.qcow2")));
    let image = ims::open_storage(
        storage.clone(),
        Path::new("sample.qcow2"),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(image.format(), Format::Qcow2, "probed from memory");
    let got = to_raw(Input::Storage {
        storage,
        name: "sample.qcow2".into(),
    })
    .unwrap();
    assert_eq!(got, want);
}

#[test]
fn a_raw_stream_of_a_known_size_converts() {
    let want = sample("sample.raw");
    let reader = Box::new(std::io::Cursor::new(want.clone()));
    let got = to_raw(Input::Stream {
        reader,
        format: Format::Raw,
        name: "upload".into(),
        size: Some(want.len() as u64),
    })
    .unwrap();
    assert_eq!(got, want);

    // Without its size, a raw stream cannot be read; short of its size, it is truncated.
    let e = ims::open_input(
        Input::Stream {
            reader: Box::new(std::io::Cursor::new(want.clone())),
            format: Format::Raw,
            name: "upload".into(),
            size: None,
        },
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert_eq!(e.kind(), "invalid-argument", "{e}");
    let e = to_raw(Input::Stream {
        reader: Box::new(std::io::Cursor::new(want[..4096].to_vec())),
        format: Format::Raw,
        name: "upload".into(),
        size: Some(want.len() as u64),
    })
    .unwrap_err();
    assert_eq!(e.kind(), "truncated", "{e}");
}

#[test]
fn a_random_access_format_on_a_stream_is_refused_with_what_to_do() {
    for format in [Format::Qcow2, Format::Vhd, Format::Zvhd2] {
        let e = ims::open_input(
            Input::Stream {
                reader: Box::new(std::io::Cursor::new(sample("sample.qcow2"))),
                format,
                name: "upload".into(),
                size: None,
            },
            &OpenOptions::default(),
        )
        .err()
        .unwrap();
        assert_eq!(e.kind(), "unsupported", "{format}: {e}");
        assert!(e.to_string().contains("spool"), "{format}: {e}");
    }
}

#[cfg(feature = "inspect")]
#[test]
fn inspection_reads_an_image_from_memory() {
    // A disk with an MBR partition table: one Linux partition from sector 2048.
    let mut disk = vec![0u8; 4 << 20];
    disk[446 + 4] = 0x83;
    disk[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    disk[446 + 12..446 + 16].copy_from_slice(&4096u32.to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xaa;
    let found = ims::inspect::inspect_input(
        Input::Storage {
            storage: Arc::new(MemoryStorage::new(disk)),
            name: "disk.raw".into(),
        },
        &OpenOptions {
            format: Some(Format::Raw),
            ..Default::default()
        },
    )
    .unwrap();
    let text = serde_json::to_string(&found).unwrap();
    assert!(text.contains("mbr"), "{text}");
    // A stream cannot be inspected: inspection needs random access.
    let e = ims::inspect::inspect_input(
        Input::Stream {
            reader: Box::new(std::io::Cursor::new(vec![0u8; 4096])),
            format: Format::Raw,
            name: "pipe".into(),
            size: Some(4096),
        },
        &OpenOptions::default(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), "unsupported", "{e}");
}
