//! `strata state check|repair|prune`: maintenance of a state directory.
//!
//! `check` hashes every blob against its digest and reads every cache entry (exit 1 when
//! something is broken); `repair` also removes what is broken, so the next build pulls or
//! runs those steps again; `prune` removes the least recently used entries until the state
//! fits, never while a build uses the directory.

use crate::Failure;
use crate::cli::{StateAction, StateArgs};
use crate::executor::{go_duration, parse_size};

/// Runs `strata state`.
pub fn run(args: &StateArgs) -> Result<(), Failure> {
    let dir = args
        .state_dir
        .clone()
        .unwrap_or_else(strata::default_state_dir);
    match &args.action {
        StateAction::Check | StateAction::Repair => {
            let repair = matches!(args.action, StateAction::Repair);
            let check = strata::check_state(&dir, repair)?;
            for fault in &check.faults {
                let done = if fault.repaired { " (removed)" } else { "" };
                println!("broken: {}: {}{done}", fault.path.display(), fault.message);
            }
            for leftover in &check.leftovers {
                let done = if repair { " (removed)" } else { "" };
                println!("leftover: {}{done}", leftover.display());
            }
            println!(
                "{}: {} blobs ({:.1} MiB), {} cache entries and {} extracted layers checked, \
                 {} broken, {} leftovers",
                dir.display(),
                check.blobs,
                check.bytes as f64 / (1 << 20) as f64,
                check.cache_entries,
                check.layers,
                check.faults.len(),
                check.leftovers.len()
            );
            if check.faults.iter().all(|f| f.repaired) {
                Ok(())
            } else {
                Err(Failure::Build(format!(
                    "{} broken entries in {} (strata state repair removes them)",
                    check.faults.len(),
                    dir.display()
                )))
            }
        }
        StateAction::Prune {
            max_size,
            max_age,
            wait,
        } => {
            let mut options = strata::PruneOptions::new().wait(*wait);
            if let Some(text) = max_size {
                options = options.max_size(parse_size(text).ok_or_else(|| {
                    Failure::Usage(format!("--max-size {text}: expected a size like 10G"))
                })?);
            }
            if let Some(text) = max_age {
                options = options.max_age(go_duration(text).ok_or_else(|| {
                    Failure::Usage(format!("--max-age {text}: expected a duration like 7d"))
                })?);
            }
            let report = strata::prune_state(&dir, &options)?;
            println!("{report}");
            Ok(())
        }
    }
}
