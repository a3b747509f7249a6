package main

// Undoing a node: its processes, mounts, cgroups, kernel settings and host folders. teardown works
// from the node's record alone (node.json), so the same steps clean up after a run that was killed
// outright: `up --node` first sweeps the temporary folders of such runs (sweepAbandonedNodes).

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// teardown kills what is left of a node and removes everything it made.
func teardown(s nodeState) {
	killCgroup(s.CgroupRoot)
	killReferencing(s.Dir)
	unmountUnder(s.Dir)
	removeCgroup(s.CgroupRoot)
	for key, value := range s.Sysctls {
		path := filepath.Join("/proc/sys", key)
		if current, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(current)) != value {
			if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
				fmt.Fprintf(os.Stderr, "warning: restoring %s: %v\n", key, err)
			}
		}
	}
	removeLogSymlinks(s.Dir)
	for i := len(s.CreatedHostDirs) - 1; i >= 0; i-- {
		dir := s.CreatedHostDirs[i]
		if dir == "/var/lib/kubelet/device-plugins" {
			// The kubelet's device-plugin socket and checkpoint; the folder is ours.
			os.Remove(filepath.Join(dir, "kubelet.sock"))
			os.Remove(filepath.Join(dir, "kubelet_internal_checkpoint"))
		}
		syscall.Rmdir(dir) // only when empty: another node may be using it
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		fmt.Fprintf(os.Stderr, "warning: removing %s: %v\n", s.Dir, err)
	}
}

// sweepAbandonedNodes tears down nodes in temporary folders whose `up` process is gone.
func sweepAbandonedNodes() {
	records, _ := filepath.Glob(filepath.Join(os.TempDir(), "vaultsync-controlplane-*", "node", "node.json"))
	for _, record := range records {
		data, err := os.ReadFile(record)
		if err != nil {
			continue
		}
		var s nodeState
		if json.Unmarshal(data, &s) != nil || s.Dir != filepath.Dir(record) || ownerAlive(s.Owner) {
			continue
		}
		fmt.Fprintf(os.Stderr, "cleaning up after an earlier node (process %d) that was killed\n", s.Owner)
		teardown(s)
		os.RemoveAll(filepath.Dir(s.Dir))
	}
}

// ownerAlive: the process is still a running `controlplane up`.
func ownerAlive(pid int) bool {
	args := cmdline(pid)
	return len(args) > 1 && strings.Contains(filepath.Base(args[0]), "controlplane") && args[1] == "up"
}

func cmdline(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// killReferencing kills the processes whose command line names a path under dir: containerd and
// its shims (they daemonise, so they are not our children), and the kubelet of a killed run.
func killReferencing(dir string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		args := cmdline(pid)
		for _, arg := range args {
			if arg == dir || strings.HasPrefix(strings.TrimPrefix(arg, "unix://"), dir+"/") ||
				strings.Contains(arg, "="+dir+"/") {
				syscall.Kill(pid, syscall.SIGKILL)
				removeShimSocket(args)
				break
			}
		}
	}
}

// removeShimSocket removes the socket a killed containerd shim leaves in the fixed shim socket
// folder. Its name is containerd's: the SHA-256 of <containerd address>/<namespace>/<shim id>.
func removeShimSocket(args []string) {
	if len(args) == 0 || filepath.Base(args[0]) != "containerd-shim-runc-v2" {
		return
	}
	flags := map[string]string{}
	for i := 1; i+1 < len(args); i++ {
		if strings.HasPrefix(args[i], "-") {
			flags[strings.TrimLeft(args[i], "-")] = args[i+1]
		}
	}
	if flags["address"] == "" || flags["namespace"] == "" || flags["id"] == "" {
		return
	}
	path := filepath.Join(flags["address"], flags["namespace"], flags["id"])
	for _, p := range []string{path, filepath.Join(path, "debug")} {
		os.Remove(fmt.Sprintf("/run/containerd/s/%x", sha256.Sum256([]byte(p))))
	}
}

// cgroupMount is one mounted cgroup hierarchy.
type cgroupMount struct {
	path   string
	cpuset bool
}

func cgroupMounts() []cgroupMount {
	var out []cgroupMount
	for _, m := range mountInfo() {
		if m.fsType == "cgroup" || m.fsType == "cgroup2" {
			out = append(out, cgroupMount{path: m.mountPoint, cpuset: strings.Contains(","+m.superOptions+",", ",cpuset,")})
		}
	}
	return out
}

// createCgroup makes the cgroup in every hierarchy (the kubelet checks that its cgroup root exists).
func createCgroup(name string) error {
	for _, m := range cgroupMounts() {
		dir := filepath.Join(m.path, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			return err
		}
		if m.cpuset {
			// A new cpuset cgroup has no CPUs or memory nodes until given its parent's.
			for _, file := range []string{"cpuset.cpus", "cpuset.mems"} {
				value, err := os.ReadFile(filepath.Join(m.path, file))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(dir, file), value, 0o644); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// cgroupTree lists the cgroup folders under name in every hierarchy, deepest first.
func cgroupTree(name string) []string {
	var dirs []string
	for _, m := range cgroupMounts() {
		filepath.WalkDir(filepath.Join(m.path, name), func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
	}
	sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	return dirs
}

// killCgroup kills every process in the cgroup and its children, until none is left (15 s at most).
func killCgroup(name string) {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		found := false
		for _, dir := range cgroupTree(name) {
			data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			if err != nil {
				continue
			}
			for _, field := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(field); err == nil {
					found = true
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if !found {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "warning: processes left in cgroup %s\n", name)
}

// removeCgroup removes the cgroup and its children (a cgroup goes once its last process has exited).
func removeCgroup(name string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := cgroupTree(name)
		for _, dir := range left {
			syscall.Rmdir(dir)
		}
		if len(cgroupTree(name)) == 0 {
			return
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "warning: could not remove cgroup %s\n", name)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unmountUnder detaches every mount at or below dir, deepest first: secret and token volumes,
// container root filesystems, sandbox shm, the kubelet's shared bind mount of its root.
func unmountUnder(dir string) {
	for attempt := 0; attempt < 10; attempt++ {
		var points []string
		for _, m := range mountInfo() {
			if m.mountPoint == dir || strings.HasPrefix(m.mountPoint, dir+"/") {
				points = append(points, m.mountPoint)
			}
		}
		if len(points) == 0 {
			return
		}
		sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
		for _, point := range points {
			syscall.Unmount(point, syscall.MNT_DETACH)
		}
	}
	fmt.Fprintf(os.Stderr, "warning: mounts left under %s\n", dir)
}

// removeLogSymlinks removes the kubelet's legacy log symlinks that point into dir.
func removeLogSymlinks(dir string) {
	entries, _ := os.ReadDir("/var/log/containers")
	for _, e := range entries {
		link := filepath.Join("/var/log/containers", e.Name())
		if target, err := os.Readlink(link); err == nil && strings.HasPrefix(target, dir+"/") {
			os.Remove(link)
		}
	}
}

type mount struct {
	mountPoint, fsType, superOptions string
}

// mountInfo parses /proc/self/mountinfo (proc(5)).
func mountInfo() []mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mount
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 64*1024), 1024*1024)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+3 >= len(fields) {
			continue
		}
		out = append(out, mount{mountPoint: unescapeMount(fields[4]), fsType: fields[sep+1], superOptions: fields[sep+3]})
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, and so on).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
