//! Shared pieces of the developer programs (`vaultsync-demo`, `vaultsync-bench`).
#![forbid(unsafe_code)]
