//! Manifests, indexes and configs as the image spec defines them
//! (<https://github.com/opencontainers/image-spec>), Docker's equivalents read the same way, and
//! the choice of one platform from an index.

use serde::Deserialize;

use crate::blob::Body;
use crate::reference::Digest;

/// Media types of manifests and indexes, all four accepted on every manifest request.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The `Accept` header of manifest requests: every type above.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub(crate) const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// `null` as the type's default (`"tags": null`, `"RepoTags": null`, an optional list or
/// flag in a request): what the JSON that registries, archives and pipelines write needs.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One image as every source gives it (an archive, an OCI layout, a rootfs, a registry) and
/// every sink takes it (a push): its blobs, the manifests of an index's children, and the
/// top manifest, which the tags name.
#[derive(Debug)]
pub(crate) struct Image {
    pub top: RawManifest,
    pub children: Vec<RawManifest>,
    pub blobs: Vec<Blob>,
    /// The config digest (image id) of a single-platform image.
    pub image_id: Option<Digest>,
    /// Manifests that refer to the image (their `subject` is its top), as an OCI layout may
    /// hold them (signatures, attestations, SBOMs); pushed only with `copy_signatures`.
    pub referrers: Vec<Attached>,
}

/// A manifest attached to an image, and its blobs.
#[derive(Debug)]
pub(crate) struct Attached {
    pub manifest: RawManifest,
    pub blobs: Vec<Blob>,
}

/// One blob of an image, and where its bytes are.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub digest: Digest,
    pub size: u64,
    pub body: Body,
}

/// A layer an image in a registry already has, by the digest of its uncompressed tar (its
/// diff id): a pushed image with the same layer refers to this blob instead of compressing
/// the layer again (the base image's layers, after a build).
#[derive(Debug, Clone)]
pub(crate) struct KnownLayer {
    pub diff_id: Digest,
    pub layer: Descriptor,
    /// Where the blob is: mounted from there on the same registry, else copied.
    pub repository: crate::reference::Repository,
}

/// A manifest or index as stored: its bytes, media type and digest.
#[derive(Debug, Clone)]
pub(crate) struct RawManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl RawManifest {
    pub(crate) fn is_index(&self) -> bool {
        is_index(&self.media_type, &self.bytes)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// A platform: of an index's child, of an image config, or the one a pipeline wants (empty
/// fields there mean linux/amd64, see [`Platform::wanted`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageManifest {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// The manifest's annotations with string values (others are not valid and left out).
    #[serde(default, deserialize_with = "string_map")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A JSON object's string members; anything else reads as empty.
fn string_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect(),
        _ => Default::default(),
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageIndex {
    pub manifests: Vec<Descriptor>,
}

/// The parts of an image config that dockhand reads; the raw JSON is kept for the rest.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// Is this manifest (by media type, or by shape when the type is missing) an index?
pub(crate) fn is_index(media_type: &str, bytes: &[u8]) -> bool {
    if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        return true;
    }
    if media_type.is_empty() || media_type == "application/json" {
        #[derive(Deserialize)]
        struct Probe {
            manifests: Option<serde_json::Value>,
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
        }
        if let Ok(p) = serde_json::from_slice::<Probe>(bytes) {
            return p.manifests.is_some()
                || p.media_type.as_deref() == Some(OCI_INDEX)
                || p.media_type.as_deref() == Some(DOCKER_LIST);
        }
    }
    false
}

/// This machine's architecture as images name it.
pub(crate) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Platform {
    /// The platform wanted: what is given, else linux and amd64.
    pub fn wanted(p: Option<&Platform>) -> Platform {
        let p = p.cloned().unwrap_or_default();
        let or = |v: String, default: &str| if v.is_empty() { default.to_string() } else { v };
        Platform {
            os: or(p.os, "linux"),
            architecture: or(p.architecture, "amd64"),
            variant: p.variant.filter(|v| !v.is_empty()),
        }
    }

    /// The platform an image config states.
    pub fn of_config(config: &ImageConfig) -> Platform {
        Platform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
        }
    }

    /// `arm64` matches `arm64/v8` (v8 is arm64's only variant); `arm` defaults to v7 only when
    /// asked without a variant and several arm children exist (the first match wins).
    pub fn matches(&self, p: &Platform) -> bool {
        if p.os != self.os || normalise_arch(&p.architecture) != normalise_arch(&self.architecture)
        {
            return false;
        }
        let theirs = normalise_variant(&p.architecture, p.variant.as_deref());
        match &self.variant {
            None => true,
            Some(v) => Some(normalise_variant(&self.architecture, Some(v))) == Some(theirs),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn normalise_arch(a: &str) -> &str {
    match a {
        "aarch64" => "arm64",
        "x86_64" | "x86-64" => "amd64",
        other => other,
    }
}

fn normalise_variant(arch: &str, v: Option<&str>) -> String {
    match (normalise_arch(arch), v) {
        ("arm64", None | Some("")) => "v8".into(),
        (_, None) => String::new(),
        (_, Some(v)) => v.to_string(),
    }
}

/// The child of `index` for `wanted`; the error lists what the index has.
pub(crate) fn choose_platform<'a>(
    index: &'a ImageIndex,
    wanted: &Platform,
) -> Result<&'a Descriptor, String> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p)))
        .collect();
    // Without a wanted variant, prefer a child without one, then the highest (arm v7 over v6).
    let best = candidates.iter().copied().max_by_key(|d| {
        let v = d.platform.as_ref().and_then(|p| p.variant.clone());
        (v.is_none(), v)
    });
    best.ok_or_else(|| {
        let available: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .filter(|p| p.os != "unknown")
            .map(|p| p.to_string())
            .collect();
        format!(
            "no image for platform {wanted} (available: {})",
            if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[(&str, &str, Option<&str>)]) -> ImageIndex {
        ImageIndex {
            manifests: platforms
                .iter()
                .enumerate()
                .map(|(i, (os, arch, variant))| Descriptor {
                    media_type: String::new(),
                    digest: Digest::of(&[i as u8]),
                    size: 1,
                    platform: Some(Platform {
                        os: os.to_string(),
                        architecture: arch.to_string(),
                        variant: variant.map(str::to_string),
                    }),
                })
                .collect(),
        }
    }

    fn wanted(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(str::to_string),
        }
    }

    #[test]
    fn platform_choice() {
        let idx = index(&[
            ("linux", "amd64", None),
            ("linux", "arm64", Some("v8")),
            ("linux", "arm", Some("v6")),
            ("linux", "arm", Some("v7")),
            ("unknown", "unknown", None),
        ]);
        let pick = |arch, v| choose_platform(&idx, &wanted(arch, v)).map(|d| d.digest.clone());
        assert_eq!(pick("amd64", None).unwrap(), idx.manifests[0].digest);
        assert_eq!(pick("arm64", None).unwrap(), idx.manifests[1].digest);
        assert_eq!(pick("arm64", Some("v8")).unwrap(), idx.manifests[1].digest);
        assert_eq!(pick("arm", Some("v6")).unwrap(), idx.manifests[2].digest);
        assert_eq!(pick("arm", None).unwrap(), idx.manifests[3].digest);
        let err = pick("s390x", None).unwrap_err();
        assert_eq!(
            err,
            "no image for platform linux/s390x (available: linux/amd64, linux/arm64/v8, linux/arm/v6, linux/arm/v7)"
        );
    }

    #[test]
    fn arm64_without_variant_in_the_index_matches_v8() {
        let idx = index(&[("linux", "arm64", None)]);
        assert!(choose_platform(&idx, &wanted("arm64", Some("v8"))).is_ok());
    }
}
