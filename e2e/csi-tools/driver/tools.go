//go:build tools

// Package driver only pins the version of the Secrets Store CSI Driver that
// scripts/build-csi-tools.sh builds.
package driver

import _ "sigs.k8s.io/secrets-store-csi-driver/cmd/secrets-store-csi-driver"
