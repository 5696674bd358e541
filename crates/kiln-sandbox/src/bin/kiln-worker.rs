//! A stand-alone worker executable, for this crate's tests and benchmarks.
//! The `kiln` binary serves the same role with its hidden `__worker`
//! subcommand.

fn main() -> std::process::ExitCode {
    kiln_sandbox::worker::worker_main()
}
