//! `.dockerignore` with moby's pattern-matcher semantics.

use strata_dockerfile::{Dockerignore, Error, ignore_file_for};

fn ignore(text: &str) -> Dockerignore {
    Dockerignore::parse(text).unwrap()
}

#[test]
fn plain_names_match_the_path_and_everything_below() {
    let i = ignore("node_modules\nbuild/out\n");
    assert!(i.is_excluded("node_modules"));
    assert!(i.is_excluded("node_modules/a/b.js"));
    assert!(i.is_excluded("build/out/x"));
    assert!(!i.is_excluded("build/other"));
    assert!(
        !i.is_excluded("src/node_modules"),
        "patterns are anchored at the context root"
    );
    assert!(
        !i.is_excluded("node_modules_x"),
        "a prefix of a name is not the name"
    );
}

#[test]
fn single_star_and_question_mark_stay_within_one_element() {
    let i = ignore("*.md\ntmp?\n");
    assert!(i.is_excluded("README.md"));
    assert!(!i.is_excluded("docs/README.md"));
    assert!(i.is_excluded("tmp1"));
    assert!(!i.is_excluded("tmp12"));
    assert!(!i.is_excluded("tmp/"), "? does not match /");
}

#[test]
fn double_star_spans_directories() {
    let i = ignore("**/*.log\na/**/z\nend/**\n");
    assert!(i.is_excluded("x.log"));
    assert!(i.is_excluded("deep/er/x.log"));
    assert!(i.is_excluded("a/z"));
    assert!(i.is_excluded("a/b/c/z"));
    assert!(!i.is_excluded("a/bz"), "**/ matches whole elements");
    assert!(i.is_excluded("end/anything/at/all"));
    assert!(!i.is_excluded("xlog"));
    let all = ignore("**\n");
    assert!(all.is_excluded("anything") && all.is_excluded("a/b"));
    let odd = ignore("foo**bar\n");
    assert!(odd.is_excluded("foobar") && odd.is_excluded("foo/x/bar"));
    assert!(
        !odd.is_excluded("fooxbar"),
        "`**` not followed by `/` still means whole elements, as moby's regexp does"
    );
}

#[test]
fn character_classes_and_escapes() {
    let i = ignore("file[0-9]\nx[^ab]\nliteral\\*star\n");
    assert!(i.is_excluded("file7") && !i.is_excluded("filex"));
    assert!(i.is_excluded("xc") && !i.is_excluded("xa"));
    assert!(i.is_excluded("literal*star") && !i.is_excluded("literalXstar"));
}

#[test]
fn exceptions_and_last_match_wins() {
    let i = ignore("*.md\n!README.md\nREADME*.md\n");
    assert!(i.is_excluded("CHANGES.md"));
    assert!(
        i.is_excluded("README.md"),
        "the last matching pattern excludes it again"
    );
    let j = ignore("docs\n!docs/keep.txt\n");
    assert!(i.has_exclusions() && j.has_exclusions());
    assert!(j.is_excluded("docs/other.txt"));
    assert!(!j.is_excluded("docs/keep.txt"));
}

#[test]
fn patterns_are_cleaned_and_comments_skipped() {
    let i = ignore("\u{feff}# comment\n  ./a/b/  \n/c\n\n!/c/keep\n#d\n");
    let patterns: Vec<_> = i
        .patterns()
        .iter()
        .map(|p| (p.pattern.as_str(), p.exclusion))
        .collect();
    assert_eq!(patterns, [("a/b", false), ("c", false), ("c/keep", true)]);
    assert!(i.is_excluded("/a/b/x"), "the path to test is cleaned too");
    assert!(!i.is_excluded("d"));
}

#[test]
fn reincluding_the_parent_of_the_context_has_no_effect() {
    let i = ignore("*\n!../\n!../secret\n");
    assert!(i.is_excluded("anything"));
    assert!(i.is_excluded("secret"));
}

#[test]
fn directories_can_be_skipped_only_when_no_exception_reaches_inside() {
    let i = ignore("target\nvendor\n!vendor/keep\nlogs\n!**/*.important\n");
    assert!(
        !i.can_skip_dir("target"),
        "**/*.important could match inside target"
    );
    assert!(!i.can_skip_dir("vendor"), "vendor/keep may be re-included");
    assert!(
        !i.can_skip_dir("logs"),
        "a wildcard exception may match below any directory"
    );
    assert!(!i.can_skip_dir("src"), "not excluded at all");
    let j = ignore("target\ncache\n!cache/keep\n");
    assert!(j.can_skip_dir("target"));
    assert!(!j.can_skip_dir("cache"));
}

#[test]
fn bad_patterns_name_their_line() {
    for (text, line) in [
        ("ok\n[abc\n", 2),
        ("!\n", 1),
        ("a\nb\nc\\\n", 3),
        ("x[]y\n", 1),
    ] {
        match Dockerignore::parse(text) {
            Err(Error::Ignore { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn the_dockerfile_specific_ignore_file_takes_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path();
    std::fs::create_dir(context.join("docker")).unwrap();
    let dockerfile = context.join("docker/app.Dockerfile");
    assert_eq!(ignore_file_for(context, &dockerfile), None);
    std::fs::write(context.join(".dockerignore"), "a\n").unwrap();
    assert_eq!(
        ignore_file_for(context, &dockerfile),
        Some(context.join(".dockerignore"))
    );
    std::fs::write(context.join("docker/app.Dockerfile.dockerignore"), "b\n").unwrap();
    assert_eq!(
        ignore_file_for(context, &dockerfile),
        Some(context.join("docker/app.Dockerfile.dockerignore"))
    );
}

mod properties {
    use proptest::prelude::*;
    use strata_dockerfile::Dockerignore;

    fn pattern() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            prop::collection::vec(
                prop_oneof![
                    Just("a".to_owned()),
                    Just("b".to_owned()),
                    Just("*".to_owned()),
                    Just("**".to_owned()),
                    Just("?".to_owned()),
                    Just("[ab]".to_owned()),
                    Just("x.log".to_owned()),
                ],
                1..4,
            ),
        )
            .prop_map(|(negate, parts)| {
                format!("{}{}", if negate { "!" } else { "" }, parts.join("/"))
            })
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![Just("a"), Just("b"), Just("c"), Just("x.log"), Just("ab")],
            1..5,
        )
        .prop_map(|parts| parts.join("/"))
    }

    proptest! {
        /// Skipping a directory never loses a file that the patterns keep.
        #[test]
        fn a_skippable_directory_hides_nothing_included(
            patterns in prop::collection::vec(pattern(), 1..6),
            dir in path(),
            below in path(),
        ) {
            let ignore = Dockerignore::from_patterns(&patterns).unwrap();
            if ignore.can_skip_dir(&dir) {
                let child = format!("{dir}/{below}");
                prop_assert!(ignore.is_excluded(&child), "{patterns:?}: {dir} skippable, {child} included");
            }
        }
    }
}

/// Found by the `dockerignore` fuzz target: a `.` pattern must not make the context's root
/// skippable while the files below it stay included.
#[test]
fn the_context_root_is_never_excluded_or_skipped() {
    let i = ignore(".\n");
    assert!(!i.is_excluded("."));
    assert!(!i.can_skip_dir("."));
    assert!(!i.can_skip_dir("./"));
    assert!(!i.is_excluded("x"));
}
