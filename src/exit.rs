//! Semantic exit codes, shared by every subcommand and documented in `--help` and the README.

/// Everything asked for was done.
pub const OK: u8 = 0;
/// A check or remote command failed (`check` found a missing requirement, `exec` had a nonzero exit).
pub const FAILED: u8 = 1;
/// Invalid input: the topology, a template, a bundle or the command line is wrong. Nothing was changed on any host.
pub const INVALID_INPUT: u8 = 2;
/// A node could not be reached or authenticated (connect, host key, auth), or its connection was lost mid-run.
pub const UNREACHABLE: u8 = 3;
/// `up` failed (start, readiness, pinning); what it started was stopped again.
pub const UP_FAILED: u8 = 4;
/// `replay` refused to start: the plan made now differs from the bundle's (`--allow-drift`).
pub const DRIFT: u8 = 5;
/// Interrupted by Ctrl-C / SIGTERM; what was started was stopped again.
pub const INTERRUPTED: u8 = 130;

pub const HELP: &str = "\
Exit codes:
  0    ok
  1    a check or remote command failed
  2    invalid input (topology, template, arguments, bundle, a run id in use); nothing was changed on any host
  3    a node was unreachable, refused authentication / host key, or lost its connection
  4    `up` failed; everything it had started was stopped again
  5    `replay` refused to start: the plan drifted from the bundle's (see --allow-drift)
  130  interrupted (Ctrl-C / SIGTERM); everything started was stopped again";
