//! Images on disk: read for pushing ([`read`]: `docker save` archives, OCI layouts,
//! `import_file` rootfs tarballs) and written by `in` ([`write`]: `docker load`-able archives
//! and OCI layouts). Synchronous.
//!
//! Also the guards for what `out` reads whole from its inputs (tag files, args and labels
//! files, the names beside a saved image): [`read_capped`] stops at a limit instead of
//! reading a file of any size, and [`quote`] and [`clip`] keep an error that shows input (file
//! content, a member name, a parser's message) to one short line.

use std::io::Read as _;
use std::path::Path;

use crate::error::Error;

pub(crate) mod read;
pub(crate) mod write;

/// How many characters of file content an error message shows.
const QUOTED_CHARS: usize = 100;

/// A file read whole, but at most `limit` bytes of it: a larger file, or one that is not a
/// regular file (a FIFO would block), is an error naming `field` and the limit.
pub(crate) fn read_capped(path: &Path, field: &str, limit: u64) -> Result<Vec<u8>, Error> {
    let input = |why: String| Error::Input {
        path: path.display().to_string(),
        source: why.into(),
    };
    let meta = std::fs::metadata(path).map_err(|e| input(format!("{field}: {e}")))?;
    if !meta.is_file() {
        return Err(input(format!("{field}: not a regular file")));
    }
    let too_large = || input(format!("{field}: larger than the {} limit", size(limit)));
    if meta.len() > limit {
        return Err(too_large());
    }
    let file = std::fs::File::open(path).map_err(|e| input(format!("{field}: {e}")))?;
    let mut out = Vec::with_capacity(meta.len() as usize);
    // One byte over the limit tells a file that grew since `metadata` from one that did not.
    file.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| input(format!("{field}: {e}")))?;
    if out.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(out)
}

/// [`read_capped`], as UTF-8 text.
pub(crate) fn read_capped_text(path: &Path, field: &str, limit: u64) -> Result<String, Error> {
    String::from_utf8(read_capped(path, field, limit)?).map_err(|_| Error::Input {
        path: path.display().to_string(),
        source: format!("{field}: not UTF-8 text").into(),
    })
}

/// `text` quoted for an error message, escaped as `{:?}` would (control characters too),
/// and cut so that at most 100 characters of it are shown.
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    let mut shown = 0;
    for c in text.chars() {
        let escaped: String = match c {
            '\'' => "'".into(),
            c => c.escape_debug().collect(),
        };
        shown += escaped.chars().count();
        if shown > QUOTED_CHARS {
            return format!("{out}\"… ({} bytes)", text.len());
        }
        out.push_str(&escaped);
    }
    out.push('"');
    out
}

/// An error message built from input (a JSON parser's, which may quote it) kept to one short
/// line: control characters escaped, at most 200 characters.
pub(crate) fn clip(message: &str) -> String {
    let mut out = String::new();
    for (i, c) in message.chars().enumerate() {
        if i == 2 * QUOTED_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// `limit` in words: 64 KiB, 4 MiB.
pub(crate) fn size(limit: u64) -> String {
    match limit {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_capped_refuses_a_file_over_the_limit_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tag");
        std::fs::write(&path, "x".repeat(65)).unwrap();
        assert_eq!(read_capped(&path, "params.tag_file", 65).unwrap().len(), 65);
        let err = read_capped(&path, "params.tag_file", 64).unwrap_err();
        let text = crate::report::chain(&err);
        assert!(
            text.ends_with("tag: params.tag_file: larger than the 64 bytes limit"),
            "{text}"
        );
        let err = read_capped(dir.path(), "params.tag_file", 64).unwrap_err();
        assert!(crate::report::chain(&err).contains("not a regular file"));
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let err = read_capped_text(&path, "params.tag_file", 64).unwrap_err();
        assert!(crate::report::chain(&err).contains("not UTF-8 text"));
    }

    #[test]
    fn quotes_and_clips_are_short_and_escaped() {
        assert_eq!(quote("a\nb\u{1b}"), r#""a\nb\u{1b}""#);
        let long = "y".repeat(20 << 20);
        let q = quote(&long);
        assert!(q.len() < 130, "{q}");
        assert!(q.ends_with("… (20971520 bytes)"), "{q}");
        let q = quote(&"\u{1b}".repeat(1000));
        assert!(q.len() < 130, "{q}");
        assert_eq!(quote("it's \"x\""), r#""it's \"x\"""#);
        assert_eq!(clip("line\none"), r"line\none");
        assert_eq!(clip(&long).chars().count(), 201);
        assert_eq!(size(64 << 10), "64 KiB");
        assert_eq!(size(4 << 20), "4 MiB");
    }
}
