//! `source`: the serde mirror of the pipeline's JSON, then [`Source::resolve`] into typed
//! settings without touching the network.
//!
//! Every field of concourse/docker-image-resource is accepted (and the registry-image-resource
//! spellings where they differ), so that a pipeline can switch by changing the image only.
//! Unknown fields are reported by `protocol` (the request parser) as warnings, not errors.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::Error;
use crate::image::{null_as_default, Platform};
use crate::reference::{Host, Repository, Tag};
use crate::registry::config::{
    AzureCloud, AzureConfig, CloudKind, CloudLogin, DomainPem, EcrConfig, HostCredentials,
    Insecure, RegistryConfig,
};
use crate::secret::Secret;
use crate::select::{self, Selection};

/// Every key `source` understands, for "did you mean" on unknown ones. A unit test keeps it in
/// step with [`Source`].
pub(crate) const FIELDS: &[&str] = &[
    "repository",
    "tag",
    "username",
    "password",
    "additional_private_registries",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region",
    "aws_role_arn",
    "aws_role_arns",
    "aws_account_id",
    "aws_ecr_registry_id",
    "azure_acr",
    "azure_client_id",
    "azure_tenant_id",
    "azure_environment",
    "gcp_metadata",
    "insecure_registries",
    "insecure",
    "registry_mirror",
    "ca_certs",
    "client_certs",
    "max_concurrent_downloads",
    "max_concurrent_uploads",
    "startup_timeout",
    "debug",
    "platform",
    "tag_regex",
    "tag_exclude_regex",
    "semver_constraint",
    "variant",
    "pre_releases",
    "pre_release_prefixes",
    "created_at_sort",
    "fail_when_missing",
    "git_repo",
    "git_private_key",
    "label_regex",
    "annotation_regex",
    "content_trust",
    "cosign_public_keys",
    "cosign_check_reference",
];

/// The `source` object as the pipeline wrote it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Source {
    pub repository: Option<String>,
    pub tag: Option<TagText>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub additional_private_registries: Vec<PrivateRegistry>,

    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<Secret>,
    pub aws_session_token: Option<Secret>,
    pub aws_region: Option<String>,
    pub aws_role_arn: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub aws_role_arns: Vec<String>,
    pub aws_account_id: Option<TagText>,
    /// registry-image-resource's cross-account field: the registry whose token is asked for.
    pub aws_ecr_registry_id: Option<TagText>,

    #[serde(default, deserialize_with = "null_as_default")]
    pub azure_acr: bool,
    pub azure_client_id: Option<String>,
    pub azure_tenant_id: Option<String>,
    pub azure_environment: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub gcp_metadata: bool,

    #[serde(default, deserialize_with = "null_as_default")]
    pub insecure_registries: Vec<String>,
    /// registry-image-resource's spelling: the repository's own registry is insecure.
    #[serde(default, deserialize_with = "null_as_default")]
    pub insecure: bool,
    pub registry_mirror: Option<Mirror>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ca_certs: Vec<CaCert>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub client_certs: Vec<ClientCert>,

    pub max_concurrent_downloads: Option<Count>,
    pub max_concurrent_uploads: Option<Count>,
    pub startup_timeout: Option<Count>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub debug: bool,

    pub platform: Option<Platform>,
    pub tag_regex: Option<String>,
    pub tag_exclude_regex: Option<String>,
    pub semver_constraint: Option<String>,
    pub variant: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub pre_releases: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub pre_release_prefixes: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub created_at_sort: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub fail_when_missing: bool,
    pub git_repo: Option<String>,
    pub git_private_key: Option<Secret>,

    /// registry-image-resource's: image labels whose key matches become `in`'s metadata.
    pub label_regex: Option<String>,
    /// registry-image-resource's: manifest annotations whose key matches, likewise.
    pub annotation_regex: Option<String>,
    /// registry-image-resource's Notary v1 signing: retired, warned about and not read.
    pub content_trust: Option<Retired>,
    /// PEM public keys; one string or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub cosign_public_keys: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub cosign_check_reference: bool,
}

/// A field that is accepted for its warning only: its value (keys, passphrases) is read
/// and dropped at once, never kept.
#[derive(Debug, Default)]
pub(crate) struct Retired;

