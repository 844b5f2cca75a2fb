//! A thin client for the OCI distribution API
//! (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md>): one [`Registry`]
//! per host, which finds the scheme (HTTPS, or plain HTTP for loopback and insecure
//! registries), authenticates, retries what is worth retrying, and turns the registry's JSON
//! error bodies into errors that name the repository.

mod auth;
pub mod config;
mod ecr;
mod tags;
mod transport;
mod upload;

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::image::{RawManifest as Manifest, MANIFEST_ACCEPT};
use crate::reference::{Digest, Host, Repository};
use config::RegistryConfig;

pub use auth::{parse_challenge, Challenge};
pub use tags::MAX_TAG_PAGES;
pub use transport::check_tls_material;

/// ECR credentials for `host` when ECR applies to it (an ECR hostname, or the repository's
/// registry with `aws_region`), as `(username, password)`; for a daemon that pulls.
pub async fn ecr_credentials(
    host: &Host,
    config: &RegistryConfig,
) -> Result<Option<(String, crate::secret::Secret)>, RegistryError> {
    let fallback;
    let ecr = match &config.ecr {
        Some(e) => e,
        None if ecr_host(host.as_str()) => {
            fallback = config::EcrConfig {
                region: None,
                access_key_id: None,
                secret_access_key: None,
                session_token: None,
                roles: Vec::new(),
                account_id: None,
                repository_host: host.clone(),
            };
            &fallback
        }
        None => return Ok(None),
    };
    match ecr::credentials_for(host, Some(ecr)).await {
        Ok(c) => Ok(c.map(|c| (c.username, c.password))),
        Err((region, reason)) => Err(RegistryError::Ecr {
            host: host.to_string(),
            region,
            reason,
        }),
    }
}

/// Whether `host` is an Amazon ECR registry.
pub fn ecr_host(host: &str) -> bool {
    ecr::parse_host(host).is_some()
}
use transport::{build_client, classify, Failure, Verify};
pub use upload::Mount;

/// Distribution refuses manifests over 4 MiB; so do we, rather than read without bound.
const MANIFEST_LIMIT: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot connect to registry {host}")]
    Connect {
        host: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("tls certificate of registry {host} is not trusted ({reason}): add its CA to source.ca_certs, or list the registry in source.insecure_registries")]
    Untrusted { host: String, reason: String },
    #[error("registry {host} requires a client certificate: add one for its domain to source.client_certs")]
    ClientCertificateRequired { host: String },
    #[error("registry {host} refused the client certificate from {field}")]
    ClientCertificateRefused { host: String, field: String },
    #[error("{field}: cannot be used as tls material")]
    TlsMaterial {
        field: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot set up an http client for registry {host}")]
    Client {
        host: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "unauthorized: registry {host} refused access to repository {repository} {auth}: {detail}"
    )]
    Unauthorized {
        host: String,
        repository: String,
        detail: String,
        auth: String,
    },
    #[error("cannot get ECR credentials for registry {host} (region {region}): {reason}")]
    Ecr {
        host: String,
        region: String,
        reason: String,
    },
    #[error("cannot get a token for registry {host} from {realm}: {reason}")]
    Token {
        host: String,
        realm: String,
        reason: String,
    },
    #[error("registry {host} answered {status} for {what}{detail}")]
    Status {
        host: String,
        status: StatusCode,
        what: String,
        detail: String,
    },
    #[error("request to registry {host} for {what} failed")]
    Transport {
        host: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what} from registry {host} is larger than {limit} bytes")]
    TooLarge {
        host: String,
        what: String,
        limit: usize,
    },
    #[error("blob {digest} not found in repository {repository} on registry {host}")]
    BlobNotFound {
        host: String,
        repository: String,
        digest: String,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} from registry {host} has digest {actual}, expected {expected}")]
    DigestMismatch {
        host: String,
        what: String,
        expected: String,
        actual: String,
    },
}

