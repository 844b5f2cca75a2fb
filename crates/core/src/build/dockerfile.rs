//! Reading the Dockerfile: the base images its `FROM` lines name, with `ARG` defaults and
//! build args substituted, so their registries can be given credentials.

use std::collections::{BTreeMap, HashMap};

/// The Dockerfile is read for its `FROM` lines; a larger one is refused rather than read whole.
pub(super) const MAX_DOCKERFILE_BYTES: u64 = 4 << 20;

/// One `FROM` line: the image it names, `$ARG`s substituted (tag and digest kept), and the
/// stage name it gives, lowercased.
struct Stage {
    image: String,
    name: Option<String>,
}

/// The stages of the Dockerfile, in order.
fn stages(dockerfile: &str, build_args: &BTreeMap<String, String>) -> Vec<Stage> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut stages = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        let Some(instruction) = words.next() else {
            continue;
        };
        match instruction.to_ascii_uppercase().as_str() {
            "ARG" => {
                for word in words {
                    let (name, default) = word.split_once('=').unwrap_or((word, ""));
                    let value = build_args
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| default.trim_matches('"').to_string());
                    args.insert(name.to_string(), value);
                }
            }
            "FROM" => {
                let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
                let Some(image) = rest.first() else { continue };
                let name = match rest.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
                        Some(name.to_ascii_lowercase())
                    }
                    _ => None,
                };
                stages.push(Stage {
                    image: substitute(image, &args),
                    name,
                });
            }
            _ => {}
        }
    }
    stages
}

/// Is `image` the name of one of `earlier` stages? (Then it is a stage, not an image.)
fn stage_named<'a>(earlier: &'a [Stage], image: &str) -> Option<&'a Stage> {
    let image = image.to_ascii_lowercase();
    earlier
        .iter()
        .rev()
        .find(|s| s.name.as_deref() == Some(image.as_str()))
}

/// The images `FROM` lines name, without tag or digest, `$ARG`s substituted; stage names
/// and `scratch` are left out.
pub(super) fn from_images(dockerfile: &str, build_args: &BTreeMap<String, String>) -> Vec<String> {
    let stages = stages(dockerfile, build_args);
    let mut images = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        if stage.image == "scratch" || stage_named(&stages[..i], &stage.image).is_some() {
            continue;
        }
        let name = stage.image.split('@').next().unwrap_or_default();
        let name = match name.rsplit_once(':') {
            Some((n, tag)) if !tag.contains('/') => n,
            _ => name,
        };
        images.push(name.to_string());
    }
    images
}

/// The image whose layers the built image starts with: the `FROM` image of the stage built
/// (`target`, else the last one), followed through stage names; `None` for `scratch` or a
/// target no stage has.
pub(super) fn base_image(
    dockerfile: &str,
    build_args: &BTreeMap<String, String>,
    target: Option<&str>,
) -> Option<String> {
    let stages = stages(dockerfile, build_args);
    let mut end = match target {
        Some(target) => {
            let target = target.to_ascii_lowercase();
            stages
                .iter()
                .rposition(|s| s.name.as_deref() == Some(&target))?
                + 1
        }
        None => stages.len(),
    };
    loop {
        let stage = stages[..end].last()?;
        match stage_named(&stages[..end - 1], &stage.image) {
            Some(earlier) => {
                end = stages.iter().position(|s| std::ptr::eq(s, earlier))? + 1;
            }
            None if stage.image == "scratch" => return None,
            None => return Some(stage.image.clone()),
        }
    }
}

/// `$NAME` and `${NAME}` from `args`.
fn substitute(text: &str, args: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, next) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => (inner, ""),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        // `${NAME:-default}` and `${NAME:+alternative}`, as the Dockerfile reference has them.
        let (name, modifier) = match name.split_once(':') {
            Some((name, modifier)) => (name, Some(modifier)),
            None => (name, None),
        };
        let value = args.get(name).map(String::as_str).filter(|v| !v.is_empty());
        out.push_str(match (modifier, value) {
            (Some(m), None) if m.starts_with('-') => &m[1..],
            (Some(m), Some(_)) if m.starts_with('+') => &m[1..],
            (Some(m), _) if m.starts_with('+') => "",
            (_, value) => value.unwrap_or_default(),
        });
        rest = next;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_lines_with_args_and_stages() {
        let dockerfile = "\
ARG BASE=123456789012.dkr.ecr.eu-west-1.amazonaws.com/base
ARG TAG=1.0
ARG OTHER
FROM ${BASE}:${TAG} AS builder
FROM --platform=linux/amd64 $OTHER/tools@sha256:abc
FROM builder
FROM scratch
from localhost:5000/x:2 as final
";
        let mut build_args = BTreeMap::new();
        build_args.insert("OTHER".to_string(), "reg.example.com".to_string());
        assert_eq!(
            from_images(dockerfile, &build_args),
            [
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/base",
                "reg.example.com/tools",
                "localhost:5000/x"
            ]
        );
        assert_eq!(
            base_image(dockerfile, &build_args, None).as_deref(),
            Some("localhost:5000/x:2")
        );
        assert_eq!(
            base_image(dockerfile, &build_args, Some("BUILDER")).as_deref(),
            Some("123456789012.dkr.ecr.eu-west-1.amazonaws.com/base:1.0")
        );
        assert_eq!(base_image(dockerfile, &build_args, Some("nope")), None);
        let defaults = "ARG REG\nARG TAG=\nFROM ${REG:-localhost:5000}/x:${TAG:-1}${REG:+-never}\n";
        assert_eq!(
            base_image(defaults, &BTreeMap::new(), None).as_deref(),
            Some("localhost:5000/x:1")
        );
        let mut set = BTreeMap::new();
        set.insert("REG".to_string(), "reg.example.com".to_string());
        assert_eq!(
            base_image(defaults, &set, None).as_deref(),
            Some("reg.example.com/x:1-never")
        );
        let chained = "FROM a/b:1 AS one\nFROM one AS two\nRUN x\nFROM two\n";
        assert_eq!(
            base_image(chained, &BTreeMap::new(), None).as_deref(),
            Some("a/b:1")
        );
        assert_eq!(
            base_image("FROM scratch\nCOPY x /\n", &BTreeMap::new(), None),
            None
        );
        // A stage named like an image it comes after is still the image before it.
        let shadow = "FROM x/y AS x/y\nFROM x/y\n";
        assert_eq!(
            base_image(shadow, &BTreeMap::new(), None).as_deref(),
            Some("x/y")
        );
    }
}
