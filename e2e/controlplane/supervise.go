package main

// `supervise -- CMD ARGS...`: run one process (a backend emulator, say) and stop it when
// standard input closes or a stop signal arrives. The test harness keeps the write end of
// our standard input open for as long as it lives, so the emulator never outlives the tests,
// even when the test process is killed.

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

func supervise(args []string) int {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: controlplane supervise -- CMD ARGS...")
		return 2
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "error: starting %s: %v\n", args[0], err)
		return 1
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		io.Copy(io.Discard, os.Stdin)
		stop <- syscall.SIGTERM
	}()
	select {
	case err := <-exited:
		if err != nil {
			fmt.Fprintf(os.Stderr, "error: %s exited: %v\n", args[0], err)
			return 1
		}
		return 0
	case <-stop:
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	return 0
}
