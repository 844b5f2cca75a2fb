//! Registry authentication: `WWW-Authenticate` challenges, basic auth, bearer tokens per scope
//! (<https://distribution.github.io/distribution/spec/auth/token/>), and credentials from the
//! pipeline, an ECR token, or the Docker CLI's configuration (`docker_config.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderValue, WWW_AUTHENTICATE};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::config::RegistryConfig;
use crate::reference::Host;
use crate::secret::Secret;

use super::body::read_limited;
use super::error::TokenProblem;
use super::retry::{exchange, Answer, RetryPolicy};
use super::RegistryError;

/// Username and password for one registry, with where they came from.
#[derive(Debug, Clone)]
pub(super) struct Credentials {
    pub username: String,
    pub password: Secret,
    pub origin: String,
}

impl Credentials {
    fn basic_header(&self) -> HeaderValue {
        crate::redact::register_pair(&self.username, self.password.expose());
        let raw = format!("{}:{}", self.username, self.password.expose());
        let mut v = HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ))
        .expect("base64 is a valid header value");
        v.set_sensitive(true);
        v
    }
}

/// What the registry asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Challenge {
    #[default]
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value: `Bearer realm="...",service="...",scope="..."` or
/// `Basic realm="..."`. Unknown schemes read as no challenge.
pub(crate) fn parse_challenge(header: &str) -> Challenge {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Challenge::Basic,
        "bearer" => match params.get("realm") {
            Some(realm) => Challenge::Bearer {
                realm: realm.clone(),
                service: params.get("service").cloned(),
            },
            None => Challenge::None,
        },
        _ => Challenge::None,
    }
}

/// `key=value` pairs separated by commas; values are tokens or quoted strings with `\` escapes.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.insert(key, value);
    }
    out
}

/// The longest a token is trusted for, whatever `expires_in` says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Token answers are small JSON documents.
const TOKEN_ANSWER_LIMIT: usize = 1 << 20;

