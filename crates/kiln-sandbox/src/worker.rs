//! The worker process: the engine, jailed, serving one app.
//!
//! Order matters: take the channel, initialise the engine, lock down
//! (Landlock, seccomp), and only then read anything the app supplied. After
//! lockdown the process can read and write its channel, allocate, tell the
//! time and sleep, and (as a template only) fork; anything else kills it.
//!
//! The worker locks down as a *template* and compiles untrusted source only
//! in children forked for it. Once it has its program, it serves in one of
//! three modes, chosen by the server:
//!
//! - reset: it gives up forking, keeps one prepared runtime, snapshots its
//!   own writable memory (`kiln_jail::Snapshot`) and serves every
//!   invocation in itself from that runtime, putting its memory back as it
//!   was after each: every invocation starts from the same bytes, as a
//!   forked child does, without a fork or an exit (`Worker::serve_reset`).
//!   Where no snapshot can be taken it serves in place alone.
//! - forked: it keeps one prepared runtime (the prelude loaded, the entry
//!   modules calls use evaluated, as the server names them) and never runs
//!   an invocation itself. Each child gets a channel of its own, made by
//!   the server, which keeps the other end (`ToWorker::Standby`), and
//!   restricts itself to the invocation allow-list (no fork, no wait:
//!   `kiln_jail::fork_with_channel` does both before returning). It serves the one request the server
//!   sends on that channel and exits. A standby is forked while the current
//!   child serves, so forks and exits happen beside calls, not between
//!   them. Every invocation starts from the same prepared state, nothing it
//!   does survives it, a process that outlives its invocation holds nothing
//!   but a channel the server has closed, and a large bundle's bytecode is
//!   read and its top level run once per worker, not per call.
//! - in place: each invocation runs in a fresh runtime prepared ahead
//!   (cheaper than a fork for small programs). The template forks two
//!   children that take turns on the channel the same way: while one
//!   serves a call, the other has its runtime ready, and a child frees its
//!   used runtime and prepares the next after passing the turn on. A
//!   child lives for many calls but never reuses a runtime. If it cannot
//!   fork, the template gives up forking for good and serves in place
//!   itself.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Instant;

use kiln_ipc::{
    FromWorker, HostReply, LogLevel, MAX_PROGRAM_FRAME_BYTES, PROTOCOL_VERSION, ToWorker, read_frame,
    write_frame,
};
use kiln_jail::Forked;

/// Entry modules kept evaluated in the template, at most.
const MAX_PRELOADED: usize = 16;

/// How long a standby child waits for a request before it prepares a
/// runtime of its own (see `Worker::standby`).
const OWN_RUNTIME_AFTER: std::time::Duration = std::time::Duration::from_millis(1);

/// How a forked child ends, for the template: it served its request; it
/// failed (its channel broke, or the server broke the protocol); or the
/// server asked the worker to shut down. Nothing else: any other ending
/// ends the worker, so a child has no way to tell the template more.
const SERVED: i32 = 0;
const FAILED: i32 = 1;
const SHUTDOWN: i32 = 2;

/// The byte that hands the shared channel from one in-place child to the
/// other. Forked children pass on the number of the child that comes next
/// instead (see `Worker::standby`).
const TURN: u8 = b'T';

