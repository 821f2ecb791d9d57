//! Test-only pause points, so the fault suite can act at an exact phase instead of sleeping and
//! hoping. With `HARNESS_TEST_PAUSE_AT=<phase>[:<node or VM>]`, `up` or `down` prints
//! `harness-test: paused at <phase> <name> (pid N)` on stderr when it reaches that phase and waits
//! for SIGUSR1 (a SIGINT/SIGTERM interrupts it like any other phase). Phases: `claimed` (run
//! directory claimed, nothing else written), `uploaded` (VM directories and files written),
//! `hugepages` (the allocation script is in flight), `serial` (a VM's serial stream is open);
//! and in `down`, `down` (a node's run found, none of its VMs stopped yet).
//! Unset, every pause point returns at once.

use tokio::signal::unix::{SignalKind, signal};

pub(crate) async fn at(phase: &str, name: &str) {
    let Ok(want) = std::env::var("HARNESS_TEST_PAUSE_AT") else { return };
    let (p, n) = want.split_once(':').unwrap_or((want.as_str(), ""));
    if p != phase || (!n.is_empty() && n != name) {
        return;
    }
    // Registered before the line is printed: a SIGUSR1 right after it must not kill us.
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else { return };
    eprintln!("harness-test: paused at {phase} {name} (pid {})", std::process::id());
    usr1.recv().await;
}
