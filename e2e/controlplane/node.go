package main

// `up --node`: a real node on top of the control plane. containerd (with runc and the CNI loopback
// plugin) runs the containers, a kubelet registers the node and runs pods, kube-scheduler places
// them. Everything stays on loopback: the node is named after its address (127.0.0.1), pods use
// the host network, and no network interface or firewall rule is created.
//
// Everything the node writes lives under <dir>/node. A few host paths are fixed in the kubelet and
// containerd (the legacy container-log symlink folder, the device-plugin socket folder, the shim
// socket folder); the ones that did not exist before are removed again when empty. The kubelet's
// kernel settings are put back, its cgroups removed. The record of all that (node.json) also lets a
// later run clean up after a run that was killed before it could (cleanup.go).

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The node is named after its address: the kubelet refuses a loopback --node-ip, but takes a
// hostname override that is an IP as the node's address.
const nodeName = "127.0.0.1"

var nodeIP = net.ParseIP(nodeName)

// Kernel settings the kubelet changes at start (it needs them, e.g. overcommit for cgroup memory
// accounting); they are put back on exit.
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// Host folders the kubelet and containerd create whatever they are configured with.
var fixedHostDirs = []string{
	"/var/log/containers", "/var/lib/kubelet", "/var/lib/kubelet/device-plugins", "/run/containerd", "/run/containerd/s",
}

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

type nodeConfig struct {
	enabled      bool
	binDir       string
	sandboxImage string
	archives     stringList
	runc         string
}

// check fills in defaults and fails early, with what to do, when a piece is missing.
func (nc *nodeConfig) check() error {
	if !nc.enabled {
		if len(nc.archives) > 0 {
			return errors.New("--image-archive needs --node")
		}
		return nil
	}
	if os.Geteuid() != 0 {
		return errors.New("--node needs root: containerd, runc and the kubelet mount filesystems and manage cgroups")
	}
	if nc.binDir == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		nc.binDir = filepath.Dir(self)
	}
	for _, name := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "cni/loopback"} {
		if _, err := os.Stat(filepath.Join(nc.binDir, name)); err != nil {
			return fmt.Errorf("%s is missing from %s: build the node with scripts/build-node.sh (make tools)", name, nc.binDir)
		}
	}
	runc, err := exec.LookPath(filepath.Join(nc.binDir, "runc"))
	if err != nil {
		if runc, err = exec.LookPath("runc"); err != nil {
			return errors.New("runc is missing: install it (Debian: apt-get install runc; scripts/build-node.sh does)")
		}
	}
	nc.runc = runc
	for _, archive := range nc.archives {
		if _, err := os.Stat(archive); err != nil {
			return fmt.Errorf("image archive: %w", err)
		}
	}
	return nil
}

// nodeState is what teardown needs, also when it runs in a later process (node.json).
type nodeState struct {
	Owner      int               `json:"owner"`
	Dir        string            `json:"dir"`
	Socket     string            `json:"socket"`
	Shim       string            `json:"shim"`
	CgroupRoot string            `json:"cgroupRoot"`
	Sysctls    map[string]string `json:"sysctls"`
	// Fixed host folders that did not exist before this node; removed when empty.
	CreatedHostDirs []string `json:"createdHostDirs"`
}

type node struct {
	cfg        nodeConfig
	state      nodeState
	socket     string
	components []*component
}

func newNode(planeDir string, cfg nodeConfig) *node {
	dir := filepath.Join(planeDir, "node")
	socket := filepath.Join(dir, "containerd.sock")
	return &node{cfg: cfg, socket: socket, state: nodeState{
		Owner:      os.Getpid(),
		Dir:        dir,
		Socket:     socket,
		Shim:       filepath.Join(cfg.binDir, "containerd-shim-runc-v2"),
		CgroupRoot: "/vaultsync-node-" + strconv.Itoa(os.Getpid()),
		Sysctls:    map[string]string{},
	}}
}

func (n *node) path(parts ...string) string {
	return filepath.Join(append([]string{n.state.Dir}, parts...)...)
}

