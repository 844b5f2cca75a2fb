//! Properties of the parsers that read what a pipeline or a registry hands over: a request
//! on stdin, a `WWW-Authenticate` challenge, a tag list's `Link`, manifests, indexes and
//! configs, names, tags, RFC 3339 times, semver constraints. On any input they return (never panic); a request's error, as the binaries
//! print it, is one line holding none of the request's secrets; the tag order is a total
//! order (a sort on an inconsistent order may panic).
//!
//! The redactor's list of secrets is the process's own, shared by every test of this crate:
//! so the secrets generated here all start with [`MARK`], which no other generated string
//! holds, and no test elsewhere uses.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::protocol::parse_request;

const CASES: u32 = 512;
/// Starts every secret generated here (and nothing else generated here).
const MARK: &str = "Zq";

/// Fields whose values are secrets (each `Secret` registers itself when read).
const SECRET_KEYS: &[&str] = &[
    "password",
    "aws_secret_access_key",
    "aws_session_token",
    "git_private_key",
    "key",
    "private_key",
];

fn secret() -> impl Strategy<Value = String> {
    "[a-z0-9:@/%+ -]{2,16}".prop_map(|s| format!("{MARK}{s}"))
}

/// Strings that are not secrets: realistic values and arbitrary text, without `@` (a URL's
/// userinfo registers itself as a secret) and without `Z` (which starts [`MARK`]).
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        Just("registry.example/app".to_string()),
        Just("localhost:5000/a/b".to_string()),
        Just("127.0.0.1:1/x".to_string()),
        Just("latest".to_string()),
        Just(format!("sha256:{}", "a".repeat(64))),
        Just("https://mirror.example".to_string()),
        Just(format!("https://user:{MARK}urlsecret@mirror.example/path")),
        Just(format!("https://git:{MARK}token@git.example/repo.git")),
        Just(">= 1.2, < 2 || ~3.1".to_string()),
        Just("^v?[0-9]+$".to_string()),
        Just("(a+)+$".to_string()),
        Just("linux/arm64/v8".to_string()),
        Just("arn:aws:iam::123456789012:role/x".to_string()),
        Just("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_string()),
        Just("18446744073709551615".to_string()),
        "[^@Z]{0,40}",
        "[a-z0-9./:_-]{0,300}",
    ]
    .boxed()
}

/// Any JSON value, of any shape; strings as [`text`] (or [`secret`] for a secret key).
fn anything(secret_key: bool) -> BoxedStrategy<Value> {
    let strings = if secret_key { secret().boxed() } else { text() };
    let leaf = prop_oneof![
        4 => strings.prop_map(Value::String),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<i64>().prop_map(|n| json!(n)),
        1 => Just(json!(u64::MAX)),
        1 => any::<f64>().prop_map(|n| json!(n)),
    ];
    leaf.prop_recursive(2, 8, 3, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..3)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Mostly a value of the right type for `key`, sometimes anything at all.
fn field(key: &'static str) -> BoxedStrategy<Value> {
    let secret_key = SECRET_KEYS.contains(&key);
    let string = if secret_key {
        secret().prop_map(Value::String).boxed()
    } else {
        text().prop_map(Value::String).boxed()
    };
    let strings = prop::collection::vec(text().prop_map(Value::String), 0..3)
        .prop_map(Value::Array)
        .boxed();
    let boolean = any::<bool>().prop_map(Value::Bool).boxed();
    let count = prop_oneof![
        (0u64..10).prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        Just(json!("7")),
        Just(json!(-1)),
    ]
    .boxed();
    let opt = |k: &'static str, v: BoxedStrategy<Value>| {
        prop::option::of(v).prop_map(move |v| v.map(|v| (k.to_string(), v)))
    };
    let object = |entries: Vec<BoxedStrategy<Option<(String, Value)>>>| {
        entries
            .prop_map(|pairs| Value::Object(pairs.into_iter().flatten().collect()))
            .boxed()
    };
    let typed = match key {
        "insecure_registries" | "aws_role_arns" | "pre_release_prefixes" => strings,
        "insecure" | "debug" | "pre_releases" | "created_at_sort" | "fail_when_missing" => boolean,
        "max_concurrent_downloads" | "max_concurrent_uploads" | "startup_timeout" => count,
        "additional_private_registries" => prop::collection::vec(
            object(vec![
                opt("registry", text().prop_map(Value::String).boxed()).boxed(),
                opt("username", text().prop_map(Value::String).boxed()).boxed(),
                opt("password", secret().prop_map(Value::String).boxed()).boxed(),
            ]),
            0..3,
        )
        .prop_map(Value::Array)
        .boxed(),
        "registry_mirror" => prop_oneof![
            string.clone(),
            object(vec![
                opt("host", text().prop_map(Value::String).boxed()).boxed(),
                opt("username", text().prop_map(Value::String).boxed()).boxed(),
                opt("password", secret().prop_map(Value::String).boxed()).boxed(),
            ]),
        ]
        .boxed(),
        "ca_certs" | "client_certs" => prop::collection::vec(
            prop_oneof![
                text().prop_map(Value::String).boxed(),
                object(vec![
                    opt("domain", text().prop_map(Value::String).boxed()).boxed(),
                    opt("cert", text().prop_map(Value::String).boxed()).boxed(),
                    opt("key", secret().prop_map(Value::String).boxed()).boxed(),
                ]),
            ],
            0..3,
        )
        .prop_map(Value::Array)
        .boxed(),
        "tag" | "aws_account_id" => {
            prop_oneof![string.clone(), any::<f64>().prop_map(|n| json!(n))].boxed()
        }
        _ => string,
    };
    prop_oneof![24 => typed, 1 => anything(secret_key)].boxed()
}