/// The registry's error body: `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"..."}]}`.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub errors: Vec<ErrorEntry>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorEntry {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl ErrorBody {
    fn summary(&self) -> String {
        self.errors
            .iter()
            .map(|e| {
                if e.message.is_empty() {
                    e.code.clone()
                } else {
                    format!("{} {}", e.code, e.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How often and how patiently to retry 429, 5xx and broken connections.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(400),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with a little jitter; a `Retry-After` wins (capped at a minute).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(Duration::from_secs(60));
        }
        let exp = self.base.saturating_mul(1 << attempt.min(16));
        let jitter_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64 % (self.base.as_millis() as u64 / 2 + 1))
            .unwrap_or(0);
        exp.min(self.max_delay) + Duration::from_millis(jitter_ms)
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

use crate::report::chain as error_chain;

/// Reads a body up to `limit` bytes.
pub(crate) async fn read_limited(
    response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|l| l > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ReadError::Http)?;
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("body too large")]
    TooLarge,
    #[error(transparent)]
    Http(reqwest::Error),
}

/// The scheme and client that answered the ping.
struct Connection {
    base: String,
    http: reqwest::Client,
}

/// The client for one registry host.
pub struct Registry {
    host: Host,
    config: RegistryConfig,
    auth: auth::Auth,
    connection: OnceCell<Connection>,
    retry: RetryPolicy,
    /// Credentials that could not be had (ECR: region, reason), reported on first use.
    credentials_error: Option<(String, String)>,
}

/// One request: where, what for (in messages), in which token scope.
struct Call<'a> {
    method: Method,
    path: String,
    accept: Option<&'a str>,
    scope: String,
    what: String,
    /// `Range: bytes=N-`, to resume a blob.
    range_from: Option<u64>,
    /// What to send; made again for every try.
    body: Option<Body>,
}

/// A request body that can be produced again for a retry.
#[derive(Debug, Clone)]
pub enum Body {
    Bytes {
        bytes: Vec<u8>,
        content_type: String,
    },
    /// `len` bytes of a file from `offset` (a blob inside a tarball, or a whole file).
    File {
        path: std::path::PathBuf,
        offset: u64,
        len: u64,
    },
}

impl Body {
    async fn to_reqwest(&self) -> std::io::Result<(reqwest::Body, String, u64)> {
        match self {
            Body::Bytes {
                bytes,
                content_type,
            } => Ok((
                reqwest::Body::from(bytes.clone()),
                content_type.clone(),
                bytes.len() as u64,
            )),
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
                Ok((
                    reqwest::Body::wrap_stream(stream),
                    "application/octet-stream".to_string(),
                    *len,
                ))
            }
        }
    }
}

