//go:build tools

// Package sanity only pins the version of csi-sanity that scripts/build-csi-tools.sh builds.
package sanity

import _ "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity"
