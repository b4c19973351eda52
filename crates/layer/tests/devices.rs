//! Device nodes where the kernel refuses to create them (an unprivileged user, a user
//! namespace): left out of the tree with a warning, never a failed extraction.

use strata_layer::{Entry, EntryKind, Extractor, LayerWriter, Metadata};

fn layer() -> Vec<u8> {
    let entry = |path: &str, kind: EntryKind| Entry {
        path: path.into(),
        kind,
        metadata: Metadata {
            mode: 0o644,
            ..Default::default()
        },
    };
    let mut blob = Vec::new();
    LayerWriter::new()
        .write(
            vec![
                entry("dev", EntryKind::Dir),
                entry("dev/null", EntryKind::CharDevice { major: 1, minor: 3 }),
                entry(
                    "file",
                    EntryKind::File {
                        source: std::env::current_exe().unwrap(),
                        size: std::fs::metadata(std::env::current_exe().unwrap())
                            .unwrap()
                            .len(),
                    },
                ),
            ],
            &mut blob,
        )
        .unwrap();
    blob
}

/// Runs the inner test as `nobody`, who may not make device nodes.
#[test]
fn device_nodes_that_cannot_be_made_are_skipped_with_a_warning() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    // The layer is written here, as root can read its own executable for the file entry.
    let blob = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(blob.path(), layer()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(blob.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["unprivileged_inner", "--exact", "--ignored", "--nocapture"])
        .env("STRATA_DEVICE_LAYER", blob.path())
        .env("TMPDIR", "/tmp")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 passed"), "the inner test ran: {stdout}");
}

#[test]
#[ignore = "run by device_nodes_that_cannot_be_made_are_skipped_with_a_warning as nobody"]
fn unprivileged_inner() {
    let blob = std::fs::read(std::env::var("STRATA_DEVICE_LAYER").unwrap()).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let report = Extractor::new()
        .allow_devices(true)
        .apply(&blob[..], dest.path())
        .unwrap();
    assert!(dest.path().join("file").is_file());
    assert!(dest.path().join("dev/null").symlink_metadata().is_err());
    assert!(
        report.warnings.iter().any(|w| w.contains("dev/null")),
        "{:?}",
        report.warnings
    );
}
