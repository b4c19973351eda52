//! Property tests: printing a tree back as Dockerfile text and parsing it again gives the same
//! tree, whatever the formatting of the original; and no input makes the parser panic.

use proptest::prelude::*;
use strata_dockerfile::{Dockerfile, Plan, PlanOptions, parse};

fn word() -> impl Strategy<Value = String> {
    "[a-z0-9_./:$-]{1,8}".prop_filter("not a flag or heredoc", |w| {
        !w.starts_with("--") && !w.contains("<<")
    })
}

fn words(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(word(), 1..=max)
}

fn flag() -> impl Strategy<Value = String> {
    ("[a-z]{1,6}", prop::option::of("[a-z0-9=,/]{0,6}")).prop_map(|(name, value)| match value {
        Some(v) => format!("--{name}={v}"),
        None => format!("--{name}"),
    })
}

/// One instruction line (and heredoc body) in canonical spelling.
fn instruction() -> impl Strategy<Value = String> {
    prop_oneof![
        words(4).prop_map(|w| format!("FROM {}", w.join(" "))),
        (prop::collection::vec(flag(), 0..3), words(5)).prop_map(|(f, w)| format!(
            "RUN {} {}",
            f.join(" "),
            w.join(" ")
        )),
        words(4).prop_map(|w| format!("CMD {}", serde_json::to_string(&w).unwrap())),
        prop::collection::vec(("[A-Za-z_][A-Za-z0-9_]{0,5}", word()), 1..4).prop_map(|kv| format!(
            "ENV {}",
            kv.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        )),
        ("[A-Za-z_][A-Za-z0-9_]{0,5}", words(3))
            .prop_map(|(k, v)| format!("ENV {k} {}", v.join(" "))),
        (prop::collection::vec(flag(), 0..3), words(4)).prop_map(|(f, w)| format!(
            "COPY {} {} /dest/",
            f.join(" "),
            w.join(" ")
        )),
        words(3).prop_map(|w| format!("ARG {}", w.join(" "))),
        words(2).prop_map(|w| format!("ONBUILD RUN {}", w.join(" "))),
        words(2).prop_map(|w| format!("HEALTHCHECK --retries=3 CMD {}", w.join(" "))),
        Just("HEALTHCHECK NONE".to_owned()),
        words(3).prop_map(|w| format!("RUN <<EOF\n{}\nEOF", w.join("\n"))),
        words(1).prop_map(|w| format!("WORKDIR /{}", w[0])),
    ]
}

/// Re-spells a canonical line: lower-cased name, extra blanks, continuations and comments
/// between its words (heredoc bodies untouched).
fn respell(line: &str, lower: bool, continuation_every: usize) -> String {
    let (first, body) = match line.split_once('\n') {
        Some((first, body)) => (first, Some(body)),
        None => (line, None),
    };
    let mut out = String::new();
    for (i, part) in first.split(' ').filter(|p| !p.is_empty()).enumerate() {
        let part = if i == 0 && lower {
            part.to_lowercase()
        } else {
            part.to_owned()
        };
        if i > 0 {
            if continuation_every > 0
                && i % continuation_every == 0
                && !first.contains('[')
                && !part.contains("<<")
            {
                out.push_str(" \\\n# a comment in a continuation\n  ");
            } else {
                out.push_str("  ");
            }
        }
        out.push_str(&part);
    }
    out.push('\n');
    if let Some(body) = body {
        out.push_str(body);
        out.push('\n');
    }
    out
}

/// What must survive printing: name, flags, arguments, exec form, number of heredocs.
type Shape = (String, Vec<String>, Vec<String>, bool, usize);

fn shape(file: &Dockerfile) -> Vec<Shape> {
    file.nodes
        .iter()
        .map(|n| {
            (
                n.instruction.clone(),
                n.flags.clone(),
                n.args.clone(),
                n.json,
                n.heredocs.len(),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn printing_back_and_parsing_again_gives_the_same_tree(
        lines in prop::collection::vec((instruction(), any::<bool>(), 0usize..4), 1..12)
    ) {
        let text: String = lines.iter().map(|(line, lower, every)| respell(line, *lower, *every)).collect();
        let first = parse(&text).unwrap();
        let printed = first.to_dockerfile();
        let second = parse(&printed).unwrap();
        prop_assert_eq!(shape(&first), shape(&second), "original:\n{}\nprinted:\n{}", text, printed);
        for (a, b) in first.nodes.iter().zip(&second.nodes) {
            prop_assert_eq!(&a.heredocs, &b.heredocs);
            prop_assert_eq!(&a.onbuild.as_ref().map(|n| (&n.flags, &n.args)), &b.onbuild.as_ref().map(|n| (&n.flags, &n.args)));
        }
    }

    #[test]
    fn no_text_makes_the_parser_or_planner_panic(text in ".{0,400}") {
        if let Ok(file) = parse(&text) {
            let _ = Plan::new(&file, &PlanOptions::default());
        }
    }

    #[test]
    fn dockerfile_like_noise_never_panics(
        parts in prop::collection::vec(prop_oneof![
            Just("FROM ".to_owned()), Just("RUN ".to_owned()), Just("COPY ".to_owned()), Just("\\\n".to_owned()),
            Just("<<EOF".to_owned()), Just("EOF\n".to_owned()), Just("${a:-".to_owned()), Just("}".to_owned()),
            Just("\"".to_owned()), Just("'".to_owned()), Just("[\"".to_owned()), Just("--mount=".to_owned()),
            Just("# escape=`\n".to_owned()), Just("`".to_owned()), Just("ARG a=$b\n".to_owned()), Just("\n".to_owned()),
            "[a-z ]{0,4}".prop_map(|s| s),
        ], 0..40)
    ) {
        let text: String = parts.concat();
        if let Ok(file) = parse(&text)
            && let Ok(plan) = Plan::new(&file, &PlanOptions::default())
        {
            for stage in &plan.stages {
                let _ = plan.instructions(stage.index, &[]);
            }
        }
    }
}
