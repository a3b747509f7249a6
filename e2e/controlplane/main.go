// Command controlplane is a multicall program for vaultsync's tests and demo: it runs etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, the kubelet and kubectl, each built
// from the published Go modules, and its `up` command starts a whole local control plane on free
// loopback ports, with a node (containerd, kubelet, scheduler) when asked.
//
//	controlplane up [--dir D] [--node ...]   start everything, print "READY kubeconfig=<path>"
//	controlplane supervise -- CMD ARGS...   run CMD until standard input closes
//	controlplane etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kubectl ARGS...
//
// Each component runs as its own child process (the program re-executes itself), which keeps
// their global state (flags, feature gates, klog, signal handlers) apart.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	// Called as `controlplane <component> ...` or through a symlink named after the component.
	if name == "controlplane" || name == "vaultsync-controlplane" {
		if len(args) == 0 {
			usage()
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	switch name {
	case "up":
		os.Exit(up(args))
	case "supervise":
		os.Exit(supervise(args))
	case "etcd":
		etcdmain.Main(append([]string{"etcd"}, args...))
	case "kube-apiserver":
		os.Args = append([]string{name}, args...)
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Args = append([]string{name}, args...)
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Args = append([]string{name}, args...)
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubelet":
		os.Args = append([]string{name}, args...)
		os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
	case "kubectl":
		os.Args = append([]string{name}, args...)
		command := kubectlcmd.NewDefaultKubectlCommand()
		if err := cli.RunNoErrOutput(command); err != nil {
			kubectlutil.CheckErr(err)
		}
	default:
		usage()
		os.Exit(2)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: controlplane up [--dir DIR] [--node] | supervise -- CMD... | "+
		"etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kubectl ARGS...")
}
