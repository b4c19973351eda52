//! Records the commit the binary is built from, for `strata --version` (`STRATA_COMMIT`
//! overrides; `unknown` outside a git checkout).

fn main() {
    println!("cargo:rerun-if-env-changed=STRATA_COMMIT");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    let commit = std::env::var("STRATA_COMMIT").ok().or_else(|| {
        std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
    });
    println!(
        "cargo:rustc-env=STRATA_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".to_owned())
    );
}
