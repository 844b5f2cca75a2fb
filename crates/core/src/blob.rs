//! A blob's bytes as something that can be read again from the start, for a retried upload:
//! in memory, or a range of a file (a layer inside a `docker save` tarball, or a whole file);
//! or a blob another repository has, which the push mounts or copies from there.

use std::path::PathBuf;

use crate::reference::Repository;

#[derive(Debug, Clone)]
pub(crate) enum Body {
    Bytes {
        bytes: Vec<u8>,
        content_type: String,
    },
    /// `len` bytes of a file from `offset`.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    /// In `repository` (a base image's layer, after a build): mounted from there when it is
    /// on the registry pushed to, else downloaded (verified) to `path` and uploaded from it.
    Elsewhere {
        repository: Repository,
        path: PathBuf,
        len: u64,
    },
}

impl Body {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Body::Bytes { bytes, .. } => bytes.len() as u64,
            Body::File { len, .. } | Body::Elsewhere { len, .. } => *len,
        }
    }

    pub(crate) fn content_type(&self) -> &str {
        match self {
            Body::Bytes { content_type, .. } => content_type,
            Body::File { .. } | Body::Elsewhere { .. } => "application/octet-stream",
        }
    }
}