impl Registry {
    /// A client for `host`; credentials come from the pipeline, else `~/.docker/config.json`.
    /// Nothing is sent until the first request.
    pub async fn new(host: Host, config: &RegistryConfig) -> Registry {
        let (credentials, credentials_error) = match auth::credentials_for(&host, config).await {
            Ok(c) => (c, None),
            Err(e) => (None, Some(e)),
        };
        Registry {
            auth: auth::Auth::new(host.clone(), credentials),
            host,
            config: config.clone(),
            connection: OnceCell::new(),
            retry: RetryPolicy::default(),
            credentials_error,
        }
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Registry {
        self.retry = retry;
        self
    }

    async fn connection(&self) -> Result<&Connection, RegistryError> {
        if let Some((region, reason)) = &self.credentials_error {
            return Err(RegistryError::Ecr {
                host: self.host.to_string(),
                region: region.clone(),
                reason: reason.clone(),
            });
        }
        self.connection.get_or_try_init(|| self.connect()).await
    }

    /// Pings `/v2/` to choose the scheme and learn the challenge. HTTPS is tried first;
    /// loopback registries fall back to plain HTTP unless their TLS failed on a certificate
    /// (which is reported, not bypassed); insecure ones fall back on any failure.
    async fn connect(&self) -> Result<Connection, RegistryError> {
        let insecure = self.config.is_insecure(&self.host);
        let candidates: &[(&str, Verify)] = if insecure {
            &[("https", Verify::Nothing), ("http", Verify::Nothing)]
        } else if self.host.is_loopback() {
            &[("https", Verify::Roots), ("http", Verify::Roots)]
        } else {
            &[("https", Verify::Roots)]
        };
        let mut last_error = None;
        for (i, (scheme, verify)) in candidates.iter().enumerate() {
            let last = i + 1 == candidates.len();
            let http = build_client(&self.host, &self.config, *verify)?;
            let base = format!("{scheme}://{}", self.host);
            let error = match self.ping(&http, &base, last).await {
                // A registry answers /v2/ with 200 or 401 (and says it is one); anything else
                // from a first candidate (a TLS server's 400 to plain HTTP) means try the next.
                Ok((status, challenge))
                    if last || status.is_success() || status == StatusCode::UNAUTHORIZED =>
                {
                    tracing::debug!("registry {} speaks {scheme}", self.host);
                    self.auth.set_challenge(challenge).await;
                    return Ok(Connection { base, http });
                }
                Ok((status, _)) => RegistryError::Status {
                    host: self.host.to_string(),
                    status,
                    what: format!("{base}/v2/"),
                    detail: String::new(),
                },
                Err((failure, e)) => {
                    let failure = self.read_tls_failure(scheme, failure).await;
                    let hard =
                        matches!(failure, Failure::Untrusted(_) | Failure::ClientCertificate);
                    let error = self.transport_error(failure, e, "/v2/");
                    if last || (hard && !insecure) {
                        return Err(error);
                    }
                    error
                }
            };
            tracing::debug!(
                "{scheme} to {} failed, trying the next scheme: {error}",
                self.host
            );
            last_error = Some(error);
        }
        Err(last_error.expect("at least one scheme was tried"))
    }

    /// A broken HTTPS connection to a server that asks for a client certificate, when none
    /// is configured for it, is that server's refusal whose alert was lost to the reset
    /// (see [`transport::asks_for_client_certificate`]).
    async fn read_tls_failure(&self, scheme: &str, failure: Failure) -> Failure {
        let has_cert = self
            .config
            .client_certs
            .iter()
            .any(|c| c.applies_to(&self.host));
        if scheme != "https" || failure != Failure::Transient || has_cert {
            return failure;
        }
        let host = self.host.clone();
        match tokio::task::spawn_blocking(move || transport::asks_for_client_certificate(&host))
            .await
        {
            Ok(true) => Failure::ClientCertificate,
            _ => failure,
        }
    }

    /// GET `/v2/`: the challenge of a 401, none for anything else that answered.
    async fn ping(
        &self,
        http: &reqwest::Client,
        base: &str,
        patient: bool,
    ) -> Result<(StatusCode, Challenge), (Failure, reqwest::Error)> {
        let mut attempt = 0;
        loop {
            match http.get(format!("{base}/v2/")).send().await {
                Ok(resp)
                    if retryable(resp.status()) && patient && attempt + 1 < self.retry.attempts =>
                {
                    let wait = self.retry.delay(attempt, retry_after(resp.headers()));
                    tracing::warn!(
                        "registry {} answered {} to a ping; retrying in {wait:?}",
                        self.host,
                        resp.status()
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Ok(resp) => {
                    let challenge = match resp.status() {
                        StatusCode::UNAUTHORIZED => resp
                            .headers()
                            .get(reqwest::header::WWW_AUTHENTICATE)
                            .and_then(|v| v.to_str().ok())
                            .map(parse_challenge)
                            .unwrap_or_default(),
                        _ => Challenge::None,
                    };
                    return Ok((resp.status(), challenge));
                }
                Err(e) => {
                    let failure = classify(&e);
                    if failure == Failure::Transient && patient && attempt + 1 < self.retry.attempts
                    {
                        let wait = self.retry.delay(attempt, None);
                        tracing::warn!(
                            "cannot reach registry {} ({}); retrying in {wait:?}",
                            self.host,
                            error_chain(&e)
                        );
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue;
                    }
                    return Err((failure, e));
                }
            }
        }
    }

    fn transport_error(&self, failure: Failure, e: reqwest::Error, what: &str) -> RegistryError {
        let host = self.host.to_string();
        match failure {
            Failure::Untrusted(reason) => RegistryError::Untrusted { host, reason },
            Failure::ClientCertificate => {
                match self
                    .config
                    .client_certs
                    .iter()
                    .find(|c| c.applies_to(&self.host))
                {
                    Some(c) => RegistryError::ClientCertificateRefused {
                        host,
                        field: c.field.clone(),
                    },
                    None => RegistryError::ClientCertificateRequired { host },
                }
            }
            _ if e.is_connect() => RegistryError::Connect { host, source: e },
            _ => RegistryError::Transport {
                host,
                what: what.to_string(),
                source: e,
            },
        }
    }

    /// Sends `call`, authenticating (one fresh try after a 401) and retrying 429, 5xx and
    /// broken connections with backoff. Any status is returned; callers read it.
    async fn send(&self, call: &Call<'_>) -> Result<reqwest::Response, RegistryError> {
        let conn = self.connection().await?;
        let url = if call.path.starts_with("http://") || call.path.starts_with("https://") {
            call.path.clone()
        } else {
            format!("{}{}", conn.base, call.path)
        };
        let mut reauthenticated = false;
        let mut attempt = 0;
        loop {
            let mut request = conn.http.request(call.method.clone(), &url);
            if let Some(accept) = call.accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(from) = call.range_from {
                request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
            }
            if let Some(header) = self.auth.header(&conn.http, &call.scope).await? {
                request = request.header(reqwest::header::AUTHORIZATION, header);
            }
            if let Some(body) = &call.body {
                let (body, content_type, len) =
                    body.to_reqwest().await.map_err(|e| RegistryError::Write {
                        path: format!("the body of {}", call.what),
                        source: e,
                    })?;
                request = request
                    .header(CONTENT_TYPE, content_type)
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(body);
            } else if call.method == Method::POST || call.method == Method::PUT {
                request = request.header(reqwest::header::CONTENT_LENGTH, 0);
            }
            match request.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && !reauthenticated {
                        reauthenticated = true;
                        if self.auth.refresh(&resp, &call.scope).await {
                            continue;
                        }
                    }
                    if retryable(status) && attempt + 1 < self.retry.attempts {
                        let wait = self.retry.delay(attempt, retry_after(resp.headers()));
                        tracing::warn!(
                            "registry {} answered {status} for {}; retrying in {wait:?}",
                            self.host,
                            call.what
                        );
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue;
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    let failure = classify(&e);
                    if failure == Failure::Transient && attempt + 1 < self.retry.attempts {
                        let wait = self.retry.delay(attempt, None);
                        tracing::warn!(
                            "request to registry {} for {} failed ({}); retrying in {wait:?}",
                            self.host,
                            call.what,
                            error_chain(&e)
                        );
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(self.transport_error(failure, e, &call.what));
                }
            }
        }
    }

    /// The error for a response that was not what the caller wanted.
    async fn status_error(
        &self,
        response: reqwest::Response,
        repository: &Repository,
        what: &str,
    ) -> RegistryError {
        let status = response.status();
        let body: ErrorBody = read_limited(response, 64 << 10)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let summary = body.summary();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return RegistryError::Unauthorized {
                host: self.host.to_string(),
                repository: repository.path().to_string(),
                detail: if summary.is_empty() {
                    status.to_string()
                } else {
                    summary
                },
                auth: self.auth.describe(),
            };
        }
        RegistryError::Status {
            host: self.host.to_string(),
            status,
            what: what.to_string(),
            detail: if summary.is_empty() {
                String::new()
            } else {
                format!(": {summary}")
            },
        }
    }

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
        }
    }

