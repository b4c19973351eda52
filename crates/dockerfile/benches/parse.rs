//! Parse a generated 5,000-line Dockerfile (every instruction kind, continuations, heredocs),
//! and parse + plan + type and expand every instruction of it.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use strata_dockerfile::{Plan, PlanOptions};

/// A Dockerfile of about `lines` lines that uses every instruction kind.
fn generated(lines: usize) -> String {
    let mut text =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=busybox\nFROM $BASE AS base\n");
    let mut i = 0;
    while text.lines().count() < lines {
        text.push_str(&format!(
            "ENV V{i}=\"value {i}\" PATH=/opt/{i}:$PATH\n\
             LABEL org.example.step{i}=\"${{V{i}:-none}}\"\n\
             RUN --mount=type=cache,target=/cache/{i} echo step {i} \\\n    && ls /cache/{i}\n\
             COPY --chown=1000:1000 --chmod=0644 src/{i}/ /app/{i}/\n\
             RUN <<EOF\necho heredoc {i}\nEOF\n\
             WORKDIR /work/${{V{i}%% *}}\n\
             EXPOSE {port}/tcp\n\
             HEALTHCHECK --interval=30s CMD [\"true\"]\n",
            port = 1000 + i % 60000,
        ));
        i += 1;
    }
    text.push_str("CMD [\"/bin/sh\"]\n");
    text
}

fn bench(c: &mut Criterion) {
    let text = generated(5_000);
    c.bench_function("parse 5000-line Dockerfile", |b| {
        b.iter(|| strata_dockerfile::parse(std::hint::black_box(&text)))
    });
    c.bench_function("parse + expand 5000-line Dockerfile", |b| {
        b.iter(|| {
            let file = strata_dockerfile::parse(std::hint::black_box(&text))
                .expect("the generated file parses");
            let plan = Plan::new(&file, &PlanOptions::default()).expect("the generated file plans");
            plan.instructions(plan.target, plan.inherited_env(plan.target))
                .expect("the generated file expands")
                .len()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
