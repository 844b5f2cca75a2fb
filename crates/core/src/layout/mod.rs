//! Images on disk: read for pushing ([`read`]: `docker save` archives, OCI layouts,
//! `import_file` rootfs tarballs) and written by `in` ([`write`]: `docker load`-able archives
//! and OCI layouts). Synchronous.
//!
//! Also [`quote`] and [`clip`], which keep an error that shows input (a member name, a
//! parser's message) to one short line.

pub(crate) mod read;
pub(crate) mod write;

/// How many characters of file content an error message shows.
const QUOTED_CHARS: usize = 100;

/// `text` quoted for an error message, as `{:?}` would (control characters escaped), and cut
/// to its first 100 characters.
pub(crate) fn quote(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(QUOTED_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}… ({} bytes)", text.len())
    } else {
        format!("{head:?}")
    }
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
    fn quotes_and_clips_are_short_and_escaped() {
        assert_eq!(quote("a\nb\u{1b}"), r#""a\nb\u{1b}""#);
        let long = "y".repeat(20 << 20);
        let q = quote(&long);
        assert!(q.len() < 130, "{q}");
        assert!(q.ends_with("… (20971520 bytes)"), "{q}");
        assert_eq!(clip("line\none"), r"line\none");
        assert_eq!(clip(&long).chars().count(), 201);
        assert_eq!(size(64 << 10), "64 KiB");
        assert_eq!(size(4 << 20), "4 MiB");
    }
}
