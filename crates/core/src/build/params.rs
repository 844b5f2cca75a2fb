//! The put params that shape a build, as `out` read them; the build's own view of the
//! request, so that nothing in `build/` knows the rest of `out`'s params.

/// `params.build` and what goes with it (docker-image-resource's names and types).
#[derive(Debug, Default, Clone)]
pub(crate) struct BuildParams {
    pub build: Option<String>,
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
}