    fn pull_scope(repository: &Repository) -> String {
        format!("repository:{}:pull", repository.path())
    }

    fn manifest_call(method: Method, repository: &Repository, reference: &str) -> Call<'static> {
        Call {
            method,
            path: format!("/v2/{}/manifests/{reference}", repository.path()),
            accept: Some(MANIFEST_ACCEPT),
            scope: Self::pull_scope(repository),
            what: format!("manifest {}:{reference}", repository.path()),
            range_from: None,
            body: None,
        }
    }

    /// The digest of a manifest by tag or digest, `None` when the registry has none. HEAD
    /// first (no rate-limit cost on Docker Hub); GET and hash when the registry sends no
    /// `Docker-Content-Digest`.
    pub async fn manifest_digest(
        &self,
        repository: &Repository,
        reference: &str,
    ) -> Result<Option<Digest>, RegistryError> {
        let call = Self::manifest_call(Method::HEAD, repository, reference);
        let what = &call.what;
        let response = self.send(&call).await?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if s.is_success() => {
                let header = response
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<Digest>().ok());
                if let Some(digest) = header {
                    return Ok(Some(digest));
                }
                tracing::debug!("no digest header for {what}; reading the manifest");
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.status_error(response, repository, what).await)
            }
            // Some registries refuse HEAD (405) or answer it oddly: GET decides.
            _ => {}
        }
        Ok(self
            .manifest(repository, reference)
            .await?
            .map(|m| m.digest))
    }

    /// GET a manifest or index; the digest is computed from the bytes and, when fetched by
    /// digest, checked against it.
    pub async fn manifest(
        &self,
        repository: &Repository,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let call = Self::manifest_call(Method::GET, repository, reference);
        let what = call.what.clone();
        let response = self.send(&call).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self.status_error(response, repository, &what).await);
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let bytes = read_limited(response, MANIFEST_LIMIT)
            .await
            .map_err(|e| self.read_error(e, &what, MANIFEST_LIMIT))?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    host: self.host.to_string(),
                    what,
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        Ok(Some(Manifest {
            digest,
            media_type,
            bytes,
        }))
    }
}

