//! The one redactor every line of output goes through (the log lines and the final error
//! line; see the resource crate's wrapper). It replaces every secret the process has seen
//! (each `Secret` registers itself, and so do the encodings it is
//! sent in) with `***`, masks the userinfo of URLs, escapes control characters and cuts the
//! line to a sane length.

use std::sync::RwLock;

use base64::Engine as _;

/// Shorter values are not treated as secrets: masking every `a` of a one-letter password
/// would garble the line and tell the reader the password anyway.
pub const MIN_SECRET_LEN: usize = 4;

/// The longest line dockhand prints, in characters; the rest is cut with a note.
pub const MAX_LINE: usize = 4096;

/// What a secret is replaced with.
const MASK: &str = "***";

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers `value` (and its base64 and percent-encoded forms) as a secret that no output
/// line may contain.
pub(crate) fn register(value: &str) {
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let forms = [
        value.to_string(),
        base64::engine::general_purpose::STANDARD.encode(value),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value),
        url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>(),
        percent_encode_all(value),
    ];
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for form in forms {
        if form.len() >= MIN_SECRET_LEN && !secrets.contains(&form) {
            secrets.push(form);
        }
    }
    // Longest first, so that a secret containing another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Remembers the `user:password` pair as basic auth sends it (base64 of the pair).
pub(crate) fn register_pair(user: &str, password: &str) {
    if password.is_empty() {
        return;
    }
    register(&format!("{user}:{password}"));
}

/// `%XX` for every byte that is not unreserved, as userinfo writes it.
fn percent_encode_all(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `text` with every registered secret and every URL's userinfo masked.
pub fn redact(text: &str) -> String {
    let mut out = mask_userinfo(text);
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    out
}

/// `scheme://user:pass@host` → `scheme://***@host`, wherever a URL appears in `text`.
fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends at the first `/`, `?`, `#`, space or quote.
        let end = after
            .find(|c: char| "/?#\"'<>`".contains(c) || c.is_whitespace() || c.is_control())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                out.push_str(MASK);
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// One clean line for a terminal or a log: redacted, every control character (newlines
/// included) escaped, and at most [`MAX_LINE`] characters.
pub fn clean_line(text: &str) -> String {
    let redacted = redact(text);
    let mut out = String::with_capacity(redacted.len().min(MAX_LINE + 64));
    for (count, c) in redacted.chars().enumerate() {
        if count >= MAX_LINE {
            out.push_str(&format!(
                "… (cut at {MAX_LINE} of {} characters)",
                redacted.chars().count()
            ));
            break;
        }
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => out.extend(c.escape_default()),
            // Bidirectional overrides make a line read otherwise than it is.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// Text quoted from an input (a file, a body) into a message: at most `max` characters,
/// control characters escaped, secrets masked.
pub fn quote(text: &str, max: usize) -> String {
    let clean = clean_line(text);
    if clean.chars().count() <= max {
        return clean;
    }
    let cut: String = clean.chars().take(max).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_their_encodings_are_masked() {
        register("hunter2-very-secret");
        register_pair("me", "hunter2-very-secret");
        let basic = base64::engine::general_purpose::STANDARD.encode("me:hunter2-very-secret");
        let line = format!(
            "echo: Authorization: Basic {basic}; pw hunter2-very-secret; {}",
            percent_encode_all("hunter2-very-secret")
        );
        let out = redact(&line);
        assert!(!out.contains("hunter2"), "{out}");
        assert!(!out.contains(&basic), "{out}");
    }

    #[test]
    fn short_values_are_not_secrets() {
        register("ab");
        assert_eq!(redact("a tab"), "a tab");
    }

    #[test]
    fn userinfo_is_masked() {
        assert_eq!(
            redact("cloning https://user:tok3n@github.com/x.git failed"),
            "cloning https://***@github.com/x.git failed"
        );
        assert_eq!(
            redact("mirror http://a@b@m:5000 and https://plain/x"),
            "mirror http://***@m:5000 and https://plain/x"
        );
        assert_eq!(redact("no url: a@b"), "no url: a@b");
    }

    #[test]
    fn lines_are_clean_and_bounded() {
        assert_eq!(
            clean_line("red \u{1b}[31mx\u{7}\nerror: forged"),
            "red \\u{1b}[31mx\\u{7} error: forged"
        );
        let long = "x".repeat(MAX_LINE * 3);
        let line = clean_line(&long);
        assert!(line.chars().count() < MAX_LINE + 100, "{}", line.len());
        assert!(line.ends_with(&format!("of {} characters)", MAX_LINE * 3)));
        assert_eq!(quote("abcdef", 3), "abc…");
    }
}
