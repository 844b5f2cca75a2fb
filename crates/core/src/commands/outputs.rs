//! The files `in` writes beside the image: `metadata.json` (Concourse's `image_resource`
//! contract), `labels.json` and `docker_inspect.json`.

use std::io::Read as _;
use std::path::Path;

use crate::error::write_output as write_file;
use crate::error::Error;
use crate::image::ImageConfig;
use crate::reference::{Digest, Repository};

/// The most of the image's /etc/passwd read to name a numeric `User`; real ones are a few
/// KiB, and a larger one is not looked in (the user stays numeric).
const MAX_PASSWD_BYTES: u64 = 4 << 20;

/// `metadata.json`: what Concourse needs to run the rootfs as a task image.
pub(super) fn write_metadata_json(
    dest: &Path,
    config: &ImageConfig,
    rootfs: &Path,
) -> Result<(), Error> {
    let run = config.config.clone().unwrap_or_default();
    let mut meta = serde_json::Map::new();
    meta.insert(
        "env".into(),
        serde_json::json!(run
            .env
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !e.starts_with("HOSTNAME="))
            .collect::<Vec<_>>()),
    );
    if let Some(user) = run.user.filter(|u| !u.is_empty()) {
        meta.insert("user".into(), serde_json::json!(user_name(&user, rootfs)));
    }
    meta.insert("cmd".into(), serde_json::json!(run.cmd));
    meta.insert("entrypoint".into(), serde_json::json!(run.entrypoint));
    write_file(
        &dest.join("metadata.json"),
        &serde_json::to_vec(&meta).expect("serialisable"),
    )
}

/// A numeric `User` becomes the name the image's /etc/passwd gives it, as
/// docker-image-resource does; a name (or an unknown uid) stays as it is.
fn user_name(user: &str, rootfs: &Path) -> String {
    let uid = user.split(':').next().unwrap_or(user);
    if uid.parse::<u32>().is_err() {
        return user.to_string();
    }
    // Read through the rootfs only when /etc/passwd is a plain file (not a planted symlink).
    let passwd = rootfs.join("etc/passwd");
    let plain = std::fs::symlink_metadata(rootfs.join("etc"))
        .map(|m| m.is_dir())
        .unwrap_or(false)
        && std::fs::symlink_metadata(&passwd)
            .map(|m| m.is_file())
            .unwrap_or(false);
    if plain {
        if let Some(text) = read_bounded(&passwd, MAX_PASSWD_BYTES) {
            for line in text.lines() {
                let fields: Vec<&str> = line.split(':').collect();
                if fields.len() > 2 && fields[2] == uid {
                    return fields[0].to_string();
                }
            }
        }
    }
    user.to_string()
}

/// The file as text when it holds at most `limit` bytes; never reads more than that.
fn read_bounded(path: &Path, limit: u64) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(limit + 1)
        .read_to_string(&mut text)
        .ok()?;
    if text.len() as u64 > limit {
        tracing::warn!(
            "{} is over {limit} bytes; the numeric user is kept",
            path.display()
        );
        return None;
    }
    Some(text)
}

pub(super) fn write_labels_json(dest: &Path, config: &ImageConfig) -> Result<(), Error> {
    let labels = config
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    write_file(
        &dest.join("labels.json"),
        &serde_json::to_vec(&labels).expect("serialisable"),
    )
}

/// The most label and annotation fields `in` adds to its metadata (a hostile image may have
/// thousands); the rest are left out with a warning.
pub(super) const MAX_IMAGE_METADATA_FIELDS: usize = 100;
/// The longest label or annotation value shown in the metadata, in characters; a longer one
/// is cut short with `…`.
pub(super) const MAX_IMAGE_METADATA_VALUE_CHARS: usize = 1024;

