//! Arbitrary bytes as a Dockerfile: parse, plan, and type every stage. Nothing may panic,
//! overflow the stack, or take time out of proportion to the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_dockerfile::shell::{Lexer, NoEnv};
use strata_dockerfile::{Plan, PlanOptions, parse_bytes};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = parse_bytes(data) else { return };
    // What we print must parse again, for the trees `to_dockerfile` promises to write exactly:
    // every instruction's quotes balance (an unbalanced quote hides heredocs from the parser)
    // and no instruction ends in the escape character (left only by a file that ends inside a
    // continuation, or by odd blanks after the escape).
    let lexer = Lexer::new('\\').raw_quotes(true).raw_escapes(true);
    let escape = file.directives.escape;
    let printable = file.nodes.iter().all(|n| {
        lexer.process_words(&n.original, &NoEnv).is_ok() && !n.original.trim_end().ends_with(escape)
    });
    if printable {
        let printed = file.to_dockerfile();
        assert!(
            strata_dockerfile::parse(&printed).is_ok(),
            "printed text did not parse:\n{printed}"
        );
    }
    let Ok(plan) = Plan::new(&file, &PlanOptions::default()) else {
        return;
    };
    for stage in &plan.stages {
        let _ = plan.instructions(stage.index, &[]);
    }
});
