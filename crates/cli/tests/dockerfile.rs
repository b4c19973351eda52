//! `strata dockerfile`, run as a linter or CI check would run it.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("dockerfile")
        .args(args)
        .output()
        .expect("strata runs")
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

    // Invalid stages: the tree is still printed, the error is in the JSON and on stderr.
    let bad = dir.path().join("Bad.Dockerfile");
    std::fs::write(&bad, "FROM scratch\nCOPY --nope=1 a b\n").unwrap();
    let out = run(&[bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:2:6: COPY: unknown flag: --nope",
            bad.display()
        )),
        "{stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ast"][1]["instruction"], "copy");
    assert_eq!(json["errors"][0]["line"], 2);
    assert!(json["stages"].is_null());
    let early = dir.path().join("Early.Dockerfile");
    std::fs::write(&early, "CMD [\"x\"]\nFROM scratch\n").unwrap();
    let out = run(&[early.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ast"][0]["instruction"], "cmd");
    assert_eq!(json["errors"][0]["line"], 1);

    // A syntax error prints no tree.
    let broken = dir.path().join("Broken.Dockerfile");
    std::fs::write(&broken, "FROM scratch\nRUN <<EOF\necho\n").unwrap();
    let out = run(&[broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(":2:"));

    let out = run(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}
