//! Selection mode of `check`: which tags are versions, in which order.
//!
//! Entered when `tag_regex`, `semver_constraint`, `variant` or `pre_releases` is set. The
//! tags are listed, filtered and ordered here without the network; `check` then asks
//! the registry for the digests of the ones worth asking about.
//!
//! - Semver mode: tags parse leniently (`v1.2.3`, `1.2`, `1`); with `variant`, only tags
//!   ending in `-<variant>` count (the suffix is dropped before parsing) and the bare variant
//!   tag plays the part `latest` plays otherwise. Pre-releases count only with
//!   `pre_releases`, and only those made of one of the prefixes (alpha, beta, rc, and any
//!   `pre_release_prefixes`, which add to them as in registry-image-resource) and numbers
//!   (`rc.1`, `rc1`, `beta-2`); with `variant` and `pre_release_prefixes` set, a further
//!   `-<suffix>` may follow (`rc.1-bar` in `1.0.0-rc.1-bar-foo`, variant `foo`), as there.
//! - One version per digest ([`one_per_digest`]): a final release over a pre-release, then
//!   the most specific tag (`1.2.3` over `1.2`).
//! - Regex mode (`tag_regex`): the whole tag must match. The sort key is the capture group
//!   named `version` when there is one, else the tag. When every key parses as semver the
//!   keys are ordered as versions, otherwise by "natural" order: runs of digits compared as
//!   numbers of any length, the rest byte by byte.
//! - Always: `tag_exclude_regex` (whole tag) and cosign's `sha256-<hex>.sig|.att|.sbom` tags
//!   are dropped.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::Hash;

use regex::Regex;

use crate::error::Error;

/// The prefixes a pre-release may start with; `pre_release_prefixes` adds to them.
pub(crate) const DEFAULT_PRE_RELEASE_PREFIXES: &[&str] = &["alpha", "beta", "rc"];

/// A source's selection fields as the pipeline gave them (`source.rs` fills this in).
#[derive(Debug, Default)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[cfg_attr(test, serde(default))]
pub(crate) struct Fields {
    pub tag_regex: Option<String>,
    pub tag_exclude_regex: Option<String>,
    pub semver_constraint: Option<String>,
    pub variant: Option<String>,
    pub pre_releases: bool,
    pub pre_release_prefixes: Vec<String>,
    pub created_at_sort: bool,
    /// Whether `source.tag` was given.
    #[cfg_attr(test, serde(skip))]
    pub tag_given: bool,
}

/// How a source selects versions among tags.
#[derive(Debug)]
pub(crate) struct Selection {
    regex: Option<Regex>,
    exclude: Option<Regex>,
    signatures: Regex,
    constraint: Option<Constraint>,
    variant: Option<String>,
    pre_releases: bool,
    prefixes: Vec<String>,
    /// `pre_release_prefixes` and `variant` were set: a pre-release may end in a
    /// `-<suffix>` before the variant's.
    suffixes: bool,
    pub created_at_sort: bool,
}

/// A tag that may become a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub tag: String,
    pub key: Key,
    /// How many of major.minor.patch the tag spelt out (`1.2` → 2): the most specific tag
    /// names a digest that several tags share.
    pub specificity: u8,
}

/// A sort key: all keys of one selection are of the same kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    Semver(semver::Version),
    Text(String),
}

impl Key {
    pub(crate) fn is_pre_release(&self) -> bool {
        matches!(self, Key::Semver(v) if !v.pre.is_empty())
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Key::Semver(a), Key::Semver(b)) => a.cmp(b),
            (Key::Text(a), Key::Text(b)) => natural_cmp(a, b),
            (Key::Semver(_), Key::Text(_)) => Ordering::Less,
            (Key::Text(_), Key::Semver(_)) => Ordering::Greater,
        }
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .cmp(&other.key)
            .then(self.specificity.cmp(&other.specificity))
            .then_with(|| self.tag.cmp(&other.tag))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The tags of a repository sorted into candidates, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub candidates: Vec<Candidate>,
    /// `latest` (or the bare variant) when it exists and may be appended: semver mode, no
    /// constraint.
    pub latest: Option<String>,
}

