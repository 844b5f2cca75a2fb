//! Cloud logins: the repository's registry password from the machine's own cloud identity,
//! when the pipeline gave no credentials for it — an Azure managed identity exchanged for an
//! ACR refresh token (`azure.rs`), or the GCE metadata server's access token (`gcp.rs`).
//!
//! A login runs once the registry has answered its ping (Azure's exchange is a request to the
//! registry itself, over the registry's own client and scheme) and its credentials are cached
//! for the process. The metadata endpoints are reached over plain HTTP without a proxy, as
//! the clouds' own libraries reach them, with short timeouts and the client's retry policy.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Mutex;

use super::auth::{Challenge, Credentials};
use super::body::read_limited;
use super::config::{CloudKind, CloudLogin, RegistryConfig};
use super::error::CloudProblem;
use super::retry::{exchange, Answer, RetryPolicy};
use super::RegistryError;
use crate::reference::Host;
use crate::secret::Secret;

/// A token answer is a small JSON document.
const ANSWER_LIMIT: usize = 256 << 10;

/// How much of an endpoint's error text a message quotes.
const ERROR_TEXT_CHARS: usize = 200;

/// A metadata endpoint is on the machine's link: it connects at once or not at all.
const METADATA_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest one request to a metadata endpoint may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// The registry the login is for, and the open connection to it.
pub(super) struct Target<'a> {
    pub host: &'a Host,
    pub http: &'a reqwest::Client,
    /// `https://host[:port]` (or `http://`), as the ping chose.
    pub base: &'a str,
    pub challenge: Challenge,
    pub config: &'a RegistryConfig,
    pub policy: &'a RetryPolicy,
}

/// Which endpoint a login failed at, and how.
pub(super) type Failed = (String, CloudProblem);

type Cache = Mutex<HashMap<String, Credentials>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The credentials `login` gives for `target`, once per process. One line on failure,
/// naming the login and the endpoint, without a token.
pub(super) async fn credentials(
    login: &CloudLogin,
    target: Target<'_>,
) -> Result<Credentials, RegistryError> {
    let key = format!("{}|{:?}", login.host, login.kind);
    let mut cache = cache().lock().await;
    if let Some(c) = cache.get(&key) {
        return Ok(c.clone());
    }
    let (what, result) = match &login.kind {
        CloudKind::Azure(azure) => (
            "an Azure managed identity",
            super::azure::credentials(azure, &target).await,
        ),
        CloudKind::Gcp => (
            "the GCE metadata server",
            super::gcp::credentials(target.policy).await,
        ),
    };
    let credentials = result.map_err(|(endpoint, problem)| RegistryError::CloudLogin {
        host: target.host.to_string(),
        login: what,
        endpoint,
        problem,
    })?;
    tracing::debug!("logged in to {} with {what}", target.host);
    cache.insert(key, credentials.clone());
    Ok(credentials)
}

/// A client for a metadata endpoint: plain HTTP, no proxy, no redirects, short timeouts.
pub(super) fn metadata_client() -> Result<reqwest::Client, CloudProblem> {
    reqwest::Client::builder()
        .user_agent(super::transport::USER_AGENT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(METADATA_CONNECT_TIMEOUT)
        .timeout(METADATA_TIMEOUT)
        .build()
        .map_err(CloudProblem::Client)
}

/// `http://host[:port]` from an override variable's value (with or without a scheme), and
/// its host for messages and the retry log.
pub(super) fn endpoint_base(value: &str) -> Result<(String, Host), CloudProblem> {
    let value = value.trim().trim_end_matches('/');
    let with_scheme = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    let bad = || CloudProblem::BadAddress(value.to_string());
    let url = url::Url::parse(&with_scheme).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() {
        return Err(bad());
    }
    let host = url.host_str().ok_or_else(bad)?;
    let host = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let parsed = Host::parse(&host).map_err(|_| bad())?;
    Ok((format!("{}://{host}", url.scheme()), parsed))
}

/// Sends the request `make` builds (with the retry policy) and takes the string `field` of
/// the JSON answer as a secret.
pub(super) async fn fetch_token(
    policy: &RetryPolicy,
    host: &Host,
    what: &str,
    field: &'static str,
    make: impl AsyncFnMut() -> Result<reqwest::RequestBuilder, std::convert::Infallible>,
) -> Result<Secret, CloudProblem> {
    let answer: Result<Answer, std::convert::Infallible> = exchange(policy, host, what, make).await;
    let Ok(answer) = answer;
    let response = answer.map_err(|(_, e)| CloudProblem::Transport(e))?;
    let status = response.status();
    let body = read_limited(response, ANSWER_LIMIT)
        .await
        .map_err(CloudProblem::Read)?;
    if !status.is_success() {
        return Err(CloudProblem::Status {
            status,
            detail: error_text(&body),
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| CloudProblem::NotJson)?;
    match value.get(field).and_then(|v| v.as_str()) {
        Some(token) if !token.is_empty() => Ok(Secret::new(token)),
        _ => Err(CloudProblem::NoToken(field)),
    }
}

/// `: <why>` from an error answer: OAuth2's `error_description`/`error`, a registry's
/// `errors[0].message`, or a `message`; quoted short and redacted. Empty when there is none.
fn error_text(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = ["error_description", "error", "message"]
        .iter()
        .find_map(|k| value.get(k).and_then(|v| v.as_str()))
        .or_else(|| value["errors"][0]["message"].as_str())
        .unwrap_or_default();
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", crate::redact::quote(text.trim(), ERROR_TEXT_CHARS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_addresses() {
        let ok = |v: &str| endpoint_base(v).map(|(base, host)| (base, host.to_string()));
        assert_eq!(
            ok("127.0.0.1:8080").unwrap(),
            ("http://127.0.0.1:8080".into(), "127.0.0.1:8080".into())
        );
        assert_eq!(
            ok("http://169.254.169.254/").unwrap(),
            ("http://169.254.169.254".into(), "169.254.169.254".into())
        );
        assert_eq!(
            ok("metadata.google.internal").unwrap().0,
            "http://metadata.google.internal"
        );
        for bad in ["ftp://x", "http://u:p@host", "", "a b"] {
            assert!(endpoint_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_texts() {
        assert_eq!(
            error_text(br#"{"error":"invalid_request","error_description":"Identity not found"}"#),
            ": Identity not found"
        );
        assert_eq!(
            error_text(br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad token"}]}"#),
            ": bad token"
        );
        assert_eq!(error_text(b"<html>"), "");
        assert_eq!(error_text(br#"{"error":"a\nb"}"#), ": a b");
    }
}
