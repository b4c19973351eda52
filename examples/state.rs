//! Checks a state directory (the `--state-dir` of builds): every blob against its digest,
//! every cache entry against its layer. With `--repair`, removes what is broken, so the next
//! build pulls or runs those steps again.
//!
//! ```sh
//! cargo run --example state -- [--repair] [STATE_DIR]
//! ```
//!
//! Exit codes: 0 nothing broken (or all of it repaired), 1 something broken, 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut repair = false;
    let mut dir = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--repair" => repair = true,
            flag if flag.starts_with('-') => {
                eprintln!("state: unknown flag {flag}\nusage: state [--repair] [STATE_DIR]");
                return ExitCode::from(2);
            }
            path => dir = Some(PathBuf::from(path)),
        }
    }
    let dir = dir.unwrap_or_else(strata::default_state_dir);
    let check = match strata::check_state(&dir, repair) {
        Ok(check) => check,
        Err(e) => {
            eprintln!("state: {e}");
            return ExitCode::from(2);
        }
    };
    for fault in &check.faults {
        let done = if fault.repaired { " (removed)" } else { "" };
        println!("broken: {}: {}{done}", fault.path.display(), fault.message);
    }
    for leftover in &check.leftovers {
        let done = if repair { " (removed)" } else { "" };
        println!("leftover: {}{done}", leftover.display());
    }
    println!(
        "{}: {} blobs ({:.1} MiB) and {} cache entries checked, {} broken, {} leftovers",
        dir.display(),
        check.blobs,
        check.bytes as f64 / (1 << 20) as f64,
        check.cache_entries,
        check.faults.len(),
        check.leftovers.len()
    );
    if check.faults.iter().all(|f| f.repaired) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
