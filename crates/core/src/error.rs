//! The core's error type. Messages are lowercase, name what failed, and never repeat their
//! source: the binaries print the whole chain once with `{:#}`.

use std::path::Path;

use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no request on stdin: expected a JSON object like {{\"source\":{{\"repository\":\"...\"}}}}")]
    EmptyRequest,
    #[error("the request on stdin is not valid JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("the request on stdin must be a JSON object, not {found}")]
    NotAnObject { found: &'static str },
    /// A field of the request is missing or wrong; `field` is its path (`source.tag`).
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("tag {tag} not found in repository {repository}")]
    TagNotFound { repository: String, tag: String },
    #[error("image {reference}: {reason}")]
    Image { reference: String, reason: String },
    #[error("{path}: {reason}")]
    Input { path: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Output { path: String, reason: String },
    #[error("docker daemon: {reason}")]
    Daemon { reason: String },
    /// docker-image-resource's words, which users grep for.
    #[error("Docker failed to start within {seconds} seconds")]
    DaemonTimeout { seconds: u64 },
    #[error("docker build failed: {reason}")]
    Build { reason: String },
}

impl Error {
    pub fn field(field: impl Into<String>, reason: impl std::fmt::Display) -> Error {
        Error::Field {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

/// A failed write of an output.
pub(crate) fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Output {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes an output file whole or not at all (see [`crate::fs::write_file`]).
pub(crate) fn write_output(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    crate::fs::write_file(path, bytes).map_err(|e| io_error(path, e))
}