/// registry-image-resource's `label_regex` and `annotation_regex`: each image label, then
/// each manifest annotation, whose key the regex finds a match in (unanchored, as there),
/// as a metadata field named by the key, in key order.
pub(super) fn image_metadata(
    label_regex: Option<&regex::Regex>,
    annotation_regex: Option<&regex::Regex>,
    config: &ImageConfig,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Vec<crate::protocol::MetadataField> {
    let empty = std::collections::BTreeMap::new();
    let labels = config
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .unwrap_or(&empty);
    let matching = |regex: Option<&regex::Regex>,
                    map: &std::collections::BTreeMap<String, String>| {
        regex
            .map(|re| {
                map.iter()
                    .filter(|(k, _)| re.is_match(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let mut all = matching(label_regex, labels);
    all.extend(matching(annotation_regex, annotations));
    if all.len() > MAX_IMAGE_METADATA_FIELDS {
        tracing::warn!(
            "{} labels and annotations match source.label_regex/annotation_regex; the first {MAX_IMAGE_METADATA_FIELDS} are in the metadata",
            all.len()
        );
        all.truncate(MAX_IMAGE_METADATA_FIELDS);
    }
    all.into_iter()
        .map(|(name, value)| {
            let value = if value.chars().count() > MAX_IMAGE_METADATA_VALUE_CHARS {
                let cut: String = value.chars().take(MAX_IMAGE_METADATA_VALUE_CHARS).collect();
                format!("{cut}…")
            } else {
                value
            };
            crate::protocol::MetadataField { name, value }
        })
        .collect()
}

/// `docker_inspect.json` as `docker inspect` would print it for the pulled image.
pub(super) fn write_docker_inspect(
    dest: &Path,
    config: &ImageConfig,
    raw: &serde_json::Value,
    repository: &Repository,
    tag: &str,
    digest: &Digest,
    id: &Digest,
) -> Result<(), Error> {
    let inspect = serde_json::json!([{
        "Id": id.as_str(),
        "RepoTags": [format!("{repository}:{tag}")],
        "RepoDigests": [format!("{repository}@{digest}")],
        "Created": config.created,
        "Architecture": config.architecture,
        "Os": config.os,
        "Variant": config.variant,
        "Config": raw.get("config").cloned().unwrap_or(serde_json::Value::Null),
        "RootFS": {
            "Type": "layers",
            "Layers": config.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default(),
        },
    }]);
    write_file(
        &dest.join("docker_inspect.json"),
        &serde_json::to_vec_pretty(&inspect).expect("serialisable"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs_with_passwd(passwd: &[u8]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("etc")).unwrap();
        std::fs::write(tmp.path().join("etc/passwd"), passwd).unwrap();
        tmp
    }

    #[test]
    fn labels_then_annotations_matching_their_regex_in_key_order() {
        let config: ImageConfig = serde_json::from_value(serde_json::json!({
            "config": {"Labels": {
                "z-label": "last", "a-label": "first", "m-label": "mid",
                "com.example.foo": "bar", "org.other.baz": "skip",
                "long": "x".repeat(5000),
            }}
        }))
        .unwrap();
        let annotations: std::collections::BTreeMap<String, String> =
            [("com.example.build", "123"), ("org.internal", "skip")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let re = |r: &str| regex::Regex::new(r).unwrap();
        let names = |fields: Vec<crate::protocol::MetadataField>| {
            fields.into_iter().map(|f| f.name).collect::<Vec<_>>()
        };
        // registry-image-resource in_test.go, "label_regex and annotation_regex": no regex,
        // nothing; matching labels only; matching annotations only; sorted by key.
        assert!(image_metadata(None, None, &config, &annotations).is_empty());
        let fields = image_metadata(Some(&re(r"^com\.example\.")), None, &config, &annotations);
        assert_eq!(fields.len(), 1);
        assert_eq!(
            (fields[0].name.as_str(), fields[0].value.as_str()),
            ("com.example.foo", "bar")
        );
        let fields = image_metadata(None, Some(&re(r"^com\.example\.")), &config, &annotations);
        assert_eq!(names(fields), ["com.example.build"]);
        assert_eq!(
            names(image_metadata(
                Some(&re("-label")),
                None,
                &config,
                &annotations
            )),
            ["a-label", "m-label", "z-label"]
        );
        // Unanchored, as Go's MatchString: `example` finds both; labels come first.
        assert_eq!(
            names(image_metadata(
                Some(&re("example")),
                Some(&re("example")),
                &config,
                &annotations
            )),
            ["com.example.foo", "com.example.build"]
        );
        let long = image_metadata(Some(&re("^long$")), None, &config, &annotations);
        assert_eq!(
            long[0].value.chars().count(),
            MAX_IMAGE_METADATA_VALUE_CHARS + 1
        );
        let many: ImageConfig = serde_json::from_value(serde_json::json!({
            "config": {"Labels": (0..300).map(|i| (format!("l{i:03}"), "v".to_string())).collect::<std::collections::BTreeMap<_, _>>()}
        }))
        .unwrap();
        assert_eq!(
            image_metadata(Some(&re(".*")), None, &many, &annotations).len(),
            MAX_IMAGE_METADATA_FIELDS
        );
    }

    #[test]
    fn a_numeric_user_is_named_from_passwd() {
        let rootfs = rootfs_with_passwd(b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n");
        assert_eq!(user_name("1000:1000", rootfs.path()), "app");
        assert_eq!(user_name("1001", rootfs.path()), "1001");
    }

    #[test]
    fn a_passwd_over_the_limit_is_not_read() {
        let mut passwd = vec![b'#'; MAX_PASSWD_BYTES as usize];
        passwd.extend_from_slice(b"\napp:x:1000:1000::/:/bin/sh\n");
        let rootfs = rootfs_with_passwd(&passwd);
        assert_eq!(user_name("1000", rootfs.path()), "1000");
    }
}