impl<'de> Deserialize<'de> for Retired {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d)?;
        Ok(Retired)
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PrivateRegistry {
    pub registry: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// `registry_mirror`: a URL string (docker-image-resource) or `{host, username, password}`
/// (registry-image-resource).
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    pub host: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// A `ca_certs` entry: `{domain, cert}` (docker-image-resource) or a bare PEM string
/// (registry-image-resource), which applies to every registry.
#[derive(Debug, Default)]
pub(crate) struct CaCert {
    pub domain: Option<String>,
    pub cert: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ClientCert {
    pub domain: Option<String>,
    pub cert: Option<String>,
    pub key: Option<Secret>,
}

/// A tag as the pipeline gave it: a string, or a number whose text is kept (`3.7` → "3.7").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagText(pub String);

/// A non-negative count, also accepted as a numeric string (YAML users quote numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count(pub u64);

/// Defaults that docker-image-resource documents.
pub(crate) const DEFAULT_TAG: &str = "latest";
pub(crate) const DEFAULT_CONCURRENCY: usize = 3;
pub(crate) const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest `startup_timeout` accepted.
pub(crate) const MAX_STARTUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a `source` means, checked and typed; no network was used to make it.
#[derive(Debug)]
pub(crate) struct Settings {
    pub repository: Repository,
    pub tag: Tag,
    pub registries: RegistryConfig,
    pub fail_when_missing: bool,
    pub platform: Option<Platform>,
    pub max_concurrent_downloads: usize,
    pub max_concurrent_uploads: usize,
    pub startup_timeout: Duration,
    /// `registry_mirror`: tried first for Docker Hub repositories (check and in), and given
    /// to a dockerd that `out` starts. Its credentials are in `registries`.
    pub mirror: Option<MirrorSettings>,
    /// `repository` as the pipeline wrote it (what `in` writes to its `repository` file).
    pub repository_text: String,
    /// Selection mode's rules; `None` in tag mode.
    pub selection: Option<Selection>,
    /// What the selection fields' combination leaves unused: check logs these.
    pub selection_notes: Vec<String>,
    /// `variant`, trimmed, when not empty: out's version tags end with it.
    pub variant: Option<String>,
    /// `git_repo`: the tag is the commit the repository's default branch is at.
    pub git: Option<GitSource>,
    /// `label_regex`: which image labels become `in`'s metadata (a search, unanchored).
    pub label_regex: Option<regex::Regex>,
    /// `annotation_regex`: which manifest annotations become `in`'s metadata.
    pub annotation_regex: Option<regex::Regex>,
    /// `cosign_public_keys`: only digests one of them signed are checked and got.
    pub signatures: Option<crate::signature::Policy>,
}

#[derive(Debug, Clone)]
pub(crate) struct GitSource {
    pub repo: String,
    pub private_key: Option<Secret>,
}

#[derive(Debug, Clone)]
pub(crate) struct MirrorSettings {
    pub host: Host,
    /// As dockerd's `--registry-mirror` wants it: `https://host[:port]` (or `http://`).
    pub url: String,
}

fn field_error(field: impl Into<String>, reason: impl Into<crate::error::Cause>) -> Error {
    Error::Field {
        field: field.into(),
        source: reason.into(),
    }
}

impl Source {
    /// Checks every field and builds [`Settings`]. Field errors name the field.
    pub(crate) fn resolve(&self) -> Result<Settings, Error> {
        let repository = match self.repository.as_deref() {
            None => return Err(field_error("source.repository", "required")),
            Some(r) => r
                .parse::<Repository>()
                .map_err(|e| field_error("source.repository", e))?,
        };
        let tag = match &self.tag {
            None => DEFAULT_TAG.parse().expect("default tag is valid"),
            Some(TagText(t)) => t.parse::<Tag>().map_err(|e| field_error("source.tag", e))?,
        };

        let mut registries = RegistryConfig::default();
        self.credentials(&repository, &mut registries)?;
        self.tls_material(&mut registries)?;
        self.insecure_hosts(&repository, &mut registries)?;
        let mirror = self.mirror(&mut registries)?;
        registries.ecr = self.ecr(&repository)?;
        registries.cloud = self.cloud_login(&repository)?;
        crate::registry::check_tls_material(&registries)
            .map_err(|(field, reason)| field_error(field, format!("cannot be used: {reason}")))?;
        let concurrency = |c: Option<Count>, field: &str| -> Result<usize, Error> {
            match c {
                None => Ok(DEFAULT_CONCURRENCY),
                Some(Count(0)) => Err(field_error(field, "must be at least 1")),
                Some(Count(n)) => Ok(n.min(64) as usize),
            }
        };
        let (selection, selection_notes) = Selection::from_fields(&self.selection_fields())?;
        if self.content_trust.is_some() {
            tracing::warn!("source.content_trust is ignored: Docker Content Trust (Notary v1) is retired; dockhand verifies cosign signatures instead (source.cosign_public_keys)");
        }
        let metadata_regex = |text: &Option<String>, field: &str| {
            text.as_deref()
                .map(|r| crate::select::compile_regex(r, r, field))
                .transpose()
        };
        let label_regex = metadata_regex(&self.label_regex, "source.label_regex")?;
        let annotation_regex = metadata_regex(&self.annotation_regex, "source.annotation_regex")?;
        let signatures = self.signature_policy(&repository)?;
        Ok(Settings {
            signatures,
            tag,
            registries,
            fail_when_missing: self.fail_when_missing,
            platform: self.platform.clone(),
            max_concurrent_downloads: concurrency(
                self.max_concurrent_downloads,
                "source.max_concurrent_downloads",
            )?,
            max_concurrent_uploads: concurrency(
                self.max_concurrent_uploads,
                "source.max_concurrent_uploads",
            )?,
            startup_timeout: match self.startup_timeout {
                None => DEFAULT_STARTUP_TIMEOUT,
                Some(Count(s)) if s <= MAX_STARTUP_TIMEOUT.as_secs() => Duration::from_secs(s),
                Some(_) => {
                    return Err(field_error(
                        "source.startup_timeout",
                        format!("at most {} seconds", MAX_STARTUP_TIMEOUT.as_secs()),
                    ))
                }
            },
            mirror,
            repository_text: self.repository.clone().unwrap_or_default(),
            repository,
            selection,
            selection_notes,
            variant: self
                .variant
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string),
            label_regex,
            annotation_regex,
            git: self.git_repo.clone().map(|repo| {
                // A token in the URL is registered as a secret; git gets the URL whole.
                let _ = split_userinfo(&repo);
                GitSource {
                    repo,
                    private_key: self.git_private_key.clone(),
                }
            }),
        })
    }

    /// `username`/`password` for the repository's registry, then
    /// `additional_private_registries` (the first for a host wins).
    fn credentials(
        &self,
        repository: &Repository,
        registries: &mut RegistryConfig,
    ) -> Result<(), Error> {
        if let Some(username) = self.username.as_deref().filter(|u| !u.is_empty()) {
            let password = self.password.clone().unwrap_or_default();
            crate::registry::register_key_secrets(username, &password);
            registries.credentials.push(HostCredentials {
                host: repository.host().clone(),
                username: username.to_string(),
                password,
                origin: "source.username".into(),
            });
        } else if self.password.as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(field_error(
                "source.username",
                "required when source.password is set",
            ));
        }
        for (i, reg) in self.additional_private_registries.iter().enumerate() {
            let field = format!("source.additional_private_registries[{i}]");
            let host = reg
                .registry
                .as_deref()
                .ok_or_else(|| field_error(format!("{field}.registry"), "required"))?;
            let host = parse_registry_host(host)
                .map_err(|e| field_error(format!("{field}.registry"), e))?;
            let username = reg
                .username
                .clone()
                .ok_or_else(|| field_error(format!("{field}.username"), "required"))?;
            let password = reg.password.clone().unwrap_or_default();
            crate::registry::register_key_secrets(&username, &password);
            // source.username wins for the repository's own registry.
            if registries.credentials_for(&host).is_none() {
                registries.credentials.push(HostCredentials {
                    host,
                    username,
                    password,
                    origin: field,
                });
            }
        }
        Ok(())
    }

    /// `ca_certs` (added to the system roots for their domain, or every registry) and
    /// `client_certs`, each checked to be usable.
    fn tls_material(&self, registries: &mut RegistryConfig) -> Result<(), Error> {
        for (i, entry) in self.ca_certs.iter().enumerate() {
            let field = format!("source.ca_certs[{i}]");
            let cert = entry
                .cert
                .as_deref()
                .ok_or_else(|| field_error(format!("{field}.cert"), "required"))?;
            check_certificates(cert).map_err(|e| field_error(format!("{field}.cert"), e))?;
            let domain = match &entry.domain {
                Some(d) => {
                    Some(check_domain(d).map_err(|e| field_error(format!("{field}.domain"), e))?)
                }
                None => None,
            };
            registries.ca_certs.push(DomainPem {
                domain,
                pem: Secret::new(cert),
                field,
            });
        }
        for (i, entry) in self.client_certs.iter().enumerate() {
            let field = format!("source.client_certs[{i}]");
            let domain = entry
                .domain
                .as_deref()
                .ok_or_else(|| field_error(format!("{field}.domain"), "required"))?;
            let domain =
                check_domain(domain).map_err(|e| field_error(format!("{field}.domain"), e))?;
            let cert = entry
                .cert
                .as_deref()
                .ok_or_else(|| field_error(format!("{field}.cert"), "required"))?;
            check_certificates(cert).map_err(|e| field_error(format!("{field}.cert"), e))?;
            let key = entry
                .key
                .as_ref()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    field_error(format!("{field}.key"), "required with a client cert")
                })?;
            check_private_key(key.expose()).map_err(|e| field_error(format!("{field}.key"), e))?;
            let mut pem = cert.trim_end().to_string();
            pem.push('\n');
            pem.push_str(key.expose());
            registries.client_certs.push(DomainPem {
                domain: Some(domain),
                pem: Secret::new(pem),
                field,
            });
        }
        Ok(())
    }

    /// `insecure_registries` (hosts or networks) and `insecure` for the repository's own.
    fn insecure_hosts(
        &self,
        repository: &Repository,
        registries: &mut RegistryConfig,
    ) -> Result<(), Error> {
        for (i, entry) in self.insecure_registries.iter().enumerate() {
            let field = format!("source.insecure_registries[{i}]");
            let entry = entry.trim();
            if let Ok(net) = entry.parse::<ipnet::IpNet>() {
                registries.insecure.push(Insecure::Net(net));
            } else {
                let host = parse_registry_host(entry).map_err(|e| field_error(&field, e))?;
                registries
                    .insecure
                    .push(Insecure::Host(host.as_str().to_string()));
            }
        }
        if self.insecure && !registries.is_insecure(repository.host()) {
            registries
                .insecure
                .push(Insecure::Host(repository.host().as_str().to_string()));
        }
        Ok(())
    }

    /// `registry_mirror`: its host, scheme (a plain-HTTP mirror is insecure) and credentials.
    fn mirror(&self, registries: &mut RegistryConfig) -> Result<Option<MirrorSettings>, Error> {
        Ok(match &self.registry_mirror {
            None => None,
            Some(m) if m.host.trim().is_empty() => None,
            Some(m) => {
                let (address, userinfo) = split_userinfo(m.host.trim());
                let host = parse_registry_host(&address)
                    .map_err(|e| field_error("source.registry_mirror", e))?;
                let plain = address.starts_with("http://");
                if plain && !registries.is_insecure(&host) {
                    registries
                        .insecure
                        .push(Insecure::Host(host.as_str().to_string()));
                }
                if let Some(username) = m.username.as_deref().filter(|u| !u.is_empty()) {
                    registries.credentials.retain(|c| c.host != host);
                    registries.credentials.push(HostCredentials {
                        host: host.clone(),
                        username: username.to_string(),
                        password: m.password.clone().unwrap_or_default(),
                        origin: "source.registry_mirror.username".into(),
                    });
                } else if let Some((username, password)) = userinfo {
                    registries.credentials.retain(|c| c.host != host);
                    registries.credentials.push(HostCredentials {
                        host: host.clone(),
                        username,
                        password,
                        origin: "the userinfo of source.registry_mirror".into(),
                    });
                }
                let scheme = if plain { "http" } else { "https" };
                Some(MirrorSettings {
                    url: format!("{scheme}://{host}"),
                    host,
                })
            }
        })
    }

    fn selection_fields(&self) -> select::Fields {
        select::Fields {
            tag_regex: self.tag_regex.clone(),
            tag_exclude_regex: self.tag_exclude_regex.clone(),
            semver_constraint: self.semver_constraint.clone(),
            variant: self.variant.clone(),
            pre_releases: self.pre_releases,
            pre_release_prefixes: self.pre_release_prefixes.clone(),
            created_at_sort: self.created_at_sort,
            tag_given: self.tag.is_some(),
        }
    }
}