/// Entry point of `kiln __worker`. Never returns to app code on error: any
/// protocol or I/O failure ends the process, and the server replaces it.
pub fn worker_main() -> ExitCode {
    // A panic in the worker ends it at once (the server replaces it); no
    // unwinding through engine frames.
    std::panic::set_hook(Box::new(|_| std::process::abort()));
    let Ok(channel) = kiln_jail::inherited_channel() else {
        return ExitCode::from(2);
    };
    // A worker that will fork per invocation moves its code onto huge
    // pages first, while it has one thread and no filter. Where that is not
    // possible or fails, it serves all the same, only slower.
    let code_on_huge_pages = kiln_jail::huge_pages_requested()
        && matches!(kiln_jail::move_code_to_huge_pages(), Ok(kiln_jail::HugeCode::Moved { .. }));
    // A worker that will put its memory back after each invocation keeps
    // its heap where that can be done from the start, and opens its own
    // memory map while it still may. Without either it serves in place.
    let can_reset = kiln_jail::snapshots_requested()
        && kiln_jail::keep_heap_contiguous().is_ok()
        && kiln_jail::open_own_maps().is_ok();
    // Initialise the engine's process-wide state before the filter is in
    // place: the first runtime does one-time setup.
    kiln_js::warm_up();
    // Made before lockdown: a locked-down process cannot create pipes.
    let Ok(turn) = kiln_jail::turn_pipe() else {
        return ExitCode::from(2);
    };
    let jail = match kiln_jail::lockdown_template() {
        Ok(report) => kiln_ipc::JailReport { code_on_huge_pages, ..report },
        Err(e) => {
            let _ = (&channel).write_all(format!("lockdown failed: {e}").as_bytes());
            return ExitCode::from(3);
        }
    };
    let mut worker = Worker {
        channel,
        turn: Some(turn),
        program: None,
        fork: false,
        can_reset,
        template: None,
        preloads: Preloads::default(),
    };
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
    /// Which child may read the channel (see `serve_forked` and
    /// `serve_in_place_children`).
    turn: Option<(std::fs::File, std::fs::File)>,
    program: Option<&'static kiln_js::Program>,
    /// Whether invocations fork from `template` (else `template` is the
    /// fresh runtime the next invocation uses, in this process).
    fork: bool,
    /// Whether this worker can serve by putting its memory back
    /// (`serve_reset`).
    can_reset: bool,
    /// The prepared runtime every invocation forks from, or (without
    /// `fork`) the next invocation's runtime.
    template: Option<kiln_js::Prepared>,
    preloads: Preloads,
}

/// Which entry modules a worker evaluates ahead of the calls that use them.
#[derive(Debug, Default)]
struct Preloads {
    /// Entry modules the template has evaluated, each once.
    evaluated: Vec<String>,
    /// Modules that failed to load ahead (threw, ran too long, awaited the
    /// host): they load inside their invocations from then on.
    refused: HashSet<String>,
}

impl Preloads {
    /// Whether the worker has already decided about `module`.
    fn knows(&self, module: &str) -> bool {
        self.evaluated.iter().any(|m| m == module) || self.refused.contains(module)
    }

    /// Whether rebuilding the template with `module` evaluated is worth it.
    /// The server names the module of every forked call as it sends the
    /// next child's channel; the same module named again must not rebuild
    /// the template twice or take a second slot.
    fn wants(&self, module: &str) -> bool {
        !self.knows(module) && self.evaluated.len() < MAX_PRELOADED
    }

    /// Record the outcome of building a runtime with `evaluated` loaded
    /// ahead, of which `failed` could not be.
    fn settle(&mut self, failed: Vec<String>) {
        self.evaluated.retain(|m| !failed.contains(m));
        self.refused.extend(failed);
    }
}

impl Worker {
    fn send(&mut self, message: &FromWorker) -> Result<(), ()> {
        write_frame(&mut self.channel, message).map_err(|_| ())
    }

