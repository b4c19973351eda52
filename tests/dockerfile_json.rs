//! The `dockerfile_json` example, run as a linter or CI check would run it.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .args(["--example", "dockerfile_json", "--"])
        .args(args)
        .output()
        .expect("cargo runs")
}

#[test]
fn prints_the_tree_and_the_stages_and_reports_errors_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("Dockerfile");
    std::fs::write(
        &good,
        "ARG V=1\nFROM busybox:$V AS build\nRUN <<EOF\necho hi\nEOF\nFROM scratch AS unused\nFROM scratch\nCOPY --from=build /a /b\n",
    )
    .unwrap();
    let out = run(&[good.to_str().unwrap(), "--build-arg", "V=2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ast"][2]["instruction"], "run");
    assert_eq!(json["ast"][2]["heredocs"][0]["content"], "echo hi\n");
    assert_eq!(
        (
            json["ast"][2]["start_line"].as_u64(),
            json["ast"][2]["end_line"].as_u64()
        ),
        (Some(3), Some(5))
    );
    assert_eq!(json["stages"]["stages"][0]["base"]["ref"], "busybox:2");
    assert_eq!(json["stages"]["stages"][1]["needed"], false);
    assert_eq!(json["stages"]["build_order"], serde_json::json!([0, 2]));
    assert_eq!(
        json["stages"]["stages"][2]["instructions"][0]["from"],
        "build"
    );

    let target = run(&[good.to_str().unwrap(), "--target", "unused"]);
    let json: serde_json::Value = serde_json::from_slice(&target.stdout).unwrap();
    assert_eq!(json["stages"]["build_order"], serde_json::json!([1]));

    let bad = dir.path().join("Bad.Dockerfile");
    std::fs::write(&bad, "FROM scratch\nCOPY --nope=1 a b\n").unwrap();
    let out = run(&[bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}:2:6: COPY: unknown flag: --nope",
            bad.display()
        )),
        "{stderr}"
    );

    let out = run(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}
