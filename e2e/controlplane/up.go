package main

// `up`: start etcd, kube-apiserver and kube-controller-manager on free loopback ports, wait
// until each is really serving, write an admin kubeconfig, print one READY line, and stop
// everything (and remove the temporary data) on SIGTERM, SIGINT or end of standard input.
// With --node it also starts a node (node.go) and says where its containerd listens.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The controllers the tests rely on: rollouts (deployment/replicaset/statefulset/daemonset),
// namespace deletion, owner-reference garbage collection and service accounts.
const controllers = "deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller," +
	"namespace-controller,garbage-collector-controller,serviceaccount-controller," +
	"serviceaccount-token-controller,root-ca-certificate-publisher-controller"

// With a node: the node lifecycle controller (it lifts the not-ready taint once the kubelet reports
// Ready), pod garbage collection (pods of a gone node, orphaned terminating pods) and EndpointSlices
// (Services select running pods).
const nodeControllers = ",node-lifecycle-controller,pod-garbage-collector-controller,endpointslice-controller"

type component struct {
	name    string
	args    []string
	cmd     *exec.Cmd
	logPath string
	exited  chan error
}

type plane struct {
	dir        string
	components []*component
	// The apiserver's URL and an admin client of it, for readiness checks after a restart.
	server string
	admin  *http.Client
	// Set with --node.
	node *node
}

func up(args []string) int {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	dir := fs.String("dir", "", "data directory (default: a new temporary directory, removed on exit)")
	apiPort := fs.Int("apiserver-port", 0, "kube-apiserver secure port (0: a free port)")
	etcdPort := fs.Int("etcd-port", 0, "etcd client port (0: a free port)")
	watchStdin := fs.Bool("exit-on-stdin-eof", true, "stop when standard input is closed")
	timeout := fs.Duration("timeout", 3*time.Minute, "how long to wait for the control plane to become ready")
	var nc nodeConfig
	fs.BoolVar(&nc.enabled, "node", false, "also run a node: containerd, a kubelet and kube-scheduler (needs root)")
	fs.StringVar(&nc.binDir, "node-bin", "", "folder with containerd, containerd-shim-runc-v2, ctr and cni/loopback (default: this program's folder)")
	fs.StringVar(&nc.sandboxImage, "sandbox-image", "ghcr.io/vaultsync/vaultsync-pause:dev", "the pod sandbox (pause) image; import it with --image-archive")
	fs.Var(&nc.archives, "image-archive", "an image archive to import into the node before it is ready (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := nc.check(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	if nc.enabled {
		// Whatever an earlier run that was killed outright left behind goes first.
		sweepAbandonedNodes()
	}
	p := &plane{dir: *dir}
	removeDir := false
	if p.dir == "" {
		d, err := os.MkdirTemp("", "vaultsync-controlplane-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			return 1
		}
		p.dir, removeDir = d, true
	} else if err := os.MkdirAll(p.dir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	defer func() {
		if removeDir {
			os.RemoveAll(p.dir)
		}
	}()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if *watchStdin {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			stop <- syscall.SIGTERM
		}()
	}

	kubeconfig, err := p.start(*apiPort, *etcdPort, nc, *timeout, stop)
	if err != nil {
		p.stopAll()
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	if p.node != nil {
		// Tab-separated, so that the kubeconfig path stays the first field as without a node.
		fmt.Printf("READY kubeconfig=%s\tcontainerd=%s\tnode=%s\n", kubeconfig, p.node.socket, nodeName)
	} else {
		fmt.Printf("READY kubeconfig=%s\n", kubeconfig)
	}

	restarts := restartRequests()
	exitCode := 0
	for running := true; running; {
		select {
		case <-stop:
			running = false
		case <-restarts:
			if err := p.restartAPIServer(*timeout, stop); err != nil {
				fmt.Fprintln(os.Stderr, "error:", err)
				exitCode, running = 1, false
			}
		case c := <-p.anyExited():
			fmt.Fprintf(os.Stderr, "error: %s exited unexpectedly\n%s", c.name, tail(c.logPath, 30))
			exitCode, running = 1, false
		}
	}
	p.stopAll()
	return exitCode
}

func (p *plane) start(apiPort, etcdPort int, nc nodeConfig, timeout time.Duration, stop <-chan os.Signal) (string, error) {
	pk, err := writePKI(p.dir)
	if err != nil {
		return "", fmt.Errorf("creating certificates: %w", err)
	}
	if nc.enabled {
		if err := pk.writeNodePKI(p.dir, nodeName, nodeIP); err != nil {
			return "", fmt.Errorf("creating the node's certificates: %w", err)
		}
	}
	ports, err := freePorts(map[string]int{"etcd": etcdPort, "etcd-peer": 0, "kube-apiserver": apiPort})
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(timeout)

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports["etcd"])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports["etcd-peer"])
	etcd, err := p.spawn("etcd",
		"--data-dir", filepath.Join(p.dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL,
		"--unsafe-no-fsync", "--log-level", "warn")
	if err != nil {
		return "", err
	}
	plain := &http.Client{Timeout: 2 * time.Second}
	if err := waitFor(etcd, deadline, stop, func() bool {
		resp, err := plain.Get(etcdURL + "/health")
		if err != nil {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 200 && bytes.Contains(body, []byte(`"true"`))
	}); err != nil {
		return "", err
	}

	server := fmt.Sprintf("https://127.0.0.1:%d", ports["kube-apiserver"])
	// With a node, the Node authorizer limits each kubelet to what its pods use.
	authorization := "RBAC"
	if nc.enabled {
		authorization = "Node,RBAC"
	}
	apiserverArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports["kube-apiserver"]),
		"--tls-cert-file=" + pk.certPaths["serving.crt"], "--tls-private-key-file=" + pk.certPaths["serving.key"],
		"--client-ca-file=" + pk.caPath,
		"--authorization-mode=" + authorization,
		"--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
		"--service-account-issuer=" + server,
		"--service-account-key-file=" + pk.certPaths["sa.pub"],
		"--service-account-signing-key-file=" + pk.certPaths["sa.key"],
		"--endpoint-reconciler-type=none", "--profiling=false",
	}
	if nc.enabled {
		apiserverArgs = append(apiserverArgs, nodeAPIServerArgs(pk)...)
	}
	apiserver, err := p.spawn("kube-apiserver", apiserverArgs...)
	if err != nil {
		return "", err
	}
	admin, err := adminClient(pk)
	if err != nil {
		return "", err
	}
	p.server, p.admin = server, admin
	if err := waitFor(apiserver, deadline, stop, func() bool { return get(admin, server+"/readyz") == 200 }); err != nil {
		return "", err
	}

	kubeconfig := filepath.Join(p.dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, server, pk.ca.certPEM, "admin", pk.admin); err != nil {
		return "", err
	}
	enabled := controllers
	if nc.enabled {
		enabled += nodeControllers
	}
	kcm, err := p.spawn("kube-controller-manager",
		"--kubeconfig="+kubeconfig,
		"--leader-elect=false", "--secure-port=0",
		"--controllers="+enabled,
		"--service-account-private-key-file="+pk.certPaths["sa.key"],
		"--root-ca-file="+pk.caPath,
		"--concurrent-deployment-syncs=10")
	if err != nil {
		return "", err
	}
	// The service-account controller creating the default account proves the controller
	// manager is connected and running its controllers.
	if err := waitFor(kcm, deadline, stop, func() bool {
		return get(admin, server+"/api/v1/namespaces/default/serviceaccounts/default") == 200
	}); err != nil {
		return "", err
	}
	if nc.enabled {
		p.node = newNode(p.dir, nc)
		if err := p.node.start(p, pk, server, admin, deadline, stop); err != nil {
			return "", err
		}
	}
	return kubeconfig, nil
}

