//! What the registry client needs to know, owned by the client: credentials by host, TLS
//! material by domain, insecure hosts, ECR settings and a cloud login (Azure, GCP). `source` builds it once in
//! `resolve()`; nothing here knows the pipeline's JSON.

use crate::reference::Host;
use crate::secret::Secret;

/// Everything needed to talk to any registry: credentials and TLS material by host.
#[derive(Debug, Default, Clone)]
pub(crate) struct RegistryConfig {
    pub credentials: Vec<HostCredentials>,
    pub ca_certs: Vec<DomainPem>,
    pub client_certs: Vec<DomainPem>,
    pub insecure: Vec<Insecure>,
    /// Where ECR tokens apply and how to get them (`aws_*` fields).
    pub ecr: Option<EcrConfig>,
    /// `azure_acr` or `gcp_metadata`: how the repository's registry is logged in to.
    pub cloud: Option<CloudLogin>,
}

/// A login to `host` with a cloud identity of the machine, used when the pipeline gave no
/// credentials for it.
#[derive(Debug, Clone)]
pub(crate) struct CloudLogin {
    pub host: Host,
    pub kind: CloudKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CloudKind {
    /// `azure_acr`: a managed identity's token exchanged for an ACR refresh token.
    Azure(AzureConfig),
    /// `gcp_metadata`: the GCE metadata server's access token.
    Gcp,
}

/// `azure_client_id`, `azure_tenant_id` and the cloud from `azure_environment` (or the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AzureConfig {
    /// A user-assigned identity; `None` for the system-assigned one.
    pub client_id: Option<String>,
    /// The registry's tenant; `None`: the challenge's, if it names one.
    pub tenant_id: Option<String>,
    pub cloud: AzureCloud,
}

/// The Azure cloud whose management resource the managed identity's token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AzureCloud {
    Public,
    Government,
    China,
}

/// `source.aws_*`: ECR applies to ECR hostnames, and to `repository_host` when `region` is set.
#[derive(Debug, Clone)]
pub(crate) struct EcrConfig {
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// `aws_role_arn`, then `aws_role_arns`, assumed in this order.
    pub roles: Vec<String>,
    pub account_id: Option<String>,
    /// `aws_ecr_registry_id`: the registry whose token is asked for, for the repository's
    /// registry (wins over `account_id` and the host's account).
    pub registry_id: Option<String>,
    pub repository_host: Host,
}

#[derive(Debug, Clone)]
pub(crate) struct HostCredentials {
    pub host: Host,
    pub username: String,
    pub password: Secret,
    /// Where they came from, for error messages (`source.username`).
    pub origin: String,
}

/// PEM material for a domain; `domain` `None` applies to every registry.
#[derive(Debug, Clone)]
pub(crate) struct DomainPem {
    pub domain: Option<String>,
    /// Certificate chain (and for client certificates, the key after it).
    pub pem: Secret,
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Insecure {
    Host(String),
    Net(ipnet::IpNet),
}

impl DomainPem {
    /// `domain` matches a registry when equal to its `host:port` or to its bare host name.
    pub(crate) fn applies_to(&self, host: &Host) -> bool {
        match &self.domain {
            None => true,
            Some(d) => {
                let d = d.to_ascii_lowercase();
                d == host.as_str() || d == host.hostname()
            }
        }
    }
}

impl RegistryConfig {
    pub(crate) fn is_insecure(&self, host: &Host) -> bool {
        self.insecure.iter().any(|entry| match entry {
            Insecure::Host(h) => h == host.as_str() || h == host.hostname(),
            Insecure::Net(net) => host.ip().is_some_and(|ip| net.contains(&ip)),
        })
    }

    /// Whether credentials may go to `url`: over https, or plain http to a loopback or
    /// `insecure_registries` host (which is reached that way anyway).
    pub(crate) fn may_send_credentials(&self, url: &url::Url) -> bool {
        if url.scheme() == "https" {
            return true;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Host::parse(&host).is_ok_and(|h| h.is_loopback() || self.is_insecure(&h))
    }

    pub(crate) fn credentials_for(&self, host: &Host) -> Option<&HostCredentials> {
        self.credentials.iter().find(|c| &c.host == host)
    }
}