    fn serve(&mut self) -> Result<(), ()> {
        loop {
            if self.fork {
                return self.serve_forked();
            }
            let message: ToWorker = read_frame(&mut self.channel, MAX_PROGRAM_FRAME_BYTES).map_err(|_| ())?;
            match message {
                ToWorker::Compile { modules, imports } => self.compile(&modules, &imports)?,
                ToWorker::Load { program, fork, reset, env } => {
                    if self.program.is_some() {
                        // One program per worker, for its whole life.
                        return Err(());
                    }
                    let program = kiln_js::Program::load_with_env(program, &env).map_err(|_| ())?;
                    self.program = Some(program);
                    if reset && !fork && self.can_reset {
                        // Invocations run in this process: it gives up forking first.
                        kiln_jail::restrict_to_invocation().map_err(drop)?;
                        self.template = Some(kiln_js::Prepared::new(program, None));
                        let modules = program.module_ids();
                        match kiln_jail::Snapshot::take(None) {
                            Ok(snapshot) => {
                                self.send(&FromWorker::Loaded { memory_reset: true })?;
                                return self.serve_reset(snapshot, modules);
                            }
                            // Served in place instead: a fresh runtime per
                            // invocation (the one just made is the first).
                            Err(_) => {
                                self.send(&FromWorker::Loaded { memory_reset: false })?;
                                continue;
                            }
                        }
                    }
                    self.send(&FromWorker::Loaded { memory_reset: false })?;
                    if fork {
                        self.fork = true;
                        self.template = Some(kiln_js::Prepared::new(program, None));
                    } else if !self.serve_in_place_children()? {
                        // No child could be forked: invocations run in this
                        // process, which gives up forking first.
                        kiln_jail::restrict_to_invocation().map_err(drop)?;
                        self.template = Some(kiln_js::Prepared::new(program, None));
                    } else {
                        return Ok(());
                    }
                }
                ToWorker::Invoke { invocation } => self.invoke_in_place(invocation, None)?,
                ToWorker::Shutdown {} => return Ok(()),
                // A reply to a call of an invocation that has already ended
                // (it finished while calls were in flight): nothing awaits it.
                ToWorker::HostReply { .. } => {}
                // Only a forked worker takes children's channels.
                ToWorker::Standby { .. } => return Err(()),
            }
        }
    }

    /// Compile untrusted source in a child, never in this process.
    fn compile(
        &mut self,
        modules: &[kiln_ipc::SourceModule],
        imports: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, kiln_ipc::Import>>,
    ) -> Result<(), ()> {
        let pid = match kiln_jail::fork_invocation() {
            Ok(Forked::Child) => {
                let reply = match kiln_js::compile(modules, imports) {
                    Ok(compiled) => FromWorker::Compiled { modules: compiled },
                    Err(kiln_js::CompileError::Module { module, message }) => {
                        FromWorker::CompileFailed { module, message }
                    }
                    Err(e) => FromWorker::CompileFailed { module: String::new(), message: e.to_string() },
                };
                let sent = self.send(&reply);
                kiln_jail::exit_now(if sent.is_ok() { SERVED } else { FAILED });
            }
            Ok(Forked::Parent(pid)) => pid,
            Err(_) => return Err(()),
        };
        match kiln_jail::wait_child(pid).map_err(drop)? {
            exit if exit.code == Some(SERVED) => Ok(()),
            exit => {
                let _ = self.send(&FromWorker::InvocationDied { code: exit.code, signal: exit.signal });
                Err(())
            }
        }
    }

    /// Serve a loaded program by forking. Two children live at a time, each
    /// on a channel of its own that the server made and sent for it: the
    /// older serves the next request, and a standby forked while it works
    /// waits for the one after. So forking, setting up the child's filter
    /// and tearing the previous child down all happen beside a call instead
    /// of between two. The template itself only takes channels, forks,
    /// waits, and keeps the modules calls use evaluated.
    fn serve_forked(&mut self) -> Result<(), ()> {
        let program = self.program.ok_or(())?;
        let modules = program.module_ids();
        let turn = self.turn.take().ok_or(())?;
        // Children are numbered as forked; the first is told at once that
        // no child comes before it.
        let mut number: u8 = 0;
        (&turn.1).write_all(&[number]).map_err(drop)?;
        let mut children = 0;
        // A channel taken but not yet given to a child (no room to fork).
        let mut pending: Option<UnixStream> = None;
        loop {
            while children < 2 {
                let channel = match pending.take() {
                    Some(channel) => channel,
                    None => match self.take_channel()? {
                        Some((channel, module)) => {
                            // Evaluated ahead for the children forked from
                            // now on, if the program has it.
                            if let Some(module) = module.filter(|m| modules.contains(m)) {
                                self.preload(program, module);
                            }
                            channel
                        }
                        // The server is done with the worker.
                        None => return Ok(()),
                    },
                };
                match kiln_jail::fork_with_channel(&channel) {
                    Ok(Forked::Child) => self.standby(&turn, number),
                    Ok(Forked::Parent(_)) => {
                        children += 1;
                        number = number.wrapping_add(1);
                    }
                    // No room for a standby (a process limit): serve with
                    // one child at a time.
                    Err(_) if children > 0 => {
                        pending = Some(channel);
                        break;
                    }
                    Err(_) => return Err(()),
                }
            }
            let exit = kiln_jail::wait_any_child().map_err(drop)?;
            children -= 1;
            match exit.code {
                Some(SERVED) => {}
                // The standby dies with the template (its parent-death signal).
                Some(SHUTDOWN) => return Ok(()),
                // The worker ends after saying why.
                _ => {
                    let _ = self.send(&FromWorker::InvocationDied { code: exit.code, signal: exit.signal });
                    return Err(());
                }
            }
        }
    }