/// An object with some of `fields`; `repository` most of the time when it is one of them.
fn object(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let repository = prop::option::weighted(0.9, text());
    (
        repository,
        prop::collection::vec(
            prop::sample::select(fields).prop_flat_map(|k| (Just(k), field(k))),
            0..8,
        ),
    )
        .prop_map(move |(repository, pairs)| {
            let mut object: serde_json::Map<String, Value> =
                pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            if let Some(r) = repository.filter(|_| fields.contains(&"repository")) {
                object.insert("repository".into(), Value::String(r));
            }
            Value::Object(object)
        })
}

fn request() -> impl Strategy<Value = Value> {
    (
        object(crate::source::FIELDS),
        object(&["tag", "digest"]),
        prop_oneof![
            object(<crate::commands::get::Params as crate::protocol::Params>::FIELDS),
            object(<crate::commands::put::Params as crate::protocol::Params>::FIELDS),
        ],
    )
        .prop_map(|(source, version, params)| {
            json!({"source": source, "version": version, "params": params})
        })
}

/// The error line as the binaries print it: the error and its sources, cleaned.
fn printed(e: &crate::Error) -> String {
    crate::redact::clean_line(&crate::report::chain(e))
}

fn assert_printable(what: &str, line: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        !line.contains('\n') && !line.contains('\r'),
        "{what}: {line:?}"
    );
    prop_assert!(!line.contains(MARK), "{what} shows a secret: {line:?}");
    prop_assert!(
        line.chars().count() <= crate::redact::MAX_LINE + 64,
        "{what}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Any request, resolved as the commands resolve it: a result or a one-line error
    /// without secrets.
    #[test]
    fn requests_resolve_or_fail_in_one_clean_line(request in request()) {
        let bytes = serde_json::to_vec(&request).expect("a JSON value serializes");
        match parse_request(&bytes) {
            Err(e) => assert_printable("parse", &printed(&e))?,
            Ok(parsed) => {
                if let Err(e) = parsed.settings() {
                    assert_printable("settings", &printed(&e))?;
                }
                let _ = parsed.cursor();
                let params = request.get("params");
                if let Err(e) = crate::protocol::parse_params::<crate::commands::get::Params>(params) {
                    assert_printable("get params", &printed(&e))?;
                }
                if let Err(e) = crate::protocol::parse_params::<crate::commands::put::Params>(params) {
                    assert_printable("put params", &printed(&e))?;
                }
            }
        }
    }

    /// Bytes that are not a request at all.
    #[test]
    fn arbitrary_bytes_are_refused_in_one_line(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = parse_request(&bytes) {
            let line = printed(&e);
            prop_assert!(!line.contains('\n'), "{line:?}");
        }
    }

    #[test]
    fn challenges_parse_whatever_the_registry_sends(header in "[ -~]{0,200}") {
        let _ = crate::registry::parse_challenge(&header);
    }

    #[test]
    fn challenge_like_headers_parse(
        scheme in prop_oneof![Just("Bearer".to_string()), Just("Basic".to_string()), "[A-Za-z]{0,8}"],
        params in prop::collection::vec(("[a-z]{0,8}", "[^\"]{0,20}", any::<bool>()), 0..5),
    ) {
        let params: Vec<String> = params
            .into_iter()
            .map(|(k, v, quoted)| if quoted { format!("{k}=\"{v}\"") } else { format!("{k}={v}") })
            .collect();
        let _ = crate::registry::parse_challenge(&format!("{scheme} {}", params.join(",")));
    }

    /// Names, from a request or a registry: parsed or refused, and what parses prints back
    /// as something that parses to the same name.
    #[test]
    fn names_parse_or_are_refused(text in "[ -~]{0,300}") {
        use crate::reference::{Digest, Host, Repository, Tag};
        if let Ok(host) = Host::parse(&text) {
            prop_assert_eq!(Host::parse(host.as_str()).ok().map(|h| h.to_string()), Some(host.to_string()));
        }
        if let Ok(repository) = text.parse::<Repository>() {
            let again = repository.to_string().parse::<Repository>().map(|r| r.to_string());
            prop_assert_eq!(again.ok(), Some(repository.to_string()));
        }
        if let Ok(tag) = text.parse::<Tag>() {
            prop_assert_eq!(tag.as_str(), text.as_str());
        }
        if let Ok(digest) = text.parse::<Digest>() {
            prop_assert_eq!(digest.as_str(), text.as_str());
        }
    }

    #[test]
    fn times_parse_or_are_refused(text in "[0-9:TZtz.+-]{0,40}") {
        let _ = crate::time::parse_rfc3339(&text);
    }

    #[test]
    fn constraints_parse_or_are_refused(text in "[0-9a-zA-Z.*^~<>=|, -]{0,60}") {
        if let Ok(c) = crate::select::Constraint::parse(&text) {
            let _ = c.matches(&semver::Version::new(1, 2, 3), true);
        }
    }

    /// A registry chooses the tags: their order is total whatever they are, so sorting them
    /// cannot panic, and a selection plans over any list.
    #[test]
    fn the_tag_order_is_total(a in tag(), b in tag(), c in tag()) {
        use std::cmp::Ordering;
        use crate::select::natural_cmp;
        prop_assert_eq!(natural_cmp(&a, &b), natural_cmp(&b, &a).reverse());
        prop_assert_eq!(natural_cmp(&a, &a), Ordering::Equal);
        if natural_cmp(&a, &b) != Ordering::Greater && natural_cmp(&b, &c) != Ordering::Greater {
            prop_assert!(natural_cmp(&a, &c) != Ordering::Greater, "{a:?} {b:?} {c:?}");
        }
        if natural_cmp(&a, &b) == Ordering::Equal {
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn selections_plan_over_any_tags(
        fields in prop_oneof![
            Just(json!({})),
            Just(json!({"pre_releases": true})),
            Just(json!({"semver_constraint": ">=1, <3"})),
            Just(json!({"tag_regex": "^[0-9.]+(-[a-z]+)?$"})),
            Just(json!({"variant": "alpine", "pre_release_prefixes": ["rc", "beta"]})),
        ],
        tags in prop::collection::vec(tag(), 0..40),
    ) {
        let fields: crate::select::Fields = serde_json::from_value(fields).expect("fields parse");
        if let Ok((Some(selection), _)) = crate::select::Selection::from_fields(&fields) {
            let plan = selection.plan(&tags);
            for candidate in &plan.candidates {
                prop_assert!(tags.contains(&candidate.tag));
                let _ = selection.key_of(&candidate.tag, None);
            }
        }
    }
}

/// JSON shaped like what a registry serves for a manifest, an index or a config: the keys
/// these documents have, each holding a value of any type (or the right type with any
/// content), nested a few levels.
fn document() -> BoxedStrategy<Value> {
    let digest = prop_oneof![
        "sha256:[0-9a-f]{64}",
        "sha256:[0-9a-f]{0,70}",
        "[a-z0-9]{1,10}:[ -~]{0,20}",
        "[ -~]{0,20}",
    ];
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[ -~]{0,16}".prop_map(Value::from),
        digest.prop_map(Value::from),
    ];
    const KEYS: &[&str] = &[
        "schemaVersion",
        "mediaType",
        "config",
        "layers",
        "manifests",
        "digest",
        "size",
        "platform",
        "os",
        "architecture",
        "variant",
        "annotations",
        "urls",
        "rootfs",
        "diff_ids",
        "type",
        "created",
        "Env",
        "User",
        "Cmd",
        "Entrypoint",
        "Labels",
        "history",
        "subject",
        "artifactType",
    ];
    scalar
        .prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(
                    |pairs| Value::Object(
                        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                    )
                ),
            ]
        })
        .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Whatever a registry serves as a manifest, an index or a config: each reader returns,
    /// and what parses can be chosen from and described.
    #[test]
    fn manifests_and_configs_parse_or_are_refused(doc in document(), media_type in prop_oneof![
        Just(String::new()),
        Just(crate::image::OCI_INDEX.to_string()),
        Just(crate::image::DOCKER_MANIFEST.to_string()),
        Just("application/json".to_string()),
    ]) {
        use crate::image::{choose_platform, is_index, ImageConfig, ImageIndex, ImageManifest, Platform};
        let bytes = serde_json::to_vec(&doc).expect("a JSON value serializes");
        let _ = is_index(&media_type, &bytes);
        if let Ok(index) = serde_json::from_slice::<ImageIndex>(&bytes) {
            for wanted in [None, Some(Platform { os: "linux".into(), architecture: "arm64".into(), variant: None })] {
                if let Err(e) = choose_platform(&index, &Platform::wanted(wanted.as_ref())) {
                    prop_assert!(!e.contains('\n'), "{e:?}");
                }
            }
        }
        if let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&bytes) {
            let total = manifest.layers.iter().fold(manifest.config.size, |t, l| t.saturating_add(l.size));
            prop_assert!(total >= manifest.config.size);
        }
        if let Ok(config) = serde_json::from_slice::<ImageConfig>(&bytes) {
            let _ = Platform::of_config(&config).to_string();
        }
        let repository: crate::reference::Repository = "team/app".parse().expect("a name");
        let raw = crate::image::RawManifest {
            digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000".parse().expect("a digest"),
            media_type,
            bytes,
        };
        if let Err(e) = crate::pull::parse_manifest(&repository, &raw) {
            let line = printed(&e);
            prop_assert!(!line.contains('\n'), "{line:?}");
        }
    }

    /// A tag list's `Link` header and the page it is resolved against, as a registry may
    /// write them: the next page is found or not, never a panic.
    #[test]
    fn tag_page_links_parse_whatever_the_registry_sends(
        header in prop_oneof![
            "[ -~]{0,200}",
            ("[ -~]{0,60}", prop_oneof![Just("rel=\"next\""), Just("rel=next"), Just("rel=\"prev\"")])
                .prop_map(|(target, rel)| format!("<{target}>; {rel}")),
        ],
        current in prop_oneof![Just("/v2/team/app/tags/list?n=1000".to_string()), "[ -~]{0,60}"],
    ) {
        if let Some(next) = crate::registry::next_link(&header) {
            prop_assert!(!next.is_empty());
            let _ = crate::registry::resolve_link(&current, &next);
        }
    }
}

/// Tags as registries send them: versions with prefixes, suffixes, long digit runs, zeros.
fn tag() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,3}(\\.[0-9]{1,3}){0,3}(-(rc|beta|alpine)[0-9.]{0,3})?",
        "v?0*[0-9]{1,30}\\.0*[0-9]{1,25}",
        "[a-z0-9._-]{1,20}",
        "[ -~]{0,12}",
    ]
}
