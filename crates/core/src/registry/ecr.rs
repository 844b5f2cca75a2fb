//! Amazon ECR: a registry password from `GetAuthorizationToken`, for ECR hostnames
//! (`<account>.dkr.ecr.<region>.amazonaws.com` and its FIPS, China and dual-stack spellings)
//! and for the repository's own registry whenever `source.aws_region` is set.
//!
//! AWS credentials: the static keys (and session token) from `source` when given, else the
//! SDK's default chain (environment, profile, web identity, ECS/EC2 metadata); then each of
//! `aws_role_arn`, `aws_role_arns` assumed in turn. The standard endpoint variables
//! (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_ECR`, `AWS_ENDPOINT_URL_STS`) are honoured. Tokens
//! are cached for the process.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use aws_config::BehaviorVersion;
use aws_sdk_ecr::config::{Credentials as AwsCredentials, Region, SharedCredentialsProvider};
use base64::Engine as _;
use tokio::sync::Mutex;

use super::auth::Credentials;
use super::config::EcrConfig;
use crate::reference::Host;
use crate::secret::Secret;

/// `(account, region)` of an ECR registry host.
pub(super) fn parse_host(host: &str) -> Option<(String, String)> {
    let name = host.split(':').next()?.to_ascii_lowercase();
    let (account, rest) = name.split_once('.')?;
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = rest
        .strip_prefix("dkr.ecr.")
        .or_else(|| rest.strip_prefix("dkr.ecr-fips."))
        .or_else(|| rest.strip_prefix("dkr-ecr."))
        .or_else(|| rest.strip_prefix("dkr-ecr-fips."))?;
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))
        .or_else(|| rest.strip_suffix(".on.aws"))?;
    let valid = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then(|| (account.to_string(), region.to_string()))
}

/// Whether ECR credentials apply to `host`, and for which region and registry (account):
/// `aws_ecr_registry_id` for the repository's registry, else `aws_account_id`, else the
/// host's own account.
fn target(host: &Host, ecr: &EcrConfig) -> Option<(String, Option<String>)> {
    let registry_id = ecr
        .registry_id
        .clone()
        .filter(|_| host == &ecr.repository_host);
    if let Some((account, region)) = parse_host(host.as_str()) {
        let region = ecr.region.clone().unwrap_or(region);
        let id = registry_id.or_else(|| ecr.account_id.clone());
        return Some((region, Some(id.unwrap_or(account))));
    }
    if host == &ecr.repository_host {
        if let Some(region) = &ecr.region {
            return Some((
                region.clone(),
                registry_id.or_else(|| ecr.account_id.clone()),
            ));
        }
    }
    None
}

