//! The configuration tarball the server builds on registration (`<uuid>.tgz`, served by
//! `GET /files`): a gzip'd ustar archive with one directory per service and the `<file>`
//! contents with a filename. Executables with inline contents end up as a bare directory,
//! because the server's writer fails on their missing filename and only logs it.
//!
//! Self-contained (stored deflate blocks, CRC-32 by hand) so no compression crate is needed;
//! it must not touch the filesystem.
use std::time::{SystemTime, UNIX_EPOCH};

/// Builds the archive from (service, file name or `None`, contents) entries. Entries and the
/// gzip header carry the time of the build, or `$SOURCE_DATE_EPOCH` when set (the
/// reproducible-builds convention), so two servers' archives can be compared byte for byte.
pub fn build(entries: &[(String, Option<String>, String)]) -> Vec<u8> {
    let mtime = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    let mut tar = Vec::new();
    let mut dirs: Vec<&str> = Vec::new();
    for (service, name, contents) in entries {
        if !dirs.contains(&service.as_str()) {
            dirs.push(service);
            header(&mut tar, &format!("{service}/"), 0o755, 0, mtime, b'5');
        }
        if let Some(name) = name {
            header(
                &mut tar,
                &format!("{service}/{name}"),
                0o644,
                contents.len(),
                mtime,
                b'0',
            );
            tar.extend_from_slice(contents.as_bytes());
            tar.resize(tar.len().div_ceil(512) * 512, 0);
        }
    }
    tar.resize(tar.len() + 1024, 0);
    gzip_stored(&tar, mtime)
}

fn header(out: &mut Vec<u8>, name: &str, mode: u32, size: usize, mtime: u64, kind: u8) {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, len: usize, bytes: &[u8]| {
        let n = bytes.len().min(len);
        h[at..at + n].copy_from_slice(&bytes[..n]);
    };
    put(&mut h, 0, 100, name.as_bytes());
    put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, 8, b"0000000\0");
    put(&mut h, 116, 8, b"0000000\0");
    put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, 12, format!("{mtime:011o}\0").as_bytes());
    put(&mut h, 148, 8, b"        ");
    h[156] = kind;
    put(&mut h, 257, 8, b"ustar\x0000");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
}

/// RFC 1952 gzip member holding RFC 1951 stored (uncompressed) blocks.
fn gzip_stored(data: &[u8], mtime: u64) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0];
    out.extend_from_slice(&(mtime as u32).to_le_bytes());
    out.extend_from_slice(&[0, 3]);
    let mut chunks = data.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn archive_shape() {
        let gz = build(&[("db_svc".into(), Some("my.cnf".into()), "port=1".into())]);
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        // header, stored-block header, then the tar: dir entry, file entry, data, end blocks
        let tar = &gz[15..gz.len() - 8];
        assert_eq!(tar.len(), 512 * 5);
        assert_eq!(&tar[..7], b"db_svc/");
        assert_eq!(&tar[512..525], b"db_svc/my.cnf");
        assert_eq!(&tar[1024..1030], b"port=1");
    }
}
