//! Prints a Dockerfile as JSON: its syntax tree (`ast`) and its stages with typed, expanded
//! instructions and the stage graph (`stages`). The tool a linter or CI check would call.
//!
//! ```sh
//! cargo run --example dockerfile_json -- PATH [--build-arg K=V]... [--target T]
//! ```
//!
//! Errors go to stderr as `PATH:LINE:COL: message` with exit code 1; usage errors exit 2.
//! Stages based on an image are expanded without the image's own `ENV` (this tool does not pull
//! images); stages based on another stage see that stage's `ENV`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde_json::{Value, json};
use strata::dockerfile::{Plan, PlanOptions, parse_bytes};

fn usage(message: &str) -> ExitCode {
    eprintln!("dockerfile_json: {message}");
    eprintln!("usage: dockerfile_json PATH [--build-arg K=V]... [--target T]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut path = None;
    let mut options = PlanOptions::default();
    let mut build_args = BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if arg.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "--build-arg" | "--target" => {
                let Some(value) = inline.or_else(|| args.next()) else {
                    return usage(&format!("{flag} needs a value"));
                };
                if flag == "--target" {
                    options.target = Some(value);
                } else {
                    let (key, value) = match value.split_once('=') {
                        Some((k, v)) => (k.to_owned(), v.to_owned()),
                        // `K` alone takes the value from the environment, as docker does.
                        None => match std::env::var(&value) {
                            Ok(v) => (value, v),
                            Err(_) => continue,
                        },
                    };
                    build_args.insert(key, value);
                }
            }
            "-h" | "--help" => {
                println!("usage: dockerfile_json PATH [--build-arg K=V]... [--target T]");
                return ExitCode::SUCCESS;
            }
            _ if flag.starts_with("--") => return usage(&format!("unknown flag {flag}")),
            _ if path.is_none() => path = Some(arg),
            _ => return usage(&format!("unexpected argument {arg}")),
        }
    }
    let Some(path) = path else {
        return usage("no Dockerfile path given");
    };
    options.build_args = build_args;
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(1);
        }
    };
    match render(&bytes, &options) {
        Ok(value) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{path}:{}:{}: {}", e.line(), e.column(), e.message());
            ExitCode::from(1)
        }
    }
}

fn render(bytes: &[u8], options: &PlanOptions) -> Result<Value, strata::dockerfile::Error> {
    let file = parse_bytes(bytes)?;
    let plan = Plan::new(&file, options)?;
    let mut stages = Vec::new();
    for stage in &plan.stages {
        let instructions = plan.instructions(stage.index, plan.inherited_env(stage.index))?;
        let mut value = serde_json::to_value(stage).unwrap_or(Value::Null);
        value["needed"] = json!(plan.needed.contains(&stage.index));
        value["instructions"] = serde_json::to_value(&instructions).unwrap_or(Value::Null);
        stages.push(value);
    }
    Ok(json!({
        "ast": file.nodes,
        "directives": file.directives,
        "warnings": file.warnings,
        "stages": {
            "global_args": plan.global_args,
            "target": plan.target,
            "build_order": plan.needed,
            "unused_build_args": plan.unused_build_args,
            "stages": stages,
        },
    }))
}
