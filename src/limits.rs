//! Every cap the crate's parsers and readers put on what a file may ask of them, in one place.
//!
//! Each parser checks a number it reads against the file's length and against a cap here before
//! it allocates or loops on it (DESIGN.md, "Rules for every parser"). A structure over a cap is
//! refused with [`Error::LimitExceeded`](crate::Error::LimitExceeded) (`limit-exceeded`), or,
//! where the value is outside what the format itself allows, with
//! [`Error::Malformed`](crate::Error::Malformed). The caches and budgets below bound what a
//! reader keeps in memory or how much work it does, whatever the file claims. formats/limits.md
//! is the human index of this module; `tests/hostile.rs` drives most caps with hostile images.
//!
//! Constants that describe a format rather than cap it (magic numbers, field offsets, sentinels
//! such as `UNALLOCATED`, `GD_AT_END`, `DATA_OFFSET`, `NO_DATA_OFFSET`, the largest CHS geometry
//! `MAX_GEOMETRY_SECTORS`) stay beside their parsers.
//!
//! # In summary
//!
//! - Largest decompressed unit: [`MAX_DECOMPRESSED_UNIT`] (2 MiB), the largest of a QCOW2
//!   compressed cluster ([`MAX_QCOW2_COMPRESSED_CLUSTER`], 2 MiB), a VMDK grain
//!   ([`MAX_VMDK_GRAIN_BYTES`], 1 MiB) and a ZVHD or ZVHD2 record's block
//!   ([`ZVHD_RECORD_BLOCK`], 2 MiB, the formats' fixed block size). Decompression writes into a
//!   buffer of exactly one unit and fails when the stream would produce more.
//! - Largest metadata table read into memory: [`MAX_METADATA_TABLE`] (64 MiB), the largest of
//!   the QCOW2 L1 ([`MAX_L1_TABLE_SIZE`]), refcount ([`MAX_REFCOUNT_TABLE_SIZE`]) and snapshot
//!   ([`MAX_SNAPSHOT_TABLE_SIZE`]) tables, the VMDK grain directory ([`MAX_GD_BYTES`]) and the
//!   ZVHD2 block bitmap ([`MAX_ZVHD2_BITMAP_LEN`]) and the VHDX BAT ([`MAX_VHDX_BAT_BYTES`]). A VHD's BAT has no cap of its own: only the
//!   entries of the disk's blocks are read, and the table must lie inside the file. `ims check`
//!   of a QCOW2 image also keeps two 2-byte counters per host cluster, at most
//!   [`MAX_CHECK_CLUSTERS`] of them (256 MiB).
//! - Largest descriptor: [`MAX_DESCRIPTOR_BYTES`] (1 MiB), a VMDK descriptor, embedded or a file
//!   of its own, listing at most [`MAX_VMDK_EXTENTS`] extents.
//! - Longest chain: [`MAX_CHAIN_DEPTH`] (16) images below the opened one (qcow2 backing files,
//!   VHD parents, VMDK parents); the other chains a hostile file can build are an MBR's logical
//!   partitions ([`MAX_MBR_LOGICAL`]) and a guest's symbolic links ([`MAX_SYMLINKS`]).

// ---------------------------------------------------------------------------------------------
// References between files
// ---------------------------------------------------------------------------------------------

/// Most images in a chain below the one opened (a backing chain of this many files is refused
/// at the next level): qcow2 backing files, VHD parents, VMDK parents. Deep enough for any real
/// snapshot chain; also what ends a reference loop (a → b → a), which then fails as
/// `limit-exceeded` instead of recursing.
pub const MAX_CHAIN_DEPTH: usize = 16;

// ---------------------------------------------------------------------------------------------
// QCOW2
// ---------------------------------------------------------------------------------------------

