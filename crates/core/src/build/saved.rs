//! Images as `docker save` archives: the directories `in` writes with `save: true`, read
//! and loaded into the daemon for `load_base`, `load_bases` and `cache_from`, and the built
//! image exported for the daemonless push.

use std::path::{Path, PathBuf};

use bollard::query_parameters::{ImportImageOptions, TagImageOptions};
use futures_util::StreamExt as _;

use super::stream::{drain, file_stream};
use super::{daemon_error, input};
use crate::error::Error;
use crate::layout::read_capped_text;

/// The most read of the `image-id`, `repository` and `tag` files beside a saved image.
const MAX_NAME_FILE_BYTES: u64 = 64 << 10;

/// A directory written by `in` with `save: true` (`load_base`, `load_bases`, `cache_from`):
/// its `image` archive and the name docker-image-resource tags it with, read from the files
/// beside it.
pub(super) struct Saved {
    image: PathBuf,
    id: String,
    repository: String,
    tag: String,
}

impl Saved {
    pub(super) fn read(dir: &Path, field: &str) -> Result<Saved, Error> {
        let image = dir.join("image");
        if !image.is_file() {
            return Err(input(
                &image,
                format!("{field}: no image file here (get it with params.save: true)"),
            ));
        }
        let read = |name: &str| {
            read_capped_text(&dir.join(name), field, MAX_NAME_FILE_BYTES)
                .map(|s| s.trim().to_string())
        };
        Ok(Saved {
            id: read("image-id")?,
            repository: read("repository")?,
            tag: read("tag")?,
            image,
        })
    }

    pub(super) fn name(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// Loads the archive into the daemon and tags it with its name.
    pub(super) async fn load(&self, docker: &bollard::Docker) -> Result<(), Error> {
        let body = file_stream(self.image.clone())
            .await
            .map_err(|e| input(&self.image, e))?;
        let load = docker.import_image(
            ImportImageOptions::default(),
            bollard::body_stream(body),
            None,
        );
        drain(load).await.map_err(|reason| Error::Daemon {
            source: format!("cannot load {}: {reason}", self.image.display()).into(),
        })?;
        docker
            .tag_image(
                &self.id,
                Some(TagImageOptions {
                    repo: Some(self.repository.clone()),
                    tag: Some(self.tag.clone()),
                }),
            )
            .await
            .map_err(daemon_error)?;
        tracing::info!("loaded {} as {}", self.image.display(), self.name());
        Ok(())
    }
}

/// Writes the image `tag` names as a `docker save` tarball to `out`.
pub(super) async fn export(docker: &bollard::Docker, tag: &str, out: &Path) -> Result<(), Error> {
    let mut export = docker.export_image(tag);
    let mut file = tokio::fs::File::create(out)
        .await
        .map_err(|e| input(out, e))?;
    while let Some(chunk) = export.next().await {
        let chunk = chunk.map_err(daemon_error)?;
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
            .await
            .map_err(|e| input(out, e))?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|e| input(out, e))
}