impl Selection {
    /// The selection of a source's fields; `None` in tag mode. With it come notes on what
    /// the combination of fields leaves unused, for check to log. Field errors name the
    /// field.
    pub(crate) fn from_fields(source: &Fields) -> Result<(Option<Selection>, Vec<String>), Error> {
        let mut notes = Vec::new();
        let selecting = source.tag_regex.is_some()
            || source.semver_constraint.is_some()
            || source.variant.is_some()
            || source.pre_releases;
        if !selecting {
            if source.tag_exclude_regex.is_some() {
                notes.push("source.tag_exclude_regex only applies with tag_regex, semver_constraint, variant or pre_releases; ignored".to_string());
            }
            if source.created_at_sort {
                notes.push("source.created_at_sort only applies with tag_regex, semver_constraint, variant or pre_releases; ignored".to_string());
            }
            return Ok((None, notes));
        }
        let regex = source
            .tag_regex
            .as_deref()
            .map(|r| anchored(r, "source.tag_regex"))
            .transpose()?;
        let exclude = source
            .tag_exclude_regex
            .as_deref()
            .map(|r| anchored(r, "source.tag_exclude_regex"))
            .transpose()?;
        let constraint = source
            .semver_constraint
            .as_deref()
            .map(|c| Constraint::parse(c).map_err(|e| Error::field("source.semver_constraint", e)))
            .transpose()?;
        let variant = match source.variant.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) => {
                let valid = v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    && !v.starts_with(['.', '-'])
                    && v.len() <= 127;
                if !valid {
                    return Err(Error::field(
                        "source.variant",
                        format!("{v:?} cannot end a tag (letters, digits, '.', '_' and '-' only)"),
                    ));
                }
                Some(v.to_string())
            }
        };
        let mut prefixes: Vec<String> = DEFAULT_PRE_RELEASE_PREFIXES
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (i, p) in source.pre_release_prefixes.iter().enumerate() {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(Error::field(
                    format!("source.pre_release_prefixes[{i}]"),
                    format!("{p:?} is not a pre-release identifier (letters, digits, '-')"),
                ));
            }
            if !prefixes.contains(p) {
                prefixes.push(p.clone());
            }
        }
        if regex.is_some() && (variant.is_some() || source.pre_releases) {
            notes.push(
                "source.tag_regex decides which tags count; variant and pre_releases are ignored"
                    .to_string(),
            );
        }
        if source.tag_given {
            notes.push(
                "check selects among tags; source.tag is only out's default tag in this mode"
                    .to_string(),
            );
        }
        let selection = Selection {
            suffixes: !source.pre_release_prefixes.is_empty() && variant.is_some(),
            regex,
            exclude,
            signatures: Regex::new(r"^sha256-[0-9a-f]{64}(\.[A-Za-z0-9]+)*$")
                .expect("the signature pattern is valid"),
            constraint,
            variant,
            pre_releases: source.pre_releases,
            prefixes,
            created_at_sort: source.created_at_sort,
        };
        Ok((Some(selection), notes))
    }

    /// Which of `tags` count, oldest first.
    pub(crate) fn plan(&self, tags: &[String]) -> Plan {
        let tags: Vec<&str> = tags
            .iter()
            .map(String::as_str)
            .filter(|t| !self.signatures.is_match(t))
            .filter(|t| !self.exclude.as_ref().is_some_and(|x| x.is_match(t)))
            .collect();
        let mut candidates = match &self.regex {
            Some(regex) => self.regex_candidates(regex, &tags),
            None => tags
                .iter()
                .filter_map(|t| self.semver_candidate(t))
                .collect(),
        };
        candidates.sort();
        candidates.dedup_by(|a, b| a.tag == b.tag);
        let latest = match (&self.regex, &self.constraint) {
            (None, None) => {
                let name = self.variant.as_deref().unwrap_or("latest");
                tags.contains(&name).then(|| name.to_string())
            }
            _ => None,
        };
        Plan { candidates, latest }
    }

    /// The key `tag` would have, for placing a cursor whose tag is gone.
    pub(crate) fn key_of(&self, tag: &str, like: Option<&Key>) -> Option<Key> {
        match &self.regex {
            None => self.semver_candidate(tag).map(|c| c.key),
            Some(regex) => {
                let text = key_text(regex, tag)?;
                match like {
                    Some(Key::Text(_)) => Some(Key::Text(text)),
                    _ => lenient_semver(&text).map(|(v, _)| Key::Semver(v)),
                }
            }
        }
    }

    fn semver_candidate(&self, tag: &str) -> Option<Candidate> {
        let text = match &self.variant {
            Some(v) => tag.strip_suffix(v.as_str())?.strip_suffix('-')?,
            None => tag,
        };
        let (version, specificity) = lenient_semver(text)?;
        if !version.pre.is_empty() {
            if !self.pre_releases {
                return None;
            }
            if !self.counts_as_pre_release(version.pre.as_str()) {
                return None;
            }
        }
        if let Some(c) = &self.constraint {
            if !c.matches(&version, self.pre_releases) {
                return None;
            }
        }
        Some(Candidate {
            tag: tag.to_string(),
            key: Key::Semver(version),
            specificity,
        })
    }

    /// `rc.1`, `rc1`, `beta-2`: a prefix, then numbers only, so that `1.2.3-rc.1-alpine` is
    /// a variant's tag, not a pre-release of the plain image. With `variant` and
    /// `pre_release_prefixes` set, a `-<suffix>` may follow the numbers (`rc.1-bar` in
    /// `1.0.0-rc.1-bar-foo`), as registry-image-resource allows there.
    fn counts_as_pre_release(&self, pre: &str) -> bool {
        let numeric = |b: u8| b.is_ascii_digit() || b == b'.' || b == b'-';
        self.prefixes.iter().any(|p| {
            let Some(rest) = pre.strip_prefix(p.as_str()) else {
                return false;
            };
            match rest.bytes().position(|b| !numeric(b)) {
                None => true,
                // The suffix starts after a `-` that ends the numbers.
                Some(i) => self.suffixes && i > 0 && rest.as_bytes()[i - 1] == b'-',
            }
        })
    }

    fn regex_candidates(&self, regex: &Regex, tags: &[&str]) -> Vec<Candidate> {
        let keyed: Vec<(&str, String)> = tags
            .iter()
            .filter_map(|t| key_text(regex, t).map(|k| (*t, k)))
            .collect();
        let parsed: Vec<Option<(semver::Version, u8)>> =
            keyed.iter().map(|(_, k)| lenient_semver(k)).collect();
        let all_semver = !parsed.is_empty() && parsed.iter().all(Option::is_some);
        if self.constraint.is_some() && !all_semver {
            tracing::warn!("source.semver_constraint applies to the tags (or their `version` captures) that parse as versions; the others are left out");
        }
        keyed
            .into_iter()
            .zip(parsed)
            .filter_map(|((tag, text), parsed)| match (&self.constraint, parsed) {
                (Some(c), Some((v, s))) => c.matches(&v, true).then(|| Candidate {
                    tag: tag.to_string(),
                    key: Key::Semver(v),
                    specificity: s,
                }),
                (Some(_), None) => None,
                (None, Some((v, s))) if all_semver => Some(Candidate {
                    tag: tag.to_string(),
                    key: Key::Semver(v),
                    specificity: s,
                }),
                (None, _) => Some(Candidate {
                    tag: tag.to_string(),
                    key: Key::Text(text),
                    specificity: 0,
                }),
            })
            .collect()
    }
}