// start brings the node up and waits until it is Ready, untainted, and the scheduler is healthy.
func (n *node) start(p *plane, pk *pki, server string, admin *http.Client, deadline time.Time, stop <-chan os.Signal) error {
	for _, d := range []string{"containerd", "runc", "cni", "kubelet", "pod-logs", "volume-plugins"} {
		if err := os.MkdirAll(n.path(d), 0o700); err != nil {
			return err
		}
	}
	for _, d := range fixedHostDirs {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			n.state.CreatedHostDirs = append(n.state.CreatedHostDirs, d)
		}
	}
	for _, key := range kubeletSysctls {
		if value, err := os.ReadFile(filepath.Join("/proc/sys", key)); err == nil {
			n.state.Sysctls[key] = strings.TrimSpace(string(value))
		}
	}
	if err := createCgroup(n.state.CgroupRoot); err != nil {
		return fmt.Errorf("creating the node's cgroup %s: %w", n.state.CgroupRoot, err)
	}
	if err := n.saveState(); err != nil {
		return err
	}

	ports, err := freePorts(map[string]int{"kubelet": 0, "kubelet-healthz": 0, "kube-scheduler": 0})
	if err != nil {
		return err
	}

	// containerd, then the images the node needs before it runs anything (the sandbox image).
	if err := os.WriteFile(n.path("containerd.toml"), []byte(n.containerdConfig()), 0o600); err != nil {
		return err
	}
	cni := `{"cniVersion": "1.0.0", "name": "loopback", "plugins": [{"type": "loopback"}]}`
	if err := os.WriteFile(n.path("cni", "10-loopback.conflist"), []byte(cni), 0o600); err != nil {
		return err
	}
	containerd, err := p.spawnProgram("containerd", filepath.Join(n.cfg.binDir, "containerd"), "--config", n.path("containerd.toml"))
	if err != nil {
		return err
	}
	n.components = append(n.components, containerd)
	if err := waitFor(containerd, deadline, stop, func() bool {
		conn, err := net.DialTimeout("unix", n.socket, time.Second)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}); err != nil {
		return err
	}
	for _, archive := range n.cfg.archives {
		if err := importImage(n.cfg.binDir, n.socket, archive); err != nil {
			return err
		}
	}

	// The kubelet.
	kubeletKubeconfig := n.path("kubelet.kubeconfig")
	if err := writeKubeconfig(kubeletKubeconfig, server, pk.ca.certPEM, "system:node:"+nodeName, pk.issued["kubelet-client"]); err != nil {
		return err
	}
	config, err := json.MarshalIndent(n.kubeletConfig(pk, ports["kubelet"], ports["kubelet-healthz"]), "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(n.path("kubelet.json"), config, 0o600); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	kubelet, err := p.spawnProgram("kubelet", self, "kubelet",
		"--config="+n.path("kubelet.json"),
		"--kubeconfig="+kubeletKubeconfig,
		"--root-dir="+n.path("kubelet"),
		"--cert-dir="+n.path("kubelet", "pki"),
		"--hostname-override="+nodeName)
	if err != nil {
		return err
	}
	n.components = append(n.components, kubelet)

	scheduler, err := p.spawn("kube-scheduler",
		"--kubeconfig="+filepath.Join(p.dir, "kubeconfig"),
		"--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(ports["kube-scheduler"]),
		"--tls-cert-file="+pk.certPaths["serving.crt"], "--tls-private-key-file="+pk.certPaths["serving.key"])
	if err != nil {
		return err
	}
	n.components = append(n.components, scheduler)
	if err := waitFor(scheduler, deadline, stop, func() bool {
		return get(admin, fmt.Sprintf("https://127.0.0.1:%d/healthz", ports["kube-scheduler"])) == 200
	}); err != nil {
		return err
	}
	// Ready, and the node lifecycle controller has lifted the not-ready taint: pods schedule now.
	return waitFor(kubelet, deadline, stop, func() bool { return nodeSchedulable(admin, server) })
}

// importImage loads an image archive (OCI or docker-save tarball) into the namespace the CRI uses.
func importImage(binDir, socket, archive string) error {
	out, err := exec.Command(filepath.Join(binDir, "ctr"), "--address", socket, "--namespace", "k8s.io",
		"images", "import", archive).CombinedOutput()
	if err != nil {
		return fmt.Errorf("importing %s: %v\n%s", archive, err, out)
	}
	return nil
}

// nodeSchedulable: the node reports Ready and carries no taint that keeps pods off it.
func nodeSchedulable(admin *http.Client, server string) bool {
	resp, err := admin.Get(server + "/api/v1/nodes/" + nodeName)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return false
	}
	var n struct {
		Spec struct {
			Taints []struct {
				Key    string `json:"key"`
				Effect string `json:"effect"`
			} `json:"taints"`
		} `json:"spec"`
		Status struct {
			Conditions []struct {
				Type   string `json:"type"`
				Status string `json:"status"`
			} `json:"conditions"`
		} `json:"status"`
	}
	if json.NewDecoder(resp.Body).Decode(&n) != nil {
		return false
	}
	for _, t := range n.Spec.Taints {
		if t.Effect == "NoSchedule" || t.Effect == "NoExecute" {
			return false
		}
	}
	for _, c := range n.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

