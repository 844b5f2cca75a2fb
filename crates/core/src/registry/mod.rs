//! A thin client for the OCI distribution API
//! (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md>): one [`Registry`]
//! per host, which finds the scheme (HTTPS, or plain HTTP for loopback and insecure
//! registries), authenticates, retries what is worth retrying, and turns the registry's JSON
//! error bodies into errors that name the repository.
//!
//! Every request goes through [`Registry::send`] (or, for pings and tokens, the same
//! [`retry::exchange`] under it): `retry.rs` holds the only retry loop. `manifests.rs`,
//! `blobs.rs`, `tags.rs` and `upload.rs` are the operations; `auth.rs`, `docker_config.rs`,
//! `ecr.rs` and the cloud logins (`cloud.rs`, `azure.rs`, `gcp.rs`) the credentials;
//! `transport.rs` the TLS clients and the reading of their errors.

mod auth;
mod azure;
mod blobs;
mod body;
mod cloud;
pub(crate) mod config;
mod docker_config;
mod ecr;
mod error;
mod gcp;
mod identity;
mod manifests;
mod pace;
mod referrers;
mod retry;
mod tags;
mod transport;
mod upload;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use tokio::sync::OnceCell;

use crate::blob::Body;
use crate::reference::{Host, Repository};
use body::read_limited;
use config::RegistryConfig;
use error::{ErrorBody, ErrorCode};
use retry::Answer;

#[cfg(test)]
pub(crate) use auth::parse_challenge;
pub(crate) use auth::Challenge;
pub(crate) use blobs::CONFIG_LIMIT;
pub(crate) use error::RegistryError;
pub(crate) use gcp::register_key_secrets;
pub(crate) use referrers::{List as ReferrerList, Referrer};
pub(crate) use retry::RetryPolicy;
#[cfg(test)]
pub(crate) use tags::{next_link, resolve_link};
pub(crate) use transport::check_tls_material;
pub(crate) use upload::Mount;

/// ECR credentials for `host` when ECR applies to it (an ECR hostname, or the repository's
/// registry with `aws_region`), as `(username, password)`; for a daemon that pulls.
pub(crate) async fn ecr_credentials(
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
                registry_id: None,
                repository_host: host.clone(),
            };
            &fallback
        }
        None => return Ok(None),
    };
    match ecr::credentials_for(host, Some(ecr)).await {
        Ok(c) => Ok(c.map(|c| (c.username, c.password))),
        Err((region, problem)) => Err(RegistryError::Ecr {
            host: host.to_string(),
            region,
            problem,
        }),
    }
}

/// The credentials the cloud login (`azure_acr`, `gcp_metadata`) gives for `host`, when it
/// applies there and the pipeline gave none, as `(username, password)`; for a daemon that
/// pulls. Pings the registry (Azure's exchange is made there).
pub(crate) async fn cloud_credentials(
    host: &Host,
    config: &RegistryConfig,
) -> Result<Option<(String, crate::secret::Secret)>, RegistryError> {
    let applies = config.cloud.as_ref().is_some_and(|c| &c.host == host);
    if !applies || config.credentials_for(host).is_some() {
        return Ok(None);
    }
    let registry = Registry::new(host.clone(), config).await;
    registry.connection().await?;
    Ok(registry
        .auth
        .credentials()
        .map(|c| (c.username.clone(), c.password.clone())))
}

/// Whether `host` is an Amazon ECR registry.
pub(crate) fn ecr_host(host: &str) -> bool {
    ecr::parse_host(host).is_some()
}
use transport::{build_client, Failure, Verify};

/// An error body is read up to this size, and quoted up to [`ERROR_SUMMARY_CHARS`].
const ERROR_BODY_LIMIT: usize = 64 << 10;
const ERROR_SUMMARY_CHARS: usize = 512;