/// Whether `a` should name a digest rather than `b`: a final release over a pre-release,
/// then the more specific tag (`1.2.3` over `1.2`), then the greater.
pub(crate) fn better(a: &Candidate, b: &Candidate) -> bool {
    let final_a = !a.key.is_pre_release();
    let final_b = !b.key.is_pre_release();
    (final_a, a.specificity, a) > (final_b, b.specificity, b)
}

/// One item per digest, the one whose candidate is [`better`]; in no particular order.
pub(crate) fn one_per_digest<T, D: Eq + Hash + Clone>(
    items: Vec<T>,
    of: impl Fn(&T) -> (&Candidate, &D),
) -> Vec<T> {
    let mut best: HashMap<D, T> = HashMap::new();
    for item in items {
        let (candidate, digest) = of(&item);
        match best.get(digest) {
            Some(kept) if !better(candidate, of(kept).0) => {}
            _ => {
                best.insert(digest.clone(), item);
            }
        }
    }
    best.into_values().collect()
}

/// The sort text of a tag that matches: the `version` capture, else the tag.
fn key_text(regex: &Regex, tag: &str) -> Option<String> {
    let captures = regex.captures(tag)?;
    Some(
        captures
            .name("version")
            .map_or(tag, |m| m.as_str())
            .to_string(),
    )
}

/// `^(?:pattern)$`, with the regex crate's multi-line message folded into one line.
fn anchored(pattern: &str, field: &str) -> Result<Regex, Error> {
    compile_regex(&format!("^(?:{pattern})$"), pattern, field)
}

/// The largest compiled program a pipeline's regular expression may make.
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// `text` compiled (at most [`REGEX_SIZE_LIMIT`]); an error names `field` and quotes
/// `pattern` (what the pipeline wrote), with the regex crate's multi-line message folded into
/// its last line.
pub(crate) fn compile_regex(text: &str, pattern: &str, field: &str) -> Result<Regex, Error> {
    regex::RegexBuilder::new(text)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            let reason = text
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .unwrap_or("invalid")
                .trim_start_matches("error: ")
                .to_string();
            Error::field(
                field,
                format!("invalid regular expression {pattern:?}: {reason}"),
            )
        })
}

/// `v1.2.3`, `1.2`, `1`, `1.2.3-rc.1`: the version and how many numbers were given.
pub(crate) fn lenient_semver(text: &str) -> Option<(semver::Version, u8)> {
    let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
    let (core, pre) = match text.find(['-', '+']) {
        Some(i) if text.as_bytes()[i] == b'-' => {
            let rest = &text[i + 1..];
            let pre = rest.split('+').next().unwrap_or_default();
            (&text[..i], Some(pre))
        }
        Some(i) => (&text[..i], None),
        None => (text, None),
    };
    let mut numbers = [0u64; 3];
    let mut count = 0u8;
    for part in core.split('.') {
        if count == 3 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        numbers[count as usize] = part.parse().ok()?;
        count += 1;
    }
    let mut version = semver::Version::new(numbers[0], numbers[1], numbers[2]);
    if let Some(pre) = pre {
        version.pre = semver::Prerelease::new(pre).ok()?;
        if version.pre.is_empty() {
            return None;
        }
    }
    Some((version, count))
}