impl Source {
    /// `cosign_public_keys` (each entry one PEM key) and `cosign_check_reference`.
    fn signature_policy(
        &self,
        repository: &Repository,
    ) -> Result<Option<crate::signature::Policy>, Error> {
        if self.cosign_public_keys.is_empty() {
            if self.cosign_check_reference {
                return Err(field_error(
                    "source.cosign_check_reference",
                    "needs source.cosign_public_keys",
                ));
            }
            return Ok(None);
        }
        let keys = crate::signature::parse_public_keys(&self.cosign_public_keys)
            .map_err(|(field, why)| field_error(field, why))?;
        Ok(Some(crate::signature::Policy {
            keys,
            check_reference: self.cosign_check_reference,
            repository: repository.clone(),
        }))
    }

    fn ecr(&self, repository: &Repository) -> Result<Option<EcrConfig>, Error> {
        let text = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        };
        let region = text(&self.aws_region);
        let access_key_id = text(&self.aws_access_key_id);
        let secret_access_key = self.aws_secret_access_key.clone().filter(|s| !s.is_empty());
        let session_token = self.aws_session_token.clone().filter(|s| !s.is_empty());
        match (&access_key_id, &secret_access_key) {
            (Some(_), None) => {
                return Err(field_error(
                    "source.aws_secret_access_key",
                    "required with source.aws_access_key_id",
                ))
            }
            (None, Some(_)) => {
                return Err(field_error(
                    "source.aws_access_key_id",
                    "required with source.aws_secret_access_key",
                ))
            }
            _ => {}
        }
        if let Some(r) = &region {
            if !r
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(field_error(
                    "source.aws_region",
                    format!("{r:?} is not an AWS region"),
                ));
            }
        }
        let account = |value: &Option<TagText>, field: &str| -> Result<Option<String>, Error> {
            let Some(TagText(t)) = value else {
                return Ok(None);
            };
            let t = t.trim();
            if t.len() != 12 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(field_error(field, "must be 12 digits"));
            }
            Ok(Some(t.to_string()))
        };
        let account_id = account(&self.aws_account_id, "source.aws_account_id")?;
        let registry_id = account(&self.aws_ecr_registry_id, "source.aws_ecr_registry_id")?;
        let mut roles: Vec<String> = text(&self.aws_role_arn).into_iter().collect();
        for (i, role) in self.aws_role_arns.iter().enumerate() {
            if !role.trim().starts_with("arn:") {
                return Err(field_error(
                    format!("source.aws_role_arns[{i}]"),
                    "not a role ARN",
                ));
            }
            roles.push(role.trim().to_string());
        }
        if roles.first().is_some_and(|r| !r.starts_with("arn:")) {
            return Err(field_error("source.aws_role_arn", "not a role ARN"));
        }
        let ecr_host = crate::registry::ecr_host(repository.host().as_str());
        if region.is_none() && access_key_id.is_none() && roles.is_empty() && !ecr_host {
            return Ok(None);
        }
        Ok(Some(EcrConfig {
            region,
            access_key_id,
            secret_access_key,
            session_token,
            roles,
            account_id,
            registry_id,
            repository_host: repository.host().clone(),
        }))
    }
}

