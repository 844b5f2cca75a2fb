//! `out`: push an image, with docker-image-resource's params and precedence (load, build,
//! load_file, import_file, pull_repository) and registry-image-resource's `image`/`version`.
//!
//! Everything that can be pushed without a Docker daemon is: blobs the registry has are
//! skipped (HEAD), blobs from the source repository on the same registry are mounted, the
//! rest upload in parallel (`max_concurrent_uploads`), manifests go last.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::field;
use crate::blocking::blocking;
use crate::build::{Build, BuildParams};
use crate::compression::{Codec, Encoding};
use crate::error::Error;
use crate::image::{Blob, Image, KnownLayer, RawManifest};
use crate::layout::{quote, read as archive, read_capped_text};
use crate::protocol::{parse_params, Request, Response, Version};
use crate::pull;
use crate::push::push;
use crate::reference::{NameError, Repository, Tag};
use crate::registry::Registry;
use crate::signature;

/// The most read of a `tag_file`, `additional_tags` file or a saved image's `repository`.
const MAX_TAG_FILE_BYTES: u64 = 64 << 10;

/// `params` of `out`: every docker-image-resource put param, and registry-image-resource's.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Params {
    pub load: Option<String>,
    pub build: Option<String>,
    pub load_file: Option<String>,
    pub load_repository: Option<String>,
    pub load_tag: Option<String>,
    pub import_file: Option<String>,
    pub pull_repository: Option<String>,
    pub pull_tag: Option<String>,
    pub image: Option<String>,

    pub tag_file: Option<String>,
    /// Deprecated spelling of `tag_file`.
    pub tag: Option<String>,
    pub tag_prefix: Option<String>,
    #[serde(default)]
    pub tag_as_latest: bool,
    pub additional_tags: Option<String>,
    pub version: Option<String>,
    #[serde(default)]
    pub bump_aliases: bool,

    pub dockerfile: Option<String>,
    pub build_args: Option<serde_json::Value>,
    pub build_args_file: Option<String>,
    pub target_name: Option<String>,
    pub labels: Option<serde_json::Value>,
    pub labels_file: Option<String>,
    pub secrets: Option<serde_json::Value>,
    pub docker_buildkit: Option<serde_json::Value>,
    pub cache: Option<bool>,
    pub cache_tag: Option<String>,
    pub cache_from: Option<Vec<String>>,
    pub load_base: Option<String>,
    pub load_bases: Option<Vec<String>>,
    pub skip_download: Option<bool>,

    /// How layers that `out` compresses itself are written: `gzip` (default) or `zstd`.
    pub compression: Option<String>,
    pub compression_level: Option<u32>,
    /// Sign the pushed digest: `{key, password}` (cosign's encrypted key, or PKCS#8 PEM).
    pub cosign_sign: Option<CosignSign>,
    /// Copy the source's signatures, attestations and SBOMs (cosign tags, referrers) too.
    #[serde(default)]
    pub copy_signatures: bool,
}

/// `params.cosign_sign`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct CosignSign {
    pub(crate) key: Option<crate::secret::Secret>,
    pub(crate) password: Option<crate::secret::Secret>,
}

impl crate::protocol::Params for Params {
    const FIELDS: &'static [&'static str] = &[
        "load",
        "build",
        "load_file",
        "load_repository",
        "load_tag",
        "import_file",
        "pull_repository",
        "pull_tag",
        "image",
        "tag_file",
        "tag",
        "tag_prefix",
        "tag_as_latest",
        "additional_tags",
        "version",
        "bump_aliases",
        "dockerfile",
        "build_args",
        "build_args_file",
        "target_name",
        "labels",
        "labels_file",
        "secrets",
        "docker_buildkit",
        "cache",
        "cache_tag",
        "cache_from",
        "load_base",
        "load_bases",
        "skip_download",
        "compression",
        "compression_level",
        "cosign_sign",
        "copy_signatures",
    ];
}

