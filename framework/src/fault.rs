//! Crash points for tests: `FRAMEWORK_CRASH_AT=<name>` makes the process abort at that point,
//! as a SIGKILL there would, so that tests can prove a step neither loses nor repeats work.
//! `FRAMEWORK_STALL_AT=<name>` makes it hang there instead (its other threads, such as a Kafka
//! client's heartbeats, go on), as a process stuck on a full disk or a lock would.
//! `FRAMEWORK_PAUSE_AT=<name>=<ms>` makes a crash point sleep that long instead, so that tests
//! can widen a window between steps that run at once (a slow table, a slow commit).

/// Aborts the process when `FRAMEWORK_CRASH_AT` names this point (after sleeping when
/// `FRAMEWORK_PAUSE_AT` names it).
pub fn crash_point(name: &str) {
    if let Ok(pause) = std::env::var("FRAMEWORK_PAUSE_AT")
        && let Some((at, ms)) = pause.rsplit_once('=')
        && at == name
        && let Ok(ms) = ms.parse()
    {
        eprintln!("pause point {name}: sleeping {ms} ms");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    if std::env::var("FRAMEWORK_CRASH_AT").is_ok_and(|at| at == name) {
        eprintln!("crash point {name}: aborting");
        std::process::abort();
    }
}

/// Blocks the calling thread for good when `FRAMEWORK_STALL_AT` names this point.
pub fn stall_point(name: &str) {
    if std::env::var("FRAMEWORK_STALL_AT").is_ok_and(|at| at == name) {
        eprintln!("stall point {name}: hanging");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
