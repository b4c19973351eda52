//! The fixed cost of one step: namespaces, mounts, pivot_root, fork, exec of `/bin/true`,
//! teardown. Needs root (or unprivileged user namespaces) and busybox-static.

#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use strata_sandbox::{Cancel, Network, Sandbox, Step};

fn fixed_cost(c: &mut Criterion) {
    let root = tempfile::tempdir().unwrap();
    strata_testkit::busybox_rootfs(root.path()).unwrap();
    let sandbox = Sandbox::new().unwrap();
    let cancel = Cancel::new();
    let mut group = c.benchmark_group("step");
    for (name, network) in [
        ("true", Network::Host),
        ("true_network_none", Network::None),
    ] {
        let step = Step::exec(root.path(), ["/bin/true"]).network(network);
        group.bench_function(name, |b| {
            b.iter(|| {
                let outcome = sandbox.run(&step, &cancel, |_, _| {}).unwrap();
                assert!(outcome.status.success());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fixed_cost);
criterion_main!(benches);
