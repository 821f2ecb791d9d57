//! The command-line edge: clap definitions, dispatch, and mapping errors to exit codes.
//!
//! Typed errors from the library become `anyhow` here and nowhere deeper; each command returns
//! the exit code it wants (see [`crate::exit`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{commands, exit};

#[derive(Debug, Parser)]
#[command(name = "harness", version, about = "Bring network-function VMs up and down on lab hosts over SSH", after_help = exit::HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Directory of templates overriding the embedded ones (same file names).
    #[arg(long, global = true, value_name = "DIR", env = "HARNESS_TEMPLATES")]
    pub templates: Option<PathBuf>,
    /// Record unknown SSH host keys in known_hosts instead of refusing (changed keys are always refused).
    #[arg(long, global = true)]
    pub accept_new_host_keys: bool,
    /// OpenSSH client config to honour (default ~/.ssh/config; `none` to ignore it).
    #[arg(short = 'F', long = "ssh-config", global = true, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// TCP connect timeout per node.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// SSH handshake + authentication timeout per node.
    #[arg(long, global = true, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub auth_timeout: Duration,
    /// Default timeout of one remote command.
    #[arg(long, global = true, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Nodes in flight at once; the others wait for a slot (and the output says so).
    #[arg(long, global = true, value_name = "N", default_value_t = crate::slots::DEFAULT_MAX_PARALLEL,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65535))]
    pub max_parallel: usize,
    /// Progress display: bars on a terminal, plain timestamped lines otherwise.
    #[arg(long, global = true, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,
    /// Where local run records are kept (default $XDG_STATE_HOME/harness or ~/.local/state/harness).
    #[arg(long, global = true, value_name = "DIR", env = "HARNESS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    Auto,
    Bars,
    Plain,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a topology file; print every error with file:line:column.
    Validate(ValidateArgs),
    /// Print what `up` would run: per VM the exact command and every file, without touching any host.
    Render(RenderArgs),
    /// Pre-flight every DUT in parallel (SSH, sudo, qemu, KVM, hugepages, CPUs, tools); changes nothing.
    Check(CheckArgs),
    /// Run a command on the selected nodes concurrently.
    Exec(ExecArgs),
    /// Start every VM of the topology, wait until ready, pin vCPUs.
    Up(UpArgs),
    /// Show what runs where, read from the hosts themselves.
    Status(StatusArgs),
    /// Print (or follow) a VM's serial log.
    Logs(LogsArgs),
    /// Stop exactly what `up` started, and nothing else.
    Down(DownArgs),
    /// Ping a VM's guest agent over one persistent channel and print round-trip times.
    Ping(PingArgs),
    /// Run a command inside a guest through its agent; its output and exit code are ours.
    GuestExec(GuestExecArgs),
    /// Pack a run's reproduction record (topology, templates, facts, plan, version) into a tar.gz.
    Bundle(BundleArgs),
    /// Re-plan a bundle with fresh facts, show the drift, and run it again.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    pub topology: PathBuf,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    pub topology: PathBuf,
    /// Only this VM (repeatable).
    #[arg(long = "vm", value_name = "NAME")]
    pub vms: Vec<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Run id used in the rendered remote paths.
    #[arg(long, default_value = "RUN_ID")]
    pub run_id: String,
    /// Host facts (`<node>.json` / `<node>.lscpu`, as `check --save-facts` writes them): plan
    /// exactly as `up` would on those hosts. Without it, host-dependent decisions are listed as
    /// unresolved.
    #[arg(long, value_name = "DIR")]
    pub facts: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    pub topology: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write each node's facts to DIR/<node>.json and its raw `lscpu -p` to DIR/<node>.lscpu
    /// (for `render --facts DIR`).
    #[arg(long, value_name = "DIR")]
    pub save_facts: Option<PathBuf>,
    /// Write a JUnit XML report: per node a testcase per check item.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub topology: PathBuf,
    /// Only these nodes (repeatable; default every DUT).
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// Run under `sudo -n`.
    #[arg(long)]
    pub sudo: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Run the command N times in a row per node over the same connection (benchmarks).
    #[arg(long, default_value_t = 1, hide = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    pub topology: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Run id (default: generated, `YYYYmmdd-HHMMSS-xxxx`).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Only these VMs (repeatable).
    #[arg(long = "vm", value_name = "NAME")]
    pub vms: Vec<String>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// CI outputs of `up` (and `replay`).
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Write a JUnit XML report: a testcase per node setup and per VM.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Collect artifacts (serial logs, argv, files, manifests, facts, counters, events, result,
    /// reproduction bundle) into DIR, before anything is stopped.
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// When `--artifacts` collects: only when `up` fails, or on every run.
    #[arg(long, value_enum, default_value_t = ArtifactsOn::Failure, requires = "artifacts")]
    pub artifacts_on: ArtifactsOn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArtifactsOn {
    Failure,
    Always,
}

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Run id (its local run record under --state-dir).
    pub run: String,
    /// Output file.
    #[arg(short, long, value_name = "FILE.tar.gz")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A bundle from `harness bundle` (or an artifacts directory's bundle.tar.gz).
    pub bundle: PathBuf,
    /// Take the nodes (hosts, users, keys) from this topology instead: the same VMs elsewhere.
    #[arg(long, value_name = "NEW.yaml")]
    pub topology: Option<PathBuf>,
    /// Gather facts, re-plan and show the drift; start nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Start even when the plan differs from the bundle's.
    #[arg(long)]
    pub allow_drift: bool,
    /// Only these VMs (repeatable; default the bundle's selection).
    #[arg(long = "vm", value_name = "NAME")]
    pub vms: Vec<String>,
    /// Run id of the replay (default: the bundle's, so paths and argv are the same bytes).
    #[arg(long)]
    pub run_id: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Topology whose DUTs to ask (default: the nodes in local run records).
    pub topology: Option<PathBuf>,
    /// Only this run.
    #[arg(long = "run", value_name = "ID")]
    pub run: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// VM name (e.g. DUT1_1).
    pub vm: String,
    /// Topology the VM belongs to (default: from the local run record).
    pub topology: Option<PathBuf>,
    #[arg(long = "run", value_name = "ID")]
    pub run: Option<String>,
    /// Keep streaming until the VM exits (exit 0) or Ctrl-C / SIGTERM (exit 130).
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Stop runs on this topology's DUTs (the caller's runs started from this file, or `--run`).
    pub topology: Option<PathBuf>,
    #[arg(long = "run", value_name = "ID")]
    pub run: Option<String>,
    /// With TOPOLOGY: also runs started by others (`user@host` other than the caller's).
    #[arg(long)]
    pub all: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write a JUnit XML report: a testcase per VM stopped.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Before stopping: collect serial logs, argv, files, manifests, facts and VNF counters into DIR.
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PingArgs {
    /// VM name (e.g. DUT1_1).
    pub vm: String,
    /// Topology the VM belongs to (default: from the local run record).
    pub topology: Option<PathBuf>,
    #[arg(long = "run", value_name = "ID")]
    pub run: Option<String>,
    /// Number of guest-ping round trips (1 to 1000000).
    #[arg(short = 'c', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub count: u32,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Clap's value parser for duration flags: the crate's one syntax ([`crate::duration`]).
#[derive(Debug, Args)]
pub struct GuestExecArgs {
    /// VM name (e.g. DUT1_1).
    pub vm: String,
    /// Topology the VM belongs to (default: from the local run record).
    pub topology: Option<PathBuf>,
    #[arg(long = "run", value_name = "ID")]
    pub run: Option<String>,
    /// How long the command may run in the guest.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// The program and its arguments (after `--`); no shell unless you run one.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            // Errors quote what hosts, guests and fact files said: escaped, never raw.
            eprintln!("error: {}", crate::report::sanitize::escape_control_lines(&format!("{err:#}")));
            commands::exit_code_for(&err)
        }
    };
    ExitCode::from(code)
}

fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let g = &cli.global;
    match &cli.command {
        Command::Validate(a) => commands::validate::run(g, a),
        Command::Render(a) => commands::render::run(g, a),
        Command::Check(a) => commands::runtime()?.block_on(commands::check::run(g, a)),
        Command::Exec(a) => commands::runtime()?.block_on(commands::exec::run(g, a)),
        Command::Up(a) => commands::runtime()?.block_on(commands::up::run(g, a)),
        Command::Status(a) => commands::runtime()?.block_on(commands::status::run(g, a)),
        Command::Logs(a) => commands::runtime()?.block_on(commands::logs::run(g, a)),
        Command::Down(a) => commands::runtime()?.block_on(commands::down::run(g, a)),
        Command::Ping(a) => commands::runtime()?.block_on(commands::ping::run(g, a)),
        Command::GuestExec(a) => commands::runtime()?.block_on(commands::guest_exec::run(g, a)),
        Command::Bundle(a) => commands::bundle::run(g, a),
        Command::Replay(a) => commands::runtime()?.block_on(commands::replay::run(g, a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("120s").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn regression_connect_timeout_1e30s_panics() {
        // `--connect-timeout 1e30s` used to panic in Duration::from_secs_f64 (exit 101).
        let err = Cli::try_parse_from(["harness", "--connect-timeout", "1e30s", "validate", "t.yaml"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(parse_duration("1.5s").unwrap() == Duration::from_millis(1500));
    }

    /// `ping -c 4000000000` reserved room for four billion round-trip times up front: a 32 GB
    /// allocation, and an abort.
    #[test]
    fn regression_ping_count_is_bounded() {
        for bad in ["4000000000", "0"] {
            let err = Cli::try_parse_from(["harness", "ping", "DUT1_1", "-c", bad]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
        assert!(Cli::try_parse_from(["harness", "ping", "DUT1_1", "-c", "1000000"]).is_ok());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
