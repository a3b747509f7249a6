//! Test support for vaultsync: a real local Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager) shared by all tests of one test binary, with a node (containerd, a
//! kubelet, kube-scheduler) for the tests that run pods, a fresh namespace per test, helm and
//! kubectl, and the backend servers the tests talk to (OpenBao, an Azure Key Vault API server).
//!
//! Every process started here is tied to the test process: it is stopped when the test
//! binary exits, also when a test fails or panics, or the binary is killed.

pub mod azure;
pub mod chart;
pub mod controlplane;
pub mod entra;
pub mod keyvault;
pub mod liveness;
pub mod logs;
pub mod node;
pub mod openbao;
pub mod process;
pub mod tls;
pub mod toxiproxy;

pub use controlplane::{ControlPlane, TestNamespace, eventually, install_crds, service_account_token};