    /// Serve a loaded program from one prepared runtime in this process,
    /// putting all of the process's writable memory back as it was before
    /// each invocation (`kiln_jail::Snapshot`): every invocation starts
    /// from the same state, as a forked child does, without a fork, an
    /// exit or a child's faults on the template's pages. A module the
    /// server calls is evaluated into the prepared runtime after its first
    /// call, and the snapshot taken again. `snapshot` is the first, taken
    /// with the runtime prepared. Returns when the worker's life is over.
    ///
    /// Whatever this loop keeps from one invocation to the next must have
    /// been made before the snapshot it is restored to (as `modules` was):
    /// memory allocated after it is handed out again once it is restored.
    fn serve_reset(&mut self, mut snapshot: kiln_jail::Snapshot, modules: Vec<String>) -> Result<(), ()> {
        let program = self.program.ok_or(())?;
        loop {
            let Some(template) = self.template.as_ref() else { return Err(()) };
            let channel = &mut self.channel;
            // Whatever the invocation does to memory is undone when this
            // returns; what it returns is plain data.
            let (served, _restored) =
                snapshot.run_then_restore(template, |prepared| serve_one(channel, prepared, &modules));
            // Debug builds (every test) check every restore byte for byte,
            // before anything here writes to memory.
            if cfg!(debug_assertions) {
                let differing = snapshot.pages_differing();
                if differing != 0 {
                    return self.refuse_next(format!(
                        "{differing} pages of this worker's memory differ from its snapshot after a restore"
                    ));
                }
            }
            match served {
                Served::Invoked(module) => {
                    if let Some(module) = module.and_then(|i| modules.get(i))
                        && self.preloads.wants(module)
                    {
                        self.preload(program, module.clone());
                        snapshot = kiln_jail::Snapshot::take(Some(snapshot)).map_err(drop)?;
                    }
                }
                Served::Shutdown => return Ok(()),
                Served::Failed => return Err(()),
            }
        }
    }

    /// Answer the next invocation with a platform error saying `why`, then
    /// end: for a worker that can no longer serve (the server would replace
    /// a worker that just ended without anyone hearing why).
    fn refuse_next(&mut self, why: String) -> Result<(), ()> {
        if let Ok(ToWorker::Invoke { .. }) = read_frame(&mut self.channel, MAX_PROGRAM_FRAME_BYTES) {
            let error = kiln_ipc::InvocationError::new(kiln_ipc::ErrorCode::PlatformError, why);
            let _ = self.send(&FromWorker::Done { outcome: kiln_ipc::Outcome::Err(error) });
        }
        Err(())
    }

    /// The next child's channel, from the server (`ToWorker::Standby`, the
    /// channel riding along), and the module to evaluate ahead; `None` if
    /// the server shuts the worker down.
    fn take_channel(&mut self) -> Result<Option<(UnixStream, Option<String>)>, ()> {
        let mut reader = PassedReader { channel: &self.channel, passed: Vec::new() };
        let message = read_frame::<_, ToWorker>(&mut reader, kiln_ipc::MAX_FRAME_BYTES).map_err(drop)?;
        let mut passed = reader.passed;
        match message {
            // From the server, which made it: a Unix stream socket.
            ToWorker::Standby { module } if passed.len() == 1 => {
                Ok(passed.pop().map(|fd| (UnixStream::from(fd), module)))
            }
            ToWorker::Shutdown {} => Ok(None),
            _ => Err(()),
        }
    }

