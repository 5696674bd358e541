//! A worker that speaks the protocol but plays a compromised one, for the
//! tests of what the server checks (`tests/senders.rs`). Built only with
//! the `testing` feature; never part of Kiln.
//!
//! `answer-all`: one process answers every invocation itself, as a forked
//! child that an exploit kept alive past its invocation would.
//! `split`: a log line from this process, then the answer from a second
//! process sharing the channel, as a lingering child writing into another
//! child's invocation would.
//! `forge-ahead`: answers, and in the same write a second answer no
//! invocation has asked for yet, for the next one to take as its own.
//! `answer-once`: answers one invocation with its process id, then exits,
//! as a worker that dies while idle (a killed template, say) would.
//! `fork-each`: what an honest forked worker does, a new process for every
//! invocation; it answers with this process's id (so a test can tell a
//! replaced worker), or times out if the payload says `"timeout":true`.

use std::process::ExitCode;

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
    let answer = |channel: &mut std::os::unix::net::UnixStream, outcome: FromWorker| {
        if write_frame(channel, &outcome).is_ok() { ExitCode::SUCCESS } else { ExitCode::from(3) }
    };
    match mode.as_str() {
        "split-answer" => return answer(&mut channel, done),
        "child-answer" => {
            let result = std::env::args().nth(2).unwrap_or_default();
            return answer(&mut channel, FromWorker::Done { outcome: Outcome::Ok { result } });
        }
        "child-time-out" => {
            let error = InvocationError::new(ErrorCode::TimeOut, "the function did not finish");
            return answer(&mut channel, FromWorker::Done { outcome: Outcome::Err(error) });
        }
        _ => {}
    }
    // It claims the jail it was asked for (the server starts it in the
    // namespaces; what it does afterwards is what is under test).
    let jail = JailReport { namespaces: true, seccomp: true, landlock: "claimed".into(), no_new_privs: true };
    if write_frame(&mut channel, &FromWorker::Ready { protocol: PROTOCOL_VERSION, jail }).is_err() {
        return ExitCode::from(3);
    }
    loop {
        let Ok(message) = read_frame::<_, ToWorker>(&mut channel, 64 << 20) else {
            return ExitCode::SUCCESS;
        };
        let sent = match (message, mode.as_str()) {
            (ToWorker::Load { .. }, _) => write_frame(&mut channel, &FromWorker::Loaded {}).is_ok(),
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
