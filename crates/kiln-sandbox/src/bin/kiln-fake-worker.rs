//! A worker that speaks the protocol but plays a compromised one, for the
//! tests of what the server checks (`tests/senders.rs`). Built only with
//! the `testing` feature; never part of Kiln.
//!
//! In place (one channel, shared by the worker's processes):
//! - `answer-all`: one process answers every invocation itself.
//! - `split`: a log line from this process, then the answer from a second
//!   process sharing the channel, as a child reading the channel out of turn
//!   and writing into the other's invocation would.
//! - `forge-ahead`: answers, and in the same write a second answer no
//!   invocation has asked for yet, for the next one to take as its own.
//!
//! Forked (each child on the channel the server sent for it, served here by
//! a thread):
//! - `linger`: each child answers, then lives on as a process an exploit
//!   kept alive would, writing forged answers into its channel until that
//!   fails. The next child says whether the one before it was cut off
//!   (`{"served": n, "previousCutOff": bool}`).
//! - `named-modules`: each child answers with the modules the server has
//!   named so far for evaluating ahead (`ToWorker::Standby { module }`),
//!   once it has named as many as the child's number.
//! - `standby-speaks`: the first child answers with the process id, late;
//!   every later one writes an answer as soon as it has its channel, before
//!   any invocation was sent to it.
//!
//! Either mode:
//! - `answer-once`: answers one invocation with its process id, then exits,
//!   as a worker that dies while idle (a killed template, say) would.
//! - `fork-each`: honest; answers with this process's id (so a test can
//!   tell a replaced worker), or times out if the payload says
//!   `"timeout":true` (in place through a new process for every invocation).

use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kiln_ipc::{
    ErrorCode, FromWorker, InvocationError, JailReport, LogLevel, Outcome, PROTOCOL_VERSION, ToWorker,
    read_frame, write_frame,
};

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let Ok(mut channel) = kiln_jail::inherited_channel() else {
        return ExitCode::from(2);
    };
    let done = FromWorker::Done { outcome: Outcome::Ok { result: "\"served\"".into() } };
    let answer = |channel: &mut UnixStream, outcome: FromWorker| {
        if write_frame(channel, &outcome).is_ok() { ExitCode::SUCCESS } else { ExitCode::from(3) }
    };
    match mode.as_str() {
        "split-answer" => return answer(&mut channel, done),
        "child-answer" => {
            let result = std::env::args().nth(2).unwrap_or_default();
            return answer(&mut channel, FromWorker::Done { outcome: Outcome::Ok { result } });
        }
        "child-time-out" => return answer(&mut channel, time_out()),
        _ => {}
    }
    // It claims the jail it was asked for (the server starts it in the
    // namespaces; what it does afterwards is what is under test).
    let jail = JailReport {
        namespaces: true,
        seccomp: true,
        landlock: "claimed".into(),
        no_new_privs: true,
        code_on_huge_pages: false,
        memory_reset: false,
    };
    if write_frame(&mut channel, &FromWorker::Ready { protocol: PROTOCOL_VERSION, jail }).is_err() {
        return ExitCode::from(3);
    }
    loop {
        let Ok(message) = read_frame::<_, ToWorker>(&mut channel, 64 << 20) else {
            return ExitCode::SUCCESS;
        };
        let sent = match (message, mode.as_str()) {
            (ToWorker::Load { fork: true, .. }, _) => {
                if write_frame(&mut channel, &FromWorker::Loaded { memory_reset: false }).is_err() {
                    return ExitCode::from(3);
                }
                return serve_forked(&channel, &mode);
            }
            (ToWorker::Load { .. }, _) => {
                write_frame(&mut channel, &FromWorker::Loaded { memory_reset: false }).is_ok()
            }
            (ToWorker::Invoke { .. }, "answer-all") => write_frame(&mut channel, &done).is_ok(),
            (ToWorker::Invoke { .. }, "answer-once") => {
                let result = std::process::id().to_string();
                return answer(&mut channel, FromWorker::Done { outcome: Outcome::Ok { result } });
            }
            (ToWorker::Invoke { .. }, "split") => {
                let logged = write_frame(
                    &mut channel,
                    &FromWorker::Log { level: LogLevel::Info, text: "begun".into() },
                );
                let answered = std::env::current_exe()
                    .and_then(|exe| std::process::Command::new(exe).arg("split-answer").status())
                    .is_ok_and(|status| status.success());
                logged.is_ok() && answered
            }
            (ToWorker::Invoke { .. }, "forge-ahead") => {
                let forged = FromWorker::Done { outcome: Outcome::Ok { result: "\"forged\"".into() } };
                let mut both = Vec::new();
                write_frame(&mut both, &done).is_ok()
                    && write_frame(&mut both, &forged).is_ok()
                    && std::io::Write::write_all(&mut channel, &both).is_ok()
            }
            (ToWorker::Invoke { invocation }, "fork-each") => {
                let child = if invocation.payload.contains("\"timeout\":true") {
                    vec!["child-time-out".to_owned()]
                } else {
                    vec!["child-answer".to_owned(), std::process::id().to_string()]
                };
                std::env::current_exe()
                    .and_then(|exe| std::process::Command::new(exe).args(child).status())
                    .is_ok_and(|status| status.success())
            }
            (ToWorker::Shutdown {}, _) => return ExitCode::SUCCESS,
            _ => true,
        };
        if !sent {
            return ExitCode::from(4);
        }
    }
}

