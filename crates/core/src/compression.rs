//! Layer compression: recognised by magic bytes (gzip, zstd, none; BuildKit mislabels zstd,
//! so media types are not trusted), read back, and written as gzip. Synchronous.

use std::io::{self, Read, Write};
use std::path::Path;

use crate::hash::HashingWriter;
use crate::reference::Digest;

/// What a layer blob is compressed with, by its first bytes (BuildKit mislabels zstd, so
/// the media type is not trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Gzip,
    Zstd,
    None,
}

pub(crate) fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A reader of the uncompressed layer in `path`.
pub(crate) fn open_layer(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    let mut file = std::fs::File::open(path)?;
    let mut head = [0u8; 4];
    let n = read_up_to(&mut file, &mut head)?;
    let file =
        io::BufReader::with_capacity(256 << 10, io::Cursor::new(head[..n].to_vec()).chain(file));
    Ok(match sniff(&head[..n]) {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        Compression::None => Box::new(file),
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes `input` gzipped to `out`; returns the digest and size of what was written.
pub(crate) fn gzip_to(mut input: impl Read, out: &Path) -> io::Result<(Digest, u64)> {
    let file = std::fs::File::create(out)?;
    let tee = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
    let mut gz = flate2::write::GzEncoder::new(tee, flate2::Compression::new(3));
    io::copy(&mut input, &mut gz)?;
    let mut tee = gz.finish()?;
    tee.flush()?;
    Ok(tee.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(b"etc/"), Compression::None);
    }
}
