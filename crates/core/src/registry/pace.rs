//! Time budgets of a request: an answer (status and headers) within [`HEADERS_TIMEOUT`], and
//! a body that keeps coming at [`MIN_BODY_BYTES`] per [`BODY_WINDOW`] at least. A peer that
//! stalls or dribbles is cut off (and the request retried like any broken connection).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::time::Instant;

/// The longest a request without a body may wait for the answer's status and headers.
/// Requests with a body (uploads) are timed by the read timeout of the client instead: their
/// answer comes only once the body is sent.
pub(crate) const HEADERS_TIMEOUT: Duration = Duration::from_secs(20);

/// The window over which a body's pace is measured.
pub(crate) const BODY_WINDOW: Duration = Duration::from_secs(30);

/// Fewer bytes than this in a window cut the body off (about 1 KiB/s).
pub(crate) const MIN_BODY_BYTES: u64 = 32 << 10;

/// A transport failure: reqwest's, or a time budget that ran out.
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("no answer within {} s", HEADERS_TIMEOUT.as_secs())]
    NoAnswer,
    #[error("the body came at {bytes} bytes in {} s, less than the {MIN_BODY_BYTES} bytes required", BODY_WINDOW.as_secs())]
    TooSlow { bytes: u64 },
}

/// Sends `request`, waiting at most [`HEADERS_TIMEOUT`] for the answer unless it has a body.
pub(super) async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, Broken> {
    let (client, request) = request.build_split();
    let request = request?;
    if request.body().is_some() {
        return Ok(client.execute(request).await?);
    }
    match tokio::time::timeout(HEADERS_TIMEOUT, client.execute(request)).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(Broken::NoAnswer),
    }
}

/// A body's chunks, cut off when they come slower than the minimum pace.
pub(super) struct Paced<S> {
    stream: S,
    since: Instant,
    bytes: u64,
}

impl<S: Stream<Item = reqwest::Result<Bytes>> + Unpin> Paced<S> {
    pub(super) fn new(stream: S) -> Paced<S> {
        Paced {
            stream,
            since: Instant::now(),
            bytes: 0,
        }
    }

    /// The next chunk, `None` at the end, or why the body was cut off.
    pub(super) async fn next(&mut self) -> Option<Result<Bytes, Broken>> {
        loop {
            let deadline = self.since + BODY_WINDOW;
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some(Err(Broken::Http(e))),
                Ok(Some(Ok(chunk))) => {
                    self.bytes += chunk.len() as u64;
                    if Instant::now() >= deadline {
                        if let Err(e) = self.next_window() {
                            return Some(Err(e));
                        }
                    }
                    return Some(Ok(chunk));
                }
                Err(_) => {
                    if let Err(e) = self.next_window() {
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    fn next_window(&mut self) -> Result<(), Broken> {
        if self.bytes < MIN_BODY_BYTES {
            return Err(Broken::TooSlow { bytes: self.bytes });
        }
        self.since = Instant::now();
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_dribbling_body_is_cut_off_and_a_steady_one_is_not() {
        let dribble = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok::<_, reqwest::Error>(Bytes::from_static(b"x")), ()))
        });
        let mut paced = Paced::new(Box::pin(dribble));
        let mut got = 0;
        let end = loop {
            match paced.next().await {
                Some(Ok(c)) => got += c.len(),
                other => break other,
            }
        };
        assert!(matches!(end, Some(Err(Broken::TooSlow { .. }))), "{end:?}");
        assert!(got <= 31, "{got}");

        let steady = futures_util::stream::unfold(0, |n| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            (n < 100).then(|| (Ok(Bytes::from(vec![0u8; 4096])), n + 1))
        });
        let mut paced = Paced::new(Box::pin(steady));
        let mut chunks = 0;
        while let Some(chunk) = paced.next().await {
            chunk.unwrap();
            chunks += 1;
        }
        assert_eq!(chunks, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_off() {
        let stalled = futures_util::stream::pending::<reqwest::Result<Bytes>>();
        let mut paced = Paced::new(Box::pin(stalled));
        assert!(matches!(
            paced.next().await,
            Some(Err(Broken::TooSlow { bytes: 0 }))
        ));
    }
}
