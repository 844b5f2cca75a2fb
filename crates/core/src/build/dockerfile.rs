//! Reading the Dockerfile: the base images its `FROM` lines name, with `ARG` defaults and
//! build args substituted, so their registries can be given credentials.

use std::collections::{BTreeMap, HashMap};

/// The images `FROM` lines name, without tag or digest, `$ARG`s substituted; stage names
/// and `scratch` are left out.
pub(super) fn from_images(dockerfile: &str, build_args: &BTreeMap<String, String>) -> Vec<String> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut images = Vec::new();
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
                let image = substitute(image, &args);
                let earlier_stage = stages.contains(&image.to_ascii_lowercase());
                if let [_, as_, name] = rest.as_slice() {
                    if as_.eq_ignore_ascii_case("as") {
                        stages.push(name.to_ascii_lowercase());
                    }
                }
                if image == "scratch" || earlier_stage {
                    continue;
                }
                let name = image.split('@').next().unwrap_or_default();
                let name = match name.rsplit_once(':') {
                    Some((n, tag)) if !tag.contains('/') => n,
                    _ => name,
                };
                images.push(name.to_string());
            }
            _ => {}
        }
    }
    images
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
        let name = name.split(':').next().unwrap_or_default();
        out.push_str(args.get(name).map(String::as_str).unwrap_or_default());
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
    }
}
