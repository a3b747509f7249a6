//! The small programs of the images that the local test node runs (see `images/` and
//! `scripts/build-images.sh`): `vaultsync-pause`, the pod sandbox, and `vaultsync-workload`, a test
//! workload that reports the Secret values it sees. Both are built static (musl) and packed as OCI
//! images; nothing here is shipped with vaultsync.

#![forbid(unsafe_code)]

use nix::sys::signal::{SigSet, Signal};

/// Blocks `signals` in this thread (and the threads it starts later), so that `wait` receives them.
pub fn block(signals: &[Signal]) -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for signal in signals {
        set.add(*signal);
    }
    set.thread_block()?;
    Ok(set)
}
