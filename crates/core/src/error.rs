//! The core's error type. Messages are lowercase, name what failed, and never repeat their
//! source: the binaries print the whole chain once with `{:#}`.

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

/// An error and its sources on one line, for errors folded into another's message.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
