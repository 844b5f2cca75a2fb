//! The classic builder, driven through the Engine API (bollard): the context sent as a
//! tarball with `.dockerignore` applied here, registry credentials as X-Registry-Config.

use std::collections::HashMap;
use std::path::Path;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::BuildImageOptions;

use super::stream::{drain, file_stream};
use super::{dockerignore, input, Build, BuildParams};
use crate::blocking::blocking;
use crate::error::Error;

impl Build {
    /// The classic builder through the Engine API: the context goes as a tarball (with
    /// `.dockerignore` applied here, as the CLI would), credentials as X-Registry-Config.
    pub(super) async fn run_classic(
        &self,
        docker: &bollard::Docker,
        registry_auth: HashMap<String, DockerCredentials>,
        cache_from: Vec<String>,
        params: &BuildParams,
        staging: &Path,
        tag: &str,
    ) -> Result<(), Error> {
        // The context as a tarball; a Dockerfile outside the context travels inside it.
        let context_tar = staging.join("context.tar");
        let dockerfile_in_context = match self.dockerfile.strip_prefix(&self.context) {
            Ok(rel) => rel.to_string_lossy().into_owned(),
            Err(_) => ".dockhand.Dockerfile".to_string(),
        };
        // Writing the context reads every file of it: long work, off the async threads.
        let (context, dockerfile, tar_path, name) = (
            self.context.clone(),
            self.dockerfile.clone(),
            context_tar.clone(),
            dockerfile_in_context.clone(),
        );
        blocking(move || write_context(&context, &dockerfile, &tar_path, &name)).await?;
        let options = BuildImageOptions {
            dockerfile: dockerfile_in_context,
            t: Some(tag.to_string()),
            rm: true,
            forcerm: true,
            buildargs: Some(self.build_args.clone().into_iter().collect()),
            labels: Some(self.labels.clone().into_iter().collect()),
            target: params.target_name.clone().unwrap_or_default(),
            cachefrom: (!cache_from.is_empty()).then_some(cache_from),
            ..Default::default()
        };
        let body = file_stream(context_tar.clone())
            .await
            .map_err(|e| input(&context_tar, e))?;
        let stream = docker.build_image(
            options,
            Some(registry_auth),
            Some(bollard::body_stream(body)),
        );
        drain(stream).await.map_err(|reason| Error::Build {
            source: reason.into(),
        })
    }
}

/// The context's files under `rel`, less what `.dockerignore` leaves out (the Dockerfile and
/// `.dockerignore` always travel: the daemon needs them).
fn append_context<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    context: &Path,
    rel: &str,
    ignore: &dockerignore::Ignore,
    dockerfile: &str,
) -> std::io::Result<()> {
    let dir = if rel.is_empty() {
        context.to_path_buf()
    } else {
        context.join(rel)
    };
    let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type()?;
        let always = path == dockerfile || path == ".dockerignore";
        let ignored = !always && ignore.is_ignored(&path);
        if kind.is_dir() {
            if !ignored {
                tar.append_dir(&path, entry.path())?;
            }
            if !ignored || ignore.has_exceptions() {
                append_context(tar, context, &path, ignore, dockerfile)?;
            }
        } else if !ignored {
            tar.append_path_with_name(entry.path(), &path)?;
        }
    }
    Ok(())
}

/// The build context at `context` as a tarball at `tar_path`, `.dockerignore` applied, with
/// the Dockerfile added as `name` when it lies outside the context.
fn write_context(
    context: &Path,
    dockerfile: &Path,
    tar_path: &Path,
    name: &str,
) -> Result<(), Error> {
    let file = std::fs::File::create(tar_path).map_err(|e| input(tar_path, e))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.follow_symlinks(false);
    let ignore = dockerignore::Ignore::load(context)?;
    append_context(&mut tar, context, "", &ignore, name).map_err(|e| input(context, e))?;
    if name == ".dockhand.Dockerfile" {
        tar.append_path_with_name(dockerfile, name)
            .map_err(|e| input(dockerfile, e))?;
    }
    tar.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(|e| input(tar_path, e))?;
    Ok(())
}