/// Runs of digits compare as numbers of any length (`9` < `10`, no overflow), everything
/// else byte by byte; equal texts under that order are ordered by their bytes.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) if p.is_ascii_digit() && q.is_ascii_digit() => {
                let (n, rest_x) = split_digits(x);
                let (m, rest_y) = split_digits(y);
                let (n, m) = (trim_zeros(n), trim_zeros(m));
                let order = n.len().cmp(&m.len()).then_with(|| n.cmp(m));
                if order != Ordering::Equal {
                    return order;
                }
                x = rest_x;
                y = rest_y;
            }
            (Some(p), Some(q)) => {
                if p != q {
                    return p.cmp(q);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    s.split_at(end)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b'0').unwrap_or(s.len());
    &s[start..]
}

/// A `semver_constraint`: alternatives joined by `||`, each a list of comparators separated
/// by commas or spaces (`>= 1.2, < 2`, `~1.4`, `^2`, `1.x`, `1.2 - 1.4`); `*` matches every
/// version, pre-releases included.
#[derive(Debug)]
pub(crate) struct Constraint {
    any: bool,
    alternatives: Vec<semver::VersionReq>,
}

impl Constraint {
    pub(crate) fn parse(text: &str) -> Result<Constraint, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("must not be empty (use \"*\" for every version)".into());
        }
        if text == "*" {
            return Ok(Constraint {
                any: true,
                alternatives: Vec::new(),
            });
        }
        let mut alternatives = Vec::new();
        for alternative in text.split("||") {
            let normalised =
                normalise_comparators(alternative.trim()).map_err(|e| format!("{text:?}: {e}"))?;
            let req = semver::VersionReq::parse(&normalised)
                .map_err(|e| format!("{text:?} is not a version constraint ({e})"))?;
            alternatives.push(req);
        }
        Ok(Constraint {
            any: false,
            alternatives,
        })
    }

    /// With `pre_releases`, a pre-release also matches when its release would (`>=1.2` takes
    /// `1.3.0-rc.1`).
    pub(crate) fn matches(&self, v: &semver::Version, pre_releases: bool) -> bool {
        if self.any {
            return true;
        }
        let release = (pre_releases && !v.pre.is_empty()).then(|| {
            let mut r = v.clone();
            r.pre = semver::Prerelease::EMPTY;
            r
        });
        self.alternatives
            .iter()
            .any(|req| req.matches(v) || release.as_ref().is_some_and(|r| req.matches(r)))
    }
}

/// `>= 1.2 <2` → `>=1.2, <2`; `1.2 - 1.4` → `>=1.2, <=1.4`; a `v` before a version dropped.
fn normalise_comparators(alternative: &str) -> Result<String, String> {
    if alternative.is_empty() {
        return Err("an empty alternative".into());
    }
    if let Some((low, high)) = alternative.split_once(" - ") {
        return Ok(format!(
            ">={}, <={}",
            strip_v(low.trim()),
            strip_v(high.trim())
        ));
    }
    let mut comparators: Vec<String> = Vec::new();
    let mut pending_op = String::new();
    for token in alternative
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
    {
        let op_len = token
            .find(|c: char| !matches!(c, '<' | '>' | '=' | '~' | '^' | '!'))
            .unwrap_or(token.len());
        let (op, version) = token.split_at(op_len);
        if op.contains('!') {
            return Err("\"!=\" is not supported; use tag_exclude_regex".into());
        }
        if version.is_empty() {
            pending_op.push_str(op);
            continue;
        }
        let op = format!("{pending_op}{op}");
        pending_op.clear();
        comparators.push(format!("{op}{}", strip_v(version)));
    }
    if !pending_op.is_empty() {
        return Err(format!("{pending_op:?} is not followed by a version"));
    }
    Ok(comparators.join(", "))
}

