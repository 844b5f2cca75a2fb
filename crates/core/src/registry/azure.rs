//! Azure Container Registry with a managed identity (`azure_acr`): the identity's Entra ID
//! (AAD) access token from the instance metadata service
//! (<https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token>),
//! exchanged at the registry's `/oauth2/exchange` for an ACR refresh token
//! (<https://github.com/Azure/acr/blob/main/docs/AAD-OAuth.md>), which is the password of the
//! user `00000000-0000-0000-0000-000000000000` in the registry's usual token flow.
//!
//! The metadata service is `http://169.254.169.254`, or what `AZURE_POD_IDENTITY_AUTHORITY_HOST`
//! says (the variable Azure's identity libraries honour for it). The token is for the
//! management resource of the registry's cloud: from `azure_environment`, else from the
//! registry's domain (`.azurecr.us` Government, `.azurecr.cn` China, else public).

use reqwest::header::CONTENT_TYPE;

use super::auth::{Challenge, Credentials};
use super::cloud::{endpoint_base, fetch_token, metadata_client, Failed, Target};
use super::config::{AzureCloud, AzureConfig};
use super::error::CloudProblem;
use crate::reference::Host;
use crate::secret::Secret;

/// The user ACR's refresh tokens go with.
pub(crate) const ACR_USERNAME: &str = "00000000-0000-0000-0000-000000000000";

/// Where the instance metadata service answers on every Azure VM.
const IMDS: &str = "http://169.254.169.254";

/// Overrides [`IMDS`]: read by Azure's identity libraries (MSAL) for aad-pod-identity, and
/// by the tests for their metadata server.
const IMDS_VARIABLE: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";

const IMDS_TOKEN_PATH: &str = "/metadata/identity/oauth2/token";

/// The IMDS API version that Azure's identity libraries use for tokens.
const IMDS_API_VERSION: &str = "2018-02-01";

impl AzureCloud {
    /// `azure_environment`: registry-image-resource's names (`AzurePublic`,
    /// `AzureGovernment`, `AzureChina`) and the Azure CLI's, in any case.
    pub(crate) fn from_name(name: &str) -> Option<AzureCloud> {
        match name.trim().to_ascii_lowercase().as_str() {
            "azurepublic" | "azurecloud" | "azurepubliccloud" => Some(AzureCloud::Public),
            "azuregovernment" | "azureusgovernment" | "azureusgovernmentcloud" => {
                Some(AzureCloud::Government)
            }
            "azurechina" | "azurechinacloud" => Some(AzureCloud::China),
            _ => None,
        }
    }

    /// The cloud of a registry by its domain.
    pub(crate) fn for_host(host: &Host) -> AzureCloud {
        let name = host.hostname().to_ascii_lowercase();
        if name.ends_with(".azurecr.us") {
            AzureCloud::Government
        } else if name.ends_with(".azurecr.cn") {
            AzureCloud::China
        } else {
            AzureCloud::Public
        }
    }

    /// The resource the managed identity's token is asked for.
    fn resource(self) -> &'static str {
        match self {
            AzureCloud::Public => "https://management.azure.com",
            AzureCloud::Government => "https://management.usgovcloudapi.net",
            AzureCloud::China => "https://management.chinacloudapi.cn",
        }
    }
}

/// The ACR refresh token for `target`'s registry, as its credentials.
pub(super) async fn credentials(
    azure: &AzureConfig,
    target: &Target<'_>,
) -> Result<Credentials, Failed> {
    let aad = managed_identity_token(azure, target).await?;
    let refresh = exchange_for_refresh_token(azure, target, &aad).await?;
    Ok(Credentials {
        username: ACR_USERNAME.to_string(),
        password: refresh,
        origin: "an ACR refresh token for the Azure managed identity (source.azure_acr)".into(),
    })
}

/// GET the token of the managed identity (`azure_client_id`'s, else the system-assigned
/// one) from the instance metadata service.
async fn managed_identity_token(
    azure: &AzureConfig,
    target: &Target<'_>,
) -> Result<Secret, Failed> {
    let configured = std::env::var(IMDS_VARIABLE)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let address = configured.as_deref().unwrap_or(IMDS);
    let endpoint = |host: &str| format!("the managed identity endpoint {host}");
    let (base, host) = endpoint_base(address).map_err(|e| (endpoint(address), e))?;
    let fail = |problem: CloudProblem| (endpoint(host.as_str()), problem);
    let http = metadata_client().map_err(fail)?;
    let mut url = url::Url::parse(&format!("{base}{IMDS_TOKEN_PATH}"))
        .map_err(|_| fail(CloudProblem::BadAddress(address.to_string())))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("api-version", IMDS_API_VERSION);
        q.append_pair("resource", azure.cloud.resource());
        if let Some(id) = &azure.client_id {
            q.append_pair("client_id", id);
        }
    }
    tracing::debug!(
        "asking {} for a managed identity token ({})",
        host,
        azure.cloud.resource()
    );
    fetch_token(
        target.policy,
        &host,
        "a managed identity token",
        "access_token",
        async || Ok(http.get(url.clone()).header("Metadata", "true")),
    )
    .await
    .map_err(fail)
}

