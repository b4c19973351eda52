//! Secrets stay secret: a build with registry credentials (from a Docker config file), a
//! `--secret`, and a build arg named like a password, run through the executor with text and
//! JSON logs and a cache repository, a failing build too. The registry password and the
//! secret appear in no log line, event, error, layer, config, state file or registry file.
//! The build arg's value is in no layer, config or registry file either (strata's history,
//! unlike BuildKit's, does not record build args); it is in the local cache keys.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::path::Path;
use std::process::Output;

use base64::Engine as _;
use strata_testkit::{TestRegistry, push_busybox_image};

const REGISTRY_PASSWORD: &str = "reg-pass-Q7xv2";
const SECRET: &str = "secret-value-Zk9w4";
const BUILD_ARG: &str = "buildarg-pw-Jm3t8";

fn executor(cwd: &Path, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    command
        .current_dir(cwd)
        .args(["build", "--isolation", "namespaces"])
        .args(args)
        .env("SECRET_TOKEN", SECRET);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("strata runs")
}

fn assert_absent(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for secret in [REGISTRY_PASSWORD, SECRET] {
        assert!(!text.contains(secret), "{what} holds {secret}:\n{text}");
    }
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("ci-user:{REGISTRY_PASSWORD}"));
    assert!(
        !text.contains(&encoded),
        "{what} holds the encoded credentials"
    );
}

#[test]
fn secrets_appear_in_no_log_event_error_layer_or_config() {
    let registry = TestRegistry::builder()
        .basic_auth("ci-user", REGISTRY_PASSWORD)
        .start()
        .unwrap();
    let base = push_busybox_image(&registry, "base/busybox", "1").unwrap();
    let work = tempfile::tempdir().unwrap();
    // The registry credentials, where Kaniko users keep them.
    let docker = work.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("ci-user:{REGISTRY_PASSWORD}"));
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    std::fs::write(
        work.path().join("Dockerfile"),
        format!(
            "FROM {}\nARG DB_PASSWORD\nRUN --mount=type=secret,id=token,env=TOKEN \
             test \"${{#TOKEN}}\" = {} && echo checked > /checked\nRUN echo done > /done\n",
            base.reference,
            SECRET.len()
        ),
    )
    .unwrap();
    let state = work.path().join("state");
    let layout = work.path().join("layout");
    let destination = format!("{}/team/secret:1", registry.host());
    let build_arg = format!("DB_PASSWORD={BUILD_ARG}");
    let env = [("DOCKER_CONFIG", docker.as_path())];
    let cache_repo = format!("{}/team/cache", registry.host());
    let common = [
        "--cache-repo",
        &cache_repo,
        "--context",
        ".",
        "--state-dir",
        state.to_str().unwrap(),
        "--secret",
        "id=token,env=SECRET_TOKEN",
        "--build-arg",
        &build_arg,
        "--verbosity",
        "debug",
    ];
    let mut all_output = Vec::new();
    for format in ["text", "json"] {
        let out = executor(
            work.path(),
            &env,
            &[
                &common[..],
                &[
                    "--log-format",
                    format,
                    "--destination",
                    &destination,
                    "--oci-layout-path",
                    layout.to_str().unwrap(),
                ],
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        all_output.extend(out.stdout);
        all_output.extend(out.stderr);
    }
    // A build that fails (a wrong secret value is compared), with the same secrets around.
    std::fs::write(
        work.path().join("Dockerfile"),
        format!(
            "FROM {}\nARG DB_PASSWORD\nRUN --mount=type=secret,id=token,env=TOKEN test \"$TOKEN\" = nope\n",
            base.reference
        ),
    )
    .unwrap();
    let failed = executor(work.path(), &env, &common);
    assert_eq!(failed.status.code(), Some(1));
    all_output.extend(failed.stdout);
    all_output.extend(failed.stderr);
    assert_absent("the executor's output", &all_output);
    assert!(String::from_utf8_lossy(&all_output).contains("pushed"));

    // The image: every layer (uncompressed) and the config.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |digest: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let manifest: serde_json::Value = serde_json::from_slice(&blob(manifest_digest)).unwrap();
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    assert_absent("the image config", &config);
    assert!(!String::from_utf8_lossy(&config).contains(BUILD_ARG));
    for layer in manifest["layers"].as_array().unwrap() {
        let compressed = blob(layer["digest"].as_str().unwrap());
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_absent("a layer", &tar);
        assert!(
            !String::from_utf8_lossy(&tar).contains(BUILD_ARG),
            "a layer holds the build arg"
        );
    }
    // Nor anything the state directory keeps (cache entries, records, blobs).
    for entry in walk(&state) {
        assert_absent(
            &entry.display().to_string(),
            &std::fs::read(&entry).unwrap(),
        );
    }
    // Nor anything the registry stored: image, cache repository entries (there are some).
    assert!(
        registry
            .storage_dir()
            .join("docker/registry/v2/repositories/team/cache")
            .is_dir()
    );
    for file in walk(&registry.storage_dir()) {
        let bytes = std::fs::read(&file).unwrap();
        assert_absent(&file.display().to_string(), &bytes);
        assert!(
            !String::from_utf8_lossy(&bytes).contains(BUILD_ARG),
            "{} holds the build arg",
            file.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            files.extend(walk(&path));
        } else if path.is_file() {
            files.push(path);
        }
    }
    files
}