fn strip_v(s: &str) -> &str {
    s.strip_prefix(['v', 'V']).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn selection(v: serde_json::Value) -> Selection {
        let mut v = v;
        v["repository"] = json!("r");
        let fields: Fields = serde_json::from_value(v).unwrap();
        Selection::from_fields(&fields).unwrap().0.unwrap()
    }

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn planned(s: &Selection, list: &[&str]) -> Vec<String> {
        s.plan(&tags(list))
            .candidates
            .into_iter()
            .map(|c| c.tag)
            .collect()
    }

    #[test]
    fn lenient_parsing() {
        let v = |s: &str| lenient_semver(s).map(|(v, n)| (v.to_string(), n));
        assert_eq!(v("v1.2.3"), Some(("1.2.3".into(), 3)));
        assert_eq!(v("1.2"), Some(("1.2.0".into(), 2)));
        assert_eq!(v("1"), Some(("1.0.0".into(), 1)));
        assert_eq!(v("1.2.3-rc.1"), Some(("1.2.3-rc.1".into(), 3)));
        assert_eq!(v("1.2.3-alpine"), Some(("1.2.3-alpine".into(), 3)));
        for bad in [
            "latest",
            "1.2.3.4",
            "1..2",
            "",
            "v",
            "1.2-",
            "123456789012345678901234",
            "main-abc",
        ] {
            assert_eq!(v(bad), None, "{bad}");
        }
    }

    #[test]
    fn natural_order_has_no_overflow() {
        let mut list = vec![
            "build-10",
            "build-9",
            "build-100000000000000000000001",
            "build-99999999999999999999999",
            "build-09",
            "build-a",
        ];
        list.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            list,
            [
                "build-09",
                "build-9",
                "build-10",
                "build-99999999999999999999999",
                "build-100000000000000000000001",
                "build-a"
            ]
        );
    }

    #[test]
    fn semver_mode_filters_and_orders() {
        let s = selection(json!({"semver_constraint": "*"}));
        assert_eq!(
            planned(
                &s,
                &[
                    "latest",
                    "1.10.0",
                    "1.9.0",
                    "v2",
                    "1.2.3-rc.1",
                    "x",
                    "1.2.3-alpine"
                ]
            ),
            ["1.9.0", "1.10.0", "v2"]
        );
    }

    #[test]
    fn constraint_variant_and_pre_releases() {
        let all = [
            "1.0.0",
            "1.2.0",
            "1.2.1-rc.1",
            "2.0.0",
            "1.2.0-alpine",
            "1.3.0-rc.1-alpine",
            "alpine",
            "latest",
            "1.4.0-beta2",
            "1.4.0-dev",
        ];
        let s = selection(json!({"semver_constraint": ">= 1.1 < 2"}));
        assert_eq!(planned(&s, &all), ["1.2.0"]);
        assert_eq!(s.plan(&tags(&all)).latest, None);

        let s = selection(json!({"variant": "alpine"}));
        assert_eq!(planned(&s, &all), ["1.2.0-alpine"]);
        assert_eq!(s.plan(&tags(&all)).latest.as_deref(), Some("alpine"));

        let s = selection(json!({"variant": "alpine", "pre_releases": true}));
        assert_eq!(planned(&s, &all), ["1.2.0-alpine", "1.3.0-rc.1-alpine"]);

        let s = selection(json!({"pre_releases": true}));
        assert_eq!(
            planned(&s, &all),
            ["1.0.0", "1.2.0", "1.2.1-rc.1", "1.4.0-beta2", "2.0.0"]
        );
        // `pre_release_prefixes` adds to alpha, beta and rc.
        let s = selection(json!({"pre_releases": true, "pre_release_prefixes": ["dev"]}));
        assert_eq!(
            planned(&s, &all),
            [
                "1.0.0",
                "1.2.0",
                "1.2.1-rc.1",
                "1.4.0-beta2",
                "1.4.0-dev",
                "2.0.0"
            ]
        );
        let s = selection(json!({"pre_releases": true, "semver_constraint": ">=1.3"}));
        assert_eq!(planned(&s, &all), ["1.4.0-beta2", "2.0.0"]);
    }

    #[test]
    fn constraint_forms() {
        let m = |c: &str, v: &str| {
            Constraint::parse(c)
                .unwrap()
                .matches(&lenient_semver(v).unwrap().0, false)
        };
        assert!(m("~1.4", "1.4.9"));
        assert!(!m("~1.4", "1.5.0"));
        assert!(m("^2", "2.9.0"));
        assert!(m("1.x", "1.7.0"));
        assert!(m("1.2 - 1.4", "1.4.0"));
        assert!(m("1.2 - 1.4", "1.4.1"));
        assert!(!m("1.2 - 1.4", "1.5.0"));
        assert!(m("<1 || >=3", "3.1.0"));
        assert!(!m("<1 || >=3", "2.1.0"));
        assert!(m(">=v1.2", "1.3.0"));
        for bad in ["", "!=1.2", ">=", "nope", "1.2 ||"] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regex_mode() {
        let s = selection(json!({"tag_regex": r"main-[0-9a-f]+-(?P<version>\d+)"}));
        assert_eq!(
            planned(
                &s,
                &[
                    "main-abc-20240102030405",
                    "main-def-9",
                    "feature-abc-1",
                    "xmain-abc-1",
                    "main-abc-20240102030405-x"
                ]
            ),
            ["main-def-9", "main-abc-20240102030405"]
        );
        let s = selection(json!({"tag_regex": r"v\d+(\.\d+)*"}));
        assert_eq!(
            planned(&s, &["v1.10", "v1.9", "v2", "latest"]),
            ["v1.9", "v1.10", "v2"]
        );
        // Not every key is a version: natural order.
        let s = selection(json!({"tag_regex": r"\d+"}));
        assert_eq!(
            planned(&s, &["123456789012345678901234", "99", "100"]),
            ["99", "100", "123456789012345678901234"]
        );
    }

    #[test]
    fn exclusions() {
        let sig = format!("sha256-{}.sig", "a".repeat(64));
        let s = selection(json!({"tag_regex": ".*", "tag_exclude_regex": ".*-debug"}));
        assert_eq!(
            planned(&s, &[&sig, "1-debug", "1", "x-debug-y"]),
            ["1", "x-debug-y"]
        );
    }

    /// What check emits for `tags` (each with the name of the image it points at, standing
    /// for its digest), without a cursor: the plan, one version per digest in version order,
    /// then `latest` (or the bare variant) when its digest is not already a version.
    fn emitted(fields: serde_json::Value, tags: &[(&str, &str)]) -> Vec<String> {
        let s = selection(fields);
        let image: HashMap<&str, &str> = tags.iter().copied().collect();
        let plan = s.plan(&tags.iter().map(|(t, _)| t.to_string()).collect::<Vec<_>>());
        let found: Vec<(Candidate, &str)> = plan
            .candidates
            .iter()
            .map(|c| (c.clone(), image[c.tag.as_str()]))
            .collect();
        let mut kept = one_per_digest(found, |(c, d)| (c, d));
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<String> = kept.iter().map(|(c, _)| c.tag.clone()).collect();
        if let Some(latest) = &plan.latest {
            if !kept.iter().any(|(_, d)| *d == image[latest.as_str()]) {
                out.push(latest.clone());
            }
        }
        out
    }

    /// registry-image-resource's "tracking semver tags" table (check_test.go,
    /// `DescribeTable("tracking semver tags", ...)`), entry by entry, named as there. Its
    /// bare semver mode (no `tag`) is dockhand's `semver_constraint: "*"`, which never appends
    /// `latest` (a constraint is set); `pre_releases: true` appends it as there. The
    /// cursor entries are in the integration tests (tests/it/select.rs), and so is
    /// `created_at_sort`.
    #[test]
    fn registry_image_resource_check_table() {
        let all = json!({"semver_constraint": "*"});
        let r = |t: &'static str, i: &'static str| (t, i);
        // "no semver tags"
        assert!(emitted(all.clone(), &[r("non-semver-tag", "random-1")]).is_empty());
        // "no matching regex tags"
        assert!(emitted(
            json!({"tag_regex": "foo.*"}),
            &[r("non-matching-regex-tag", "random-1")]
        )
        .is_empty());
        // "latest tag": differs, `*` is a constraint; without one `latest` is appended.
        let tags = [r("non-semver-tag", "random-1"), r("latest", "random-2")];
        assert!(emitted(all.clone(), &tags).is_empty());
        assert_eq!(emitted(json!({"pre_releases": true}), &tags), ["latest"]);
        // "simple tag regex"
        let tags = [
            r("1.0.0", "random-1"),
            r("non-semver-tag", "random-2"),
            r("gray", "random-3"),
            r("grey", "random-4"),
        ];
        assert_eq!(
            emitted(json!({"tag_regex": "gr(a|e)y"}), &tags),
            ["gray", "grey"]
        );
        // "regex override semver constraint": differs on purpose, the constraint applies to
        // the regex's keys (README, selection mode) and `gray`/`grey` are not versions.
        let tags = [
            r("1.0.0", "random-1"),
            r("1.2.1", "random-3"),
            r("1.2.2", "random-4"),
            r("2.0.0", "random-5"),
            r("latest", "random-6"),
            r("gray", "random-7"),
            r("grey", "random-8"),
        ];
        assert!(emitted(
            json!({"tag_regex": "gr(a|e)y", "semver_constraint": "1.2.x"}),
            &tags
        )
        .is_empty());
        assert_eq!(
            emitted(
                json!({"tag_regex": r"\d+\.\d+\.\d+", "semver_constraint": "1.2.x"}),
                &tags
            ),
            ["1.2.1", "1.2.2"]
        );
        // "semver and non-semver tags"
        assert_eq!(
            emitted(
                all.clone(),
                &[r("1.0.0", "random-1"), r("non-semver-tag", "random-2")]
            ),
            ["1.0.0"]
        );
        // "regex maintain ordering": the same order here (natural order, not the registry's).
        let tags = [
            r("1.0.0", "random-1"),
            r("3bd8a5e-dev", "random-2"),
            r("3bd8a5e-stage", "random-3"),
            r("non-matching-regex-tag", "random-4"),
            r("67e3c33-dev", "random-5"),
        ];
        assert_eq!(
            emitted(json!({"tag_regex": "^[0-9a-f]{7}-dev$"}), &tags),
            ["3bd8a5e-dev", "67e3c33-dev"]
        );
        // "semver tag ordering"
        let tags = [
            r("1.0.0", "random-1"),
            r("1.2.1", "random-3"),
            r("2.0.0", "random-5"),
        ];
        assert_eq!(emitted(all.clone(), &tags), ["1.0.0", "1.2.1", "2.0.0"]);
        // "semver constraint"
        let tags = [
            r("1.0.0", "random-1"),
            r("1.2.1", "random-3"),
            r("1.2.2", "random-4"),
            r("v1.2.3", "random-9"),
            r("2.0.0", "random-5"),
            r("latest", "random-6"),
        ];
        assert_eq!(
            emitted(json!({"semver_constraint": "1.2.x"}), &tags),
            ["1.2.1", "1.2.2", "v1.2.3"]
        );
        // "prereleases ignored by default", "prereleases opted in"
        let tags = [
            r("1.0.0-alpha.1", "random-0"),
            r("1.0.0", "random-1"),
            r("1.2.1-beta.1", "random-2"),
            r("1.2.1", "random-3"),
            r("2.0.0-rc.1", "random-4"),
            r("2.0.0", "random-5"),
        ];
        assert_eq!(emitted(all.clone(), &tags), ["1.0.0", "1.2.1", "2.0.0"]);
        assert_eq!(
            emitted(json!({"pre_releases": true}), &tags),
            [
                "1.0.0-alpha.1",
                "1.0.0",
                "1.2.1-beta.1",
                "1.2.1",
                "2.0.0-rc.1",
                "2.0.0"
            ]
        );
        // "prerelease prefixes opted in": the prefixes add to alpha, beta and rc.
        let mut tags = tags.to_vec();
        tags.push(r("2.0.0-build.1", "random-6"));
        assert_eq!(
            emitted(
                json!({"pre_releases": true, "pre_release_prefixes": ["build"]}),
                &tags
            ),
            [
                "1.0.0-alpha.1",
                "1.0.0",
                "1.2.1-beta.1",
                "1.2.1",
                "2.0.0-build.1",
                "2.0.0-rc.1",
                "2.0.0"
            ]
        );
        // "prereleases do not include 'variants'"
        let tags = [
            r("1.0.0-alpha.1", "random-0"),
            r("1.0.0-beta.1", "random-1"),
            r("1.0.0-rc.1", "random-2"),
            r("1.0.0-foo.1", "random-3"),
        ];
        assert_eq!(
            emitted(json!({"pre_releases": true}), &tags),
            ["1.0.0-alpha.1", "1.0.0-beta.1", "1.0.0-rc.1"]
        );
        // "prereleases do not require dot"
        let tags = [
            r("1.0.0-alpha1", "random-0"),
            r("1.0.0-alpha2", "random-1"),
            r("1.0.0-beta1", "random-2"),
            r("1.0.0-beta2", "random-3"),
            r("1.0.0-rc1", "random-4"),
            r("1.0.0-rc2", "random-5"),
            r("1.0.0-foo1", "random-6"),
            r("1.0.0-foo2", "random-7"),
        ];
        assert_eq!(
            emitted(json!({"pre_releases": true}), &tags),
            [
                "1.0.0-alpha1",
                "1.0.0-alpha2",
                "1.0.0-beta1",
                "1.0.0-beta2",
                "1.0.0-rc1",
                "1.0.0-rc2"
            ]
        );
        // "prereleases do not require number"
        let tags = [
            r("1.0.0-alpha", "random-0"),
            r("1.0.0-beta", "random-1"),
            r("1.0.0-rc", "random-2"),
            r("1.0.0-foo", "random-3"),
        ];
        assert_eq!(
            emitted(json!({"pre_releases": true}), &tags),
            ["1.0.0-alpha", "1.0.0-beta", "1.0.0-rc"]
        );
        // "final versions take priority over rcs"
        let tags = [
            r("1.0.0-rc.1", "random-2"),
            r("1.0.0-rc1", "random-2"),
            r("1.0.0-rc", "random-2"),
            r("1.0.0", "random-2"),
        ];
        assert_eq!(emitted(json!({"pre_releases": true}), &tags), ["1.0.0"]);
        // "mixed specificity semver tags"
        let tags = [
            r("1", "random-1"),
            r("2", "random-2"),
            r("2.1", "random-2"),
            r("latest", "random-3"),
            r("3", "random-3"),
            r("3.2", "random-3"),
            r("3.2.1", "random-3"),
            r("3.1", "random-4"),
            r("3.1.0", "random-4"),
            r("3.0", "random-5"),
            r("3.0.0", "random-5"),
        ];
        let want = ["1", "2.1", "3.0.0", "3.1.0", "3.2.1"];
        assert_eq!(emitted(all.clone(), &tags), want);
        assert_eq!(emitted(json!({"pre_releases": true}), &tags), want);
        // "semver tags with latest tag having unique digest": `latest` only without a
        // constraint (`*` is one).
        let tags = [
            r("1.0.0", "random-1"),
            r("non-semver-tag", "random-2"),
            r("latest", "random-3"),
        ];
        assert_eq!(emitted(all.clone(), &tags), ["1.0.0"]);
        assert_eq!(
            emitted(json!({"pre_releases": true}), &tags),
            ["1.0.0", "latest"]
        );
        // "latest tag pointing to latest version", "latest tag pointing to older version"
        for tags in [
            [
                r("1", "random-1"),
                r("2", "random-2"),
                r("3", "random-3"),
                r("latest", "random-3"),
            ],
            [
                r("1", "random-1"),
                r("2", "random-2"),
                r("latest", "random-2"),
                r("3", "random-3"),
            ],
        ] {
            assert_eq!(
                emitted(json!({"pre_releases": true}), &tags),
                ["1", "2", "3"]
            );
        }
        // "variants"
        let tags = [
            r("latest", "random-1"),
            r("1.0.0", "random-1"),
            r("0.9.0", "random-2"),
            r("foo", "random-3"),
            r("1.0.0-foo", "random-3"),
            r("0.9.0-foo", "random-4"),
            r("bar", "random-5"),
            r("1.0.0-bar", "random-5"),
            r("0.9.0-bar", "random-6"),
        ];
        assert_eq!(
            emitted(json!({"variant": "foo"}), &tags),
            ["0.9.0-foo", "1.0.0-foo"]
        );
        // "variant with bare variant tag pointing to unique digest"
        let tags = [
            r("latest", "random-1"),
            r("1.0.0", "random-1"),
            r("0.9.0", "random-2"),
            r("foo", "random-3"),
            r("0.8.0-foo", "random-4"),
            r("bar", "random-5"),
            r("1.0.0-bar", "random-5"),
            r("0.9.0-bar", "random-6"),
        ];
        assert_eq!(
            emitted(json!({"variant": "foo"}), &tags),
            ["0.8.0-foo", "foo"]
        );
        // "distinguishing additional variants from prereleases"
        let tags = [
            r("1.0.0-foo", "random-1"),
            r("1.0.0-rc.1-foo", "random-2"),
            r("1.0.0-alpha.1-foo", "random-3"),
            r("1.0.0-beta.1-foo", "random-4"),
            r("1.0.0-bar-foo", "random-5"),
            r("1.0.0-rc.1-bar-foo", "random-6"),
            r("1.0.0-alpha.1-bar-foo", "random-7"),
            r("1.0.0-beta.1-bar-foo", "random-8"),
        ];
        assert_eq!(
            emitted(json!({"variant": "foo", "pre_releases": true}), &tags),
            [
                "1.0.0-alpha.1-foo",
                "1.0.0-beta.1-foo",
                "1.0.0-rc.1-foo",
                "1.0.0-foo"
            ]
        );
        // "opting in to prereleases allows additional '-' suffixes before variant"
        let mut tags = tags.to_vec();
        tags[0] = r("1.0.0-build-foo", "random-1");
        assert_eq!(
            emitted(
                json!({"variant": "foo", "pre_releases": true, "pre_release_prefixes": ["build"]}),
                &tags
            ),
            [
                "1.0.0-alpha.1-foo",
                "1.0.0-alpha.1-bar-foo",
                "1.0.0-beta.1-foo",
                "1.0.0-beta.1-bar-foo",
                "1.0.0-build-foo",
                "1.0.0-rc.1-foo",
                "1.0.0-rc.1-bar-foo"
            ]
        );
    }

    #[test]
    fn a_suffix_after_a_pre_release_needs_variant_and_pre_release_prefixes() {
        let tags = [
            "1.0.0-rc.1-bar-foo",
            "1.0.0-rc.1-foo",
            "1.0.0-rc.x-foo",
            "1.0.0-rcfoo-foo",
        ];
        let s = selection(json!({"pre_releases": true, "variant": "foo"}));
        assert_eq!(planned(&s, &tags), ["1.0.0-rc.1-foo"]);
        let s = selection(
            json!({"pre_releases": true, "variant": "foo", "pre_release_prefixes": ["build"]}),
        );
        assert_eq!(planned(&s, &tags), ["1.0.0-rc.1-foo", "1.0.0-rc.1-bar-foo"]);
        // Without a variant, `1.0.0-rc.1-alpine` stays a variant's tag (registry-image-resource
        // takes it as a pre-release of the plain image there).
        let s = selection(json!({"pre_releases": true, "pre_release_prefixes": ["build"]}));
        assert_eq!(
            planned(&s, &["1.0.0-rc.1-alpine", "1.0.0-build.2"]),
            ["1.0.0-build.2"]
        );
    }

    #[test]
    fn field_errors() {
        let err = |v: serde_json::Value| {
            let mut v = v;
            v["repository"] = json!("r");
            let fields: Fields = serde_json::from_value(v).unwrap();
            let e = crate::report::chain(&Selection::from_fields(&fields).unwrap_err());
            assert!(!e.contains('\n'), "{e}");
            e
        };
        assert!(err(json!({"tag_regex": "("})).starts_with("source.tag_regex: invalid"));
        assert!(err(json!({"tag_regex": "a", "tag_exclude_regex": "["}))
            .starts_with("source.tag_exclude_regex:"));
        assert!(
            err(json!({"semver_constraint": ">= one"})).starts_with("source.semver_constraint:")
        );
        assert!(err(json!({"variant": "-alpine"})).starts_with("source.variant:"));
        assert!(err(json!({"variant": "a b"})).starts_with("source.variant:"));
    }
}
