//! How the controllers' trigger streams back off when a watch fails.
//!
//! kube-runtime merges a controller's triggers (its watches and `reconcile_on` streams) into one stream and, by
//! default, backs that whole stream off when any of them yields an error. One watch refused for a while (after an
//! apiserver restart RBAC answers 403 until its caches fill) then pauses every trigger for up to 30 s, including
//! the routine refreshes and vault events passed in with `reconcile_on`. Each watch here backs off on its own
//! (`default_backoff()` on the watcher), so the merged stream goes on at once.

use std::time::Duration;

use kube::runtime::utils::Backoff;

/// The merged trigger stream's backoff: none, because each watch in it has its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct EachWatchBacksOff;

impl Iterator for EachWatchBacksOff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for EachWatchBacksOff {
    fn reset(&mut self) {}
}