/// Docker Hub's pull quota when it is spent: `; pull rate limit reached (0 of 100 pulls per
/// 21600 s left), resets in 3600 s`, from the `ratelimit-*` headers.
fn rate_limit(headers: &reqwest::header::HeaderMap) -> String {
    if !retry::quota_spent(headers) {
        return String::new();
    }
    let limit = retry::header_number(headers, "ratelimit-limit");
    let window = retry::header_window(headers, "ratelimit-limit")
        .or_else(|| retry::header_window(headers, "ratelimit-remaining"));
    let mut text = "; pull rate limit reached".to_string();
    if let (Some(limit), Some(window)) = (limit, window) {
        text.push_str(&format!(" (0 of {limit} pulls per {window} s left)"));
    }
    let reset = retry::header_number(headers, "ratelimit-reset")
        .map(|r| {
            // An epoch time or a number of seconds.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if r > now {
                r - now
            } else {
                r
            }
        })
        .or_else(|| retry::retry_after(headers).map(|d| d.as_secs()));
    // Docker Hub sends no reset time: its quota counts the pulls of a sliding window, so
    // the first pull is allowed again at most one window after the quota ran out.
    match (reset, window) {
        (Some(secs), _) => text.push_str(&format!(", resets in {secs} s")),
        (None, Some(window)) => text.push_str(&format!(", resets within {window} s")),
        (None, None) => text.push_str(", resets when its window ends"),
    }
    text.push_str(": log in (source.username and source.password) for a higher limit");
    text
}

/// Docker Hub's pull quota as its answers state it (`ratelimit-limit: 100;w=21600`,
/// `ratelimit-remaining: 76;w=21600`): `76 of 100 pulls per 21600 s left`, logged with
/// `debug` so a pipeline can see it run out before it does.
fn log_quota(host: &Host, headers: &reqwest::header::HeaderMap) {
    let (Some(limit), Some(remaining)) = (
        retry::header_number(headers, "ratelimit-limit"),
        retry::header_number(headers, "ratelimit-remaining"),
    ) else {
        return;
    };
    let window = retry::header_window(headers, "ratelimit-limit")
        .or_else(|| retry::header_window(headers, "ratelimit-remaining"))
        .map(|w| format!(" per {w} s"))
        .unwrap_or_default();
    tracing::debug!("registry {host} pull quota: {remaining} of {limit} pulls{window} left");
}

/// The scheme and client that answered the ping.
struct Connection {
    base: String,
    http: reqwest::Client,
}

impl Connection {
    /// Whether `url` is on the registry's origin: same scheme, host and port.
    fn same_origin(&self, url: &url::Url) -> bool {
        url::Url::parse(&self.base).is_ok_and(|base| base.origin() == url.origin())
    }
}

/// The client for one registry host.
pub(crate) struct Registry {
    host: Host,
    config: RegistryConfig,
    auth: auth::Auth,
    connection: OnceCell<Connection>,
    retry: RetryPolicy,
    /// Credentials that could not be had (ECR: region, why), reported on every use.
    credentials_error: Option<(String, ecr::EcrProblem)>,
    /// `azure_acr`/`gcp_metadata` for this host, run once the registry answered its ping.
    cloud: Option<config::CloudLogin>,
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
    /// A 500 is the answer, not retried: the caller has a fallback (a HEAD of a manifest,
    /// which some registries answer 500 when it is missing, is followed by a GET).
    fallback_on_500: bool,
}

impl Registry {
    /// A client for `host`; credentials come from the pipeline, else `~/.docker/config.json`.
    /// Nothing is sent until the first request.
    pub(crate) async fn new(host: Host, config: &RegistryConfig) -> Registry {
        // A cloud login for the host stands in for every other source of credentials but
        // the pipeline's own.
        let cloud = config
            .cloud
            .clone()
            .filter(|c| c.host == host && config.credentials_for(&host).is_none());
        let (credentials, credentials_error) = if cloud.is_some() {
            (None, None)
        } else {
            match auth::credentials_for(&host, config).await {
                Ok(c) => (c, None),
                Err(e) => (None, Some(e)),
            }
        };
        Registry {
            auth: auth::Auth::new(host.clone(), credentials, config.clone()),
            host,
            config: config.clone(),
            connection: OnceCell::new(),
            retry: RetryPolicy::default(),
            credentials_error,
            cloud,
        }
    }

