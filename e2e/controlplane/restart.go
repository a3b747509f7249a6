package main

// Restarting the apiserver alone, for fault tests: on SIGUSR1, `up` stops kube-apiserver (SIGTERM, as a
// rolling update would), starts it again with the same flags on the same port, and waits until it is ready.
// etcd and its data, and the controller manager (which reconnects), are kept. Without the signal nothing changes.

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// restartRequests delivers each SIGUSR1 sent to `up`.
func restartRequests() <-chan os.Signal {
	requests := make(chan os.Signal, 1)
	signal.Notify(requests, syscall.SIGUSR1)
	return requests
}

// restartAPIServer stops kube-apiserver and starts it again in its place in the stop order.
func (p *plane) restartAPIServer(timeout time.Duration, stop <-chan os.Signal) error {
	index := -1
	for i, c := range p.components {
		if c.name == "kube-apiserver" {
			index = i
		}
	}
	if index < 0 {
		return fmt.Errorf("no kube-apiserver to restart")
	}
	old := p.components[index]
	fmt.Fprintln(os.Stderr, "restarting kube-apiserver")
	old.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-old.exited:
		old.exited <- err
	case <-time.After(10 * time.Second):
		old.cmd.Process.Kill()
		err := <-old.exited
		old.exited <- err
	}
	p.components = append(p.components[:index], p.components[index+1:]...)
	fresh, err := p.spawnProgram(old.name, old.cmd.Path, old.args...)
	if err != nil {
		return err
	}
	// spawnProgram appended it; put it back where the old one was, so stopAll keeps the order.
	last := len(p.components) - 1
	copy(p.components[index+1:], p.components[index:last])
	p.components[index] = fresh
	if err := waitFor(fresh, time.Now().Add(timeout), stop, func() bool { return get(p.admin, p.server+"/readyz") == 200 }); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "kube-apiserver restarted and ready")
	return nil
}
