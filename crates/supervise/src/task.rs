//! One-off tasks (a build step, a `release:` command) whose output streams line by line.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use crate::RunAs;
use crate::instance::{describe_exit, terminate};

#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Run by `/bin/sh -c`.
    pub command: String,
    pub cwd: PathBuf,
    /// The complete environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    pub run_as: Option<RunAs>,
    /// The task is killed (process group, SIGTERM then SIGKILL) when it runs longer.
    pub timeout: Duration,
}

/// Runs the task to completion, sending each line of its stdout and stderr to `output` as it
/// comes. Returns `Ok(())` on exit status 0 and a description of the failure otherwise.
pub async fn run_task(
    spec: &TaskSpec,
    output: mpsc::UnboundedSender<String>,
) -> Result<(), String> {
    let exit = run_command(spec, output, std::future::pending()).await?;
    if exit.success() { Ok(()) } else { Err(format!("`{}` {}", spec.command, describe_exit(exit))) }
}

/// Runs the task like [`run_task`] and returns how it exited. When `cancel` resolves first
/// (the client went away), the task's process group is stopped and that is an error.
pub async fn run_command(
    spec: &TaskSpec,
    output: mpsc::UnboundedSender<String>,
    cancel: impl Future<Output = ()>,
) -> Result<ExitStatus, String> {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(run_as) = spec.run_as {
        cmd.uid(run_as.uid).gid(run_as.gid);
    }
    let mut child =
        cmd.spawn().map_err(|err| format!("could not start `{}`: {err}", spec.command))?;
    let pid = child.id();
    let stdout = forward_lines(child.stdout.take(), output.clone());
    let stderr = forward_lines(child.stderr.take(), output);
    let exit = tokio::select! {
        exit = tokio::time::timeout(spec.timeout, child.wait()) => match exit {
            Ok(exit) => exit.map_err(|err| format!("could not wait for `{}`: {err}", spec.command))?,
            Err(_) => {
                terminate(&mut child, pid, Duration::from_secs(5)).await;
                return Err(format!(
                    "`{}` did not finish within {} s and was stopped",
                    spec.command,
                    spec.timeout.as_secs()
                ));
            }
        },
        () = cancel => {
            terminate(&mut child, pid, Duration::from_secs(5)).await;
            return Err(format!("`{}` was stopped: its client went away", spec.command));
        }
    };
    // The readers end when the pipes close; a daemonised grandchild could keep them open, so
    // do not wait for them forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stdout.await;
        let _ = stderr.await;
    })
    .await;
    Ok(exit)
}

fn forward_lines(
    pipe: Option<impl AsyncRead + Unpin + Send + 'static>,
    output: mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(pipe) = pipe else { return };
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    if output.send(text.trim_end_matches(['\n', '\r']).to_owned()).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &str, timeout: Duration) -> TaskSpec {
        TaskSpec {
            command: command.into(),
            cwd: std::env::temp_dir(),
            env: vec![
                ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
                ("X".into(), "42".into()),
            ],
            run_as: None,
            timeout,
        }
    }

    async fn run(command: &str, timeout: Duration) -> (Result<(), String>, Vec<String>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let result = run_task(&spec(command, timeout), tx).await;
        let mut lines = Vec::new();
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        (result, lines)
    }

    #[tokio::test]
    async fn streams_stdout_and_stderr_lines() {
        let (result, mut lines) = run("echo out $X; echo err >&2", Duration::from_secs(10)).await;
        result.unwrap();
        lines.sort();
        assert_eq!(lines, ["err", "out 42"]);
    }

    #[tokio::test]
    async fn a_failing_task_reports_its_status() {
        let (result, _) = run("exit 4", Duration::from_secs(10)).await;
        assert_eq!(result.unwrap_err(), "`exit 4` exited with status 4");
    }

    #[tokio::test]
    async fn a_cancelled_command_is_stopped_with_its_children() {
        let dir = std::env::temp_dir().join(format!("berth-cancel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut spec = spec("sleep 60 & echo $! > child.pid; wait", Duration::from_secs(60));
        spec.cwd = dir.clone();
        let (tx, _rx) = mpsc::unbounded_channel();
        let pid_file = dir.join("child.pid");
        let cancel = async {
            while std::fs::read_to_string(&pid_file).map_or(true, |s| !s.ends_with('\n')) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let err = run_command(&spec, tx, cancel).await.unwrap_err();
        assert!(err.contains("its client went away"), "{err}");
        let child: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let gone = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_err()
        });
        assert!(gone, "the command's child survived the cancel");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_task_over_its_time_is_stopped() {
        let (result, _) = run("sleep 30", Duration::from_millis(200)).await;
        assert!(result.unwrap_err().contains("did not finish within"));
    }
}