/// Largest cluster: 2 MiB (`cluster_bits` 21). Bounds every cluster buffer and the decompressed
/// size of a compressed cluster. qemu's own limit; no producer writes larger clusters.
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Longest backing file name (`backing_file_size`), in bytes. qemu's limit (a PATH_MAX-like
/// name); a longer one is malformed.
pub const MAX_BACKING_FILE_NAME: u32 = 1023;
/// Longest backing format name (the backing-format header extension), in bytes. qemu keeps 15
/// characters of a format name.
pub const MAX_BACKING_FORMAT_NAME: u32 = 15;
/// Largest L1 table read into memory (`l1_size` × 8), in bytes: 32 MiB. qemu's limit: 4 Mi
/// entries, enough for any disk qemu itself opens. The writer refuses a disk that would need more.
pub const MAX_L1_TABLE_SIZE: u64 = 32 << 20;
/// Largest refcount table (`refcount_table_clusters` × cluster size), in bytes: 8 MiB. qemu's
/// limit.
pub const MAX_REFCOUNT_TABLE_SIZE: u64 = 8 << 20;
/// Most snapshots ims lists (`nb_snapshots`). qemu's own limit.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Largest snapshot table ims reads, in bytes: 64 MiB. qemu's limit: 1 KiB per snapshot at the
/// maximum count.
pub const MAX_SNAPSHOT_TABLE_SIZE: u64 = 64 << 20;
/// Largest extra data in one snapshot table entry (`extra_data_size`), in bytes. qemu's limit.
pub const MAX_SNAPSHOT_EXTRA_DATA: u32 = 1024;
/// Most host clusters `ims check` follows (two 2-byte counters each, so 256 MiB of counters):
/// 64 Mi clusters, 4 TiB of 64 KiB clusters. Bounds the check's memory whatever the file claims.
pub const MAX_CHECK_CLUSTERS: u64 = 64 << 20;
/// Memory the reader's L2 table cache may use: 16 MiB, as many tables as fit, within
/// [`L2_CACHE_MIN_TABLES`]..=[`L2_CACHE_MAX_TABLES`].
pub const L2_CACHE_BYTES: u64 = 16 << 20;
/// Fewest L2 tables the cache keeps, whatever the cluster size.
pub const L2_CACHE_MIN_TABLES: usize = 4;
/// Most L2 tables the cache keeps, whatever the cluster size.
pub const L2_CACHE_MAX_TABLES: usize = 256;
/// Decoded units (compressed clusters, grains, blocks) a reader keeps, so a unit read in several
/// pieces is decoded once (at most 4 × 2 MiB).
pub const UNIT_CACHE_ENTRIES: usize = 4;
/// Largest zstd window a compressed QCOW2 cluster may ask for (log2: 4 MiB). qemu compresses one
/// cluster (at most 2 MiB) per frame, which zstd encodes with a window of at most 2 MiB. This
/// bounds what a hostile frame can allocate.
pub const QCOW2_ZSTD_WINDOW_LOG_MAX: u32 = 22;
/// Most host clusters the QCOW2 reader's open-time consistency pass follows (two bits each in a
/// map of the file, so at most 64 MiB): 256 Mi clusters, a file of 16 TiB of 64 KiB clusters or
/// 128 GiB of 512-byte ones (the largest disk a 32 MiB L1 table maps with 512-byte clusters). A
/// larger file is refused. Each L2 table and data cluster the pass visits is a distinct cluster
/// of the map, so this also bounds the pass's work.
pub const MAX_QCOW2_MAP_CLUSTERS: u64 = 256 << 20;
/// Most compressed clusters of the active image whose byte ranges the consistency pass sorts and
/// compares (8 bytes each, so at most 64 MiB): 8 Mi clusters, 512 GiB of 64 KiB clusters written
/// compressed.
pub const MAX_QCOW2_COMPRESSED_CLUSTERS: u64 = 8 << 20;

/// The largest persistent-bitmap directory read (the bitmaps extension's
/// `bitmap_directory_size`): 64 MiB, qemu's own cap (1 KiB for each of 65535 bitmaps).
pub const MAX_QCOW2_BITMAP_DIRECTORY_SIZE: u64 = 64 << 20;
/// The largest bitmap table read (a directory entry's `bitmap_table_size` × 8 bytes): 8 MiB, a
/// million clusters of bitmap data: with 64 KiB clusters, a bitmap of a 256 TiB disk at 512-byte
/// granularity. Each of them must also be a distinct cluster of the file.
pub const MAX_QCOW2_BITMAP_TABLE_SIZE: u64 = 8 << 20;

// ---------------------------------------------------------------------------------------------
// VHD
// ---------------------------------------------------------------------------------------------