// containerdConfig: every path under the node's folder, CRI with runc and the loopback CNI
// network, no NRI socket, no AppArmor profile loaded into the host kernel, and no lowering of
// oom_score_adj (these machines refuse it; the CRI clamps the kubelet's values instead).
func (n *node) containerdConfig() string {
	q := strconv.Quote
	return fmt.Sprintf(`version = 3
root = %s
state = %s
temp = %s
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = %s

[ttrpc]
  address = %s

[plugins.'io.containerd.internal.v1.opt']
  path = %s

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %s

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      runtime_path = %s
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %s
        Root = %s
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%s]
    conf_dir = %s

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
`,
		q(n.path("containerd", "root")), q(n.path("containerd", "state")), q(n.path("containerd", "tmp")),
		q(n.socket), q(n.socket+".ttrpc"), q(n.path("containerd", "opt")), q(n.cfg.sandboxImage),
		q(n.state.Shim), q(n.cfg.runc), q(n.path("runc")),
		q(filepath.Join(n.cfg.binDir, "cni")), q(n.path("cni")))
}

// kubeletConfig: serving on loopback with a certificate from the cluster CA, clients checked
// against the CA and authorised by the apiserver; cgroups under the node's own root; logs, volume
// plugins and state under the node's folder. Image garbage collection and disk-pressure eviction
// are off: the images are imported, not pulled, and the disk is shared with other work.
func (n *node) kubeletConfig(pk *pki, port, healthzPort int) map[string]any {
	return map[string]any{
		"apiVersion":         "kubelet.config.k8s.io/v1beta1",
		"kind":               "KubeletConfiguration",
		"address":            nodeName,
		"port":               port,
		"readOnlyPort":       0,
		"healthzBindAddress": "127.0.0.1",
		"healthzPort":        healthzPort,
		"tlsCertFile":        pk.certPaths["kubelet-serving.crt"],
		"tlsPrivateKeyFile":  pk.certPaths["kubelet-serving.key"],
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true},
			"x509":      map[string]any{"clientCAFile": pk.caPath},
		},
		"authorization":               map[string]any{"mode": "Webhook"},
		"containerRuntimeEndpoint":    "unix://" + n.socket,
		"cgroupDriver":                "cgroupfs",
		"cgroupRoot":                  n.state.CgroupRoot,
		"failCgroupV1":                false,
		"failSwapOn":                  false,
		"resolvConf":                  "",
		"podLogsDir":                  n.path("pod-logs"),
		"volumePluginDir":             n.path("volume-plugins"),
		"makeIPTablesUtilChains":      false,
		"oomScoreAdj":                 0,
		"evictionHard":                map[string]string{"memory.available": "100Mi"},
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		// Secret and projected volumes are refreshed at least this often.
		"syncFrequency": "10s",
	}
}

func (n *node) saveState() error {
	data, err := json.MarshalIndent(n.state, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(n.path("node.json"), data, 0o600)
}

// stop ends the node: the scheduler and kubelet, every container, containerd and its shims, and
// then everything they left (cleanup.go).
func (n *node) stop() {
	for i := len(n.components) - 1; i >= 0; i-- {
		c := n.components[i]
		if c.name == "containerd" {
			// Containers first, while containerd still runs (the kubelet is already gone).
			n.deleteContainers()
		}
		c.stop()
	}
	teardown(n.state)
}

// deleteContainers deletes every task and container through containerd, which also ends their
// shims cleanly (a shim removes its socket on the way out).
func (n *node) deleteContainers() {
	ctr := func(args ...string) []string {
		out, err := exec.Command(filepath.Join(n.cfg.binDir, "ctr"),
			append([]string{"--address", n.socket, "--namespace", "k8s.io", "--timeout", "20s"}, args...)...).Output()
		if err != nil {
			return nil
		}
		return strings.Fields(string(out))
	}
	if tasks := ctr("tasks", "ls", "--quiet"); len(tasks) > 0 {
		ctr(append([]string{"tasks", "delete", "--force"}, tasks...)...)
	}
	if containers := ctr("containers", "ls", "--quiet"); len(containers) > 0 {
		ctr(append([]string{"containers", "delete"}, containers...)...)
	}
}

// nodeAPIServerArgs: NodeRestriction (a kubelet changes only its own Node and pods), and the client
// certificate and CA the apiserver uses to reach the kubelet (logs, exec).
func nodeAPIServerArgs(pk *pki) []string {
	return []string{
		"--enable-admission-plugins=NodeRestriction",
		"--kubelet-client-certificate=" + pk.certPaths["apiserver-kubelet-client.crt"],
		"--kubelet-client-key=" + pk.certPaths["apiserver-kubelet-client.key"],
		"--kubelet-certificate-authority=" + pk.caPath,
		"--kubelet-preferred-address-types=InternalIP,Hostname",
	}
}
