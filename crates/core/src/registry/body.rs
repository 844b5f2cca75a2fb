//! Bodies in and out: a [`Body`] streamed into a request (again for every try), and
//! responses read into memory only up to a limit.

use super::pace::{Broken, Paced};
use super::{Registry, RegistryError};
use crate::blob::Body;

/// The request body for one try.
pub(super) async fn to_reqwest(body: &Body) -> std::io::Result<reqwest::Body> {
    match body {
        Body::Bytes { bytes, .. } => Ok(reqwest::Body::from(bytes.clone())),
        Body::File { path, offset, len } => {
            use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
            let mut file = tokio::fs::File::open(path).await?;
            file.seek(std::io::SeekFrom::Start(*offset)).await?;
            let reader = file.take(*len);
            let stream = futures_util::stream::unfold(reader, |mut r| async move {
                let mut buf = vec![0u8; 256 << 10];
                match r.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok::<_, std::io::Error>(buf), r))
                    }
                    Err(e) => Some((Err(e), r)),
                }
            });
            Ok(reqwest::Body::wrap_stream(stream))
        }
        // The push fetches such a blob into a file before it uploads it.
        Body::Elsewhere { repository, .. } => Err(std::io::Error::other(format!(
            "the blob is in {repository}, not here"
        ))),
    }
}

/// Reads a body up to `limit` bytes.
pub(super) async fn read_limited(
    response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|l| l > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    let mut stream = Paced::new(response.bytes_stream());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ReadError::Broken)?;
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("body too large")]
    TooLarge,
    #[error(transparent)]
    Broken(Broken),
}

impl Registry {
    pub(super) fn read_error(&self, e: ReadError, what: &str, limit: usize) -> RegistryError {
        match e {
            ReadError::TooLarge => RegistryError::TooLarge {
                host: self.host.to_string(),
                what: what.to_string(),
                limit,
            },
            ReadError::Broken(source) => RegistryError::Transport {
                host: self.host.to_string(),
                what: what.to_string(),
                source,
            },
        }
    }
}
