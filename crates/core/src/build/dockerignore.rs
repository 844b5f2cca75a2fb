//! `.dockerignore`, as the Docker CLI applies it to a build context before sending it: one
//! pattern a line (`#` comments), Go `filepath.Match` syntax plus `**` for any number of
//! directories, `!` to take a path back, the last matching line wins, and a pattern that
//! matches a directory matches everything under it.

use std::path::Path;

use glob::{MatchOptions, Pattern};

use crate::error::Error;

pub(super) struct Ignore {
    rules: Vec<(Pattern, bool)>,
}

/// Real ones are a few lines; a larger one is refused rather than read whole.
const MAX_DOCKERIGNORE_BYTES: u64 = 4 << 20;

const OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Ignore {
    /// The rules of `<context>/.dockerignore`; none when there is no such file.
    pub(super) fn load(context: &Path) -> Result<Ignore, Error> {
        let path = context.join(".dockerignore");
        let text = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            _ => crate::layout::read_capped_text(
                &path,
                "params.build's .dockerignore",
                MAX_DOCKERIGNORE_BYTES,
            )?,
        };
        Ignore::parse(&text).map_err(|reason| Error::Input {
            path: path.display().to_string(),
            source: reason.into(),
        })
    }

    pub(super) fn parse(text: &str) -> Result<Ignore, String> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keep, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(pattern);
            if cleaned.is_empty() || cleaned == "." {
                continue;
            }
            let compiled = Pattern::new(&cleaned)
                .map_err(|e| format!("line {}: {pattern:?} is not a valid pattern: {e}", n + 1))?;
            rules.push((compiled, keep));
        }
        Ok(Ignore { rules })
    }

    /// Whether any rule takes paths back (then an ignored directory must still be walked).
    pub(super) fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, keep)| *keep)
    }

    /// `rel` is a `/`-separated path inside the context.
    pub(super) fn is_ignored(&self, rel: &str) -> bool {
        let mut ignored = false;
        for (pattern, keep) in &self.rules {
            if matches_or_parent(pattern, rel) {
                ignored = !keep;
            }
        }
        ignored
    }
}

fn matches_or_parent(pattern: &Pattern, rel: &str) -> bool {
    if pattern.matches_with(rel, OPTIONS) {
        return true;
    }
    rel.match_indices('/')
        .any(|(i, _)| pattern.matches_with(&rel[..i], OPTIONS))
}

/// Go's `filepath.Clean` for what matters here: no leading `/` or `./`, no empty or `.`
/// components, `..` resolved.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_no_rules_and_a_huge_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Ignore::load(dir.path()).is_ok());
        std::fs::write(dir.path().join(".dockerignore"), vec![b'a'; 5 << 20]).unwrap();
        let e = crate::report::chain(&Ignore::load(dir.path()).err().unwrap());
        assert!(
            e.ends_with(".dockerignore: params.build's .dockerignore: larger than the 4 MiB limit"),
            "{e}"
        );
    }

    #[test]
    fn docker_semantics() {
        let ignore = Ignore::parse(
            "# comment\n*.log\n/target\nsecrets/**\n!secrets/public.pem\n**/*.tmp\n  docs/./old  \n",
        )
        .unwrap();
        for (path, want) in [
            ("app.log", true),
            ("sub/app.log", false),
            ("target", true),
            ("target/debug/x", true),
            ("secrets/key", true),
            ("secrets/public.pem", false),
            ("a/b/c.tmp", true),
            ("c.tmp", true),
            ("docs/old/x", true),
            ("docs/new", false),
            ("Dockerfile", false),
        ] {
            assert_eq!(ignore.is_ignored(path), want, "{path}");
        }
        assert!(ignore.has_exceptions());
        assert!(Ignore::parse("[").is_err());
    }
}
