//! Starting and stopping real `cartd` processes: used by `cartd dev` and by integration tests.
//!
//! Each node gets its own folder holding `cartd.toml`, `cartd.log` (stdout and stderr) and the
//! sled data. A node is ready when its log shows the `listening on` line, which also gives the
//! bound address (so port 0 works).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;

use crate::config::NodeConfig;

/// The line a node prints once its listener is bound; the address follows it.
pub const READY_MARKER: &str = "listening on ";

/// How long a node may take to bind and print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node {node_id} exited before it was ready ({status}); log {log}:\n{tail}")]
    Exited {
        node_id: String,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("node {node_id} not ready after {timeout:?}; log {log}:\n{tail}")]
    NotReady {
        node_id: String,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("signal to node {node_id}: {source}")]
    Signal { node_id: String, source: nix::Error },
}

/// What a node needs to start: its name, where it listens, where it keeps data.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub node_id: String,
    pub listen_addr: SocketAddr,
    pub dir: PathBuf,
}

impl NodeSpec {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("cartd.toml")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("cartd.log")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Writes `cartd.toml` for this node (overwriting it).
    pub fn write_config(&self) -> Result<PathBuf, LaunchError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| LaunchError::Io {
            what: "create",
            path: self.dir.clone(),
            source,
        })?;
        let path = self.config_path();
        let text = NodeConfig::minimal_toml(&self.node_id, self.listen_addr, &self.data_dir());
        std::fs::write(&path, text).map_err(|source| LaunchError::Io {
            what: "write",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

/// A running `cartd run` child process. Dropping it kills the process.
pub struct NodeProcess {
    pub spec: NodeSpec,
    /// The address the node actually bound.
    pub addr: SocketAddr,
    child: Child,
}

impl NodeProcess {
    /// Writes the node's config and starts `cartd_bin run --config …`, waiting until it is ready.
    pub fn start(cartd_bin: &Path, spec: NodeSpec) -> Result<Self, LaunchError> {
        let config = spec.write_config()?;
        let log_path = spec.log_path();
        let log = File::create(&log_path).map_err(|source| LaunchError::Io {
            what: "create",
            path: log_path.clone(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| LaunchError::Io {
            what: "clone",
            path: log_path.clone(),
            source,
        })?;
        let mut child = Command::new(cartd_bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| LaunchError::Io {
                what: "spawn",
                path: cartd_bin.to_owned(),
                source,
            })?;
        match wait_ready(&spec, &mut child) {
            Ok(addr) => Ok(NodeProcess { spec, addr, child }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no shutdown path runs.
    pub fn kill9(&mut self) -> Result<ExitStatus, LaunchError> {
        self.signal(Signal::SIGKILL)?;
        self.child.wait().map_err(|source| LaunchError::Io {
            what: "wait",
            path: self.spec.dir.clone(),
            source,
        })
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit (SIGKILL after that).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, LaunchError> {
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return self.kill9();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LaunchError> {
        self.child.try_wait().map_err(|source| LaunchError::Io {
            what: "wait",
            path: self.spec.dir.clone(),
            source,
        })
    }

    fn signal(&mut self, signal: Signal) -> Result<(), LaunchError> {
        if self.child.try_wait().ok().flatten().is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.child.id() as i32), signal).map_err(|source| LaunchError::Signal {
            node_id: self.spec.node_id.clone(),
            source,
        })
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_ready(spec: &NodeSpec, child: &mut Child) -> Result<SocketAddr, LaunchError> {
    let log = spec.log_path();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = parse_ready(&text) {
            return Ok(addr);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LaunchError::Exited {
                node_id: spec.node_id.clone(),
                status,
                log,
                tail: tail(&text),
            });
        }
        if Instant::now() >= deadline {
            return Err(LaunchError::NotReady {
                node_id: spec.node_id.clone(),
                timeout: READY_TIMEOUT,
                log,
                tail: tail(&text),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bound address from a node's log, if its ready line is there.
pub fn parse_ready(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let rest = &line[line.find(READY_MARKER)? + READY_MARKER.len()..];
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_gives_the_bound_address() {
        let log = "starting\ncartd n1 listening on 127.0.0.1:40123 (actor 00ff)\n";
        assert_eq!(parse_ready(log), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(parse_ready("starting\n"), None);
    }
}
