//! Properties of layer application on arbitrary input: it never panics, and nothing is
//! written outside the root, whatever the names (`..`, absolute, long), symlinks and
//! hardlinks, and whatever bytes the archive holds.

use std::path::Path;

use proptest::prelude::*;

use super::unpack::Unpacker;

/// Few cases, so the suite stays fast in debug builds; each case is a whole layer.
const CASES: u32 = 256;
/// Stands for the absolute path of the directory beside the root, filled in per case.
const OUTSIDE: &str = "@OUTSIDE";

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        Just("a".to_string()),
        Just("b".to_string()),
        Just("link".to_string()),
        Just(".wh.a".to_string()),
        Just(".wh.link".to_string()),
        Just(".wh..wh..opq".to_string()),
        Just(OUTSIDE.to_string()),
        (1usize..300).prop_map(|n| "x".repeat(n)),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(component(), 1..6)).prop_map(|(absolute, parts)| {
        let joined = parts.join("/");
        if absolute {
            format!("/{joined}")
        } else {
            joined
        }
    })
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    kind: tar::EntryType,
    link: String,
    data: Vec<u8>,
}

fn member() -> impl Strategy<Value = Member> {
    let kind = prop_oneof![
        Just(tar::EntryType::Regular),
        Just(tar::EntryType::Directory),
        Just(tar::EntryType::Symlink),
        Just(tar::EntryType::Link),
        Just(tar::EntryType::Fifo),
    ];
    (
        path(),
        kind,
        path(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(name, kind, link, data)| Member {
            name,
            kind,
            link,
            data,
        })
}

/// The members as a layer, names and link targets in PAX records so any bytes go in.
fn layer(members: &[Member], outside: &Path) -> Vec<u8> {
    let outside = outside.display().to_string();
    let mut tar = tar::Builder::new(Vec::new());
    for m in members {
        let name = m.name.replace(OUTSIDE, &outside);
        let link = m.link.replace(OUTSIDE, &outside);
        let mut records: Vec<(&str, &[u8])> = vec![("path", name.as_bytes())];
        if matches!(m.kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            records.push(("linkpath", link.as_bytes()));
        }
        tar.append_pax_extensions(records).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(m.kind);
        let data: &[u8] = if m.kind == tar::EntryType::Regular {
            &m.data
        } else {
            &[]
        };
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append(&h, data).unwrap();
    }
    tar.into_inner().unwrap()
}

/// Applies `layers` to `root` beside `outside` (holding one sentinel file), then checks that
/// the outside is as it was and nothing else appeared beside the root.
fn apply_and_check(layers: &[Vec<u8>], base: &Path) -> Result<(), TestCaseError> {
    let root = base.join("root");
    let outside = base.join("outside");
    let mut unpacker = Unpacker::new(&root).unwrap();
    let mut ok = true;
    for l in layers {
        if unpacker.apply_layer(&l[..]).is_err() {
            ok = false;
            break;
        }
    }
    if ok {
        let _ = unpacker.finish();
    }
    let mut beside: Vec<_> = std::fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    beside.sort();
    prop_assert_eq!(beside, ["outside", "root"]);
    let inside: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    prop_assert_eq!(inside, ["sentinel"]);
    prop_assert_eq!(std::fs::read(outside.join("sentinel")).unwrap(), b"keep");
    let meta = std::fs::symlink_metadata(outside.join("sentinel")).unwrap();
    prop_assert!(meta.is_file());
    Ok(())
}

fn base() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("root")).unwrap();
    std::fs::create_dir(tmp.path().join("outside")).unwrap();
    std::fs::write(tmp.path().join("outside/sentinel"), b"keep").unwrap();
    tmp
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn hostile_members_stay_inside_the_root(
        lower in prop::collection::vec(member(), 0..12),
        upper in prop::collection::vec(member(), 0..12),
    ) {
        let tmp = base();
        let outside = tmp.path().join("outside");
        apply_and_check(&[layer(&lower, &outside), layer(&upper, &outside)], tmp.path())?;
    }

    #[test]
    fn corrupted_layers_never_panic_or_escape(
        members in prop::collection::vec(member(), 1..8),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
    ) {
        let tmp = base();
        let mut bytes = layer(&members, &tmp.path().join("outside"));
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        apply_and_check(&[bytes], tmp.path())?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let tmp = base();
        apply_and_check(&[bytes], tmp.path())?;
    }
}
