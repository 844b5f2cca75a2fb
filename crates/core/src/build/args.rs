//! Build args and labels as docker-image-resource assembles them from the put's params and
//! files: proxy variables, `build_args_file`/`labels_file`, then the inline values, with
//! the Concourse build variables expanded in build args.

use std::collections::BTreeMap;
use std::path::Path;

use super::{input, BuildParams};
use crate::error::Error;
use crate::layout::{clip, read_capped_text};

/// The most read of a `build_args_file` or `labels_file`.
const MAX_ARGS_FILE_BYTES: u64 = 1 << 20;

/// The variables docker-image-resource expands in build args (nothing else is expanded).
const EXPANDED: &[&str] = &[
    "BUILD_ID",
    "BUILD_NAME",
    "BUILD_JOB_NAME",
    "BUILD_PIPELINE_NAME",
    "BUILD_TEAM_NAME",
    "ATC_EXTERNAL_URL",
];
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

/// Proxy variables first, then build_args_file, then build_args (which win), with the six
/// Concourse variables expanded. Sorted by name (a BTreeMap), as docker-image-resource does.
pub(super) fn build_args(
    params: &BuildParams,
    src: &Path,
) -> Result<BTreeMap<String, String>, Error> {
    let mut args = BTreeMap::new();
    for var in PROXY_VARS {
        if let Ok(v) = std::env::var(var) {
            args.insert(var.to_string(), v);
        }
    }
    if let Some(file) = &params.build_args_file {
        let path = src.join(file);
        let text = read_capped_text(&path, "params.build_args_file", MAX_ARGS_FILE_BYTES)?;
        let map = json_object(&text)
            .map_err(|e| input(&path, format!("Failed to parse build_args_file: {e}")))?;
        for (k, v) in map {
            args.insert(k, json_text(&v));
        }
    }
    if let Some(value) = &params.build_args {
        let map = value.as_object().ok_or_else(|| {
            Error::field("params.build_args", "must be an object of names to values")
        })?;
        for (k, v) in map {
            args.insert(k.clone(), expand(&json_text(v)));
        }
    }
    Ok(args)
}

pub(super) fn labels(params: &BuildParams, src: &Path) -> Result<BTreeMap<String, String>, Error> {
    let mut labels = BTreeMap::new();
    if let Some(file) = &params.labels_file {
        let path = src.join(file);
        let text = read_capped_text(&path, "params.labels_file", MAX_ARGS_FILE_BYTES)?;
        let map = json_object(&text).map_err(|e| {
            input(
                &path,
                format!("params.labels_file is not a JSON object: {e}"),
            )
        })?;
        for (k, v) in map {
            labels.insert(k, json_text(&v));
        }
    }
    if let Some(value) = &params.labels {
        let map = value
            .as_object()
            .ok_or_else(|| Error::field("params.labels", "must be an object of names to values"))?;
        for (k, v) in map {
            labels.insert(k.clone(), json_text(v));
        }
    }
    Ok(labels)
}

/// A file's JSON object. Parsed as a value first, so a file holding (say) one long string is
/// "a string", not the string quoted whole by the parser's "invalid type" message.
fn json_object(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    use serde_json::Value;
    match serde_json::from_str::<Value>(text).map_err(|e| clip(&e.to_string()))? {
        Value::Object(map) => Ok(map),
        other => Err(format!(
            "expected an object of names to values, found {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => unreachable!("matched above"),
            }
        )),
    }
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `$BUILD_ID` and `${BUILD_ID}` (and the other five), from the environment.
fn expand(text: &str) -> String {
    let mut out = text.to_string();
    for var in EXPANDED {
        let value = std::env::var(var).unwrap_or_default();
        out = out.replace(&format!("${{{var}}}"), &value);
        // `$BUILD_ID` but not `$BUILD_IDX`.
        let needle = format!("${var}");
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&needle) {
            let after = &rest[i + needle.len()..];
            result.push_str(&rest[..i]);
            if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                result.push_str(&needle);
            } else {
                result.push_str(&value);
            }
            rest = after;
        }
        result.push_str(rest);
        out = result;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_and_labels_files_are_capped_and_their_errors_short() {
        let dir = tempfile::tempdir().unwrap();
        let params = BuildParams {
            build_args_file: Some("args.json".into()),
            labels_file: Some("labels.json".into()),
            ..BuildParams::default()
        };
        let huge = format!(
            "{{\"A\": \"{}\"}}",
            "x".repeat(MAX_ARGS_FILE_BYTES as usize)
        );
        std::fs::write(dir.path().join("args.json"), &huge).unwrap();
        std::fs::write(dir.path().join("labels.json"), &huge).unwrap();
        let err = crate::report::chain(&build_args(&params, dir.path()).unwrap_err());
        assert!(
            err.ends_with("args.json: params.build_args_file: larger than the 1 MiB limit"),
            "{err}"
        );
        let err = crate::report::chain(&labels(&params, dir.path()).unwrap_err());
        assert!(
            err.ends_with("labels.json: params.labels_file: larger than the 1 MiB limit"),
            "{err}"
        );
        // A file of one long string: named as a string, not quoted whole.
        let string = serde_json::json!("y\n".repeat(100_000)).to_string();
        std::fs::write(dir.path().join("args.json"), &string).unwrap();
        let err = crate::report::chain(&build_args(&params, dir.path()).unwrap_err());
        assert!(
            err.ends_with("Failed to parse build_args_file: expected an object of names to values, found a string"),
            "{err}"
        );
        std::fs::write(dir.path().join("labels.json"), "{\"a\": \u{7}").unwrap();
        let err = crate::report::chain(&labels(&params, dir.path()).unwrap_err());
        assert!(err.len() < 300 && !err.contains('\u{7}'), "{err}");
    }

    #[test]
    fn expansion_is_limited_to_the_concourse_variables() {
        std::env::set_var("BUILD_ID", "42");
        std::env::set_var("ATC_EXTERNAL_URL", "https://ci.example.com");
        assert_eq!(expand("id=$BUILD_ID"), "id=42");
        assert_eq!(expand("id=${BUILD_ID}!"), "id=42!");
        assert_eq!(
            expand("$BUILD_IDX $HOME ${ATC_EXTERNAL_URL}"),
            "$BUILD_IDX $HOME https://ci.example.com"
        );
    }
}
