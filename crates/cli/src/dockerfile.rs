//! `strata dockerfile PATH`: a Dockerfile's syntax tree (`ast`) and its stages with typed,
//! expanded instructions and the stage graph (`stages`), as JSON on stdout. The tool a
//! linter or a CI check calls.
//!
//! The tree is printed whenever the text parses, even when the stages are invalid (a `CMD`
//! before `FROM`, an unknown flag, an expansion error); those errors are then in the JSON's
//! `errors` and on stderr as `PATH:LINE:COL: message`, and the exit code is 1. A syntax
//! error prints no tree. Stages based on an image are expanded without the image's own
//! `ENV` (nothing is pulled); stages based on another stage see that stage's `ENV`.

use serde_json::{Value, json};
use strata::dockerfile::{Plan, PlanOptions, parse_bytes};

use crate::Failure;
use crate::cli::DockerfileArgs;

/// Runs `strata dockerfile`.
pub fn run(args: &DockerfileArgs) -> Result<(), Failure> {
    let mut options = PlanOptions::default();
    for text in &args.build_args {
        match text.split_once('=') {
            Some((k, v)) => {
                options.build_args.insert(k.to_owned(), v.to_owned());
            }
            // `K` alone takes the value from the environment, as docker does.
            None => {
                if let Ok(v) = std::env::var(text) {
                    options.build_args.insert(text.clone(), v);
                }
            }
        }
    }
    options.target = args.target.clone();
    let path = args.path.display().to_string();
    let bytes = std::fs::read(&args.path).map_err(|e| Failure::Build(format!("{path}: {e}")))?;
    let position = |e: &strata::dockerfile::Error| {
        format!("{path}:{}:{}: {}", e.line(), e.column(), e.message())
    };
    let file = parse_bytes(&bytes).map_err(|e| Failure::Build(position(&e)))?;
    let (stages, error) = match stages(&file, &options) {
        Ok(stages) => (stages, None),
        Err(e) => (Value::Null, Some(e)),
    };
    let errors: Vec<Value> = error
        .iter()
        .map(|e| json!({ "line": e.line(), "column": e.column(), "message": e.message() }))
        .collect();
    let value = json!({
        "ast": file.nodes,
        "directives": file.directives,
        "warnings": file.warnings,
        "stages": stages,
        "errors": errors,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
    match error {
        Some(e) => Err(Failure::Build(position(&e))),
        None => Ok(()),
    }
}

fn stages(
    file: &strata::dockerfile::Dockerfile,
    options: &PlanOptions,
) -> Result<Value, strata::dockerfile::Error> {
    let plan = Plan::new(file, options)?;
    let mut stages = Vec::new();
    for stage in &plan.stages {
        let instructions = plan.instructions(stage.index, plan.inherited_env(stage.index))?;
        let mut value = serde_json::to_value(stage).unwrap_or(Value::Null);
        value["needed"] = json!(plan.needed.contains(&stage.index));
        value["instructions"] = serde_json::to_value(&instructions).unwrap_or(Value::Null);
        stages.push(value);
    }
    Ok(json!({
        "global_args": plan.global_args,
        "target": plan.target,
        "build_order": plan.needed,
        "unused_build_args": plan.unused_build_args,
        "stages": stages,
    }))
}
