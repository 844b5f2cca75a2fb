//! The Engine API's streams: a JSON message stream (build, pull, load) read to its end with
//! its output shown, and a file sent as a request body.

use std::path::PathBuf;

use futures_util::StreamExt as _;

/// Reads a stream of build or pull messages to its end: output lines go to stderr, and an
/// error anywhere in it (a 200 can carry one mid-stream) fails the whole.
pub(super) async fn drain<S, M>(mut stream: S) -> Result<(), String>
where
    S: futures_util::Stream<Item = Result<M, bollard::errors::Error>> + Unpin,
    M: Message,
{
    while let Some(item) = stream.next().await {
        let message = item.map_err(|e| match e {
            bollard::errors::Error::DockerStreamError { error } => error,
            other => other.to_string(),
        })?;
        if let Some(error) = message.error() {
            return Err(error);
        }
        message.show();
    }
    Ok(())
}

/// What the daemon's JSON message streams have in common.
pub(super) trait Message {
    fn error(&self) -> Option<String>;
    fn show(&self);
}

impl Message for bollard::models::BuildInfo {
    fn error(&self) -> Option<String> {
        self.error_detail.as_ref().and_then(|d| d.message.clone())
    }
    fn show(&self) {
        if let Some(text) = &self.stream {
            eprint!("{}", crate::redact::redact(text));
        } else if let Some(status) = &self.status {
            tracing::debug!("{status}");
        }
    }
}

impl Message for bollard::models::CreateImageInfo {
    fn error(&self) -> Option<String> {
        self.error_detail.as_ref().and_then(|d| d.message.clone())
    }
    fn show(&self) {
        if let Some(status) = &self.status {
            tracing::debug!("{status}");
        }
    }
}

/// A file as a stream of byte chunks for a request body.
pub(super) async fn file_stream(
    path: PathBuf,
) -> std::io::Result<impl futures_util::Stream<Item = bytes::Bytes> + Send + 'static> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(&path).await?;
    Ok(futures_util::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 256 << 10];
        match f.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((bytes::Bytes::from(buf), f))
            }
        }
    }))
}