    /// A forked child, number `number`: wait for a request on its own
    /// channel, serve it from the template's prepared runtime, tell the next
    /// child it has answered, then end.
    fn standby(&mut self, turn: &(std::fs::File, std::fs::File), number: u8) -> ! {
        // Back-to-back requests are served from the template's state at
        // once. After a gap (no request a moment after the child before
        // this one answered), the child prepares a runtime of its own while
        // it waits: the call then writes to pages it already owns instead
        // of copying the template's (about 90 copy-on-write faults a call).
        // The turn only paces this: bytes meant for another child, stale or
        // forged, are dropped, and a request is served whether or not the
        // turn came.
        let idle = loop {
            match kiln_jail::wait_any([turn.0.as_fd(), self.channel.as_fd()], None) {
                Ok([_, true]) => break false,
                Ok([true, false]) => {
                    if take_turn(&turn.0) == Some(number) {
                        break matches!(
                            kiln_jail::wait_readable(&self.channel, OWN_RUNTIME_AFTER),
                            Ok(false)
                        );
                    }
                }
                Ok(_) => {}
                Err(_) => kiln_jail::exit_now(FAILED),
            }
        };
        if idle && let Some(program) = self.program {
            // Freeing the template's runtime would write to every page it
            // shares with the template: leave it be, the process is short.
            std::mem::forget(self.template.take());
            let (own, _failed) = kiln_js::Prepared::with_preloads(program, &self.preloads.evaluated);
            self.template = Some(own);
        }
        loop {
            let Ok(message) = read_frame::<_, ToWorker>(&mut self.channel, MAX_PROGRAM_FRAME_BYTES) else {
                kiln_jail::exit_now(FAILED)
            };
            match message {
                ToWorker::Invoke { invocation } => {
                    let Some(prepared) = self.template.take() else { kiln_jail::exit_now(FAILED) };
                    let mut host = IpcHost { channel: &mut self.channel, broken: false };
                    let (outcome, spent) = prepared.run(&invocation, &mut host);
                    // The process ends now; tearing the runtime down would
                    // only cost time.
                    std::mem::forget(spent);
                    if host.broken || self.send(&FromWorker::Done { outcome }).is_err() {
                        kiln_jail::exit_now(FAILED);
                    }
                    // Pacing only: if the pipe were full of forged bytes,
                    // the next child would serve its request all the same.
                    let _ = (&turn.1).write(&[number.wrapping_add(1)]);
                    kiln_jail::exit_now(SERVED);
                }
                ToWorker::Shutdown {} => kiln_jail::exit_now(SHUTDOWN),
                ToWorker::HostReply { .. } => {}
                // A loaded worker neither compiles nor loads again, and a
                // child makes no children.
                ToWorker::Compile { .. } | ToWorker::Load { .. } | ToWorker::Standby { .. } => {
                    kiln_jail::exit_now(FAILED)
                }
            }
        }
    }

    /// Serve a loaded program in place from two children that take turns
    /// on the channel (see the module's notes). Returns `Ok(false)` when not
    /// even one child could be forked (the caller serves in place itself);
    /// otherwise returns when the worker's life is over.
    fn serve_in_place_children(&mut self) -> Result<bool, ()> {
        let turn = self.turn.take().ok_or(())?;
        let mut children = 0;
        while children < 2 {
            match kiln_jail::fork_invocation() {
                Ok(Forked::Child) => self.serve_turns(&turn),
                Ok(Forked::Parent(_)) => children += 1,
                // No room for a second process (a process limit): one child
                // serves, passing the turn to itself.
                Err(_) if children > 0 => break,
                Err(_) => {
                    self.turn = Some(turn);
                    return Ok(false);
                }
            }
        }
        // The first child to read it takes the channel.
        (&turn.1).write_all(&[TURN]).map_err(drop)?;
        // The children serve until the server shuts the worker down or one
        // of them dies; either way the worker ends (the other child with it,
        // by its parent-death signal) and the server replaces it.
        let exit = kiln_jail::wait_any_child().map_err(drop)?;
        if exit.code == Some(SHUTDOWN) {
            return Ok(true);
        }
        let _ = self.send(&FromWorker::InvocationDied { code: exit.code, signal: exit.signal });
        Err(())
    }

