//! The `harness` binary: parse the command line and hand over to [`harness::cli`].

fn main() -> std::process::ExitCode {
    harness::cli::main()
}