/// Largest block size accepted (the dynamic header's `block_size`, which must also be a power of
/// two from 512): 256 MiB. Far above any producer's (2 MiB is universal); small enough to bound
/// a block's sector bitmap and a block buffer.
pub const MAX_VHD_BLOCK_SIZE: u32 = 256 << 20;
/// Longest parent locator path read (one locator's `platform_data_length`), in bytes: 64 KiB. A
/// path of 32 Ki UTF-16 units is longer than any file system allows.
pub const MAX_LOCATOR_BYTES: u32 = 64 * 1024;
/// Sector bitmaps the reader keeps in memory at once (each is 512 bytes for 2 MiB blocks, at
/// most 64 KiB for the largest block).
pub const VHD_BITMAP_CACHE: usize = 256;
/// The largest disk the VHD writers accept, and the largest dynamic or differencing disk the
/// reader opens: 2040 GiB (0xff000000 sectors), the largest disk the VHD format describes
/// (Microsoft's limit: a BAT entry is a 32-bit sector number, so blocks lie in the first 2 TiB
/// of the file). qemu refuses larger disks of every type; a fixed disk is bounded by its file
/// instead (Azure keeps larger fixed disks), so the reader does not apply it there.
pub const MAX_VHD_DISK_SIZE: u64 = 0xff00_0000 * 512;

// ---------------------------------------------------------------------------------------------
// VHDX
// ---------------------------------------------------------------------------------------------

/// The largest BAT ims reads into memory, in bytes: 64 MiB, 8 Mi entries. A disk of the
/// format's largest size (64 TiB) needs 64 MiB with 8 MiB blocks (qemu-img's and Hyper-V's
/// smallest default) and 512 MiB with 1 MiB blocks, so disks of 1 MiB blocks are read up to
/// 8 TiB. Only the entries of the disk's blocks are read, whatever the BAT region's length.
pub const MAX_VHDX_BAT_BYTES: u64 = 64 << 20;
/// Sector bitmaps of partially present blocks the reader keeps in memory at once (a block's
/// bits: 256 bytes for 1 MiB blocks of 4 KiB sectors, at most 64 KiB), so at most 16 MiB.
pub const VHDX_BITMAP_CACHE: usize = 256;
/// The largest log ims replays, in bytes: 16 MiB, read into memory once (twice, to read
/// entries that wrap). Hyper-V and qemu-img make 1 MiB logs; a file with a larger log and
/// entries to replay is refused. Finding the active sequence walks from each 4 KiB of the log,
/// so its work grows with the square of the log's sectors (4096 here).
pub const MAX_VHDX_LOG_BYTES: u64 = 16 << 20;
/// Bytes ims checksums while looking for the log's active sequence: 256 MiB. A real log's
/// entries are each checksummed once (at most the log's size); a log whose every sector claims
/// to start an entry as long as the log would otherwise cost its size squared.
pub const VHDX_LOG_CHECK_BUDGET: u64 = 256 << 20;
/// The most 4 KiB sectors the replayed log may write (kept in memory over the file): 64 Ki,
/// 256 MiB of data or zeros. A log carries metadata updates, a few sectors each.
pub const MAX_VHDX_LOG_SECTORS: u64 = 64 << 10;

// ---------------------------------------------------------------------------------------------
// VDI
// ---------------------------------------------------------------------------------------------

/// Largest VDI block (`block_size`, which must also be a power of two from 512): 256 MiB.
/// VirtualBox and qemu only write 1 MiB; blocks are read in place, never buffered whole.
pub const MAX_VDI_BLOCK_SIZE: u32 = 256 << 20;
/// Most entries in a VDI block map (`blocks_in_image`): 16 Mi, a 64 MiB map (16 TiB of 1 MiB
/// blocks, above VirtualBox's own largest disk). The map must also lie inside the file.
pub const MAX_VDI_BLOCKS: u32 = 16 << 20;

// ---------------------------------------------------------------------------------------------
// QED
// ---------------------------------------------------------------------------------------------

