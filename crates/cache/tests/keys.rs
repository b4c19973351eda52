//! Keys: stable, sensitive to every input, blind to everything else; misses explained.

use proptest::prelude::*;
use strata_cache::{Change, InputKind, KeyBuilder, KeyInputs, MissReason, explain};

/// The reasons as a user reads them.
fn said(reasons: Vec<MissReason>) -> Vec<String> {
    reasons.iter().map(ToString::to_string).collect()
}

fn sample() -> KeyBuilder {
    KeyBuilder::new(&KeyBuilder::base_image("sha256:abc", "linux/amd64"))
        .instruction("RUN make")
        .build_arg("VERSION", "1")
        .env("PATH", "/bin")
        .flag("network", "default")
        .file("src/main.rs", "sha256:111")
}

#[test]
fn keys_are_stable_across_machines_and_releases() {
    // Changing the encoding must change KEY_FORMAT; this pins the format's output. The value
    // was computed by a separate implementation of the encoding documented in `key.rs`
    // (Python: sha256 over length-prefixed fields), not copied from this crate's output.
    let key = sample().build();
    assert_eq!(
        key.digest,
        "sha256:71154a62b5640202bc1803cb4943520fa0ed5a9fe7ccb98535d7749ede5f791b"
    );
}

#[test]
fn the_order_inputs_are_given_in_does_not_matter() {
    let a = KeyBuilder::new("p")
        .env("A", "1")
        .env("B", "2")
        .file("x", "1")
        .file("y", "2")
        .build();
    let b = KeyBuilder::new("p")
        .file("y", "2")
        .env("B", "2")
        .file("x", "1")
        .env("A", "1")
        .build();
    assert_eq!(a.digest, b.digest);
}

#[test]
fn misses_are_explained() {
    let before = sample().build().inputs;
    let after = sample()
        .build_arg("VERSION", "2")
        .env("NEW", "x")
        .file("src/lib.rs", "sha256:222")
        .build()
        .inputs;
    assert_eq!(
        explain(&before, &after)[0],
        MissReason::Input {
            kind: InputKind::BuildArg,
            name: "VERSION".to_owned(),
            change: Change::Changed
        }
    );
    assert_eq!(
        serde_json::to_value(&explain(&before, &after)[2]).unwrap(),
        serde_json::json!({"reason": "input", "kind": "file", "name": "src/lib.rs", "change": "added"})
    );
    assert_eq!(
        said(explain(&before, &after)),
        [
            "build arg VERSION changed",
            "env NEW added",
            "file src/lib.rs added"
        ]
    );
    let moved = KeyBuilder::new(&KeyBuilder::base_image("sha256:def", "linux/amd64"))
        .build()
        .inputs;
    let base = KeyBuilder::new(&KeyBuilder::base_image("sha256:abc", "linux/amd64"))
        .build()
        .inputs;
    assert_eq!(explain(&base, &moved), [MissReason::BaseImageChanged]);
    assert_eq!(said(explain(&base, &moved)), ["base image digest changed"]);
    let parent = KeyBuilder::new("sha256:parent2").build().inputs;
    assert_eq!(
        said(explain(
            &KeyBuilder::new("sha256:parent1").build().inputs,
            &parent
        )),
        ["an earlier step changed"]
    );
    let removed = KeyInputs {
        files: Default::default(),
        ..before.clone()
    };
    assert_eq!(
        said(explain(&before, &removed)),
        ["file src/main.rs removed"]
    );
    assert!(explain(&before, &before).is_empty());
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/=. -]{0,12}"
}

proptest! {
    /// Any change to any input changes the key, and the explanation names it.
    #[test]
    fn every_input_matters(
        parent in text(), instruction in text(),
        args in prop::collection::btree_map(text(), text(), 0..4),
        env in prop::collection::btree_map(text(), text(), 0..4),
        files in prop::collection::btree_map(text(), text(), 0..4),
        which in 0usize..6, new_value in text(),
    ) {
        let build = |parent: &str, instruction: &str, args: &std::collections::BTreeMap<String, String>, env: &std::collections::BTreeMap<String, String>, files: &std::collections::BTreeMap<String, String>, flag: &str| {
            let mut b = KeyBuilder::new(parent).instruction(instruction).flag("chown", flag);
            for (k, v) in args { b = b.build_arg(k, v); }
            for (k, v) in env { b = b.env(k, v); }
            for (k, v) in files { b = b.file(k, v); }
            b.build()
        };
        let original = build(&parent, &instruction, &args, &env, &files, "0:0");
        let (mut p, mut i, mut a, mut e, mut f, mut flag) = (parent.clone(), instruction.clone(), args.clone(), env.clone(), files.clone(), "0:0".to_owned());
        match which {
            0 => p.push_str(&new_value),
            1 => i.push('!'),
            2 => { a.insert(format!("{new_value}#"), "v".into()); }
            3 => { e.insert(format!("{new_value}#"), "v".into()); }
            4 => { f.insert(format!("{new_value}#"), "sha256:x".into()); }
            _ => flag = format!("{new_value}#"),
        }
        let changed = build(&p, &i, &a, &e, &f, &flag);
        if changed.inputs != original.inputs {
            prop_assert_ne!(&changed.digest, &original.digest);
            prop_assert!(!explain(&original.inputs, &changed.inputs).is_empty());
        }
    }

    /// Moving a value between two sections never collides.
    #[test]
    fn sections_do_not_collide(name in text(), value in text()) {
        let as_env = KeyBuilder::new("p").env(&name, &value).build();
        let as_arg = KeyBuilder::new("p").build_arg(&name, &value).build();
        let as_file = KeyBuilder::new("p").file(&name, &value).build();
        prop_assert_ne!(&as_env.digest, &as_arg.digest);
        prop_assert_ne!(&as_env.digest, &as_file.digest);
    }
}
