//! Runs the commands pgml-zfs builds: a program and its arguments (no shell) in the
//! environment the command names (the C locale), each with a timeout, killed when it runs
//! over.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use pgml_zfs::Command;

/// What a command printed and how it ended.
#[derive(Clone, Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{command}: could not start: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command}: no answer within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("{command}: exited {code:?}: {stderr}")]
    Failed {
        command: String,
        code: Option<i32>,
        stderr: String,
    },
}

/// Where `zpool` and `zfs` are, and how long any command may take.
#[derive(Clone, Debug)]
pub struct Runner {
    pub zpool: PathBuf,
    pub zfs: PathBuf,
    pub timeout: Duration,
}

impl Runner {
    fn program(&self, c: &Command) -> PathBuf {
        match c.program.as_str() {
            "zpool" => self.zpool.clone(),
            "zfs" => self.zfs.clone(),
            other => PathBuf::from(other),
        }
    }

    /// Runs `c` and returns its output whatever its exit status.
    pub async fn run(&self, c: &Command) -> Result<Output, ExecError> {
        let out = self.run_uncounted(c).await;
        let outcome = match &out {
            Ok(o) if o.success() => "ok",
            Ok(_) => "failed",
            Err(ExecError::Timeout { .. }) => "timeout",
            Err(_) => "spawn_error",
        };
        crate::metrics::command(&c.program, outcome);
        out
    }

    async fn run_uncounted(&self, c: &Command) -> Result<Output, ExecError> {
        // On top of the agent's environment (PATH and the rest are kept).
        let child = tokio::process::Command::new(self.program(c))
            .args(&c.args)
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ExecError::Spawn {
                command: c.to_string(),
                source,
            })?;
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| ExecError::Timeout {
                command: c.to_string(),
                timeout: self.timeout,
            })?
            .map_err(|source| ExecError::Spawn {
                command: c.to_string(),
                source,
            })?;
        let out = Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        tracing::debug!(command = %c, code = ?out.code, "ran");
        Ok(out)
    }

    /// Runs `c`; an exit status other than 0 is an error carrying its stderr.
    pub async fn ok(&self, c: &Command) -> Result<String, ExecError> {
        let out = self.run(c).await?;
        if !out.success() {
            return Err(ExecError::Failed {
                command: c.to_string(),
                code: out.code,
                stderr: out.stderr.trim().to_string(),
            });
        }
        Ok(out.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_run_in_the_c_locale_and_keep_the_rest_of_the_environment() {
        // `zpool` stands in for `env`, which prints what it was started with.
        let runner = Runner {
            zpool: "/usr/bin/env".into(),
            zfs: "/usr/bin/env".into(),
            timeout: Duration::from_secs(10),
        };
        let mut c = Command::new("zpool", Vec::<String>::new());
        // Whatever the command names is set, whether or not the agent has it already.
        c.env.push(("PGML_EXEC_TEST".into(), "set".into()));
        let out = runner.ok(&c).await.unwrap();
        let vars: Vec<&str> = out.lines().collect();
        assert!(vars.contains(&"LC_ALL=C"), "{vars:?}");
        assert!(vars.contains(&"PGML_EXEC_TEST=set"), "{vars:?}");
        let path = std::env::var("PATH").unwrap();
        assert!(vars.contains(&format!("PATH={path}").as_str()), "{vars:?}");
    }
}
