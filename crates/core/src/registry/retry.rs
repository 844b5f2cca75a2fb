//! The one retry policy of the registry client. 429 and 5xx answers (waiting as
//! `Retry-After` asks) and broken connections get another try, with capped exponential
//! backoff. [`retrying`] is the only retry loop; [`exchange`] sends one request through it,
//! and every request of the client (pings, tokens, manifests, blobs, uploads) is an exchange.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use super::pace::{self, Broken};
use super::transport::{classify, Failure};
use crate::reference::Host;
use crate::report::chain;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
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
    /// One try and no more.
    pub(crate) fn once() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            ..Default::default()
        }
    }

    /// Exponential backoff with a little jitter; a `Retry-After` wins (at most
    /// [`MAX_RETRY_AFTER`]).
    pub(crate) fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(MAX_RETRY_AFTER);
        }
        let exp = self.base.saturating_mul(1 << attempt.min(16));
        let jitter_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64 % (self.base.as_millis() as u64 / 2 + 1))
            .unwrap_or(0);
        exp.min(self.max_delay) + Duration::from_millis(jitter_ms)
    }
}

/// What one try came to.
pub(super) enum Step<T> {
    Done(T),
    /// Worth another try (`why` is logged); `otherwise` is the result when none is left.
    Again {
        why: String,
        after: Option<Duration>,
        otherwise: T,
    },
}

/// Runs `step` until it is done or the policy's attempts are spent, sleeping between tries.
pub(super) async fn retrying<T>(policy: &RetryPolicy, mut step: impl AsyncFnMut() -> Step<T>) -> T {
    let mut attempt = 0;
    loop {
        match step().await {
            Step::Done(t) => return t,
            Step::Again { otherwise, .. } if attempt + 1 >= policy.attempts => return otherwise,
            Step::Again { why, after, .. } => {
                let wait = policy.delay(attempt, after);
                tracing::warn!("{why}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

/// An answer, whatever its status, or a transport failure and how it reads.
pub(super) type Answer = Result<reqwest::Response, (Failure, Broken)>;

/// Sends the request `make` builds (built again for every try) until it is answered with
/// something other than 429 or 5xx, it fails other than transiently, or the attempts are
/// spent. An error of `make` ends the exchange.
pub(super) async fn exchange<E>(
    policy: &RetryPolicy,
    host: &Host,
    what: &str,
    make: impl AsyncFnMut() -> Result<reqwest::RequestBuilder, E>,
) -> Result<Answer, E> {
    exchange_until(policy, host, what, |_| false, make).await
}

/// [`exchange`], where a status `is_final` says is the answer even when it would be retried.
pub(super) async fn exchange_until<E>(
    policy: &RetryPolicy,
    host: &Host,
    what: &str,
    is_final: impl Fn(StatusCode) -> bool,
    mut make: impl AsyncFnMut() -> Result<reqwest::RequestBuilder, E>,
) -> Result<Answer, E> {
    let mut unanswered = 0;
    retrying(policy, async || {
        let request = match make().await {
            Ok(r) => r,
            Err(e) => return Step::Done(Err(e)),
        };
        match pace::send(request).await {
            // A spent pull quota, or a wait longer than we would wait, is the answer:
            // the caller's error says what the registry asked.
            Ok(response) if is_final(response.status()) => Step::Done(Ok(Ok(response))),
            Ok(response)
                if retryable(response.status())
                    && (quota_spent(response.headers())
                        || retry_after(response.headers())
                            .is_some_and(|a| a > MAX_RETRY_AFTER)) =>
            {
                Step::Done(Ok(Ok(response)))
            }
            Ok(response) if retryable(response.status()) => Step::Again {
                why: format!("registry {host} answered {} for {what}", response.status()),
                after: retry_after(response.headers()),
                otherwise: Ok(Ok(response)),
            },
            Ok(response) => Step::Done(Ok(Ok(response))),
            // A peer that held the request for the whole headers budget is tried once more,
            // not the policy's five times over (which would take minutes).
            Err(e @ Broken::NoAnswer) if unanswered + 1 >= MAX_UNANSWERED => {
                Step::Done(Ok(Err((Failure::Transient, e))))
            }
            Err(e) => match classify(&e) {
                Failure::Transient => Step::Again {
                    why: format!(
                        "request to registry {host} for {what} failed ({})",
                        chain(&e)
                    ),
                    after: None,
                    otherwise: {
                        unanswered += usize::from(matches!(e, Broken::NoAnswer));
                        Ok(Err((Failure::Transient, e)))
                    },
                },
                failure => Step::Done(Ok(Err((failure, e)))),
            },
        }
    })
    .await
}

/// Tries of one request that got no answer within [`pace::HEADERS_TIMEOUT`].
const MAX_UNANSWERED: usize = 2;

/// The longest `Retry-After` waited for; a registry asking for more gets no other try.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Docker Hub's pull quota: `ratelimit-remaining: 0;w=21600` on a 429 means no retry can
/// succeed before the window resets.
pub(super) fn quota_spent(headers: &HeaderMap) -> bool {
    header_number(headers, "ratelimit-remaining") == Some(0)
}

/// The leading number of a `ratelimit-*` header (`100;w=21600` → 100).
pub(super) fn header_number(headers: &HeaderMap, name: &str) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?;
    v.split(';').next()?.trim().parse().ok()
}

/// The window of a `ratelimit-*` header in seconds (`100;w=21600` → 21600).
pub(super) fn header_window(headers: &HeaderMap, name: &str) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?;
    v.split(';')
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse().ok())
}

/// `Retry-After` as seconds or as an HTTP date.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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
    fn rate_limit_headers() {
        let mut h = HeaderMap::new();
        h.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        h.insert("ratelimit-remaining", "0;w=21600".parse().unwrap());
        assert!(quota_spent(&h));
        assert_eq!(header_number(&h, "ratelimit-limit"), Some(100));
        assert_eq!(header_window(&h, "ratelimit-limit"), Some(21600));
        h.insert("ratelimit-remaining", "7;w=21600".parse().unwrap());
        assert!(!quota_spent(&h));
        assert!(!quota_spent(&HeaderMap::new()));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert!(p.delay(0, None) < p.delay(3, None));
        assert!(p.delay(20, None) <= p.max_delay + p.base);
        assert_eq!(p.delay(0, Some(Duration::from_secs(600))), MAX_RETRY_AFTER);
    }

    #[tokio::test]
    async fn the_loop_stops_when_done_or_out_of_attempts() {
        let policy = RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut tries = 0;
        let out = retrying(&policy, async || {
            tries += 1;
            Step::Again {
                why: "no".into(),
                after: None,
                otherwise: tries,
            }
        })
        .await;
        assert_eq!((out, tries), (5, 5));
        let mut tries = 0;
        let out = retrying(&policy, async || {
            tries += 1;
            if tries == 2 {
                Step::Done("yes")
            } else {
                Step::Again {
                    why: "no".into(),
                    after: None,
                    otherwise: "gave up",
                }
            }
        })
        .await;
        assert_eq!((out, tries), ("yes", 2));
        let once = retrying(&RetryPolicy::once(), async || Step::Again {
            why: "no".into(),
            after: None,
            otherwise: 1,
        })
        .await;
        assert_eq!(once, 1);
    }
}
