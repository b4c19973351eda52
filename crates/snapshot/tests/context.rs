//! Build-context digests: sensitive to what a COPY would copy, blind to the rest.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use strata_snapshot::{HashMemo, Visit, hash_context};

fn context(root: &Path) {
    fs::create_dir_all(root.join("src/nested")).unwrap();
    fs::write(root.join("src/main.rs"), "fn main() {}").unwrap();
    fs::write(root.join("src/nested/lib.rs"), "pub fn f() {}").unwrap();
    fs::write(root.join("README.md"), "docs").unwrap();
    fs::create_dir_all(root.join("target/debug")).unwrap();
    fs::write(root.join("target/debug/app"), "binary").unwrap();
    symlink("src/main.rs", root.join("entry")).unwrap();
}

fn visit(path: &str, _is_dir: bool) -> Visit {
    if path == "target" {
        Visit::Prune
    } else if path.ends_with(".md") {
        Visit::Exclude
    } else {
        Visit::Include
    }
}

fn digest(root: &Path) -> String {
    hash_context(root, &[String::new()], &visit, &mut HashMemo::new())
        .unwrap()
        .digest
}

fn changed_by(change: fn(&Path)) -> bool {
    let dir = tempfile::tempdir().unwrap();
    context(dir.path());
    let before = digest(dir.path());
    change(dir.path());
    before != digest(dir.path())
}

#[test]
fn contents_names_modes_and_link_targets_change_the_digest() {
    assert!(changed_by(|r| fs::write(
        r.join("src/main.rs"),
        "fn main() { }"
    )
    .unwrap()));
    assert!(changed_by(|r| fs::rename(
        r.join("src/main.rs"),
        r.join("src/start.rs")
    )
    .unwrap()));
    assert!(changed_by(|r| fs::set_permissions(
        r.join("src/main.rs"),
        fs::Permissions::from_mode(0o755)
    )
    .unwrap()));
    assert!(changed_by(|r| {
        fs::remove_file(r.join("entry")).unwrap();
        symlink("src/nested/lib.rs", r.join("entry")).unwrap();
    }));
    assert!(changed_by(|r| fs::write(r.join("src/new.rs"), "").unwrap()));
    assert!(changed_by(|r| fs::create_dir(r.join("src/empty")).unwrap()));
}

#[test]
fn times_owners_and_excluded_files_do_not() {
    assert!(!changed_by(|r| {
        let file = fs::File::options()
            .write(true)
            .open(r.join("src/main.rs"))
            .unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
    }));
    assert!(!changed_by(|r| std::os::unix::fs::lchown(
        r.join("src/main.rs"),
        Some(4242),
        Some(4242)
    )
    .unwrap()));
    assert!(!changed_by(|r| fs::write(
        r.join("README.md"),
        "other docs"
    )
    .unwrap()));
    assert!(!changed_by(|r| fs::write(
        r.join("target/debug/app"),
        "rebuilt"
    )
    .unwrap()));
}

#[test]
fn the_walk_order_does_not_matter() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for name in ["x", "y", "z"] {
        fs::write(a.path().join(name), name).unwrap();
    }
    for name in ["z", "y", "x"] {
        fs::write(b.path().join(name), name).unwrap();
    }
    assert_eq!(digest(a.path()), digest(b.path()));
}

#[test]
fn per_file_digests_name_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    context(dir.path());
    let before = hash_context(
        dir.path(),
        &["src".to_owned()],
        &visit,
        &mut HashMemo::new(),
    )
    .unwrap();
    fs::write(dir.path().join("src/nested/lib.rs"), "pub fn g() {}").unwrap();
    let after = hash_context(
        dir.path(),
        &["src".to_owned()],
        &visit,
        &mut HashMemo::new(),
    )
    .unwrap();
    let differing: Vec<_> = before
        .files
        .iter()
        .zip(&after.files)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0.as_str())
        .collect();
    assert_eq!(differing, ["src/nested/lib.rs"]);
}