    /// An in-place child: prepare a runtime, wait for the turn, serve one
    /// request in it, pass the turn on, then free the used runtime and
    /// prepare the next while the other child serves. Never returns.
    fn serve_turns(&mut self, turn: &(std::fs::File, std::fs::File)) -> ! {
        let Some(program) = self.program else { kiln_jail::exit_now(FAILED) };
        self.template = Some(kiln_js::Prepared::new(program, None));
        loop {
            // Both children wait for the turn; the one that takes the byte
            // reads the channel.
            loop {
                if kiln_jail::wait_any([turn.0.as_fd()], None).is_err() {
                    kiln_jail::exit_now(FAILED);
                }
                match take_turn(&turn.0) {
                    Some(TURN) => break,
                    Some(_) => kiln_jail::exit_now(FAILED),
                    None => {}
                }
            }
            loop {
                let Ok(message) = read_frame::<_, ToWorker>(&mut self.channel, MAX_PROGRAM_FRAME_BYTES)
                else {
                    kiln_jail::exit_now(FAILED)
                };
                match message {
                    ToWorker::Invoke { invocation } => {
                        if self.invoke_in_place(invocation, Some(&turn.1)).is_err() {
                            kiln_jail::exit_now(FAILED);
                        }
                        break;
                    }
                    // The turn stays here: the template ends, and the other
                    // child with it.
                    ToWorker::Shutdown {} => kiln_jail::exit_now(SHUTDOWN),
                    ToWorker::HostReply { .. } => {}
                    ToWorker::Compile { .. } | ToWorker::Load { .. } | ToWorker::Standby { .. } => {
                        kiln_jail::exit_now(FAILED)
                    }
                }
            }
        }
    }

    /// Rebuild the template with `module` evaluated too, unless it holds
    /// enough already.
    fn preload(&mut self, program: &'static kiln_js::Program, module: String) {
        if !self.preloads.wants(&module) {
            return;
        }
        self.preloads.evaluated.push(module);
        // The old template goes first: two runtimes at once could exceed
        // the worker's address-space limit.
        self.template = None;
        let (template, failed) = kiln_js::Prepared::with_preloads(program, &self.preloads.evaluated);
        self.preloads.settle(failed);
        self.template = Some(template);
    }

    /// Run an invocation in this process, in the runtime prepared for it,
    /// then prepare the next one (with the module just used evaluated, as
    /// the next call most likely needs it) while the server is busy. With
    /// `turn`, the channel is handed on as soon as the answer is sent.
    fn invoke_in_place(
        &mut self,
        invocation: kiln_ipc::Invocation,
        turn: Option<&std::fs::File>,
    ) -> Result<(), ()> {
        let program = self.program.ok_or(())?;
        // A runtime made ahead for another module is used as is: the entry
        // module then loads inside the invocation.
        let prepared = self.template.take().unwrap_or_else(|| kiln_js::Prepared::new(program, None));
        let mut host = IpcHost { channel: &mut self.channel, broken: false };
        let (outcome, spent) = prepared.run(&invocation, &mut host);
        if host.broken {
            return Err(());
        }
        self.send(&FromWorker::Done { outcome })?;
        if let Some(mut turn) = turn {
            turn.write_all(&[TURN]).map_err(drop)?;
            // The server thread woken by the answer may be queued on this
            // CPU: let it read the answer before freeing and preparing
            // runtimes, which nobody waits for.
            std::thread::yield_now();
        }
        drop(spent);
        let module = invocation.module;
        let preload = (!self.preloads.refused.contains(&module)).then_some(module.as_str());
        let (next, preloaded) = kiln_js::Prepared::with_preload(program, preload);
        if preload.is_some() && !preloaded {
            self.preloads.refused.insert(module);
        }
        self.template = Some(next);
        Ok(())
    }
}

