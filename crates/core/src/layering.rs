//! Pins the layering of the core (ARCHITECTURE.md): every `crate::` import of a module names
//! a module on a lower layer, so there is no import circle and nothing reaches upward. Read
//! from the source text, so it fails as soon as a `use` breaks the rule.

use std::collections::BTreeMap;
use std::path::Path;

/// Top layer first; a module may import only from layers after its own.
const LAYERS: &[&[&str]] = &[
    &["commands"],
    &["build"],
    &["pull", "push"],
    &["layout"],
    &["daemon", "git", "protocol"],
    &["source"],
    &["signature"],
    &["select"],
    &["error"],
    &["registry"],
    &["image"],
    &["rootfs"],
    &[
        "blocking",
        "compression",
        "fs",
        "progress",
        "time",
        "report",
    ],
    &["hash", "blob"],
    &["reference", "secret"],
    &["redact"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module of every `crate::x` path in `text`.
fn imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

/// Each top-level module and the text of its files (tests included: they must not reach
/// upward either, or the graph would have circles in test builds).
fn modules() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let top = top.trim_end_matches(".rs").to_string();
            // lib.rs declares the modules; layering.rs and proptests.rs are test-only
            // modules over the whole crate (nothing imports them).
            if top == "lib" || top == "layering" || top == "proptests" {
                continue;
            }
            out.entry(top)
                .or_default()
                .push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

#[test]
fn every_module_has_a_layer() {
    for module in modules().keys() {
        assert!(layer_of(module).is_some(), "{module} is in no layer");
    }
}

#[test]
fn imports_only_run_downward() {
    let mut broken = Vec::new();
    for (module, text) in modules() {
        let own = layer_of(&module).unwrap();
        for import in imports(&text) {
            if import == module {
                continue;
            }
            match layer_of(&import) {
                Some(l) if l > own => {}
                _ => broken.push(format!("{module} imports {import}")),
            }
        }
    }
    broken.sort();
    broken.dedup();
    assert!(
        broken.is_empty(),
        "imports against the layering: {broken:#?}"
    );
}

#[test]
fn the_named_rules_hold() {
    let m = modules();
    let reaches = |module: &str, other: &str| imports(&m[module]).iter().any(|i| i == other);
    for forbidden in ["source", "error", "commands"] {
        assert!(
            !reaches("registry", forbidden),
            "registry imports {forbidden}"
        );
    }
    assert!(!reaches("image", "registry"), "image imports registry");
    for (module, _) in m.iter().filter(|(k, _)| k.as_str() != "commands") {
        assert!(!reaches(module, "commands"), "{module} imports commands");
    }
}

#[test]
fn the_checker_sees_a_violation() {
    assert_eq!(
        imports("use crate::registry::X; a::crate::no"),
        ["registry"]
    );
    assert!(layer_of("registry") > layer_of("source"));
}
