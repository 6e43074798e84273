//! Crash points for tests: `FRAMEWORK_CRASH_AT=<name>` makes the process abort at that point,
//! as a SIGKILL there would, so that tests can prove a step neither loses nor repeats work.

/// Aborts the process when `FRAMEWORK_CRASH_AT` names this point.
pub fn crash_point(name: &str) {
    if std::env::var("FRAMEWORK_CRASH_AT").is_ok_and(|at| at == name) {
        eprintln!("crash point {name}: aborting");
        std::process::abort();
    }
}