#[test]
fn the_memo_makes_an_unchanged_context_cost_a_metadata_scan() {
    let dir = tempfile::tempdir().unwrap();
    context(dir.path());
    let state = tempfile::tempdir().unwrap();
    let memo_path = state.path().join("memo.bin");
    let mut memo = HashMemo::load(&memo_path).unwrap();
    let first = hash_context(dir.path(), &[String::new()], &visit, &mut memo).unwrap();
    assert_eq!(memo.stats(), (0, 2));
    memo.save(&memo_path).unwrap();

    let mut memo = HashMemo::load(&memo_path).unwrap();
    let second = hash_context(dir.path(), &[String::new()], &visit, &mut memo).unwrap();
    assert_eq!(first, second);
    assert_eq!(memo.stats(), (2, 0), "nothing hashed again");
    // Nothing was hashed: saving writes nothing (the file keeps its inode and time).
    let before = fs::metadata(&memo_path).unwrap();
    memo.save(&memo_path).unwrap();
    let after = fs::metadata(&memo_path).unwrap();
    assert_eq!(
        (before.ino(), before.modified().unwrap()),
        (after.ino(), after.modified().unwrap())
    );

    // Same size, same mtime, new contents: the ctime gives it away.
    let meta = fs::metadata(dir.path().join("src/main.rs")).unwrap();
    fs::write(dir.path().join("src/main.rs"), "fn main() {-}").unwrap();
    fs::File::options()
        .write(true)
        .open(dir.path().join("src/main.rs"))
        .unwrap()
        .set_modified(meta.modified().unwrap())
        .unwrap();
    let third = hash_context(dir.path(), &[String::new()], &visit, &mut memo).unwrap();
    assert_ne!(second.digest, third.digest);
    assert_eq!(memo.stats(), (3, 1));

    memo.save(&memo_path).unwrap();
    assert!(HashMemo::check(&memo_path).is_ok());
    // Damage anywhere (a cut, a flipped count, another format) starts over, and the state
    // check says so; it never allocates what a count claims.
    let good = fs::read(&memo_path).unwrap();
    for bad in [
        b"not a memo".to_vec(),
        good[..good.len() - 1].to_vec(),
        {
            let mut b = good.clone();
            b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        },
        [good.as_slice(), b"x"].concat(),
        {
            // A path that claims 4 GiB.
            let mut b = good.clone();
            b[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
            b
        },
    ] {
        fs::write(&memo_path, &bad).unwrap();
        assert_eq!(
            HashMemo::load(&memo_path).unwrap(),
            HashMemo::new(),
            "a damaged memo starts over"
        );
        assert!(HashMemo::check(&memo_path).is_err());
    }
}

#[test]
fn the_memo_forgets_files_that_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    context(dir.path());
    let state = tempfile::tempdir().unwrap();
    let memo_path = state.path().join("memo.bin");
    let mut memo = HashMemo::new();
    hash_context(dir.path(), &[String::new()], &visit, &mut memo).unwrap();
    memo.save(&memo_path).unwrap();
    let size = fs::metadata(&memo_path).unwrap().len();
    // A deleted file leaves the memo at the next save, though nothing was hashed.
    fs::remove_file(dir.path().join("src/nested/lib.rs")).unwrap();
    let mut memo = HashMemo::load(&memo_path).unwrap();
    hash_context(dir.path(), &[String::new()], &visit, &mut memo).unwrap();
    assert_eq!(memo.stats(), (1, 0));
    memo.save(&memo_path).unwrap();
    // Appended to the journal, the memo file itself untouched.
    assert_eq!(fs::metadata(&memo_path).unwrap().len(), size);
    assert!(HashMemo::journal_path(&memo_path).is_file());
    assert_eq!(HashMemo::load(&memo_path).unwrap().len(), 1, "forgotten");
    // A walk of one directory forgets nothing outside it.
    let mut memo = HashMemo::load(&memo_path).unwrap();
    let before = fs::read(&memo_path).unwrap();
    hash_context(dir.path(), &["src/nested".to_owned()], &visit, &mut memo).unwrap();
    memo.save(&memo_path).unwrap();
    assert_eq!(fs::read(&memo_path).unwrap(), before);
    let mut memo = HashMemo::load(&memo_path).unwrap();
    hash_context(dir.path(), &[String::new()], &visit, &mut memo).unwrap();
    assert_eq!(memo.stats(), (1, 0), "src/main.rs still known");
}