impl Source {
    /// `azure_acr` (with `azure_client_id`, `azure_tenant_id`, `azure_environment`) or
    /// `gcp_metadata`: a login for the repository's registry with the machine's identity.
    /// Either is refused beside `username` (whose credentials would win) or the other.
    fn cloud_login(&self, repository: &Repository) -> Result<Option<CloudLogin>, Error> {
        let text = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        };
        let client_id = text(&self.azure_client_id);
        let tenant_id = text(&self.azure_tenant_id);
        let environment = text(&self.azure_environment);
        if !self.azure_acr {
            for (value, field) in [
                (&client_id, "source.azure_client_id"),
                (&tenant_id, "source.azure_tenant_id"),
                (&environment, "source.azure_environment"),
            ] {
                if value.is_some() {
                    return Err(field_error(field, "needs source.azure_acr: true"));
                }
            }
        }
        let with_username = self.username.as_deref().is_some_and(|u| !u.is_empty());
        let field = match (self.azure_acr, self.gcp_metadata) {
            (false, false) => return Ok(None),
            (true, true) => {
                return Err(field_error(
                    "source.gcp_metadata",
                    "cannot be used with source.azure_acr",
                ))
            }
            (true, false) => "source.azure_acr",
            (false, true) => "source.gcp_metadata",
        };
        if with_username {
            return Err(field_error(
                field,
                "cannot be used with source.username (the login gives the credentials)",
            ));
        }
        let kind = if self.gcp_metadata {
            CloudKind::Gcp
        } else {
            for (value, field) in [
                (&client_id, "source.azure_client_id"),
                (&tenant_id, "source.azure_tenant_id"),
            ] {
                if value.as_deref().is_some_and(|v| {
                    !v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                }) {
                    return Err(field_error(
                        field,
                        "must be an id (letters, digits, '-', '.', '_')",
                    ));
                }
            }
            let cloud = match &environment {
                None => AzureCloud::for_host(repository.host()),
                Some(name) => AzureCloud::from_name(name).ok_or_else(|| {
                    field_error(
                        "source.azure_environment",
                        format!(
                            "{name:?} is not an Azure cloud (AzurePublic, AzureGovernment or AzureChina)"
                        ),
                    )
                })?,
            };
            CloudKind::Azure(AzureConfig {
                client_id,
                tenant_id,
                cloud,
            })
        };
        Ok(Some(CloudLogin {
            host: repository.host().clone(),
            kind,
        }))
    }
}