/// POST the AAD token to the registry's `/oauth2/exchange` for an ACR refresh token.
async fn exchange_for_refresh_token(
    azure: &AzureConfig,
    target: &Target<'_>,
    aad: &Secret,
) -> Result<Secret, Failed> {
    let fail = |problem: CloudProblem| {
        (
            format!("the ACR token exchange at {}", target.host),
            problem,
        )
    };
    let url = url::Url::parse(&format!("{}/oauth2/exchange", target.base))
        .map_err(|_| fail(CloudProblem::BadAddress(target.base.to_string())))?;
    if !target.config.may_send_credentials(&url) {
        return Err(fail(CloudProblem::Cleartext));
    }
    let (service, challenge_tenant) = from_challenge(&target.challenge);
    let service = service.unwrap_or_else(|| target.host.to_string());
    let tenant = azure.tenant_id.clone().or(challenge_tenant);
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "access_token")
        .append_pair("service", &service);
    if let Some(tenant) = &tenant {
        form.append_pair("tenant", tenant);
    }
    form.append_pair("access_token", aad.expose());
    let body = Secret::new(form.finish());
    tracing::debug!(
        "exchanging the managed identity token at {} (service {service}, tenant {})",
        target.host,
        tenant.as_deref().unwrap_or("not given")
    );
    fetch_token(
        target.policy,
        target.host,
        "an ACR refresh token",
        "refresh_token",
        async || {
            Ok(target
                .http
                .post(url.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body.expose().to_string()))
        },
    )
    .await
    .map_err(fail)
}

/// The `service` of a Bearer challenge, and the `tenant` its realm names
/// (`https://r.azurecr.io/oauth2/exchange?tenant=...`), when it does.
fn from_challenge(challenge: &Challenge) -> (Option<String>, Option<String>) {
    let Challenge::Bearer { realm, service } = challenge else {
        return (None, None);
    };
    let tenant = url::Url::parse(realm).ok().and_then(|u| {
        u.query_pairs()
            .find(|(k, v)| k == "tenant" && !v.is_empty())
            .map(|(_, v)| v.into_owned())
    });
    (service.clone().filter(|s| !s.is_empty()), tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Ported from registry-image-resource azure_test.go, "resolveAzureCloud" (domain
    // detection, explicit override, unknown names): an unknown name is a field error in
    // dockhand instead of a warning (source.rs), so it is `None` here.
    #[test]
    fn clouds_by_domain_and_by_name() {
        let host = |h: &str| AzureCloud::for_host(&Host::parse(h).unwrap());
        assert_eq!(host("myregistry.azurecr.io"), AzureCloud::Public);
        assert_eq!(host("myregistry.azurecr.us"), AzureCloud::Government);
        assert_eq!(host("myregistry.azurecr.cn"), AzureCloud::China);
        assert_eq!(host("MyRegistry.AzureCR.US"), AzureCloud::Government);
        assert_eq!(host("127.0.0.1:5000"), AzureCloud::Public);
        for (name, cloud) in [
            ("AzurePublic", AzureCloud::Public),
            ("AzureCloud", AzureCloud::Public),
            ("AzureGovernment", AzureCloud::Government),
            ("azureusgovernment", AzureCloud::Government),
            ("AzureChina", AzureCloud::China),
            ("AzureChinaCloud", AzureCloud::China),
        ] {
            assert_eq!(AzureCloud::from_name(name), Some(cloud), "{name}");
        }
        assert_eq!(AzureCloud::from_name("InvalidCloud"), None);
        assert_eq!(
            AzureCloud::Government.resource(),
            "https://management.usgovcloudapi.net"
        );
    }

    // Ported from registry-image-resource azure_test.go, "parseACRChallengeTenant".
    #[test]
    fn the_challenge_names_the_service_and_maybe_the_tenant() {
        let bearer = |realm: &str, service: Option<&str>| Challenge::Bearer {
            realm: realm.into(),
            service: service.map(str::to_string),
        };
        assert_eq!(
            from_challenge(&bearer(
                "https://myregistry.azurecr.io/oauth2/exchange?tenant=72f988bf-86f1-41af-91ab-2d7cd011db47",
                Some("myregistry.azurecr.io")
            )),
            (
                Some("myregistry.azurecr.io".into()),
                Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into())
            )
        );
        assert_eq!(
            from_challenge(&bearer(
                "https://myregistry.azurecr.io/oauth2/exchange?foo=bar&tenant=abc-123&baz=qux",
                None
            )),
            (None, Some("abc-123".into()))
        );
        assert_eq!(
            from_challenge(&bearer(
                "https://myregistry.azurecr.io/oauth2/token",
                Some("")
            )),
            (None, None)
        );
        assert_eq!(from_challenge(&Challenge::Basic), (None, None));
    }
}
