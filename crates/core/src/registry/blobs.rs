//! Blobs read from a registry: streamed to a file with the digest verified (resumed with
//! `Range` when the body breaks off), or small ones (image configs) read into memory.

use reqwest::{Method, StatusCode};

use super::body::read_limited;
use super::pace::Paced;
use super::retry::{retrying, Step};
use super::{Call, Registry, RegistryError};
use crate::reference::{Digest, Repository};

/// Configs are small; refuse to read one without bound.
pub(crate) const CONFIG_LIMIT: usize = 8 << 20;

/// What one blob download needs.
#[derive(Clone, Copy)]
struct Download<'a> {
    repository: &'a Repository,
    digest: &'a Digest,
    size: Option<u64>,
    dest: &'a std::path::Path,
    progress: &'a (dyn Fn(u64) + Send + Sync),
}

impl Registry {
    /// GET a blob, from byte `range_from` on when resuming.
    fn blob_call(
        repository: &Repository,
        digest: &Digest,
        range_from: Option<u64>,
    ) -> Call<'static> {
        Call {
            method: Method::GET,
            path: format!("/v2/{}/blobs/{digest}", repository.path()),
            accept: None,
            scope: Self::pull_scope(repository),
            what: format!("blob {digest}"),
            range_from,
            body: None,
            fallback_on_500: false,
        }
    }

    /// Downloads a blob into `dest`, hashing as it goes; the file is only good when this
    /// returns Ok (digest and size verified). A body that breaks off is resumed with `Range`
    /// where the registry honours it, else restarted. `progress` gets the bytes received so
    /// far.
    pub(crate) async fn download_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        size: Option<u64>,
        dest: &std::path::Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let download = Download {
            repository,
            digest,
            size,
            dest,
            progress,
        };
        let mut resumed = false;
        match self.download_into(download, true, &mut resumed).await {
            // Resumed parts that do not add up: once more from the start, in one piece.
            Err(e @ RegistryError::DigestMismatch { .. }) if resumed => {
                tracing::warn!("{e}; the download was resumed, downloading it again whole");
                self.download_into(download, false, &mut resumed).await
            }
            other => other,
        }
    }

    /// One download, resumed with `Range` after a break when `resume`; sets `resumed` when a
    /// part of it came from a resumed request.
    async fn download_into(
        &self,
        download: Download<'_>,
        resume: bool,
        resumed: &mut bool,
    ) -> Result<(), RegistryError> {
        let Download {
            repository,
            digest,
            size,
            dest,
            progress,
        } = download;
        use sha2::Digest as _;
        use tokio::io::AsyncWriteExt as _;
        let what = format!("blob {digest}");
        let write_error = |e: std::io::Error| RegistryError::Write {
            path: dest.display().to_string(),
            source: e,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(write_error)?;
        let mut hasher = sha2::Sha256::new();
        let mut written: u64 = 0;
        let mut restart_from_zero = false;
        retrying(&self.retry, async || {
            let from = (written > 0 && resume && !restart_from_zero).then_some(written);
            let call = Self::blob_call(repository, digest, from);
            let response = match self.send(&call).await {
                Ok(r) => r,
                Err(e) => return Step::Done(Err(e)),
            };
            let status = response.status();
            let partial = from.is_some() && status == StatusCode::PARTIAL_CONTENT;
            if partial && range_start(response.headers()) != from {
                // Bytes from somewhere else than asked: drop them, and ask for the whole.
                restart_from_zero = true;
                return Step::Again {
                    why: format!(
                        "{what}: the answer to a range from byte {written} starts elsewhere"
                    ),
                    after: None,
                    otherwise: Err(RegistryError::Status {
                        host: self.host.to_string(),
                        status,
                        what: what.clone(),
                        detail: ": the range answer starts at the wrong byte".into(),
                    }),
                };
            }
            match status {
                _ if partial => *resumed = true,
                s if s.is_success() => {
                    restart_from_zero = false;
                    if written > 0 {
                        // The registry ignored the range (or was not asked for one): start over.
                        tracing::debug!("{what}: downloading again from the start");
                        use tokio::io::AsyncSeekExt as _;
                        let restart = async {
                            file.set_len(0).await?;
                            file.seek(std::io::SeekFrom::Start(0)).await
                        };
                        if let Err(e) = restart.await {
                            return Step::Done(Err(write_error(e)));
                        }
                        hasher = sha2::Sha256::new();
                        written = 0;
                    }
                }
                StatusCode::NOT_FOUND => {
                    return Step::Done(Err(RegistryError::BlobNotFound {
                        host: self.host.to_string(),
                        repository: repository.path().to_string(),
                        digest: digest.to_string(),
                    }))
                }
                _ => return Step::Done(Err(self.status_error(response, repository, &what).await)),
            }
            let mut stream = Paced::new(response.bytes_stream());
            let mut broken = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => {
                        written += chunk.len() as u64;
                        if size.is_some_and(|s| written > s) {
                            return Step::Done(Err(RegistryError::TooLarge {
                                host: self.host.to_string(),
                                what: what.clone(),
                                limit: size.unwrap_or_default() as usize,
                            }));
                        }
                        hasher.update(&chunk);
                        if let Err(e) = file.write_all(&chunk).await {
                            return Step::Done(Err(write_error(e)));
                        }
                        progress(written);
                    }
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            let otherwise = match broken {
                None if size.is_none_or(|s| written >= s) => return Step::Done(Ok(())),
                Some(e) => RegistryError::Transport {
                    host: self.host.to_string(),
                    what: what.clone(),
                    source: e,
                },
                None => RegistryError::DigestMismatch {
                    host: self.host.to_string(),
                    what: format!("{what} (cut short at {written} bytes)"),
                    expected: digest.to_string(),
                    actual: Digest::from_sha256(&hasher.clone().finalize()).to_string(),
                },
            };
            Step::Again {
                why: format!(
                    "{what} from {} broke off after {written} bytes; resuming",
                    self.host
                ),
                after: None,
                otherwise: Err(otherwise),
            }
        })
        .await?;
        file.flush().await.map_err(write_error)?;
        let actual = Digest::from_sha256(&hasher.finalize());
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                host: self.host.to_string(),
                what: format!("{what} of repository {}", repository.path()),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }

    /// A blob read into memory (at most `CONFIG_LIMIT` bytes) and checked against `digest`.
    pub(crate) async fn blob_bytes(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<Vec<u8>, RegistryError> {
        let call = Self::blob_call(repository, digest, None);
        let what = call.what.clone();
        let response = self.send(&call).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::BlobNotFound {
                host: self.host.to_string(),
                repository: repository.path().to_string(),
                digest: digest.to_string(),
            });
        }
        if !response.status().is_success() {
            return Err(self.status_error(response, repository, &what).await);
        }
        let bytes = read_limited(response, CONFIG_LIMIT)
            .await
            .map_err(|e| self.read_error(e, &what, CONFIG_LIMIT))?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                host: self.host.to_string(),
                what,
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` answer.
fn range_start(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let v = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let range = v.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(range_start(&h), None);
        h.insert(
            reqwest::header::CONTENT_RANGE,
            "bytes 100-199/200".parse().unwrap(),
        );
        assert_eq!(range_start(&h), Some(100));
        h.insert(
            reqwest::header::CONTENT_RANGE,
            "bytes */200".parse().unwrap(),
        );
        assert_eq!(range_start(&h), None);
    }
}
