//! Pushing: blob existence checks, cross-repository mounts, monolithic uploads (POST then
//! PUT with the digest), and manifests
//! (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md#push>).

use reqwest::{Method, StatusCode};

use super::{Body, Call, Registry, RegistryError};
use crate::reference::{Digest, Repository};

/// What a mount request did.
pub enum Mount {
    Mounted,
    /// The registry could not mount and opened an upload session instead (its location).
    Upload(String),
    NotMounted,
}

impl Registry {
    fn push_scope(repository: &Repository) -> String {
        format!("repository:{}:pull,push", repository.path())
    }

    fn call(
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
            body,
        }
    }

    /// Does the repository already have this blob? (HEAD; a skipped upload costs nothing.)
    pub async fn blob_exists(
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
    pub async fn mount_blob(
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
    pub async fn upload_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        body: Body,
        mut session: Option<String>,
    ) -> Result<(), RegistryError> {
        let what = format!("upload of blob {digest}");
        let mut attempt = 0;
        loop {
            let location = match session.take() {
                Some(l) => l,
                None => {
                    let call = self.call(
                        Method::POST,
                        format!("/v2/{}/blobs/uploads/", repository.path()),
                        Self::push_scope(repository),
                        what.clone(),
                        None,
                    );
                    let response = self.send(&call).await?;
                    if response.status() != StatusCode::ACCEPTED {
                        return Err(self.status_error(response, repository, &what).await);
                    }
                    location(&response).ok_or_else(|| RegistryError::Status {
                        host: self.host.to_string(),
                        status: StatusCode::ACCEPTED,
                        what: what.clone(),
                        detail: ": no Location for the upload".into(),
                    })?
                }
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
            let result = self.send(&call).await;
            let retry = match result {
                Ok(response) if response.status() == StatusCode::CREATED => return Ok(()),
                Ok(response)
                    if response.status() == StatusCode::NOT_FOUND
                        || response.status().is_server_error() =>
                {
                    // The session expired or the registry lost it: open a new one.
                    self.status_error(response, repository, &what).await
                }
                Ok(response) => return Err(self.status_error(response, repository, &what).await),
                Err(e @ RegistryError::Transport { .. }) => e,
                Err(e) => return Err(e),
            };
            attempt += 1;
            if attempt >= 3 {
                return Err(retry);
            }
            tracing::warn!(
                "{what} to {} failed ({retry}); starting it again",
                self.host
            );
        }
    }

    /// PUTs a manifest or index under `reference` (a tag or its digest); returns the digest
    /// the registry reports (checked against the bytes).
    pub async fn put_manifest(
        &self,
        repository: &Repository,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let what = format!("manifest {}:{reference}", repository.path());
        let call = self.call(
            Method::PUT,
            format!("/v2/{}/manifests/{reference}", repository.path()),
            Self::push_scope(repository),
            what.clone(),
            Some(Body::Bytes {
                bytes: bytes.to_vec(),
                content_type: media_type.to_string(),
            }),
        );
        let response = self.send(&call).await?;
        if !response.status().is_success() {
            return Err(self.status_error(response, repository, &what).await);
        }
        let ours = Digest::of(bytes);
        let theirs = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<Digest>().ok());
        match theirs {
            Some(d) if d != ours => Err(RegistryError::DigestMismatch {
                host: self.host.to_string(),
                what: format!("{what} as stored"),
                expected: ours.to_string(),
                actual: d.to_string(),
            }),
            _ => Ok(ours),
        }
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