    pub(crate) fn host(&self) -> &Host {
        &self.host
    }

    pub(crate) fn with_retry(mut self, retry: RetryPolicy) -> Registry {
        self.retry = retry;
        self
    }

    async fn connection(&self) -> Result<&Connection, RegistryError> {
        if let Some((region, problem)) = &self.credentials_error {
            return Err(RegistryError::Ecr {
                host: self.host.to_string(),
                region: region.clone(),
                problem: problem.clone(),
            });
        }
        self.connection
            .get_or_try_init(async || {
                let connection = self.connect().await?;
                if let Some(login) = &self.cloud {
                    let target = cloud::Target {
                        host: &self.host,
                        http: &connection.http,
                        base: &connection.base,
                        challenge: self.auth.challenge().await,
                        config: &self.config,
                        policy: &self.retry,
                    };
                    let credentials = cloud::credentials(login, target).await?;
                    self.auth.set_credentials(credentials);
                }
                Ok(connection)
            })
            .await
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
        if crate::blocking::blocking(move || transport::asks_for_client_certificate(&host)).await {
            Failure::ClientCertificate
        } else {
            failure
        }
    }

    /// GET `/v2/`: the challenge of a 401, none for anything else that answered. Only a
    /// `patient` ping (the last scheme to try) retries.
    async fn ping(
        &self,
        http: &reqwest::Client,
        base: &str,
        patient: bool,
    ) -> Result<(StatusCode, Challenge), (Failure, pace::Broken)> {
        let policy = if patient {
            self.retry
        } else {
            RetryPolicy::once()
        };
        let url = format!("{base}/v2/");
        let answer: Result<Answer, std::convert::Infallible> =
            retry::exchange(&policy, &self.host, "a ping", async || Ok(http.get(&url))).await;
        let Ok(answer) = answer;
        let response = answer?;
        let challenge = match response.status() {
            StatusCode::UNAUTHORIZED => auth::challenge_of(response.headers()).unwrap_or_default(),
            _ => Challenge::None,
        };
        Ok((response.status(), challenge))
    }