struct Token {
    value: Secret,
    expires: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Authentication state for one registry host, shared by concurrent requests.
pub(super) struct Auth {
    host: Host,
    credentials: Option<Credentials>,
    /// Which token realms may get the credentials in clear.
    config: RegistryConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    challenge: Challenge,
    tokens: HashMap<String, Token>,
}

impl Auth {
    pub(super) fn new(
        host: Host,
        credentials: Option<Credentials>,
        config: RegistryConfig,
    ) -> Auth {
        Auth {
            host,
            credentials,
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// How the requests were authenticated, for an unauthorized message.
    pub(super) fn describe(&self) -> String {
        match &self.credentials {
            Some(c) => format!("as {:?} with credentials from {}", c.username, c.origin),
            None => "anonymously (no credentials: set source.username and source.password)".into(),
        }
    }

    pub(super) async fn set_challenge(&self, challenge: Challenge) {
        self.state.lock().await.challenge = challenge;
    }

    /// The `Authorization` header for a request in `scope`, fetching a token when needed.
    pub(super) async fn header(
        &self,
        http: &reqwest::Client,
        scope: &str,
        policy: &RetryPolicy,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let mut state = self.state.lock().await;
        match state.challenge.clone() {
            Challenge::None => Ok(None),
            Challenge::Basic => Ok(self.credentials.as_ref().map(Credentials::basic_header)),
            Challenge::Bearer { realm, service } => {
                if let Some(token) = state.tokens.get(scope) {
                    if token.expires > Instant::now() {
                        return Ok(Some(bearer_header(&token.value)));
                    }
                }
                let token = self
                    .fetch_token(http, &realm, service.as_deref(), scope, policy)
                    .await?;
                let header = bearer_header(&token.value);
                state.tokens.insert(scope.to_string(), token);
                Ok(Some(header))
            }
        }
    }

    /// After a 401: take the challenge of the response and drop the cached token for the
    /// scope. True when another try could succeed.
    pub(super) async fn refresh(&self, response: &reqwest::Response, scope: &str) -> bool {
        let Some(challenge) = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(parse_challenge)
        else {
            return false;
        };
        let mut state = self.state.lock().await;
        let before = std::mem::replace(&mut state.challenge, challenge.clone());
        state.tokens.remove(scope);
        match challenge {
            Challenge::Bearer { .. } => true,
            Challenge::Basic => before != Challenge::Basic && self.credentials.is_some(),
            Challenge::None => false,
        }
    }

    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        policy: &RetryPolicy,
    ) -> Result<Token, RegistryError> {
        let token_error = |problem: TokenProblem| RegistryError::Token {
            host: self.host.to_string(),
            realm: realm.to_string(),
            problem,
        };
        let mut url =
            url::Url::parse(realm).map_err(|e| token_error(TokenProblem::RealmNotUrl(e)))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = service {
                q.append_pair("service", service);
            }
            for s in scope.split(' ').filter(|s| !s.is_empty()) {
                q.append_pair("scope", s);
            }
        }
        // Basic credentials go to a realm only over https, or in clear to a loopback or
        // insecure-listed one; any other realm is asked anonymously.
        let credentials = self
            .credentials
            .as_ref()
            .filter(|_| self.config.may_send_credentials(&url));
        if credentials.is_none() && self.credentials.is_some() {
            tracing::warn!(
                "token realm {} is plain http: asking it for a token without the credentials",
                url.origin().ascii_serialization()
            );
        }
        let what = format!("a token from {realm}");
        let answer: Result<Answer, std::convert::Infallible> =
            exchange(policy, &self.host, &what, async || {
                let mut request = http.get(url.clone());
                if let Some(c) = credentials {
                    request = request.header(reqwest::header::AUTHORIZATION, c.basic_header());
                }
                Ok(request)
            })
            .await;
        let Ok(answer) = answer;
        let response = answer.map_err(|(_, e)| RegistryError::Transport {
            host: self.host.to_string(),
            what,
            source: e,
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized {
                host: self.host.to_string(),
                repository: scope_repository(scope),
                image: None,
                detail: format!("the token server refused the credentials ({status})"),
                auth: self.describe(),
            });
        }
        if !status.is_success() {
            return Err(token_error(TokenProblem::Status(status)));
        }
        let body = read_limited(response, TOKEN_ANSWER_LIMIT)
            .await
            .map_err(|e| token_error(TokenProblem::Read(e)))?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| token_error(TokenProblem::NotTokenResponse(e)))?;
        let value = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_error(TokenProblem::NoToken))?;
        // The spec's default lifetime is 60 s; renew a little early. A lifetime past a day
        // is read as a day (and never overflows the clock).
        let lifetime = Duration::from_secs(
            parsed
                .expires_in
                .unwrap_or(60)
                .clamp(60, MAX_TOKEN_LIFETIME.as_secs()),
        );
        let now = Instant::now();
        Ok(Token {
            value: Secret::new(value),
            expires: now
                .checked_add(lifetime - Duration::from_secs(10))
                .unwrap_or(now),
        })
    }
}

fn bearer_header(token: &Secret) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    v.set_sensitive(true);
    v
}

/// `repository:library/alpine:pull` → `library/alpine`.
fn scope_repository(scope: &str) -> String {
    scope
        .split(' ')
        .next()
        .and_then(|s| s.strip_prefix("repository:"))
        .and_then(|s| s.rsplit_once(':'))
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| scope.to_string())
}

/// Credentials for `host`: the pipeline's first, then an ECR token, then the Docker CLI's
/// configuration. An ECR failure comes with its region.
pub(super) async fn credentials_for(
    host: &Host,
    config: &RegistryConfig,
) -> Result<Option<Credentials>, (String, super::ecr::EcrProblem)> {
    if let Some(c) = config.credentials_for(host) {
        return Ok(Some(Credentials {
            username: c.username.clone(),
            password: c.password.clone(),
            origin: c.origin.clone(),
        }));
    }
    if let Some(c) = super::ecr::credentials_for(host, config.ecr.as_ref()).await? {
        return Ok(Some(c));
    }
    Ok(super::docker_config::credentials(host).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Challenge::Basic
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=http://127.0.0.1:1/token , service = "a \"b\"""#),
            Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: Some("a \"b\"".into())
            }
        );
        assert_eq!(parse_challenge("Negotiate"), Challenge::None);
        assert_eq!(parse_challenge("Bearer service=x"), Challenge::None);
    }

    #[test]
    fn scope_names() {
        assert_eq!(scope_repository("repository:a/b:pull"), "a/b");
        assert_eq!(
            scope_repository("repository:127.0.0.1/x:pull,push"),
            "127.0.0.1/x"
        );
    }
}
