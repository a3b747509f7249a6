//! Long-lived helper processes for tests, and where the project's build caches live.
//!
//! A process is started under `controlplane supervise`, which stops it when its standard
//! input closes. We hold the write end for the life of the test binary, so the kernel closes
//! it (and the process stops) however the tests end.

use std::{
    fs::File,
    net::TcpListener,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The cache folder shared by the build scripts (`VAULTSYNC_CACHE`, default `~/.cache/vaultsync`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VAULTSYNC_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/vaultsync")
}

/// A tool built or installed by the project's scripts (`make tools`).
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = cache_dir().join("bin").join(name);
    if !path.exists() {
        bail!("{} is missing: run `make tools` (or `make test`) first", path.display());
    }
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (free when asked; callers retry if another process races us).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A process that lives until the test binary exits.
pub struct Supervised {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    // Held, never written: closing it stops the process.
    _stdin: ChildStdin,
}

impl Supervised {
    /// Starts `program args` under the supervisor, logging to a file in `log_dir`.
    pub fn start(
        name: &str,
        program: &std::path::Path,
        args: &[String],
        log_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(tool("controlplane")?)
            .arg("supervise")
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdin = child.stdin.take().context("supervisor stdin")?;
        Ok(Self { name: name.to_string(), log, child, _stdin: stdin })
    }

    /// The process id of the supervised program itself (the supervisor's only child), while it runs. Linux lists
    /// children per thread of the parent, and the supervisor may have started it from any of its threads.
    pub fn program_pid(&self) -> Option<u32> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).ok()?;
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
            .find_map(|children| children.split_whitespace().next()?.parse().ok())
    }

    /// Whether the supervisor (and so the program) has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Polls `ready` until it holds; fails with the log tail if the process exits or time runs out.
    pub fn wait_ready(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}) before it was ready:\n{}", self.name, log_tail(&self.log, 20));
            }
            if Instant::now() > deadline {
                bail!("{} not ready after {timeout:?}:\n{}", self.name, log_tail(&self.log, 20));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A folder for this test binary's logs, under the target directory's neighbour `test-logs`.
pub fn log_dir() -> PathBuf {
    let dir = std::env::var_os("VAULTSYNC_TEST_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("vaultsync-test-logs-{}", std::process::id())));
    let _ = std::fs::create_dir_all(&dir);
    dir
}
