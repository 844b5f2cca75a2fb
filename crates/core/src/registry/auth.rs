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

/// Parses a `WWW-Authenticate` value: `Bearer realm="...",service="...",scope="..."`,
/// `Basic realm="..."`, or several challenges in one value (Forgejo's `Bearer ...,Basic ...`;
/// several headers read as one value joined by commas). Bearer with a realm wins over Basic,
/// whatever the order; unknown schemes read as no challenge.
pub(crate) fn parse_challenge(header: &str) -> Challenge {
    let mut basic = false;
    for (scheme, params) in parse_challenges(header) {
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => {
                if let Some(realm) = params.get("realm") {
                    return Challenge::Bearer {
                        realm: realm.clone(),
                        service: params.get("service").cloned(),
                    };
                }
            }
            "basic" => basic = true,
            _ => {}
        }
    }
    if basic {
        Challenge::Basic
    } else {
        Challenge::None
    }
}

/// The challenge of a 401's `WWW-Authenticate` headers, all of them.
pub(crate) fn challenge_of(headers: &reqwest::header::HeaderMap) -> Option<Challenge> {
    let values: Vec<&str> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| parse_challenge(&values.join(",")))
}

/// `scheme key=value, key="value", ..., scheme key=value ...`: a new challenge starts at a
/// token that no `=` follows. Values are tokens or quoted strings with `\` escapes.
fn parse_challenges(header: &str) -> Vec<(String, HashMap<String, String>)> {
    let separator = |c: char| c.is_whitespace() || c == ',';
    let mut out = Vec::new();
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches(separator);
        if rest.is_empty() {
            return out;
        }
        let end = rest.find(separator).unwrap_or(rest.len());
        let scheme = rest[..end].to_string();
        rest = &rest[end..];
        let mut params = HashMap::new();
        loop {
            rest = rest.trim_start_matches(separator);
            let key_end = rest
                .find(|c: char| c == '=' || separator(c))
                .unwrap_or(rest.len());
            let after_key = rest[key_end..].trim_start_matches([' ', '\t']);
            if key_end == 0 || !after_key.starts_with('=') {
                // The next challenge's scheme, or the end.
                break;
            }
            let key = rest[..key_end].to_ascii_lowercase();
            rest = after_key[1..].trim_start_matches([' ', '\t']);
            let mut value = String::new();
            if let Some(quoted) = rest.strip_prefix('"') {
                let mut chars = quoted.char_indices();
                let mut consumed = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            consumed = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                rest = &quoted[consumed..];
            } else {
                let end = rest.find(',').unwrap_or(rest.len());
                value = rest[..end].trim().to_string();
                rest = &rest[end..];
            }
            params.insert(key, value);
        }
        out.push((scheme, params));
    }
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
    /// Set when the client is made, or once by a cloud login after the ping.
    credentials: std::sync::OnceLock<Credentials>,
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
        let cell = std::sync::OnceLock::new();
        if let Some(c) = credentials {
            let _ = cell.set(c);
        }
        Auth {
            host,
            credentials: cell,
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// The credentials a cloud login gave; ignored when the client already has some.
    pub(super) fn set_credentials(&self, credentials: Credentials) {
        let _ = self.credentials.set(credentials);
    }

    pub(super) fn credentials(&self) -> Option<&Credentials> {
        self.credentials.get()
    }

    /// What the registry asked for at the ping.
    pub(super) async fn challenge(&self) -> Challenge {
        self.state.lock().await.challenge.clone()
    }

    /// How the requests were authenticated, for an unauthorized message.
    pub(super) fn describe(&self) -> String {
        match self.credentials() {
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
            Challenge::Basic => Ok(self.credentials().map(Credentials::basic_header)),
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
        let Some(challenge) = challenge_of(response.headers()) else {
            return false;
        };
        let mut state = self.state.lock().await;
        let before = std::mem::replace(&mut state.challenge, challenge.clone());
        state.tokens.remove(scope);
        match challenge {
            Challenge::Bearer { .. } => true,
            Challenge::Basic => before != Challenge::Basic && self.credentials().is_some(),
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
            .credentials()
            .filter(|_| self.config.may_send_credentials(&url));
        if credentials.is_none() && self.credentials().is_some() {
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
    fn two_challenges_in_one_header_prefer_bearer() {
        let bearer = Challenge::Bearer {
            realm: "https://codeberg.org/v2/token".into(),
            service: Some("container_registry".into()),
        };
        let token = r#"Bearer realm="https://codeberg.org/v2/token",service="container_registry",scope="*""#;
        for header in [
            format!(r#"{token},Basic realm="Forgejo""#),
            format!(r#"Basic realm="Forgejo",{token}"#),
            format!(r#"Basic realm="a, b" , {token}"#),
            format!(r#"Basic, {token}"#),
        ] {
            assert_eq!(parse_challenge(&header), bearer, "{header}");
        }
        // ECR's and Artifactory's Basic alone, a Bearer without a realm beside a Basic.
        for header in [
            r#"Basic realm="https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/",service="ecr.amazonaws.com""#,
            r#"Basic realm="Artifactory Realm""#,
            r#"Bearer service="x",Basic realm="y""#,
            "Negotiate abc==, Basic",
        ] {
            assert_eq!(parse_challenge(header), Challenge::Basic, "{header}");
        }
        assert_eq!(parse_challenge(""), Challenge::None);
        assert_eq!(parse_challenge(",, ,"), Challenge::None);
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
