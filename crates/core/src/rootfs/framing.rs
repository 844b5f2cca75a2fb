//! A bound on what the `tar` crate reads into memory: it buffers a PAX extended header
//! (`x`, `g`) and a GNU long name or long link (`L`, `K`) whole, whatever size its header
//! claims. [`ExtensionLimit`] passes the layer's bytes through unchanged, follows the tar
//! framing exactly as `tar::Archive::entries` does (PAX `size` overrides, GNU sparse
//! extension blocks), and fails the read that delivers the header of an oversized one,
//! before anything of its body is buffered. Synchronous.

use std::io::{self, Read};

/// The largest PAX extended header or GNU long name / long link body accepted, in bytes.
/// Real ones hold a path or two and a few extended attributes (each at most 64 KiB).
pub(crate) const MAX_EXTENSION_HEADER: u64 = 1 << 20;

const BLOCK: usize = 512;

/// Where the next bytes of the stream belong.
enum State {
    /// Collecting a 512-byte header.
    Header {
        block: Box<[u8; BLOCK]>,
        have: usize,
    },
    /// GNU sparse extension blocks, then `data` bytes of the entry (padded).
    SparseExt {
        block: Box<[u8; BLOCK]>,
        have: usize,
        data: u64,
    },
    /// The body of a PAX `x` header, kept (it is bounded) for the `size` it may set.
    Pax { body: Vec<u8>, left: u64, pad: u64 },
    /// An entry's data and padding, not looked at.
    Skip(u64),
    /// The end of the archive, or framing the `tar` crate itself refuses: nothing to follow.
    Done,
}

/// The reader `tar::Archive` reads a layer through; see the module docs.
pub(crate) struct ExtensionLimit<R> {
    inner: R,
    state: State,
    /// A PAX `x` body waiting for the entry it describes.
    pending_pax: Option<Vec<u8>>,
}

impl<R: Read> ExtensionLimit<R> {
    pub(crate) fn new(inner: R) -> ExtensionLimit<R> {
        ExtensionLimit {
            inner,
            state: header_state(),
            pending_pax: None,
        }
    }

    fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Skip(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = header_state();
                    }
                }
                State::Pax { body, left, pad } => {
                    let n = (*left).min(bytes.len() as u64) as usize;
                    body.extend_from_slice(&bytes[..n]);
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        let (body, pad) = (std::mem::take(body), *pad);
                        self.pending_pax = Some(body);
                        self.state = skip_or_header(pad);
                    }
                }
                State::Header { block, have } | State::SparseExt { block, have, .. } => {
                    let n = (BLOCK - *have).min(bytes.len());
                    block[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have < BLOCK {
                        continue;
                    }
                    self.state = match std::mem::replace(&mut self.state, State::Done) {
                        State::Header { block, .. } => self.header(&block)?,
                        State::SparseExt { block, data, .. } => sparse_ext(&block, data),
                        _ => State::Done,
                    };
                }
            }
        }
        Ok(())
    }

    /// What follows this header, as `tar`'s `next_entry` and `next_entry_raw` read it.
    fn header(&mut self, block: &[u8; BLOCK]) -> io::Result<State> {
        if block.iter().all(|b| *b == 0) {
            return Ok(State::Done);
        }
        let header = tar::Header::from_byte_slice(block);
        let sum: u32 = block[..148]
            .iter()
            .chain(&block[156..])
            .map(|b| u32::from(*b))
            .sum::<u32>()
            + 8 * 32;
        let (Ok(cksum), Ok(size)) = (header.cksum(), header.entry_size()) else {
            return Ok(State::Done);
        };
        if sum != cksum {
            return Ok(State::Done);
        }
        let kind = header.entry_type();
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        if extension && size > MAX_EXTENSION_HEADER {
            return Err(io::Error::other(format!(
                "a {} of {size} bytes is over the limit of {MAX_EXTENSION_HEADER} bytes",
                if kind.is_gnu_longname() || kind.is_gnu_longlink() {
                    "GNU long name header"
                } else {
                    "PAX extended header"
                }
            )));
        }
        let recognised = header.as_gnu().is_some() || header.as_ustar().is_some();
        if recognised && (kind.is_gnu_longname() || kind.is_gnu_longlink()) {
            return Ok(skip_or_header(padded(size)));
        }
        if recognised && kind.is_pax_local_extensions() {
            let pad = padded(size) - size;
            return Ok(if size == 0 {
                self.pending_pax = Some(Vec::new());
                skip_or_header(pad)
            } else {
                State::Pax {
                    body: Vec::with_capacity(size as usize),
                    left: size,
                    pad,
                }
            });
        }
        // An entry the archive hands out: a pending PAX `size` overrides the header's.
        let pax = self.pending_pax.take();
        let size = match pax.as_deref().filter(|_| !extension).and_then(pax_size) {
            Some(s) => s,
            None => size,
        };
        let data = padded(size);
        if kind.is_gnu_sparse() {
            if let Some(gnu) = header.as_gnu() {
                if gnu.is_extended() {
                    return Ok(State::SparseExt {
                        block: Box::new([0; BLOCK]),
                        have: 0,
                        data,
                    });
                }
            }
        }
        Ok(skip_or_header(data))
    }
}