/// Largest QED table (`table_size` × `cluster_size`, the size of the L1 table and of every L2
/// table), in bytes: 32 MiB. qemu writes 256 KiB (4 clusters of 64 KiB); the format allows up to
/// 16 clusters of 64 MiB.
pub const MAX_QED_TABLE_BYTES: u64 = 32 << 20;
/// Bytes of QED L2 tables the reader keeps in memory (at least two tables).
pub const QED_L2_CACHE_BYTES: u64 = 16 << 20;
/// Most host clusters a QED image's open-time consistency pass follows (one bit each: 32 MiB):
/// 16 TiB of 64 KiB clusters.
pub const MAX_QED_MAP_CLUSTERS: u64 = 256 << 20;

// ---------------------------------------------------------------------------------------------
// QCOW (version 1)
// ---------------------------------------------------------------------------------------------

/// Largest QCOW version 1 L1 table read into memory (`l1_size` × 8), in bytes: 32 MiB, as
/// [`MAX_L1_TABLE_SIZE`] for QCOW2.
pub const MAX_QCOW1_L1_TABLE_SIZE: u64 = 32 << 20;
/// QCOW version 1 L2 tables the reader keeps in memory (each at most 64 KiB).
pub const QCOW1_L2_CACHE_TABLES: usize = 256;
/// Most host clusters a QCOW version 1 image's open-time consistency pass follows (one bit
/// each: 32 MiB): 128 GiB of the 512-byte clusters qemu uses with a backing file, 16 TiB of
/// 64 KiB clusters.
pub const MAX_QCOW1_MAP_CLUSTERS: u64 = 256 << 20;
/// Most compressed clusters a QCOW version 1 image may hold: 2 Mi (8 GiB of 4 KiB clusters,
/// 128 GiB of 64 KiB ones). The consistency pass keeps 24 bytes of each (at most 48 MiB).
pub const MAX_QCOW1_COMPRESSED_CLUSTERS: u64 = 2 << 20;
/// The largest QCOW version 1 cluster (`cluster_bits` at most 16): 64 KiB, qemu's limit; also
/// what a compressed cluster decompresses into.
pub const MAX_QCOW1_CLUSTER_BITS: u8 = 16;

// ---------------------------------------------------------------------------------------------
// VMDK
// ---------------------------------------------------------------------------------------------

/// The largest grain ims reads (`grainSize`), in sectors: 2048 (1 MiB). Bounds each grain buffer
/// and the decompressed size of a compressed grain. VMware and qemu write 64 KiB; 1 MiB leaves
/// room without letting a header ask for a huge buffer.
pub const MAX_GRAIN_SECTORS: u64 = 2048;
/// The most GTEs per GT (`numGTEsPerGT`, one grain table's size). VMware always writes 512, and
/// qemu refuses more.
pub const MAX_GTES_PER_GT: u32 = 512;
/// The largest grain directory read into memory, in bytes: 16 MiB. 64 TiB of 64 KiB grains
/// needs 8 MiB; twice that is the cap.
pub const MAX_GD_BYTES: u64 = 16 << 20;
/// Most stored grains of one hosted sparse extent whose sectors the open-time consistency pass
/// sorts and compares (4 bytes each, so at most 128 MiB): 32 Mi grains, the 2 TiB a grain table
/// entry (a 32-bit sector number) can address, in 64 KiB grains. An extent with more is refused.
pub const MAX_VMDK_MAP_GRAINS: u64 = 32 << 20;
/// The largest disk ims opens or writes (`capacity`, and the sum of a descriptor's extents):
/// 64 TiB. VMware's own limit is 62 TB.
pub const MAX_VMDK_DISK_BYTES: u64 = 64 << 40;
/// Grain tables kept in memory per extent (2 KiB each, so at most 8 MiB).
pub const GT_CACHE: usize = 4096;
/// The largest descriptor read, embedded (`descriptorSize`) or a file of its own, in bytes:
/// 1 MiB. A descriptor of 4096 extents (8 TiB in 2 GB pieces) takes about 250 KiB.
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// The most extent lines one descriptor may list (each may be a file to open). 8 TiB in 2 GB
/// split extents; bounds the files one image can make ims open.
pub const MAX_VMDK_EXTENTS: usize = 4096;
/// The highest `hwversion` the writer accepts: 21, the newest virtual hardware (ESXi 8.0 U2). A
/// writer limit, not a parser one.
pub const MAX_HW_VERSION: u32 = 21;

