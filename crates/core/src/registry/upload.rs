//! Pushing blobs: existence checks, cross-repository mounts, monolithic uploads (POST then
//! PUT with the digest)
//! (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md#push>).

use reqwest::{Method, StatusCode};

use super::retry::{retrying, RetryPolicy, Step};
use super::{Call, Registry, RegistryError};
use crate::blob::Body;
use crate::reference::{Digest, Repository};

/// What a mount request did.
pub(crate) enum Mount {
    Mounted,
    /// The registry could not mount and opened an upload session instead (its location).
    Upload(String),
    NotMounted,
}

impl Registry {
    pub(super) fn push_scope(repository: &Repository) -> String {
        format!("repository:{}:pull,push", repository.path())
    }

    pub(super) fn call(
        &self,
        method: Method,
        path: String,
        scope: String,
        what: String,
        body: Option<Body>,
    ) -> Call<'static> {
        Call {
            method,
            path,
            accept: None,
            scope,
            what,
            range_from: None,
            fallback_on_500: false,
            body,
        }
    }

    /// Does the repository already have this blob? (HEAD; a skipped upload costs nothing.)
    pub(crate) async fn blob_exists(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let what = format!("blob {digest}");
        let call = self.call(
            Method::HEAD,
            format!("/v2/{}/blobs/{digest}", repository.path()),
            Self::push_scope(repository),
            what.clone(),
            None,
        );
        let response = self.send(&call).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(response, repository, &what).await),
        }
    }

    /// Asks the registry to link a blob it has in `from` into `repository`.
    pub(crate) async fn mount_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        from: &Repository,
    ) -> Result<Mount, RegistryError> {
        let what = format!("mount of blob {digest} from {}", from.path());
        let call = self.call(
            Method::POST,
            format!(
                "/v2/{}/blobs/uploads/?mount={}&from={}",
                repository.path(),
                digest.as_str().replace(':', "%3A"),
                from.path()
            ),
            format!(
                "{} repository:{}:pull",
                Self::push_scope(repository),
                from.path()
            ),
            what.clone(),
            None,
        );
        let response = self.send(&call).await?;
        match response.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(match location(&response) {
                Some(l) => Mount::Upload(l),
                None => Mount::NotMounted,
            }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(self.status_error(response, repository, &what).await)
            }
            _ => Ok(Mount::NotMounted),
        }
    }

    /// Uploads a blob in one PUT; `session` is an upload location already opened (by a
    /// mount that fell back), else one is opened. A failed session is started again.
    pub(crate) async fn upload_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        body: Body,
        mut session: Option<String>,
    ) -> Result<(), RegistryError> {
        let what = format!("upload of blob {digest}");
        let sessions = RetryPolicy {
            attempts: 3,
            ..self.retry
        };
        retrying(&sessions, async || {
            let location = match session.take() {
                Some(l) => l,
                None => match self.open_upload(repository, &what).await {
                    Ok(l) => l,
                    Err(e) => return Step::Done(Err(e)),
                },
            };
            let separator = if location.contains('?') { '&' } else { '?' };
            let call = self.call(
                Method::PUT,
                format!(
                    "{location}{separator}digest={}",
                    digest.as_str().replace(':', "%3A")
                ),
                Self::push_scope(repository),
                what.clone(),
                Some(body.clone()),
            );
            let failed = match self.send(&call).await {
                Ok(response) if response.status() == StatusCode::CREATED => {
                    return Step::Done(Ok(()))
                }
                Ok(response)
                    if response.status() == StatusCode::NOT_FOUND
                        || response.status().is_server_error() =>
                {
                    // The session expired or the registry lost it: open a new one.
                    self.status_error(response, repository, &what).await
                }
                Ok(response) => {
                    return Step::Done(Err(self.status_error(response, repository, &what).await))
                }
                Err(e @ RegistryError::Transport { .. }) => e,
                Err(e) => return Step::Done(Err(e)),
            };
            Step::Again {
                why: format!(
                    "{what} to {} failed ({failed}); starting it again",
                    self.host
                ),
                after: None,
                otherwise: Err(failed),
            }
        })
        .await
    }

    /// POSTs for an upload session; its location.
    async fn open_upload(
        &self,
        repository: &Repository,
        what: &str,
    ) -> Result<String, RegistryError> {
        let call = self.call(
            Method::POST,
            format!("/v2/{}/blobs/uploads/", repository.path()),
            Self::push_scope(repository),
            what.to_string(),
            None,
        );
        let response = self.send(&call).await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(response, repository, what).await);
        }
        location(&response).ok_or_else(|| RegistryError::Status {
            host: self.host.to_string(),
            status: StatusCode::ACCEPTED,
            what: what.to_string(),
            detail: ": no Location for the upload".into(),
        })
    }
}

fn location(response: &reqwest::Response) -> Option<String> {
    let l = response
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    if l.starts_with("http://") || l.starts_with("https://") || l.starts_with('/') {
        Some(l.to_string())
    } else {
        Some(format!("/{l}"))
    }
}