/// A registry given as `host[:port]`, or as a URL (`https://host:port/`) as people paste it.
/// `https://user:token@host/` → (`https://host/`, the user and token, registered as a
/// secret). The userinfo is percent-decoded, as URLs write it.
fn split_userinfo(url: &str) -> (String, Option<(String, Secret)>) {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_string(), None);
    };
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (user, password) = rest[..at].split_once(':').unwrap_or((&rest[..at], ""));
    let credentials = (decode(user), Secret::new(decode(password)));
    (format!("{scheme}{}", &rest[at + 1..]), Some(credentials))
}

fn parse_registry_host(s: &str) -> Result<Host, String> {
    let trimmed = s
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = trimmed.split('/').next().unwrap_or_default();
    Host::parse(host).map_err(|_| format!("{s:?} is not a registry host (expected host[:port])"))
}

fn check_domain(d: &str) -> Result<String, String> {
    parse_registry_host(d).map(|h| h.as_str().to_string())
}

/// At least one PEM certificate that parses, and nothing that fails to.
fn check_certificates(pem: &str) -> Result<(), String> {
    let mut count = 0;
    for item in rustls_pemfile::certs(&mut pem.as_bytes()) {
        item.map_err(|e| format!("not a valid PEM certificate ({e})"))?;
        count += 1;
    }
    if count == 0 {
        return Err("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)".into());
    }
    Ok(())
}