impl Params {
    /// `compression` and `compression_level`, checked: gzip 1-9, zstd 1-19.
    fn encoding(&self) -> Result<Encoding, Error> {
        let codec = match self.compression.as_deref().map(str::trim) {
            None | Some("") | Some("gzip") => Codec::Gzip,
            Some("zstd") => Codec::Zstd,
            Some(other) => {
                return Err(Error::field(
                    "params.compression",
                    format!("{other:?} is not a compression: use gzip or zstd"),
                ))
            }
        };
        let (levels, default) = codec.levels();
        let level = self.compression_level.unwrap_or(default);
        if !levels.contains(&level) {
            return Err(Error::field(
                "params.compression_level",
                format!(
                    "{level} is not a {} level: use {} to {}",
                    codec.name(),
                    levels.start(),
                    levels.end()
                ),
            ));
        }
        Ok(Encoding { codec, level })
    }
}

pub async fn put(request: &Request, src: &Path) -> Result<Response, Error> {
    let settings = request.settings()?;
    let params: Params = parse_params(request.params.as_ref())?;
    let variant = settings.variant.as_deref();
    let repository = &settings.repository;
    let mut tags = tags(&params, &settings.tag, src, variant)?;
    let encoding = params.encoding()?;
    if params.copy_signatures
        && params.pull_repository.is_none()
        && params.load.is_none()
        && params.image.is_none()
    {
        return Err(Error::field(
            "params.copy_signatures",
            "needs pull_repository, load or image: signatures are copied from the repository the image came from, or from its OCI layout",
        ));
    }
    // The key is opened before anything is pushed: a wrong password pushes nothing.
    let signer = match &params.cosign_sign {
        Some(sign) => {
            Some(signature::sign::open_key(sign.key.as_ref(), sign.password.as_ref()).await?)
        }
        None => None,
    };

    let staging = staging_dir()?;
    let result = async {
        let (plan, mount_from) = if params.load.is_none() && params.build.is_some() {
            // The one step that needs a daemon; it is stopped (if started here) before pushing.
            let build_params = params.build_params();
            let build = Build::prepare(&build_params, src)?;
            let daemon = crate::daemon::Daemon::connect_or_start(&settings).await?;
            let built = staging.path().join("built.tar");
            let started = std::time::Instant::now();
            let result = build
                .run(&daemon, &build_params, &settings, staging.path(), &built)
                .await;
            daemon.stop().await;
            result?;
            tracing::info!(
                "built and exported in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            // The base image's layers are in a registry already: the push refers to them
            // (mounted or copied) instead of compressing them again.
            let known = match build.base_image(&build_params) {
                Some(base) => base_layers(&settings, &base).await,
                None => Vec::new(),
            };
            let dir = staging.path().to_path_buf();
            (
                blocking(move || archive::read_image(&built, &dir, None, encoding, &known)).await?,
                None,
            )
        } else if params.load.is_none()
            && params.load_file.is_none()
            && params.import_file.is_none()
            && params.pull_repository.is_some()
        {
            pull_plan(&params, &settings, staging.path()).await?
        } else {
            // Reading an archive hashes every layer: long work, off the async threads.
            let (params, src, dir) = (
                params.clone(),
                src.to_path_buf(),
                staging.path().to_path_buf(),
            );
            blocking(move || plan(&params, &src, &dir)).await?
        };
        let registry = Registry::new(repository.host().clone(), &settings.registries).await;
        if params.bump_aliases {
            let version = params.version.as_deref().map(str::trim).unwrap_or_default();
            let listed = registry.list_tags(repository).await?;
            for alias in aliases(version, variant, &listed.tags) {
                let tag: Tag = alias
                    .parse()
                    .map_err(|e| Error::field("params.bump_aliases", e))?;
                if !tags.contains(&tag) {
                    tags.push(tag);
                }
            }
        }
        let tags = &tags;
        let origin = mount_from.clone();
        let mount_from = mount_from.filter(|r| r.host() == repository.host() && r != repository);
        let digest = push(
            &registry,
            &settings.registries,
            repository,
            &plan,
            tags,
            settings.max_concurrent_uploads,
            mount_from.as_ref(),
        )
        .await?;
        if params.copy_signatures {
            let to = signature::copy::End {
                registry: &registry,
                repository,
            };
            signature::copy::carry(
                &to,
                &plan.referrers,
                origin.as_ref(),
                &settings.registries,
                &digest,
                staging.path(),
            )
            .await?;
        }
        let signed = match &signer {
            Some(key) => {
                let signed = signature::sign::sign(&registry, repository, &digest, key).await?;
                tracing::info!(
                    "signed {repository}@{digest} with {} ({})",
                    key.public_key().fingerprint(),
                    signed.tag
                );
                Some(signed)
            }
            None => None,
        };
        Ok::<_, Error>((plan.image_id, digest, signed))
    }
    .await;
    drop(staging);
    let (image_id, digest, signed) = result?;

    // registry-image-resource's out metadata starts with the repository.
    let mut metadata = vec![field("repository", &settings.repository_text)];
    if let Some(id) = &image_id {
        metadata.push(field("image", id.short()));
        metadata.push(field("image_id", id.as_str()));
    }
    metadata.push(field(
        "tags",
        &tags.iter().map(Tag::as_str).collect::<Vec<_>>().join(" "),
    ));
    if let (Some(key), Some(signed)) = (&signer, &signed) {
        metadata.push(field("signed_by", key.public_key().fingerprint()));
        metadata.push(field("signature", &signed.tag));
    }
    Ok(Response {
        version: Version {
            tag: Some(tags[0].to_string()),
            digest,
        },
        metadata,
    })
}

/// The layers of `base`, the image a build started from, for the push to refer to. Docker
/// Hub is not asked when pushing elsewhere: a manifest read counts against its pull quota,
/// and its blobs would come over the internet. Anything that goes wrong only means the
/// layers are compressed again.
async fn base_layers(settings: &crate::source::Settings, base: &str) -> Vec<KnownLayer> {
    let on_hub = |r: &Repository| r.host().is_docker_hub();
    let known = match pull::split_reference(base) {
        Ok((repository, _)) if on_hub(&repository) && !on_hub(&settings.repository) => {
            tracing::debug!(
                "the base image {base} is on Docker Hub: its layers are compressed again"
            );
            return Vec::new();
        }
        Ok((repository, at)) => pull::known_layers(&settings.registries, &repository, at).await,
        Err(e) => Err(e),
    };
    match known {
        Ok(known) => {
            tracing::debug!("the base image {base} has {} layers", known.len());
            known
        }
        Err(e) => {
            tracing::warn!(
                "cannot read the base image {base}, so its layers are compressed again: {}",
                crate::report::chain(&e)
            );
            Vec::new()
        }
    }
}

/// A scratch directory (compressed layers, a build's export, the CLI's credentials), under
/// the temp dir and never among the put's inputs; removed when dropped.
fn staging_dir() -> Result<TempDir, Error> {
    let dir = std::env::temp_dir().join(format!("dockhand-out-{}", std::process::id()));
    // A leftover of an earlier process that had this pid and was killed is stale.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Output {
        path: dir.display().to_string(),
        source: e.into(),
    })?;
    Ok(TempDir(dir))
}

struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The image to push, from the first source param given (docker-image-resource's order,
/// then `image`), and the repository it came from when known (for mounts).
fn plan(params: &Params, src: &Path, staging: &Path) -> Result<(Image, Option<Repository>), Error> {
    let encoding = params.encoding()?;
    if let Some(load) = &params.load {
        let dir = src.join(load);
        let image = dir.join("image");
        if !image.is_file() {
            return Err(Error::Input {
                path: image.display().to_string(),
                source: "params.load names a directory without an image file (get it with params.save: true)".into(),
            });
        }
        let from = read_capped_text(&dir.join("repository"), "params.load", MAX_TAG_FILE_BYTES)
            .ok()
            .and_then(|r| r.trim().parse().ok());
        return Ok((
            archive::read_image(&image, staging, None, encoding, &[])?,
            from,
        ));
    }
    if let Some(file) = &params.load_file {
        let path = src.join(file);
        if !path.exists() {
            return Err(Error::Input {
                path: path.display().to_string(),
                source: "params.load_file: no such file".into(),
            });
        }
        // docker-image-resource loads the file and pushes `load_repository:load_tag` from it.
        let name = params.load_repository.as_deref().map(|repo| {
            format!(
                "{}:{}",
                repo.trim(),
                params.load_tag.as_deref().unwrap_or("latest").trim()
            )
        });
        return Ok((
            archive::read_image(&path, staging, name.as_deref(), encoding, &[])?,
            None,
        ));
    }
    if let Some(file) = &params.import_file {
        let path = src.join(file);
        if !path.is_file() {
            return Err(Error::Input {
                path: path.display().to_string(),
                source: "params.import_file: no such file".into(),
            });
        }
        return Ok((archive::import_rootfs(&path, staging, encoding)?, None));
    }
    if let Some(pattern) = &params.image {
        let path = glob_one(src, pattern)?;
        return Ok((
            archive::read_image(&path, staging, None, encoding, &[])?,
            None,
        ));
    }
    Err(Error::field(
        "params",
        "must specify build, load, load_file, import_file, pull_repository or image params",
    ))
}

/// `image` may be a glob; it must match exactly one path.
fn glob_one(src: &Path, pattern: &str) -> Result<PathBuf, Error> {
    let full = src.join(pattern);
    let text = full.to_string_lossy();
    let matches: Vec<PathBuf> = match glob::glob(&text) {
        Ok(paths) => paths.filter_map(Result::ok).collect(),
        Err(e) => {
            return Err(Error::field(
                "params.image",
                format!("{pattern:?} is not a valid glob: {e}"),
            ))
        }
    };
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::Input {
            path: text.into_owned(),
            source: "params.image matches nothing".into(),
        }),
        many => Err(Error::field(
            "params.image",
            format!(
                "{pattern:?} matches {} paths, it must match one: {}",
                many.len(),
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The tags to push, the version's first: tag_file (or the deprecated `tag`) with
/// tag_prefix, else `version`, else source.tag; then additional_tags (with tag_prefix when
/// there is no tag_file) and `latest`.
fn tags(
    params: &Params,
    source_tag: &Tag,
    src: &Path,
    variant: Option<&str>,
) -> Result<Vec<Tag>, Error> {
    let mut out: Vec<Tag> = Vec::new();
    let mut add = |text: &str, from: &str| -> Result<(), Error> {
        let tag: Tag = text.parse().map_err(|e| match e {
            // The error quotes the text whole; from a file it may be any length.
            NameError::Tag { .. } if text.chars().count() > 100 => Error::field(
                from,
                format!(
                    "{} is not a valid tag (at most 128 characters)",
                    quote(text)
                ),
            ),
            e => Error::field(from, e),
        })?;
        if !out.contains(&tag) {
            out.push(tag);
        }
        Ok(())
    };
    let tag_file = params
        .tag_file
        .as_ref()
        .map(|f| (f, "params.tag_file"))
        .or_else(|| params.tag.as_ref().map(|f| (f, "params.tag")));
    if params.tag_file.is_none() && params.tag.is_some() {
        tracing::warn!("params.tag is deprecated; use params.tag_file");
    }
    if let Some(version) = &params.version {
        // registry-image-resource refuses a version that is not one, before any push.
        if crate::select::lenient_semver(version.trim()).is_none() {
            return Err(Error::field(
                "params.version",
                format!("invalid semantic version: {}", quote(version.trim())),
            ));
        }
    }
    if let Some((file, field)) = tag_file {
        let text = read_text(src, file, field)?;
        let prefix = params.tag_prefix.as_deref().unwrap_or("");
        add(&format!("{prefix}{}", text.trim()), field)?;
    } else if let Some(version) = &params.version {
        match variant {
            Some(v) => add(&format!("{}-{v}", version.trim()), "params.version")?,
            None => add(version.trim(), "params.version")?,
        }
    } else {
        add(source_tag.as_str(), "source.tag")?;
    }
    // tag_prefix prefixes the tag_file's tag (docker-image-resource); without a tag_file, the
    // additional tags (registry-image-resource).
    let additional_prefix = match (tag_file, &params.tag_prefix) {
        (None, Some(prefix)) if params.additional_tags.is_some() => prefix.as_str(),
        (None, Some(_)) => {
            tracing::warn!(
                "params.tag_prefix applies to params.tag_file or params.additional_tags; ignored"
            );
            ""
        }
        _ => "",
    };
    if let Some(file) = &params.additional_tags {
        for t in read_text(src, file, "params.additional_tags")?.split_whitespace() {
            add(&format!("{additional_prefix}{t}"), "params.additional_tags")?;
        }
    }
    if params.tag_as_latest {
        add("latest", "params.tag_as_latest")?;
    }
    if params.bump_aliases && params.version.is_none() {
        return Err(Error::field("params.bump_aliases", "needs params.version"));
    }
    Ok(out)
}

/// registry-image-resource's `bump_aliases`: pushing 1.2.3 also moves `1.2`, `1` and
/// `latest` (with a variant: `1.2-alpine`, `1-alpine`, `alpine`), each only when no newer
/// final release in its range exists among `existing` tags. Pre-releases move nothing.
pub fn aliases(version: &str, variant: Option<&str>, existing: &[String]) -> Vec<String> {
    let Some((v, _)) = crate::select::lenient_semver(version) else {
        tracing::warn!("params.bump_aliases: {version:?} is not a version; no aliases moved");
        return Vec::new();
    };
    if !v.pre.is_empty() {
        tracing::info!("params.bump_aliases: {version} is a pre-release; no aliases moved");
        return Vec::new();
    }
    let released: Vec<semver::Version> = existing
        .iter()
        .filter_map(|t| match variant {
            Some(var) => t.strip_suffix(var)?.strip_suffix('-'),
            None => Some(t.as_str()),
        })
        .filter_map(crate::select::lenient_semver)
        .map(|(v, _)| v)
        .filter(|v| v.pre.is_empty())
        .collect();
    let newer_in = |same: &dyn Fn(&semver::Version) -> bool| {
        released.iter().any(|other| same(other) && *other > v)
    };
    let named = |alias: String| match variant {
        Some(var) => format!("{alias}-{var}"),
        None => alias,
    };
    let mut out = Vec::new();
    if !newer_in(&|o| o.major == v.major && o.minor == v.minor) {
        out.push(named(format!("{}.{}", v.major, v.minor)));
    }
    if !newer_in(&|o| o.major == v.major) {
        out.push(named(v.major.to_string()));
    }
    if !newer_in(&|_| true) {
        out.push(variant.map_or_else(|| "latest".to_string(), str::to_string));
    }
    out
}

/// `pull_repository` (deprecated): the image `pull_repository:pull_tag` copied from its
/// registry, every blob downloaded and verified, the whole index for multi-arch images.
async fn pull_plan(
    params: &Params,
    settings: &crate::source::Settings,
    staging: &Path,
) -> Result<(Image, Option<Repository>), Error> {
    use crate::image::{Descriptor, ImageIndex, ImageManifest};
    tracing::warn!("params.pull_repository is deprecated; prefer a get step and params.load");
    let text = params.pull_repository.as_deref().unwrap_or_default();
    let from: Repository = text
        .parse()
        .map_err(|e| Error::field("params.pull_repository", e))?;
    let tag = params.pull_tag.as_deref().unwrap_or("latest");
    let registry = Registry::new(from.host().clone(), &settings.registries).await;
    let top = registry
        .manifest(&from, tag)
        .await?
        .ok_or_else(|| Error::TagNotFound {
            repository: from.to_string(),
            tag: tag.to_string(),
        })?;
    let bad = |e: serde_json::Error| Error::Image {
        reference: format!("{from}:{tag}"),
        source: format!("the manifest is not valid: {e}").into(),
    };
    let mut children = Vec::new();
    let mut manifests = Vec::new();
    if top.is_index() {
        let index: ImageIndex = serde_json::from_slice(&top.bytes).map_err(bad)?;
        for (m, _) in pull::children(&registry, &from, &index.manifests).await? {
            manifests.push(pull::parse_manifest(&from, &m)?);
            children.push(RawManifest {
                digest: m.digest,
                media_type: m.media_type,
                bytes: m.bytes,
            });
        }
    } else {
        manifests.push(serde_json::from_slice::<ImageManifest>(&top.bytes).map_err(bad)?);
    }
    let wanted: Vec<Descriptor> = manifests
        .iter()
        .flat_map(|m| std::iter::once(&m.config).chain(&m.layers))
        .cloned()
        .collect();
    let wanted: Vec<Descriptor> = pull::distinct(&wanted).into_iter().cloned().collect();
    let paths = pull::download(
        &registry,
        &from,
        &wanted,
        staging,
        settings.max_concurrent_downloads,
        None,
        &mut |_| {},
    )
    .await?;
    let blobs = wanted
        .iter()
        .zip(paths)
        .map(|(d, path)| Blob {
            digest: d.digest.clone(),
            size: d.size,
            body: crate::blob::Body::File {
                path,
                offset: 0,
                len: d.size,
            },
        })
        .collect();
    let image_id =
        (manifests.len() == 1 && children.is_empty()).then(|| manifests[0].config.digest.clone());
    Ok((
        Image {
            blobs,
            children,
            referrers: Vec::new(),
            top: RawManifest {
                digest: top.digest,
                media_type: top.media_type,
                bytes: top.bytes,
            },
            image_id,
        },
        Some(from),
    ))
}

impl Params {
    /// The params of a build, for `build/`.
    fn build_params(&self) -> BuildParams {
        BuildParams {
            build: self.build.clone(),
            dockerfile: self.dockerfile.clone(),
            build_args: self.build_args.clone(),
            build_args_file: self.build_args_file.clone(),
            target_name: self.target_name.clone(),
            labels: self.labels.clone(),
            labels_file: self.labels_file.clone(),
            secrets: self.secrets.clone(),
            docker_buildkit: self.docker_buildkit.clone(),
            cache: self.cache,
            cache_tag: self.cache_tag.clone(),
            cache_from: self.cache_from.clone(),
            load_base: self.load_base.clone(),
            load_bases: self.load_bases.clone(),
        }
    }
}

fn read_text(src: &Path, file: &str, field: &str) -> Result<String, Error> {
    read_capped_text(&src.join(file), field, MAX_TAG_FILE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_file_is_capped_and_a_bad_tag_quoted_short() {
        let dir = tempfile::tempdir().unwrap();
        let source: Tag = "latest".parse().unwrap();
        let params = Params {
            tag_file: Some("tag".into()),
            ..Params::default()
        };
        let chain = |e: Error| crate::report::chain(&e);
        std::fs::write(dir.path().join("tag"), "v".repeat(20 << 20)).unwrap();
        let err = chain(tags(&params, &source, dir.path(), None).unwrap_err());
        assert!(
            err.ends_with("tag: params.tag_file: larger than the 64 KiB limit"),
            "{err}"
        );
        std::fs::write(dir.path().join("tag"), "\u{1b}[31m".repeat(1000)).unwrap();
        let err = chain(tags(&params, &source, dir.path(), None).unwrap_err());
        assert!(err.starts_with(r#"params.tag_file: "\u{1b}[31m"#), "{err}");
        assert!(
            err.ends_with("(5000 bytes) is not a valid tag (at most 128 characters)"),
            "{err}"
        );
        assert!(err.len() < 250 && !err.contains('\u{1b}'), "{err}");
        let params = Params {
            additional_tags: Some("tag".into()),
            ..Params::default()
        };
        let err = chain(tags(&params, &source, dir.path(), None).unwrap_err());
        assert!(err.starts_with("params.additional_tags: "), "{err}");
        assert!(err.len() < 250, "{err}");
    }

    /// registry-image-resource's "pushing semver tags" table (out_test.go,
    /// `DescribeTable("pushing semver tags", ...)`), entry by entry, named as there: the
    /// existing tags, `source.variant`, `params.version` with `bump_aliases`, and every tag
    /// pushed. Its two "with no existing image" entries (the tag list answers 404) list no
    /// tags, as `list_tags` reads a 404.
    #[test]
    fn registry_image_resource_push_table() {
        let dir = tempfile::tempdir().unwrap();
        let source: Tag = "latest".parse().unwrap();
        let pushed = |existing_tags: &[&str], variant: Option<&str>, version: &str, bump: bool| {
            let params = Params {
                version: Some(version.into()),
                bump_aliases: bump,
                ..Params::default()
            };
            let mut out: Vec<String> = tags(&params, &source, dir.path(), variant)
                .map_err(|e| crate::report::chain(&e))?
                .iter()
                .map(|t| t.to_string())
                .collect();
            if bump {
                out.extend(aliases(version, variant, &existing(existing_tags)));
            }
            Ok::<_, String>(out)
        };
        // (entry, existing tags, variant, version, bump_aliases, tags pushed)
        type Case<'a> = (
            &'a str,
            &'a [&'a str],
            Option<&'a str>,
            &'a str,
            bool,
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            ("semver tag with no variant", &[], None, "1.2.3", false, &["1.2.3"]),
            ("semver tag with variant", &[], Some("ubuntu"), "1.2.3", false, &["1.2.3-ubuntu"]),
            ("bumping aliases with no existing image", &[], None, "1.2.3", true, &["1.2.3", "1.2", "1", "latest"]),
            ("bumping aliases with no existing tags", &[], None, "1.2.3", true, &["1.2.3", "1.2", "1", "latest"]),
            ("not bumping aliases if a prerelease is given", &[], None, "1.2.3-alpha.1", true, &["1.2.3-alpha.1"]),
            ("bumping aliases if only older versions exist", &["1.2.2"], None, "1.2.3", true, &["1.2.3", "1.2", "1", "latest"]),
            ("not bumping anything if a newer patch already exists", &["1.2.4"], None, "1.2.3", true, &["1.2.3"]),
            ("not bumping major if a newer minor already exists", &["1.3.0"], None, "1.2.3", true, &["1.2.3", "1.2"]),
            ("bumping minor and major, but not latest, if a newer major version exists", &["2.0.0"], None, "1.2.3", true, &["1.2.3", "1.2", "1"]),
            ("bumping everything even if a newer non-variant minor exists", &["1.3.0"], Some("lts"), "1.2.3", true, &["1.2.3-lts", "1.2-lts", "1-lts", "lts"]),
            ("bumping everything if the only available version is a prerelease", &["2.0.0-rc.1"], None, "1.2.3", true, &["1.2.3", "1.2", "1", "latest"]),
            ("bumping everything if the only available version is a different variant", &["2.0.0-goodbye"], Some("hello"), "1.2.3", true, &["1.2.3-hello", "1.2-hello", "1-hello", "hello"]),
            ("bumping variant aliases with no existing image", &[], Some("hello"), "1.2.3", true, &["1.2.3-hello", "1.2-hello", "1-hello", "hello"]),
            ("bumping variant aliases with no existing tags", &[], Some("hello"), "1.2.3", true, &["1.2.3-hello", "1.2-hello", "1-hello", "hello"]),
            ("bumping minor and major, but not latest, if a newer major version exists with the same variant", &["2.0.0-hello"], Some("hello"), "1.2.3", true, &["1.2.3-hello", "1.2-hello", "1-hello"]),
            ("bumping aliases if only older versions exist of the same variant", &["1.2.2-hello"], Some("hello"), "1.2.3", true, &["1.2.3-hello", "1.2-hello", "1-hello", "hello"]),
            ("not bumping anything if a newer patch already exists of the same variant", &["1.2.4-hello"], Some("hello"), "1.2.3", true, &["1.2.3-hello"]),
            ("not bumping major if a newer minor already exists of the same variant", &["1.3.0-hello"], Some("hello"), "1.2.3", true, &["1.2.3-hello", "1.2-hello"]),
        ];
        for (name, existing_tags, variant, version, bump, want) in cases {
            assert_eq!(
                pushed(existing_tags, *variant, version, *bump),
                Ok(want.iter().map(|t| t.to_string()).collect()),
                "{name}"
            );
        }
        // "non-semver tag": refused before anything is pushed, with its words.
        let err = pushed(&[], None, "hoogily-boogily", false).unwrap_err();
        assert_eq!(
            err,
            r#"params.version: invalid semantic version: "hoogily-boogily""#
        );
        // "no version provided": registry-image-resource fails ("no tag specified");
        // dockhand pushes source.tag, as docker-image-resource does (README, out).
        let params = Params::default();
        let got = tags(&params, &source, dir.path(), None).unwrap();
        assert_eq!(got, std::slice::from_ref(&source));
    }

    /// docker-image-resource's tag cases (tests/out_test.go, with its fixtures `tag` = "foo"
    /// and `tags` = "a b c\n"): "When passing tag", "When passing tag_file", "When passing
    /// tag and tag_file" (tag_file wins; `tag` names a file that does not exist) and "When
    /// passing additional_tags" (source.tag first, then each, in order).
    #[test]
    fn docker_image_resource_tag_cases() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tag"), "foo").unwrap();
        std::fs::write(dir.path().join("tags"), "a b c\n").unwrap();
        let source: Tag = "latest".parse().unwrap();
        let pushed = |params: Params| {
            tags(&params, &source, dir.path(), None)
                .unwrap()
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
        };
        let text = |s: &str| Some(s.to_string());
        assert_eq!(
            pushed(Params {
                tag: text("tag"),
                ..Params::default()
            }),
            ["foo"]
        );
        assert_eq!(
            pushed(Params {
                tag_file: text("tag"),
                ..Params::default()
            }),
            ["foo"]
        );
        assert_eq!(
            pushed(Params {
                tag: text("doesnotexist"),
                tag_file: text("tag"),
                ..Params::default()
            }),
            ["foo"]
        );
        assert_eq!(
            pushed(Params {
                additional_tags: text("tags"),
                ..Params::default()
            }),
            ["latest", "a", "b", "c"]
        );
    }

    fn existing(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn aliases_move_only_when_newest() {
        assert_eq!(aliases("1.2.3", None, &[]), ["1.2", "1", "latest"]);
        let tags = existing(&["1.2.4", "1.3.0", "2.0.0", "3.0.0-rc.1", "latest"]);
        assert!(aliases("1.2.3", None, &tags).is_empty());
        assert_eq!(aliases("1.3.1", None, &tags), ["1.3", "1"]);
        assert_eq!(aliases("2.0.1", None, &tags), ["2.0", "2", "latest"]);
        assert!(aliases("2.1.0-rc.1", None, &tags).is_empty());
        assert!(aliases("main", None, &tags).is_empty());
        let tags = existing(&["1.4.0", "1.2.0-alpine"]);
        assert_eq!(
            aliases("1.3.0", Some("alpine"), &tags),
            ["1.3-alpine", "1-alpine", "alpine"]
        );
    }
}