impl<R: Read> Read for ExtensionLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

fn header_state() -> State {
    State::Header {
        block: Box::new([0; BLOCK]),
        have: 0,
    }
}

fn skip_or_header(n: u64) -> State {
    if n == 0 {
        header_state()
    } else {
        State::Skip(n)
    }
}

/// After one GNU sparse extension block: another, or the entry's data.
fn sparse_ext(block: &[u8; BLOCK], data: u64) -> State {
    // `isextended` is the byte after 21 sparse records of 24 bytes.
    if block[504] == 1 {
        State::SparseExt {
            block: Box::new([0; BLOCK]),
            have: 0,
            data,
        }
    } else {
        skip_or_header(data)
    }
}

/// `size` rounded up to whole blocks; saturating where `tar` would fail anyway.
fn padded(size: u64) -> u64 {
    size.saturating_add(BLOCK as u64 - 1) & !(BLOCK as u64 - 1)
}

/// The PAX `size` record, read as `tar`'s `pax_extensions_value` reads it.
fn pax_size(body: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(body) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry as read: path, size, data.
    type Read3 = (Vec<u8>, u64, Vec<u8>);

    /// Every entry `tar` reads through the limit.
    fn read_all(bytes: &[u8]) -> io::Result<Vec<Read3>> {
        let mut archive = tar::Archive::new(ExtensionLimit::new(bytes));
        let mut out = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            out.push((entry.path_bytes().into_owned(), entry.size(), data));
        }
        Ok(out)
    }

    fn file(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn long_names_pax_records_and_sizes_frame_as_tar_reads_them() {
        let mut tar = tar::Builder::new(Vec::new());
        file(&mut tar, &"long/".repeat(60), b"gnu long name");
        tar.append_pax_extensions([("path", &b"pax/name"[..]), ("size", &b"3"[..])])
            .unwrap();
        // The header says 0 bytes; the PAX record says 3, and tar reads 3.
        let mut h = tar::Header::new_ustar();
        h.set_path("ignored").unwrap();
        h.set_size(0);
        h.set_cksum();
        tar.append(&h, &b""[..]).unwrap();
        let mut bytes = tar.into_inner().unwrap();
        // The 3 bytes of data after that header, then the next entry.
        let end = bytes.len() - 1024;
        bytes.truncate(end);
        bytes.extend_from_slice(b"abc");
        bytes.resize(end + 512, 0);
        let mut tail = tar::Builder::new(Vec::new());
        file(&mut tail, "after", b"x");
        bytes.extend(tail.into_inner().unwrap());
        let entries = read_all(&bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.0.clone()).collect();
        assert_eq!(
            names,
            ["long/".repeat(60).as_bytes(), b"pax/name", b"after"]
        );
        assert_eq!(entries[1].2, b"abc");
    }

    #[test]
    fn an_oversized_pax_header_fails_before_it_is_read() {
        let mut h = tar::Header::new_ustar();
        h.set_path("PaxHeader").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(600 << 20);
        h.set_cksum();
        // Only the header: the body would be 600 MiB, and must never be waited for.
        let err = read_all(h.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a PAX extended header of 629145600 bytes is over the limit of 1048576 bytes"
        );
    }

    #[test]
    fn an_oversized_gnu_long_name_fails() {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(MAX_EXTENSION_HEADER + 1);
        h.set_cksum();
        let err = read_all(h.as_bytes()).unwrap_err();
        assert!(
            err.to_string().starts_with("a GNU long name header"),
            "{err}"
        );
    }
}