/// Saving costs what changed: a one-file change appends one block to the journal; a
/// journal that has grown is folded into the memo; a torn block is dropped, never misread.
#[test]
fn a_save_appends_what_changed_and_a_long_journal_is_folded_in() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3000 {
        let sub = dir.path().join(format!("d{}", i / 100));
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    let all = [String::new()];
    let state = tempfile::tempdir().unwrap();
    let memo_path = state.path().join("memo.bin");
    let journal = HashMemo::journal_path(&memo_path);
    let mut memo = HashMemo::load(&memo_path).unwrap();
    let first = hash_context(dir.path(), &all, &visit, &mut memo).unwrap();
    memo.save(&memo_path).unwrap();
    let whole = fs::read(&memo_path).unwrap();
    assert!(!journal.exists());

    fs::write(dir.path().join("d7/f700"), "changed").unwrap();
    let mut memo = HashMemo::load(&memo_path).unwrap();
    let second = hash_context(dir.path(), &all, &visit, &mut memo).unwrap();
    assert_ne!(first.digest, second.digest);
    assert_eq!(memo.stats(), (2999, 1));
    memo.save(&memo_path).unwrap();
    assert_eq!(
        fs::read(&memo_path).unwrap(),
        whole,
        "the memo file is not rewritten"
    );
    let appended = fs::metadata(&journal).unwrap().len();
    assert!(
        appended < 200,
        "one record and a block's frame: {appended} bytes"
    );
    assert!(HashMemo::check(&memo_path).is_ok());
    let mut memo = HashMemo::load(&memo_path).unwrap();
    assert_eq!(
        hash_context(dir.path(), &all, &visit, &mut memo).unwrap(),
        second
    );
    assert_eq!(memo.stats(), (3000, 0), "the journal's entry is known");

    // A torn block (a build killed while appending) is dropped: its file is hashed again,
    // and the state check names the journal.
    let bytes = fs::read(&journal).unwrap();
    fs::write(&journal, &bytes[..bytes.len() - 1]).unwrap();
    let mut memo = HashMemo::load(&memo_path).unwrap();
    assert_eq!(
        hash_context(dir.path(), &all, &visit, &mut memo).unwrap(),
        second
    );
    assert_eq!(memo.stats(), (2999, 1));
    let error = HashMemo::check(&memo_path).unwrap_err();
    assert!(matches!(&error, strata_snapshot::Error::Memo { path, .. } if *path == journal));
    // The next save writes the memo whole and drops the journal: nothing is ever appended
    // behind a block that does not check out.
    memo.save(&memo_path).unwrap();
    assert!(!journal.exists());
    let mut memo = HashMemo::load(&memo_path).unwrap();
    hash_context(dir.path(), &all, &visit, &mut memo).unwrap();
    assert_eq!(memo.stats(), (3000, 0));

    // Two builds that start the journal at once both write its first bytes: still read.
    let block = &bytes[16..];
    fs::write(&journal, [&bytes[..], &bytes[..16], block].concat()).unwrap();
    assert!(HashMemo::check(&memo_path).is_ok());
    fs::write(&journal, &bytes).unwrap();

    // Changes past an eighth of the memo (or 1,024 records) fold the journal in.
    for i in 0..1100 {
        fs::write(
            dir.path().join(format!("d{}/f{i}", i / 100)),
            format!("new {i}"),
        )
        .unwrap();
    }
    let mut memo = HashMemo::load(&memo_path).unwrap();
    let third = hash_context(dir.path(), &all, &visit, &mut memo).unwrap();
    memo.save(&memo_path).unwrap();
    assert!(!journal.exists(), "folded into the memo");
    assert_ne!(fs::read(&memo_path).unwrap(), whole);
    let mut memo = HashMemo::load(&memo_path).unwrap();
    assert_eq!(
        hash_context(dir.path(), &all, &visit, &mut memo).unwrap(),
        third
    );
    assert_eq!(memo.stats(), (3000, 0));
}
