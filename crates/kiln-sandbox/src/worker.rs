//! The worker process: the engine, jailed, serving one app.
//!
//! Order matters: take the channel, initialise the engine, lock down
//! (Landlock, seccomp), and only then read anything the app supplied. After
//! lockdown the process can read and write its channel, allocate, tell the
//! time and sleep; anything else kills it.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Instant;

use kiln_ipc::{
    FromWorker, HostReply, LogLevel, MAX_PROGRAM_FRAME_BYTES, PROTOCOL_VERSION, ToWorker, read_frame,
    write_frame,
};

/// Entry point of `kiln __worker`. Never returns to app code on error: any
/// protocol or I/O failure ends the process, and the server replaces it.
pub fn worker_main() -> ExitCode {
    // A panic in the worker ends it at once (the server replaces it); no
    // unwinding through engine frames.
    std::panic::set_hook(Box::new(|_| std::process::abort()));
    let Ok(channel) = kiln_jail::inherited_channel() else {
        return ExitCode::from(2);
    };
    // Initialise the engine's process-wide state before the filter is in
    // place: the first runtime does one-time setup.
    kiln_js::warm_up();
    let jail = match kiln_jail::lockdown() {
        Ok(report) => report,
        Err(e) => {
            let _ = (&channel).write_all(format!("lockdown failed: {e}").as_bytes());
            return ExitCode::from(3);
        }
    };
    let mut worker =
        Worker { channel, program: None, next: None, last_entry: None, no_preload: HashSet::new() };
    if worker.send(&FromWorker::Ready { protocol: PROTOCOL_VERSION, jail }).is_err() {
        return ExitCode::from(4);
    }
    match worker.serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(()) => ExitCode::from(5),
    }
}

struct Worker {
    channel: UnixStream,
    program: Option<&'static kiln_js::Program>,
    /// The runtime the next invocation will use, made while idle.
    next: Option<kiln_js::Prepared>,
    /// The module the last invocation ran; the next runtime loads it ahead.
    last_entry: Option<String>,
    /// Modules that failed to load ahead (threw, ran too long, awaited the
    /// host): they load inside their invocations from then on.
    no_preload: HashSet<String>,
}

impl Worker {
    fn send(&mut self, message: &FromWorker) -> Result<(), ()> {
        write_frame(&mut self.channel, message).map_err(|_| ())
    }

    fn serve(&mut self) -> Result<(), ()> {
        loop {
            let message: ToWorker = read_frame(&mut self.channel, MAX_PROGRAM_FRAME_BYTES).map_err(|_| ())?;
            match message {
                ToWorker::Compile { modules, imports } => {
                    let reply = match kiln_js::compile(&modules, &imports) {
                        Ok(compiled) => FromWorker::Compiled { modules: compiled },
                        Err(kiln_js::CompileError::Module { module, message }) => {
                            FromWorker::CompileFailed { module, message }
                        }
                        Err(e) => FromWorker::CompileFailed { module: String::new(), message: e.to_string() },
                    };
                    self.send(&reply)?;
                }
                ToWorker::Load { program } => {
                    if self.program.is_some() {
                        // One program per worker, for its whole life.
                        return Err(());
                    }
                    let program = kiln_js::Program::load(program).map_err(|_| ())?;
                    self.program = Some(program);
                    self.send(&FromWorker::Loaded {})?;
                    self.next = Some(kiln_js::Prepared::new(program, None));
                }
                ToWorker::Invoke { invocation } => {
                    let program = self.program.ok_or(())?;
                    // A runtime made ahead for another module is used as is:
                    // the entry module then loads inside the invocation.
                    let prepared = self.next.take().unwrap_or_else(|| kiln_js::Prepared::new(program, None));
                    let mut host = IpcHost { channel: &mut self.channel, broken: false };
                    let (outcome, spent) = prepared.run(&invocation, &mut host);
                    if host.broken {
                        return Err(());
                    }
                    self.send(&FromWorker::Done { outcome })?;
                    // Tear down the used runtime and make the next one while
                    // the server is busy with the answer.
                    drop(spent);
                    let module = invocation.module;
                    let preload = (!self.no_preload.contains(&module)).then_some(module.as_str());
                    let (next, preloaded) = kiln_js::Prepared::with_preload(program, preload);
                    if preload.is_some() && !preloaded {
                        self.no_preload.insert(module.clone());
                    }
                    self.next = Some(next);
                    self.last_entry = Some(module);
                }
                ToWorker::Shutdown {} => return Ok(()),
                // A reply to a call of an invocation that has already ended
                // (it finished while calls were in flight): nothing awaits it.
                ToWorker::HostReply { .. } => {}
            }
        }
    }
}

/// The engine's view of the server during an invocation.
struct IpcHost<'a> {
    channel: &'a mut UnixStream,
    /// Set when the channel failed; the invocation is abandoned.
    broken: bool,
}

impl kiln_js::Host for IpcHost<'_> {
    fn log(&mut self, level: LogLevel, text: String) {
        if write_frame(self.channel, &FromWorker::Log { level, text }).is_err() {
            self.broken = true;
        }
    }

    fn call(&mut self, call: u64, capability: String, args: serde_json::Value) {
        if write_frame(self.channel, &FromWorker::HostCall { call, capability, args }).is_err() {
            self.broken = true;
        }
    }

    fn broken(&self) -> bool {
        self.broken
    }

    fn wait(&mut self, until: Instant) -> Option<(u64, HostReply)> {
        if self.broken {
            return None;
        }
        let timeout = until.saturating_duration_since(Instant::now());
        match kiln_jail::wait_readable(self.channel, timeout) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(_) => {
                self.broken = true;
                return None;
            }
        }
        match read_frame::<_, ToWorker>(self.channel, kiln_ipc::MAX_FRAME_BYTES) {
            Ok(ToWorker::HostReply { call, reply }) => Some((call, reply)),
            _ => {
                self.broken = true;
                None
            }
        }
    }
}