/// Why ECR gave no registry credentials. The SDK's errors are kept whole (shared, because
/// the failure is reported again on every request that needed them).
#[derive(Debug, Clone, thiserror::Error)]
pub enum EcrProblem {
    #[error("cannot assume role {role}")]
    AssumeRole {
        role: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    #[error("assuming role {role} gave no credentials")]
    NoRoleCredentials { role: String },
    #[error("GetAuthorizationToken failed")]
    GetToken(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("GetAuthorizationToken returned no token")]
    NoToken,
    #[error("the token is not base64 text")]
    NotBase64,
    #[error("the token is not user:password")]
    NotUserPassword,
}

type Cache = Mutex<HashMap<String, Credentials>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The registry credentials ECR issues for `host`; `Ok(None)` when ECR does not apply.
/// Errors are one line, name ECR and the region, and hold no secret.
pub(super) async fn credentials_for(
    host: &Host,
    ecr: Option<&EcrConfig>,
) -> Result<Option<Credentials>, (String, EcrProblem)> {
    let Some(ecr) = ecr else { return Ok(None) };
    let Some((region, account)) = target(host, ecr) else {
        return Ok(None);
    };
    let key = format!(
        "{region}|{}|{}|{}",
        account.as_deref().unwrap_or_default(),
        ecr.access_key_id.as_deref().unwrap_or_default(),
        ecr.roles.join(",")
    );
    let mut cache = cache().lock().await;
    if let Some(c) = cache.get(&key) {
        return Ok(Some(c.clone()));
    }
    let fail = |problem: EcrProblem| (region.clone(), problem);
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region.clone()));
    if let (Some(id), Some(secret)) = (&ecr.access_key_id, &ecr.secret_access_key) {
        loader = loader.credentials_provider(AwsCredentials::new(
            id,
            secret.expose(),
            ecr.session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "source.aws_access_key_id",
        ));
    }
    let mut config = loader.load().await;
    for role in &ecr.roles {
        let sts = aws_sdk_sts::Client::new(&config);
        let assumed = sts
            .assume_role()
            .role_arn(role)
            .role_session_name("dockhand")
            .send()
            .await
            .map_err(|e| {
                fail(EcrProblem::AssumeRole {
                    role: role.clone(),
                    source: Arc::new(e),
                })
            })?;
        let c = assumed
            .credentials()
            .ok_or_else(|| fail(EcrProblem::NoRoleCredentials { role: role.clone() }))?;
        config = config
            .into_builder()
            .credentials_provider(SharedCredentialsProvider::new(AwsCredentials::new(
                c.access_key_id(),
                c.secret_access_key(),
                Some(c.session_token().to_string()),
                None,
                "assumed role",
            )))
            .build();
    }
    let client = aws_sdk_ecr::Client::new(&config);
    #[allow(deprecated)] // registryIds is deprecated by AWS but still selects the account
    let mut request = client.get_authorization_token();
    if let Some(account) = &account {
        #[allow(deprecated)]
        {
            request = request.registry_ids(account);
        }
    }
    let answer = request
        .send()
        .await
        .map_err(|e| fail(EcrProblem::GetToken(Arc::new(e))))?;
    let data = answer
        .authorization_data()
        .first()
        .and_then(|d| d.authorization_token())
        .ok_or_else(|| fail(EcrProblem::NoToken))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| fail(EcrProblem::NotBase64))?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| fail(EcrProblem::NotUserPassword))?;
    let credentials = Credentials {
        username: username.to_string(),
        password: Secret::new(password),
        origin: format!("an ECR token ({region})"),
    };
    tracing::debug!("ECR token for {host} ({region})");
    cache.insert(key, credentials.clone());
    Ok(Some(credentials))
}

#[cfg(test)]
mod tests {
    use super::{parse_host, target, EcrConfig, Host};

    fn config(account_id: Option<&str>, registry_id: Option<&str>) -> EcrConfig {
        EcrConfig {
            region: Some("eu-west-1".into()),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            roles: Vec::new(),
            account_id: account_id.map(str::to_string),
            registry_id: registry_id.map(str::to_string),
            repository_host: Host::parse("111111111111.dkr.ecr.eu-west-1.amazonaws.com").unwrap(),
        }
    }

    #[test]
    fn aws_ecr_registry_id_names_the_repository_registrys_token() {
        let repo = Host::parse("111111111111.dkr.ecr.eu-west-1.amazonaws.com").unwrap();
        let base = Host::parse("333333333333.dkr.ecr.eu-west-1.amazonaws.com").unwrap();
        let account = |c: &EcrConfig, h: &Host| target(h, c).and_then(|(_, a)| a);
        let plain = config(None, None);
        assert_eq!(account(&plain, &repo).as_deref(), Some("111111111111"));
        let with_id = config(Some("444444444444"), Some("222222222222"));
        assert_eq!(account(&with_id, &repo).as_deref(), Some("222222222222"));
        // Another ECR registry (a base image) keeps aws_account_id, or its own account.
        assert_eq!(account(&with_id, &base).as_deref(), Some("444444444444"));
        let only_id = config(None, Some("222222222222"));
        assert_eq!(account(&only_id, &base).as_deref(), Some("333333333333"));
    }

    #[test]
    fn ecr_hosts() {
        let p = |h: &str| parse_host(h);
        assert_eq!(
            p("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(("123456789012".into(), "eu-west-1".into()))
        );
        assert_eq!(
            p("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com:443"),
            Some(("123456789012".into(), "us-east-1".into()))
        );
        assert_eq!(
            p("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
            Some(("123456789012".into(), "cn-north-1".into()))
        );
        assert_eq!(
            p("123456789012.dkr-ecr.us-west-2.on.aws"),
            Some(("123456789012".into(), "us-west-2".into()))
        );
        for not in [
            "registry-1.docker.io",
            "12345.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr.eu-west-1.example.com",
            "123456789012.dkr.ecr..amazonaws.com",
            "public.ecr.aws",
        ] {
            assert_eq!(p(not), None, "{not}");
        }
    }
}