fn time_out() -> FromWorker {
    let error = InvocationError::new(ErrorCode::TimeOut, "the function did not finish");
    FromWorker::Done { outcome: Outcome::Err(error) }
}

/// Whether each child's channel was found closed after its invocation
/// (`None` until its lingering thread knows).
type CutOff = Arc<(Mutex<Vec<Option<bool>>>, Condvar)>;

/// The modules the server named with the channels it sent.
type Named = Arc<(Mutex<Vec<String>>, Condvar)>;

/// Take each child's channel from the server and serve it on a thread.
fn serve_forked(channel: &UnixStream, mode: &str) -> ExitCode {
    let cut_off: CutOff = Arc::default();
    let named: Named = Arc::default();
    for number in 0.. {
        let mut reader = PassedReader { channel, passed: Vec::new() };
        match read_frame::<_, ToWorker>(&mut reader, 1 << 20) {
            Ok(ToWorker::Standby { module }) => {
                let (list, changed) = &*named;
                list.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(module);
                changed.notify_all();
            }
            _ => return ExitCode::SUCCESS,
        }
        let Some(own) = reader.passed.pop().map(UnixStream::from) else {
            return ExitCode::from(5);
        };
        let (mode, cut_off, named) = (mode.to_owned(), cut_off.clone(), named.clone());
        std::thread::spawn(move || child(own, &mode, number, &cut_off, &named));
    }
    ExitCode::SUCCESS
}

/// One forked child, on its own channel.
fn child(mut own: UnixStream, mode: &str, number: usize, cut_off: &CutOff, named: &Named) {
    let forged = FromWorker::Done { outcome: Outcome::Ok { result: "\"forged\"".into() } };
    if mode == "standby-speaks" {
        if number > 0 {
            let _ = write_frame(&mut own, &forged);
            return;
        }
        // The first child answers late, so the next has spoken by then.
        std::thread::sleep(Duration::from_millis(100));
    }
    let Ok(ToWorker::Invoke { invocation }) = read_frame::<_, ToWorker>(&mut own, 64 << 20) else {
        return;
    };
    let result = match mode {
        "linger" => {
            let previous = number.checked_sub(1).map(|p| wait_cut_off(cut_off, p));
            serde_json::json!({ "served": number, "previousCutOff": previous }).to_string()
        }
        "named-modules" => {
            let (list, changed) = &**named;
            let mut list = list.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            while list.len() < number {
                let (waited, timeout) = match changed.wait_timeout(list, Duration::from_secs(2)) {
                    Ok(w) => w,
                    Err(poisoned) => poisoned.into_inner(),
                };
                list = waited;
                if timeout.timed_out() {
                    break;
                }
            }
            serde_json::json!(*list).to_string()
        }
        _ => std::process::id().to_string(),
    };
    let done = if invocation.payload.contains("\"timeout\":true") {
        time_out()
    } else {
        FromWorker::Done { outcome: Outcome::Ok { result } }
    };
    if write_frame(&mut own, &done).is_err() {
        return;
    }
    match mode {
        "answer-once" => std::process::exit(0),
        "linger" => {
            // Answer again and again, as long as the channel takes it.
            let mut cut = false;
            for _ in 0..3_000 {
                if write_frame(&mut own, &forged).is_err() {
                    cut = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let (slots, changed) = &**cut_off;
            let mut slots = slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if slots.len() <= number {
                slots.resize(number + 1, None);
            }
            if let Some(slot) = slots.get_mut(number) {
                *slot = Some(cut);
            }
            changed.notify_all();
        }
        _ => {}
    }
}

/// Whether child `number`'s channel was cut off after its invocation, once
/// its lingering thread knows.
fn wait_cut_off(cut_off: &CutOff, number: usize) -> bool {
    let (slots, changed) = &**cut_off;
    let mut slots = slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        if let Some(Some(cut)) = slots.get(number) {
            return *cut;
        }
        slots = match changed.wait(slots) {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
    }
}

/// Reads the worker's channel, keeping the descriptors that ride along.
struct PassedReader<'a> {
    channel: &'a UnixStream,
    passed: Vec<std::os::fd::OwnedFd>,
}

impl std::io::Read for PassedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let received = kiln_jail::recv_ancillary(self.channel, buf)?;
        self.passed.extend(received.passed);
        Ok(received.read)
    }
}