    fn transport_error(&self, failure: Failure, e: pace::Broken, what: &str) -> RegistryError {
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
            _ => match e {
                pace::Broken::Http(e) if e.is_connect() => {
                    RegistryError::Connect { host, source: e }
                }
                e => RegistryError::Transport {
                    host,
                    what: what.to_string(),
                    source: e,
                },
            },
        }
    }

    /// Sends `call`: the one path of every request to the registry's API. Attaches the
    /// credentials (one fresh try after a 401 with a new challenge or token) and retries
    /// 429, 5xx and broken connections by [`retry::exchange`]. Any status is returned;
    /// callers read it.
    async fn send(&self, call: &Call<'_>) -> Result<reqwest::Response, RegistryError> {
        let conn = self.connection().await?;
        let url = if call.path.starts_with("http://") || call.path.starts_with("https://") {
            call.path.clone()
        } else {
            format!("{}{}", conn.base, call.path)
        };
        let url = url::Url::parse(&url).map_err(|_| RegistryError::Status {
            host: self.host.to_string(),
            status: StatusCode::BAD_GATEWAY,
            what: call.what.clone(),
            detail: ": the registry sent a link that is not a URL".into(),
        })?;
        // A link (a tag page, an upload location) from https to plain http is refused as a
        // redirect would be: what it answers could be changed on the way.
        if conn.base.starts_with("https:")
            && url.scheme() == "http"
            && !self.config.may_send_credentials(&url)
        {
            return Err(RegistryError::Status {
                host: self.host.to_string(),
                status: StatusCode::BAD_GATEWAY,
                what: call.what.clone(),
                detail: format!(
                    ": the registry sent a link to plain {}, refused",
                    url.origin().ascii_serialization()
                ),
            });
        }
        let mut reauthenticated = false;
        loop {
            let final_status =
                |s: StatusCode| call.fallback_on_500 && s == StatusCode::INTERNAL_SERVER_ERROR;
            let answer = retry::exchange_until(
                &self.retry,
                &self.host,
                &call.what,
                final_status,
                async || self.request(conn, call, &url).await,
            )
            .await?;
            match answer {
                // A challenge is the registry's own: one from another origin (a redirect
                // target, a link to another host) never replaces it.
                Ok(response)
                    if response.status() == StatusCode::UNAUTHORIZED
                        && !reauthenticated
                        && conn.same_origin(response.url()) =>
                {
                    reauthenticated = true;
                    if !self.auth.refresh(&response, &call.scope).await {
                        return Ok(response);
                    }
                }
                Ok(response) => return Ok(response),
                Err((failure, e)) => return Err(self.transport_error(failure, e, &call.what)),
            }
        }
    }

    /// The request for one try of `call`, with its credentials and body.
    async fn request(
        &self,
        conn: &Connection,
        call: &Call<'_>,
        url: &url::Url,
    ) -> Result<reqwest::RequestBuilder, RegistryError> {
        let mut request = conn.http.request(call.method.clone(), url.clone());
        if let Some(accept) = call.accept {
            request = request.header(ACCEPT, accept);
        }
        if let Some(from) = call.range_from {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        // Credentials are scoped to the registry's origin (scheme, host and port): a link or
        // an upload location on another origin gets none.
        if conn.same_origin(url) {
            if let Some(header) = self
                .auth
                .header(&conn.http, &call.scope, &self.retry)
                .await?
            {
                request = request.header(reqwest::header::AUTHORIZATION, header);
            }
        } else {
            tracing::debug!(
                "{} is not on {}: sent without credentials",
                url.origin().ascii_serialization(),
                conn.base
            );
        }
        if let Some(body) = &call.body {
            let stream = body::to_reqwest(body)
                .await
                .map_err(|e| RegistryError::Write {
                    path: format!("the body of {}", call.what),
                    source: e,
                })?;
            request = request
                .header(CONTENT_TYPE, body.content_type())
                .header(reqwest::header::CONTENT_LENGTH, body.len())
                .body(stream);
        } else if call.method == Method::POST || call.method == Method::PUT {
            request = request.header(reqwest::header::CONTENT_LENGTH, 0);
        }
        Ok(request)
    }

    /// The error for a response that was not what the caller wanted.
    async fn status_error(
        &self,
        response: reqwest::Response,
        repository: &Repository,
        what: &str,
    ) -> RegistryError {
        let status = response.status();
        let waits = retry::MAX_RETRY_AFTER;
        let asked = match retry::retry_after(response.headers()) {
            Some(after) if after > waits => format!(
                "; it asks to retry after {} s, longer than the {} s dockhand waits",
                after.as_secs(),
                waits.as_secs()
            ),
            _ => String::new(),
        };
        let quota = rate_limit(response.headers());
        let body: ErrorBody = read_limited(response, ERROR_BODY_LIMIT)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let summary = crate::redact::quote(&body.summary(), ERROR_SUMMARY_CHARS);
        // Some registries refuse with another status (400, 404) but say why in the body.
        let refused = body.has(&ErrorCode::Unauthorized) || body.has(&ErrorCode::Denied);
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN || refused {
            return RegistryError::Unauthorized {
                host: self.host.to_string(),
                repository: repository.path().to_string(),
                image: None,
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
            detail: format!(
                "{}{quota}{asked}",
                if summary.is_empty() {
                    String::new()
                } else {
                    format!(": {summary}")
                }
            ),
        }
    }

    fn pull_scope(repository: &Repository) -> String {
        format!("repository:{}:pull", repository.path())
    }
}