/// How one invocation served by `Worker::serve_reset` went: plain data,
/// since everything else is undone before it is looked at.
#[derive(Debug, Clone, Copy)]
enum Served {
    /// Answered; the called module's index in the program, if it is one.
    Invoked(Option<usize>),
    Shutdown,
    Failed,
}

/// Read the channel until an invocation comes, run it in `prepared`, and
/// answer. `prepared` is never freed: its memory comes back with the rest.
fn serve_one(channel: &mut UnixStream, prepared: kiln_js::Prepared, modules: &[String]) -> Served {
    let prepared = std::mem::ManuallyDrop::new(prepared);
    loop {
        let Ok(message) = read_frame::<_, ToWorker>(&mut *channel, MAX_PROGRAM_FRAME_BYTES) else {
            return Served::Failed;
        };
        match message {
            ToWorker::Invoke { invocation } => {
                let mut host = IpcHost { channel: &mut *channel, broken: false };
                let (outcome, spent) =
                    std::mem::ManuallyDrop::into_inner(prepared).run(&invocation, &mut host);
                std::mem::forget(spent);
                if host.broken || write_frame(&mut *channel, &FromWorker::Done { outcome }).is_err() {
                    return Served::Failed;
                }
                return Served::Invoked(modules.iter().position(|m| *m == invocation.module));
            }
            ToWorker::Shutdown {} => return Served::Shutdown,
            // A reply to a call of an invocation that has already ended.
            ToWorker::HostReply { .. } => {}
            ToWorker::Compile { .. } | ToWorker::Load { .. } | ToWorker::Standby { .. } => {
                return Served::Failed;
            }
        }
    }
}

/// Reads a template's channel, keeping the descriptors that ride along.
struct PassedReader<'a> {
    channel: &'a UnixStream,
    passed: Vec<std::os::fd::OwnedFd>,
}

impl Read for PassedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let received = kiln_jail::recv_ancillary(self.channel, buf)?;
        self.passed.extend(received.passed);
        Ok(received.read)
    }
}

/// Take one byte from the (non-blocking) turn pipe: `None` if another
/// process took it first. A pipe that cannot be read ends the process.
fn take_turn(mut read_end: &std::fs::File) -> Option<u8> {
    let mut byte = [0u8; 1];
    match read_end.read(&mut byte) {
        Ok(1) => Some(byte[0]),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        _ => kiln_jail::exit_now(FAILED),
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

#[cfg(test)]
mod tests {
    use super::{MAX_PRELOADED, Preloads};

    #[test]
    fn a_module_reported_twice_is_evaluated_ahead_once() {
        let mut preloads = Preloads::default();
        assert!(preloads.wants("src/index.js"));
        preloads.evaluated.push("src/index.js".to_owned());
        preloads.settle(Vec::new());
        // The standby forked before the first report reports it again.
        assert!(!preloads.wants("src/index.js"));
        assert!(preloads.knows("src/index.js"));
        assert!(preloads.wants("src/other.js"));
    }

    #[test]
    fn a_module_that_failed_ahead_is_never_tried_again() {
        let mut preloads = Preloads::default();
        preloads.evaluated.extend(["a.js".to_owned(), "b.js".to_owned()]);
        preloads.settle(vec!["b.js".to_owned()]);
        assert_eq!(preloads.evaluated, ["a.js"]);
        assert!(!preloads.wants("b.js"));
        assert!(preloads.knows("b.js"));
    }

    #[test]
    fn the_template_keeps_a_bounded_number_of_modules() {
        let mut preloads = Preloads::default();
        for i in 0..MAX_PRELOADED {
            let module = format!("m{i}.js");
            assert!(preloads.wants(&module), "{module}");
            preloads.evaluated.push(module);
        }
        assert!(!preloads.wants("one-more.js"));
        assert!(!preloads.knows("one-more.js"), "a module left out is not recorded as decided");
    }
}