impl Registry {
    /// Downloads a blob into `dest`, hashing as it goes; the file is only good when this
    /// returns Ok (digest and size verified). A body that breaks off is resumed with `Range`
    /// where the registry honours it, else restarted. `progress` gets the bytes received so
    /// far.
    pub async fn download_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        size: Option<u64>,
        dest: &std::path::Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
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
        let mut attempt = 0;
        loop {
            let call = Self::blob_call(repository, digest, (written > 0).then_some(written));
            let response = self.send(&call).await?;
            match response.status() {
                StatusCode::PARTIAL_CONTENT if written > 0 => {}
                s if s.is_success() => {
                    if written > 0 {
                        // The registry ignored the range: start over.
                        tracing::debug!("{what}: no range support, downloading again");
                        file.set_len(0).await.map_err(write_error)?;
                        use tokio::io::AsyncSeekExt as _;
                        file.seek(std::io::SeekFrom::Start(0))
                            .await
                            .map_err(write_error)?;
                        hasher = sha2::Sha256::new();
                        written = 0;
                    }
                }
                StatusCode::NOT_FOUND => {
                    return Err(RegistryError::BlobNotFound {
                        host: self.host.to_string(),
                        repository: repository.path().to_string(),
                        digest: digest.to_string(),
                    })
                }
                _ => return Err(self.status_error(response, repository, &what).await),
            }
            let mut stream = response.bytes_stream();
            let mut broken = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => {
                        written += chunk.len() as u64;
                        if size.is_some_and(|s| written > s) {
                            return Err(RegistryError::TooLarge {
                                host: self.host.to_string(),
                                what,
                                limit: size.unwrap_or_default() as usize,
                            });
                        }
                        hasher.update(&chunk);
                        file.write_all(&chunk).await.map_err(write_error)?;
                        progress(written);
                    }
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            let short = size.is_some_and(|s| written < s);
            if broken.is_none() && !short {
                break;
            }
            attempt += 1;
            if attempt >= self.retry.attempts {
                return match broken {
                    Some(e) => Err(RegistryError::Transport {
                        host: self.host.to_string(),
                        what,
                        source: e,
                    }),
                    None => Err(RegistryError::DigestMismatch {
                        host: self.host.to_string(),
                        what: format!("{what} (cut short at {written} bytes)"),
                        expected: digest.to_string(),
                        actual: Digest::from_sha256(&hasher.finalize()).to_string(),
                    }),
                };
            }
            let wait = self.retry.delay(attempt - 1, None);
            tracing::warn!(
                "{what} from {} broke off after {written} bytes; resuming in {wait:?}",
                self.host
            );
            tokio::time::sleep(wait).await;
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert!(p.delay(0, None) < p.delay(3, None));
        assert!(p.delay(20, None) <= p.max_delay + p.base);
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn error_bodies() {
        let b: ErrorBody = serde_json::from_str(
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository"}]}]}"#,
        )
        .unwrap();
        assert_eq!(b.summary(), "UNAUTHORIZED authentication required");
    }
}
