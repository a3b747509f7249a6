// A stand-in for monis.app/mlog (not served by the module proxy): the functions the Secrets
// Store CSI Driver calls, on klog.
module monis.app/mlog

go 1.24

require k8s.io/klog/v2 v2.130.1

require github.com/go-logr/logr v1.4.1 // indirect
