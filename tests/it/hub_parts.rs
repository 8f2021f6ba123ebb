//! Multipart planning for a 6 GB file, checked on a sparse file (nothing is written).

use std::io::Read;
use warp::hub::lfs::{part_reader, plan_parts};

#[test]
fn six_gb_sparse_file_parts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    let size: u64 = 6 * (1 << 30) + 12_345;
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(len, size);

    let chunk: u64 = 16 << 20;
    let parts = plan_parts(len, chunk).unwrap();
    assert_eq!(parts.len(), 385); // 384 full 16 MiB parts + 12 345 bytes
    assert_eq!(parts[0].offset, 0);
    assert_eq!(parts[0].number, 1);
    let mut next = 0u64;
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.number as usize, i + 1);
        assert_eq!(p.offset, next, "parts must be contiguous");
        next += p.len;
    }
    assert_eq!(next, size);
    let last = parts.last().unwrap();
    assert_eq!((last.offset, last.len), (384 * chunk, 12_345));
    assert!(parts[..384].iter().all(|p| p.len == chunk));
    // Offsets beyond 4 GiB are read at the right place: the last part yields exactly its length.
    let mut got = Vec::new();
    part_reader(&path, last)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got.len() as u64, last.len);
    assert!(got.iter().all(|&b| b == 0));
    // The hub's part count must match: one more or less URL is refused elsewhere.
    assert_eq!(plan_parts(len, 1 << 30).unwrap().len(), 7);
}