// ---------------------------------------------------------------------------------------------
// ZVHD and ZVHD2
// ---------------------------------------------------------------------------------------------

/// The largest record ims reads (head, compressed payload, postfix), in bytes: 4 MiB + 8 KiB,
/// the reference reader's record buffer. A block of 2 MiB compresses into far less.
pub const MAX_ZVHD_RECORD_LEN: u64 = 4_202_496;
/// The largest ZVHD2 block bitmap read into memory, in bytes: 64 MiB, a bit for each of 2^29
/// blocks (1 PiB of disk).
pub const MAX_ZVHD2_BITMAP_LEN: u64 = 64 << 20;

// ---------------------------------------------------------------------------------------------
// ISO 9660
// ---------------------------------------------------------------------------------------------

/// The most volume descriptors read from sector 16 before the set terminator: 64 (128 KiB).
/// Real discs have three to five (primary, El Torito boot record, Joliet, terminator); a set
/// without a terminator ends here as `limit-exceeded`.
pub const MAX_ISO_DESCRIPTORS: u64 = 64;
/// The most bytes of an El Torito boot catalog read: 64 KiB (2048 entries of 32 bytes). Real
/// catalogs fill part of one 2048-byte sector; a catalog whose sections run past this is
/// `limit-exceeded`.
pub const MAX_ISO_BOOT_CATALOG: usize = 64 << 10;
/// The most bytes of one ISO 9660 directory read during inspection: 1 MiB (thousands of
/// entries). Inspection looks into the root and one level below it only.
pub const MAX_ISO_DIRECTORY: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Inspection (reading guests)
// ---------------------------------------------------------------------------------------------

/// Pages of 64 KiB kept by the cache inspection reads the disk through: 256, 16 MiB. Bounds
/// inspection's memory whatever the disk size.
pub const MAX_INSPECT_PAGES: usize = 256;
/// Bytes inspection may read from the image in all: 512 MiB. Far more than any real guest needs
/// (a few MiB), little enough to finish in about a second on any format.
pub const INSPECT_READ_BUDGET: u64 = 512 << 20;
/// Reads (cached or not) inspection may make in all: 1 Mi. A loop in a guest's on-disk
/// structures that a file-system crate does not notice ends here.
pub const INSPECT_READ_CALL_BUDGET: u64 = 1 << 20;
/// The most EFI loaders listed from the EFI system partition. Real ESPs hold a few.
pub const MAX_EFI_LOADERS: usize = 64;

// GPT

/// The largest GPT partition entry array read, in bytes: 1 MiB. The usual array is 16 KiB (128
/// entries of 128 bytes).
pub const MAX_GPT_ARRAY_BYTES: u64 = 1 << 20;

// MBR

/// Logical partitions followed at most down an extended partition's chain (which also ends
/// loops). Linux numbers partitions up to 256 in all.
pub const MAX_MBR_LOGICAL: usize = 128;

// LVM

/// The most LVM2 metadata text read, in bytes: 1 MiB. Real metadata areas are 1 MiB by default
/// and the text far smaller.
pub const MAX_LVM_METADATA: u64 = 1 << 20;
/// Data/metadata area list entries read at most from a PV label. LVM writes one or two.
pub const MAX_LVM_AREAS: usize = 16;
/// Nesting of the metadata text's sections. LVM nests about five deep; bounds the recursive
/// parser.
pub const MAX_LVM_DEPTH: usize = 16;
/// Segments of one logical volume. Far above real volumes; bounds the segment map.
pub const MAX_LVM_SEGMENTS: usize = 4096;

// Guest file systems (every file system inspection reads)

/// The most bytes read from one guest file (os-release, configuration, text): 1 MiB. Those files
/// are a few KiB.
pub const MAX_FILE_READ: usize = 1 << 20;
/// The most entries taken from one guest directory. Enough for /lib/modules and /etc; bounds a
/// hostile directory.
pub const MAX_DIR_ENTRIES: usize = 8192;
/// The most symbolic links followed while resolving one path (ends symlink loops). Linux's own
/// limit (ELOOP after 40).
pub const MAX_SYMLINKS: usize = 40;
/// Kernel version directories looked into for modules under /lib/modules. A guest keeps two or
/// three kernels.
pub const MAX_MODULE_DIRS: usize = 16;

