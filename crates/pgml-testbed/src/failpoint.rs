//! Failpoints from the test's side: a process restarted with one armed
//! (`PGML_FAILPOINTS`, see pgml-runtime), and its death there.

use std::time::Duration;

use crate::procs::Proc;

/// The variable pgml-runtime reads the armed failpoints from.
pub const ENV: &str = "PGML_FAILPOINTS";

/// Stops `p` (SIGTERM, up to `stop`) and starts it again with failpoint `fp` armed, or
/// with none.
pub fn restart_armed(p: &mut Proc, fp: Option<&str>, stop: Duration) {
    p.stop(stop);
    match fp {
        Some(fp) => p.set_env(ENV, fp),
        None => p.unset_env(ENV),
    }
    p.start();
}

/// Waits up to `timeout` for `p` to exit at its armed failpoint `fp`, then disarms it for
/// its next start (it is not started). The error says what happened instead.
pub fn died_at(p: &mut Proc, fp: &str, timeout: Duration) -> Result<(), String> {
    if !p.wait_exit(timeout) {
        return Err(format!("it did not reach failpoint {fp}"));
    }
    if !p.log().contains(&format!("failpoint {fp}")) {
        return Err(format!("it exited, but not at failpoint {fp}"));
    }
    p.unset_env(ENV);
    Ok(())
}
