//! Credentials from Docker's config, helpers and containers auth files; never in Debug output.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use strata_registry::{Credential, Credentials};

fn basic(user: &str, password: &str) -> Credential {
    Credential::Basic {
        username: user.into(),
        password: password.into(),
    }
}

#[test]
fn docker_config_auths_in_every_form() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    fs::write(
        &config,
        r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOmh1YnB3"},
            "registry.example.com": {"username": "u", "password": "p"},
            "http://localhost:5000/v2/": {"auth": "bG9jYWw6c2VjcmV0"},
            "ghcr.io": {"identitytoken": "refresh-token"}
        }}"#,
    )
    .unwrap();
    let creds = Credentials::none().docker_config(&config);
    assert_eq!(creds.get("docker.io").unwrap(), basic("hub", "hubpw"));
    assert_eq!(creds.get("index.docker.io").unwrap(), basic("hub", "hubpw"));
    assert_eq!(creds.get("registry.example.com").unwrap(), basic("u", "p"));
    assert_eq!(
        creds.get("localhost:5000").unwrap(),
        basic("local", "secret")
    );
    assert_eq!(
        creds.get("ghcr.io").unwrap(),
        Credential::IdentityToken("refresh-token".into())
    );
    assert_eq!(creds.get("quay.io").unwrap(), Credential::Anonymous);
}

#[test]
fn explicit_credentials_win_and_auth_files_come_after_docker() {
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("config.json");
    fs::write(
        &docker,
        r#"{"auths": {"a.example": {"username": "docker", "password": "1"}}}"#,
    )
    .unwrap();
    let containers = dir.path().join("auth.json");
    fs::write(
        &containers,
        r#"{"auths": {"a.example": {"auth": "eDp5"}, "b.example": {"auth": "Yjpj"}}}"#,
    )
    .unwrap();
    let creds = Credentials::none()
        .docker_config(&docker)
        .auth_file(&containers);
    assert_eq!(creds.get("a.example").unwrap(), basic("docker", "1"));
    assert_eq!(creds.get("b.example").unwrap(), basic("b", "c"));
    let creds = creds.insert("a.example", basic("given", "2"));
    assert_eq!(creds.get("a.example").unwrap(), basic("given", "2"));
}

#[test]
#[allow(unsafe_code)]
fn credential_helpers_are_asked() {
    let dir = tempfile::tempdir().unwrap();
    let helper = dir.path().join("docker-credential-fake");
    fs::write(
        &helper,
        "#!/bin/sh\nread server\ncase \"$server\" in\n  helped.example) echo '{\"ServerURL\":\"helped.example\",\"Username\":\"hu\",\"Secret\":\"hs\"}' ;;\n  token.example) echo '{\"Username\":\"<token>\",\"Secret\":\"tk\"}' ;;\n  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n",
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // SAFETY: nextest runs every test in its own process, and this one starts no threads
    // before changing PATH.
    unsafe { std::env::set_var("PATH", path) };
    let config = dir.path().join("config.json");
    fs::write(
        &config,
        r#"{"credsStore": "fake", "credHelpers": {"token.example": "fake"}}"#,
    )
    .unwrap();
    let creds = Credentials::none().docker_config(&config);
    assert_eq!(creds.get("helped.example").unwrap(), basic("hu", "hs"));
    assert_eq!(
        creds.get("token.example").unwrap(),
        Credential::IdentityToken("tk".into())
    );
    assert_eq!(creds.get("other.example").unwrap(), Credential::Anonymous);
}

#[test]
fn secrets_stay_out_of_debug_output_and_errors() {
    let credential = basic("alice", "hunter2-secret");
    assert!(!format!("{credential:?}").contains("hunter2"));
    assert!(
        !format!("{:?}", Credential::IdentityToken("tok-secret".into())).contains("tok-secret")
    );
    let creds = Credentials::none().insert("x.example", credential);
    assert!(!format!("{creds:?}").contains("hunter2"));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    fs::write(
        &config,
        r#"{"auths": {"x.example": {"auth": "not base64 hunter2-secret"}}}"#,
    )
    .unwrap();
    let err = Credentials::none()
        .docker_config(&config)
        .get("x.example")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not base64") && !err.contains("hunter2"),
        "{err}"
    );
    fs::write(
        &config,
        r#"{"auths": {"x.example": {"password": "hunter2-secret" "#,
    )
    .unwrap();
    let err = Credentials::none()
        .docker_config(&config)
        .get("x.example")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not valid JSON") && !err.contains("hunter2"),
        "{err}"
    );
}
