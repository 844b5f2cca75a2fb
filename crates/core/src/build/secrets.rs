//! `params.secrets`, read and checked when the build is prepared: each secret id with the
//! environment variable or file BuildKit reads it from.

use std::path::{Path, PathBuf};

use super::input;
use crate::error::Error;

/// A `params.secrets` entry: BuildKit mounts it at `/run/secrets/<id>` for `RUN
/// --mount=type=secret,id=<id>` and keeps it out of the image.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SecretSource {
    /// The value of an environment variable of `out`.
    Env(String),
    /// A file, relative to the put's directory unless absolute.
    File(PathBuf),
}

/// `params.secrets`: `{"<id>": {"env": "VAR"}}` or `{"<id>": {"source": "path"}}`, as
/// docker-image-resource takes them; each is checked here so a missing one fails the put
/// before the build starts.
pub(super) fn secrets(
    value: Option<&serde_json::Value>,
    src: &Path,
) -> Result<Vec<(String, SecretSource)>, Error> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let map = value.as_object().ok_or_else(|| {
        Error::field(
            "params.secrets",
            "must be an object of secret ids to {\"env\": \"VAR\"} or {\"source\": \"path\"}",
        )
    })?;
    let mut out = Vec::new();
    for (id, spec) in map {
        let field = format!("params.secrets.{id}");
        if id.is_empty() || id.contains([',', '=']) {
            return Err(Error::field(
                field,
                "a secret id cannot be empty or hold ',' or '='",
            ));
        }
        let spec = spec.as_object().ok_or_else(|| {
            Error::field(
                &field,
                "must be {\"env\": \"VAR\"} or {\"source\": \"path\"}",
            )
        })?;
        let text = |key: &str| match spec.get(key) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(Error::field(
                format!("{field}.{key}"),
                "must be a non-empty string",
            )),
        };
        if let Some(unknown) = spec
            .keys()
            .find(|k| !matches!(k.as_str(), "env" | "source" | "src"))
        {
            return Err(Error::field(
                &field,
                format!("unknown key {unknown:?}: use \"env\" or \"source\""),
            ));
        }
        let source = match (text("env")?, text("source")?.or(text("src")?)) {
            (Some(var), None) => {
                if std::env::var_os(&var).is_none() {
                    return Err(Error::field(
                        format!("{field}.env"),
                        format!("environment variable {var} is not set"),
                    ));
                }
                SecretSource::Env(var)
            }
            (None, Some(path)) => {
                let path = src.join(path);
                if !path.is_file() {
                    return Err(input(&path, format!("{field}.source: no such file")));
                }
                SecretSource::File(path)
            }
            _ => {
                return Err(Error::field(
                    &field,
                    "needs exactly one of \"env\" or \"source\"",
                ))
            }
        };
        out.push((id.clone(), source));
    }
    Ok(out)
}
