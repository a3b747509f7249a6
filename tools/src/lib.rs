//! Shared pieces of the developer programs (`vaultsync-demo`, `vaultsync-bench`, `vaultsync-csi-bench`).
#![forbid(unsafe_code)]

pub mod csi_demo;
