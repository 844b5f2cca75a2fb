//! The core's error type. Messages are lowercase, name what failed, and never repeat their
//! source: the binaries print the whole chain once with `{:#}` (so `field: why`). Each
//! variant names the object (field, path, image reference) and keeps what went wrong as its
//! `#[source]`: the error underneath itself (io, JSON, the daemon's, the rootfs writer's),
//! which code can downcast, or dockhand's own finding in words.

use std::path::Path;

use crate::registry::RegistryError;

/// Why something failed: the error underneath, or a finding in words (`"required"`).
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no request on stdin: expected a JSON object like {{\"source\":{{\"repository\":\"...\"}}}}")]
    EmptyRequest,
    #[error("the request on stdin is not valid JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("the request on stdin must be a JSON object, not {found}")]
    NotAnObject { found: &'static str },
    /// A field of the request is missing or wrong; `field` is its path (`source.tag`).
    #[error("{field}")]
    Field { field: String, source: Cause },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("tag {tag} not found in repository {repository}")]
    TagNotFound { repository: String, tag: String },
    #[error("image {reference}")]
    Image { reference: String, source: Cause },
    #[error("{path}")]
    Input { path: String, source: Cause },
    #[error("cannot write {path}")]
    Output { path: String, source: Cause },
    #[error("docker daemon")]
    Daemon { source: Cause },
    /// docker-image-resource's words, which users grep for.
    #[error("Docker failed to start within {seconds} seconds")]
    DaemonTimeout { seconds: u64 },
    #[error("docker build failed")]
    Build { source: Cause },
}

impl Error {
    /// A field error; `why` is the error underneath (kept as the source) or what is wrong,
    /// in words.
    pub fn field(field: impl Into<String>, why: impl Into<Cause>) -> Error {
        Error::Field {
            field: field.into(),
            source: why.into(),
        }
    }
}

/// A failed write of an output.
pub(crate) fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Output {
        path: path.display().to_string(),
        source: e.into(),
    }
}

/// Writes an output file whole or not at all (see [`crate::fs::write_file`]).
pub(crate) fn write_output(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    crate::fs::write_file(path, bytes).map_err(|e| io_error(path, e))
}