// XFS

/// The most extents taken from one XFS inode's B+tree. Bounds the extent list of one file.
pub const MAX_XFS_EXTENTS: usize = 1 << 16;
/// The deepest XFS extent B+tree walked (ends cycles between nodes). XFS trees are at most a
/// handful of levels deep.
pub const MAX_XFS_BTREE_LEVEL: u16 = 9;
/// The most directory blocks read from one XFS directory. Bounds a hostile directory.
pub const MAX_XFS_DIR_BLOCKS: u64 = 4096;
/// The longest XFS symbolic link target read, in bytes: PATH_MAX.
pub const MAX_XFS_LINK: usize = 4096;
/// The most path components walked while resolving one XFS path (symbolic links add theirs).
/// Bounds resolution even when each link adds components.
pub const MAX_XFS_COMPONENTS: usize = 1024;

// Windows registry (regf)

/// The largest registry cell read, in bytes: 1 MiB. Real cells are small; bounds one allocation.
pub const MAX_REGF_CELL: usize = 1 << 20;
/// The most cells read from one hive. Bounds the walk of a hostile hive.
pub const MAX_REGF_CELLS: u32 = 200_000;

// ---------------------------------------------------------------------------------------------
// Summary: the caps the issue asked to name
// ---------------------------------------------------------------------------------------------

/// The largest QCOW2 compressed cluster once decompressed: one cluster of
/// 1 << [`MAX_CLUSTER_BITS`] bytes (2 MiB).
pub const MAX_QCOW2_COMPRESSED_CLUSTER: u64 = 1 << MAX_CLUSTER_BITS;
/// The largest VMDK grain once decompressed: [`MAX_GRAIN_SECTORS`] × 512 bytes (1 MiB).
pub const MAX_VMDK_GRAIN_BYTES: u64 = MAX_GRAIN_SECTORS * 512;
/// What one ZVHD or ZVHD2 record decompresses into: one block of the formats' fixed block size
/// (2 MiB; a record's payload is at most [`MAX_ZVHD_RECORD_LEN`]). The formats' `BLOCK_SIZE`
/// is checked to be this value by a test of `formats::zvhd`.
pub const ZVHD_RECORD_BLOCK: u64 = 2 << 20;
/// The largest unit any reader decompresses at once: 2 MiB.
pub const MAX_DECOMPRESSED_UNIT: u64 = max(
    max(MAX_QCOW2_COMPRESSED_CLUSTER, 1 << MAX_QCOW1_CLUSTER_BITS),
    max(MAX_VMDK_GRAIN_BYTES, ZVHD_RECORD_BLOCK),
);
/// The largest metadata table any reader loads into memory at once: 64 MiB (the QCOW2 snapshot
/// table and the ZVHD2 bitmap).
pub const MAX_METADATA_TABLE: u64 = max(
    max(
        max(MAX_L1_TABLE_SIZE, MAX_REFCOUNT_TABLE_SIZE),
        max(
            MAX_SNAPSHOT_TABLE_SIZE,
            max(MAX_GD_BYTES, max(MAX_ZVHD2_BITMAP_LEN, MAX_VHDX_BAT_BYTES)),
        ),
    ),
    // The VDI block map (4 bytes an entry), a QED table, the QCOW version 1 L1 table.
    max(
        4 * MAX_VDI_BLOCKS as u64,
        max(MAX_QED_TABLE_BYTES, MAX_QCOW1_L1_TABLE_SIZE),
    ),
);

const fn max(a: u64, b: u64) -> u64 {
    if a > b { a } else { b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        assert_eq!(MAX_QCOW2_COMPRESSED_CLUSTER, 2 << 20);
        assert_eq!(MAX_VMDK_GRAIN_BYTES, 1 << 20);
        assert_eq!(ZVHD_RECORD_BLOCK, 2 << 20);
        assert_eq!(MAX_DECOMPRESSED_UNIT, 2 << 20);
        assert_eq!(MAX_METADATA_TABLE, 64 << 20);
        // A record holds a compressed block, so the record cap is above the block it decodes.
        const { assert!(MAX_ZVHD_RECORD_LEN > ZVHD_RECORD_BLOCK) };
    }
}
