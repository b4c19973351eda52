//! What an embedder can tell about a failed build without reading the message: the kind, the
//! Dockerfile position, a RUN's exit code, a registry's HTTP status, whether to retry.

mod common;

use common::{Fixture, run};
use strata::ErrorKind;
use strata_testkit::{ContextBuilder, TestRegistry, push_busybox_image};

#[tokio::test(flavor = "multi_thread")]
async fn failures_have_kinds_a_caller_can_match() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();

    // A syntax error: the Dockerfile kind.
    let (result, _) = run(fx.build(context.path(), "FROM {base}\nRUN <<EOF\nnever ends\n")).await;
    let error = result.expect_err("an unterminated heredoc");
    assert_eq!(error.kind(), ErrorKind::Dockerfile, "{error}");

    // A RUN that exits 7: a failed step, its exit code and its line.
    let (result, _) = run(fx.build(context.path(), "FROM {base}\nRUN exit 7\n")).await;
    let error = result.expect_err("exit 7");
    assert_eq!(error.kind(), ErrorKind::StepFailed, "{error}");
    assert_eq!(error.exit_code(), Some(7), "{error}");
    assert_eq!(error.position().map(|p| p.line), Some(2), "{error}");
    assert!(!error.is_retryable());

    // An image the registry does not have: not found, HTTP 404.
    let missing = format!("{}/base/missing:1", fx.registry.host());
    let (result, _) = run(fx.build(context.path(), &format!("FROM {missing}\n"))).await;
    let error = result.expect_err("no such image");
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    assert_eq!(error.http_status(), Some(404), "{error}");
    assert!(!error.is_retryable(), "{error}");

    // A registry that wants credentials nobody gave: an authentication failure, HTTP 401.
    let guarded = TestRegistry::builder()
        .basic_auth("alice", "wonderland-3")
        .start()
        .unwrap();
    let base = push_busybox_image(&guarded, "base/busybox", "1").unwrap();
    let build = fx
        .build(context.path(), &format!("FROM {}\n", base.reference))
        .registry(strata::registry::RegistryClient::builder().build());
    let (result, _) = run(build).await;
    let error = result.expect_err("no credentials");
    assert_eq!(error.kind(), ErrorKind::Auth, "{error}");
    assert_eq!(error.http_status(), Some(401), "{error}");

    // A registry that is gone: a registry failure worth retrying later.
    let mut gone = TestRegistry::start().unwrap();
    let base = push_busybox_image(&gone, "base/busybox", "1").unwrap();
    gone.stop();
    let build = fx
        .build(context.path(), &format!("FROM {}\n", base.reference))
        .registry(
            strata::registry::RegistryClient::builder()
                .retries(0)
                .build(),
        );
    let (result, _) = run(build).await;
    let error = result.expect_err("connection refused");
    assert_eq!(error.kind(), ErrorKind::Registry, "{error}");
    assert!(error.is_retryable(), "{error}");
    assert_eq!(error.http_status(), None, "{error}");
}