fn check_private_key(pem: &str) -> Result<(), String> {
    match rustls_pemfile::private_key(&mut pem.as_bytes()) {
        Ok(Some(_)) => Ok(()),
        // Never echo key material: rustls-pemfile's error text does not contain it, but keep
        // the message generic anyway.
        _ => Err("no PEM private key found (expected -----BEGIN ... PRIVATE KEY-----)".into()),
    }
}

/// A list of strings, or one string as a list of one; `null` is empty.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

impl<'de> Deserialize<'de> for TagText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TagText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TagText, E> {
                Ok(TagText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TagText, E> {
                Ok(TagText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TagText, E> {
                Ok(TagText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TagText, E> {
                // Shortest text that reads back as the same number: 3.7 → "3.7".
                Ok(TagText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-negative whole number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                u64::try_from(v)
                    .map(Count)
                    .map_err(|_| E::custom("must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Count, E> {
                v.trim()
                    .parse()
                    .map(Count)
                    .map_err(|_| E::custom(format!("{v:?} is not a whole number")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Accepts a string (then `string_field` is filled) or an object of `T`.
fn string_or_struct<'de, D, T>(d: D, from_string: fn(String) -> T) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(fn(String) -> T);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or an object")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            Ok((self.0)(v.to_string()))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(V(from_string))
}

#[derive(Deserialize)]
struct MirrorObject {
    host: Option<String>,
    username: Option<String>,
    password: Option<Secret>,
}

impl<'de> Deserialize<'de> for Mirror {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = string_or_struct(d, |host| MirrorObject {
            host: Some(host),
            username: None,
            password: None,
        })?;
        Ok(Mirror {
            host: m
                .host
                .ok_or_else(|| de::Error::custom("host is required"))?,
            username: m.username,
            password: m.password,
        })
    }
}

#[derive(Deserialize)]
struct CaCertObject {
    domain: Option<String>,
    cert: Option<String>,
}

impl<'de> Deserialize<'de> for CaCert {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let c = string_or_struct(d, |cert| CaCertObject {
            domain: None,
            cert: Some(cert),
        })?;
        Ok(CaCert {
            domain: c.domain,
            cert: c.cert,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(v: serde_json::Value) -> Source {
        serde_json::from_value(v).unwrap()
    }

    fn resolve_err(v: serde_json::Value) -> String {
        crate::report::chain(&source(v).resolve().unwrap_err())
    }

    #[test]
    fn every_listed_field_is_understood() {
        let all: serde_json::Map<_, _> = FIELDS
            .iter()
            .map(|f| (f.to_string(), serde_json::Value::Null))
            .collect();
        let mut unknown = Vec::new();
        let _: Source = serde_ignored::deserialize(serde_json::Value::Object(all), |p| {
            unknown.push(p.to_string())
        })
        .unwrap();
        assert!(unknown.is_empty(), "listed but not in Source: {unknown:?}");
    }

    #[test]
    fn numeric_tags_keep_their_text() {
        for (tag, text) in [
            (json!(3.7), "3.7"),
            (json!(18), "18"),
            (json!("3.10"), "3.10"),
        ] {
            let s = source(json!({"repository": "alpine", "tag": tag}));
            assert_eq!(s.resolve().unwrap().tag.as_str(), text);
        }
    }

    #[test]
    fn defaults() {
        let s = source(json!({"repository": "alpine"})).resolve().unwrap();
        assert_eq!(s.tag.as_str(), "latest");
        assert_eq!(
            s.repository.to_string(),
            "registry-1.docker.io/library/alpine"
        );
        assert_eq!(s.max_concurrent_downloads, 3);
        assert_eq!(s.startup_timeout, Duration::from_secs(120));
    }

    #[test]
    fn resolve_gives_the_selection_the_variant_and_the_git_repo() {
        let s = source(json!({"repository": "alpine", "tag": "3", "created_at_sort": true}))
            .resolve()
            .unwrap();
        assert!(s.selection.is_none() && s.variant.is_none() && s.git.is_none());
        assert_eq!(s.repository_text, "alpine");
        assert!(s.selection_notes[0].starts_with("source.created_at_sort"));
        let s = source(json!({
            "repository": "alpine",
            "variant": " slim ",
            "git_repo": "https://example.com/r.git",
        }))
        .resolve()
        .unwrap();
        assert!(s.selection.is_some());
        assert_eq!(s.variant.as_deref(), Some("slim"));
        assert_eq!(s.git.unwrap().repo, "https://example.com/r.git");
        let e = source(json!({"repository": "alpine", "tag_regex": "("}))
            .resolve()
            .unwrap_err();
        assert!(
            crate::report::chain(&e).starts_with("source.tag_regex:"),
            "{e}"
        );
    }

    #[test]
    fn field_errors_name_the_field() {
        let cases = [
            (json!({}), "source.repository: required"),
            (json!({"repository": "Bad"}), "source.repository:"),
            (
                json!({"repository": "a", "startup_timeout": 18446744073709551615u64}),
                "source.startup_timeout: at most 3600 seconds",
            ),
            (json!({"repository": "a", "tag": "a b"}), "source.tag:"),
            (
                json!({"repository": "a", "password": "p"}),
                "source.username:",
            ),
            (
                json!({"repository": "a", "ca_certs": [{"domain": "x"}]}),
                "source.ca_certs[0].cert: required",
            ),
            (
                json!({"repository": "a", "ca_certs": [{"domain": "x", "cert": "nope"}]}),
                "source.ca_certs[0].cert: no PEM",
            ),
            (
                json!({"repository": "a", "client_certs": [{"domain": "x", "cert": "nope"}]}),
                "source.client_certs[0].cert",
            ),
            (
                json!({"repository": "a", "insecure_registries": ["bad host"]}),
                "source.insecure_registries[0]",
            ),
            (
                json!({"repository": "a", "max_concurrent_downloads": 0}),
                "source.max_concurrent_downloads",
            ),
            (
                json!({"repository": "a", "additional_private_registries": [{"username": "u"}]}),
                "source.additional_private_registries[0].registry: required",
            ),
        ];
        for (input, want) in cases {
            let got = resolve_err(input.clone());
            assert!(got.starts_with(want), "{input}: {got}");
        }
    }

    #[test]
    fn insecure_true_makes_the_repository_registry_insecure() {
        let r = source(json!({"repository": "my.reg:5000/team/app", "insecure": true}))
            .resolve()
            .unwrap()
            .registries;
        assert!(r.is_insecure(&Host::parse("my.reg:5000").unwrap()));
        assert!(!r.is_insecure(&Host::parse("other.reg").unwrap()));
        let r = source(json!({"repository": "my.reg:5000/team/app", "insecure": false}))
            .resolve()
            .unwrap()
            .registries;
        assert!(!r.is_insecure(&Host::parse("my.reg:5000").unwrap()));
    }

    #[test]
    fn insecure_by_host_and_cidr() {
        let s = source(json!({"repository": "a", "insecure_registries": ["my.reg:5000", "10.0.0.0/8", "other.reg"]}))
            .resolve()
            .unwrap();
        let r = &s.registries;
        assert!(r.is_insecure(&Host::parse("my.reg:5000").unwrap()));
        assert!(!r.is_insecure(&Host::parse("my.reg:5001").unwrap()));
        assert!(r.is_insecure(&Host::parse("other.reg:443").unwrap()));
        assert!(r.is_insecure(&Host::parse("10.1.2.3:5000").unwrap()));
        assert!(!r.is_insecure(&Host::parse("11.1.2.3:5000").unwrap()));
    }

    #[test]
    fn cloud_logins_are_for_the_repository_registry_and_checked() {
        let r = source(json!({
            "repository": "myreg.azurecr.us/team/app",
            "azure_acr": true,
            "azure_client_id": " 11111111-2222-3333-4444-555555555555 ",
        }))
        .resolve()
        .unwrap()
        .registries;
        let login = r.cloud.unwrap();
        assert_eq!(login.host.as_str(), "myreg.azurecr.us");
        assert_eq!(
            login.kind,
            CloudKind::Azure(AzureConfig {
                client_id: Some("11111111-2222-3333-4444-555555555555".into()),
                tenant_id: None,
                cloud: AzureCloud::Government,
            })
        );
        let r = source(json!({
            "repository": "myreg.azurecr.io/app",
            "azure_acr": true,
            "azure_tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "azure_environment": "AzureChina",
        }))
        .resolve()
        .unwrap()
        .registries;
        let CloudKind::Azure(azure) = r.cloud.unwrap().kind else {
            panic!("not azure")
        };
        assert_eq!(azure.cloud, AzureCloud::China);
        assert_eq!(
            azure.tenant_id.as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        let r =
            source(json!({"repository": "europe-docker.pkg.dev/p/r/app", "gcp_metadata": true}))
                .resolve()
                .unwrap()
                .registries;
        assert_eq!(r.cloud.unwrap().kind, CloudKind::Gcp);
        let r = source(json!({"repository": "a", "azure_acr": false, "gcp_metadata": null}))
            .resolve()
            .unwrap()
            .registries;
        assert!(r.cloud.is_none());

        for (input, want) in [
            (
                json!({"repository": "a", "azure_client_id": "x"}),
                "source.azure_client_id: needs source.azure_acr: true",
            ),
            (
                json!({"repository": "a", "azure_acr": true, "azure_environment": "Mars"}),
                "source.azure_environment: \"Mars\" is not an Azure cloud",
            ),
            (
                json!({"repository": "a", "azure_acr": true, "azure_tenant_id": "a b"}),
                "source.azure_tenant_id: must be an id",
            ),
            (
                json!({"repository": "a", "azure_acr": true, "gcp_metadata": true}),
                "source.gcp_metadata: cannot be used with source.azure_acr",
            ),
            (
                json!({"repository": "a", "gcp_metadata": true, "username": "u", "password": "p"}),
                "source.gcp_metadata: cannot be used with source.username",
            ),
            (
                json!({"repository": "a", "aws_ecr_registry_id": "12"}),
                "source.aws_ecr_registry_id: must be 12 digits",
            ),
        ] {
            let got = resolve_err(input.clone());
            assert!(got.starts_with(want), "{input}: {got}");
        }
    }

    #[test]
    fn aws_ecr_registry_id_is_the_ecr_registry_id() {
        let ecr = source(json!({
            "repository": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app",
            "aws_ecr_registry_id": 210987654321u64,
        }))
        .resolve()
        .unwrap()
        .registries
        .ecr
        .unwrap();
        assert_eq!(ecr.registry_id.as_deref(), Some("210987654321"));
        assert_eq!(ecr.account_id, None);
    }

    #[test]
    fn mirror_userinfo_becomes_credentials_and_a_secret() {
        let s = source(json!({"repository": "a", "registry_mirror": "https://me:t%40ken-9876@mirror.local:5000/"}))
            .resolve()
            .unwrap();
        let mirror = s.mirror.unwrap();
        assert_eq!(mirror.url, "https://mirror.local:5000");
        let c = s.registries.credentials_for(&mirror.host).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.expose()),
            ("me", "t@ken-9876")
        );
        assert_eq!(crate::redact::redact("pw t@ken-9876"), "pw ***");
    }

    #[test]
    fn mirror_and_ca_cert_shapes() {
        let s = source(json!({"repository": "a", "registry_mirror": "https://mirror.local:5000"}));
        assert_eq!(s.registry_mirror.unwrap().host, "https://mirror.local:5000");
        let s = source(
            json!({"repository": "a", "registry_mirror": {"host": "m", "username": "u", "password": "p"}}),
        );
        assert_eq!(s.registry_mirror.unwrap().username.as_deref(), Some("u"));
        let s = source(
            json!({"repository": "a", "ca_certs": ["pem", {"domain": "d", "cert": "pem2"}]}),
        );
        assert_eq!(s.ca_certs[0].domain, None);
        assert_eq!(s.ca_certs[1].domain.as_deref(), Some("d"));
    }

    #[test]
    fn counts_accept_numeric_strings() {
        let s = source(
            json!({"repository": "a", "max_concurrent_downloads": "5", "startup_timeout": 30}),
        );
        let s = s.resolve().unwrap();
        assert_eq!(s.max_concurrent_downloads, 5);
        assert_eq!(s.startup_timeout, Duration::from_secs(30));
    }
}
