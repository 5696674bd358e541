//! What forking an invocation process costs on this machine: `fork`, the
//! child's seccomp filter, `_exit` and the parent's `waitpid`, for a parent
//! with more or less memory of its own. Figures and their reading are in
//! docs/PERFORMANCE.md.
//!
//! ```sh
//! cargo run --release -p kiln-jail --example fork_cost [FORKS]
//! ```
//!
//! Each row is the mean over FORKS (default 2000) round trips; the rows
//! take turns for three rounds so that drift in the machine's speed falls
//! on all of them alike. The filters are the jail's own, installed on
//! nothing else: this process stays unconfined.

use std::time::Instant;

use kiln_jail::seccomp::{self, Profile};
use seccompiler::BpfProgram;

/// What the child installs before it exits.
#[derive(Debug, Clone, Copy)]
enum ChildFilter {
    None,
    /// The whole invocation allow-list, as children installed it until
    /// 2026-11-30.
    AllowList,
    /// The layer children install now, over the template's filter.
    Layer,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let forks: u32 = std::env::args().nth(1).map(|n| n.parse()).transpose()?.unwrap_or(2000);
    let allow_list = seccomp::program(Profile::Invocation)?;
    let layer = seccomp::invocation_layer()?;
    report(&format!(
        "{forks} forks per row; allow-list {} instructions, layer {}",
        allow_list.len(),
        layer.len()
    ));
    let filters = [ChildFilter::None, ChildFilter::AllowList, ChildFilter::Layer];
    let mut memory: Vec<Vec<u8>> = Vec::new();
    for round in 1..=3 {
        for filter in filters {
            let program = match filter {
                ChildFilter::None => None,
                ChildFilter::AllowList => Some(&allow_list),
                ChildFilter::Layer => Some(&layer),
            };
            let mean = mean_fork_micros(forks, program)?;
            report(&format!("round {round}: child filter {filter:?}: {mean:.0} µs per fork"));
        }
        // The parent's own touched memory, which fork maps into the child
        // and exit unmaps again.
        for megabytes in [1usize, 2, 4] {
            while memory.len() < megabytes {
                memory.push(vec![1u8; 1 << 20]);
            }
            let mean = mean_fork_micros(forks, Some(&layer))?;
            report(&format!(
                "round {round}: child filter Layer, parent +{megabytes} MiB: {mean:.0} µs per fork"
            ));
        }
        memory.clear();
        memory.shrink_to_fit();
    }
    std::hint::black_box(&memory);
    Ok(())
}

/// Mean microseconds for `forks` rounds of fork, filter, `_exit`, `waitpid`.
fn mean_fork_micros(forks: u32, filter: Option<&BpfProgram>) -> Result<f64, std::io::Error> {
    let start = Instant::now();
    for _ in 0..forks {
        // SAFETY: this example is single-threaded, so the child is a
        // faithful copy; it only installs a filter and calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let installed = filter.is_none_or(|program| seccompiler::apply_filter(program).is_ok());
            // SAFETY: _exit ends the child without running the parent's
            // exit handlers.
            unsafe { libc::_exit(if installed { 0 } else { 1 }) };
        }
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked, writing to a local.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid || status != 0 {
            return Err(std::io::Error::other(format!("child {pid} ended with status {status}")));
        }
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(forks))
}

#[expect(clippy::print_stdout, reason = "an example prints its figures")]
fn report(line: &str) {
    println!("{line}");
}