// spawn re-executes this program as one component, logging to a file in the data directory.
func (p *plane) spawn(name string, args ...string) (*component, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return p.spawnProgram(name, self, append([]string{name}, args...)...)
}

// spawnProgram runs another program as a component, logging to a file in the data directory.
func (p *plane) spawnProgram(name, program string, args ...string) (*component, error) {
	logPath := filepath.Join(p.dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(program, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The kernel kills the child if this process dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &component{name: name, args: args, cmd: cmd, logPath: logPath, exited: make(chan error, 1)}
	go func() {
		c.exited <- cmd.Wait()
		logFile.Close()
	}()
	p.components = append(p.components, c)
	return c, nil
}

// waitFor polls ready until it holds, failing fast (with the component's log tail) when the
// component exits, the deadline passes or a stop signal arrives.
func waitFor(c *component, deadline time.Time, stop <-chan os.Signal, ready func() bool) error {
	for {
		if ready() {
			return nil
		}
		select {
		case err := <-c.exited:
			c.exited <- err
			return fmt.Errorf("%s failed to start (%v); last lines of %s:\n%s", c.name, err, c.logPath, tail(c.logPath, 30))
		case <-stop:
			return errors.New("interrupted while starting")
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready in time; last lines of %s:\n%s", c.name, c.logPath, tail(c.logPath, 30))
		}
	}
}

func (p *plane) anyExited() <-chan *component {
	out := make(chan *component, 1)
	for _, c := range p.components {
		go func() {
			err := <-c.exited
			c.exited <- err
			select {
			case out <- c:
			default:
			}
		}()
	}
	return out
}

// stopAll stops the node (containers, mounts, cgroups included) and then the components in
// reverse start order.
func (p *plane) stopAll() {
	if p.node != nil {
		p.node.stop()
	}
	for i := len(p.components) - 1; i >= 0; i-- {
		p.components[i].stop()
	}
}

// stop ends a component: SIGTERM, then SIGKILL after 10 s.
func (c *component) stop() {
	select {
	case err := <-c.exited:
		c.exited <- err
		return
	default:
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-c.exited:
		c.exited <- err
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		err := <-c.exited
		c.exited <- err
	}
}

// freePorts resolves the wanted ports: a fixed one must be free, 0 picks a free one.
// All listeners stay open until every port is chosen, so no two names get the same port.
func freePorts(wanted map[string]int) (map[string]int, error) {
	out := map[string]int{}
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for name, port := range wanted {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return nil, fmt.Errorf("port %d for %s is taken: %w", port, name, err)
		}
		listeners = append(listeners, l)
		out[name] = l.Addr().(*net.TCPAddr).Port
	}
	return out, nil
}

func adminClient(pk *pki) (*http.Client, error) {
	cert, err := tls.X509KeyPair(pk.admin.certPEM, pk.admin.keyPEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(pk.ca.cert)
	return &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		}},
	}, nil
}

func get(c *http.Client, url string) int {
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// writeKubeconfig writes a kubeconfig for server (trusting ca) that authenticates with a client certificate.
func writeKubeconfig(path, server string, ca []byte, user string, client keyPair) error {
	b64 := base64.StdEncoding.EncodeToString
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: vaultsync-local
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: vaultsync-local
  context:
    cluster: vaultsync-local
    user: %s
    namespace: default
current-context: vaultsync-local
`, server, b64(ca), user, b64(client.certPEM), b64(client.keyPEM), user)
	return os.WriteFile(path, []byte(config), 0o600)
}

// tail returns the last n lines of a log file, indented, for error messages.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "  (no log: " + err.Error() + ")\n"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ") + "\n"
}
