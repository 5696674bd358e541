//! A worker executable for this crate's end-to-end tests (Cargo gives
//! integration tests the path of their own crate's binaries only). The
//! `kiln` binary serves the same role with its hidden `__worker` subcommand.

fn main() -> std::process::ExitCode {
    kiln_sandbox::worker::worker_main()
}
