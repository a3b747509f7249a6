//! The pod sandbox: holds the pod's namespaces, reaps orphaned processes (when the pod shares its
//! process namespace) and exits on SIGTERM or SIGINT.

use nix::{
    sys::{
        signal::Signal,
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

fn main() -> nix::Result<()> {
    let signals = vaultsync_images::block(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD])?;
    loop {
        match signals.wait()? {
            Signal::SIGCHLD => {
                // Reap every child that has exited; stop at the first that is still running.
                while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    if status == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            _ => return Ok(()),
        }
    }
}
