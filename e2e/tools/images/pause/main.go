// pause: the process that holds a pod's namespaces. It sleeps until a signal arrives: SIGCHLD
// reaps exited children (it is PID 1 of the pod when the PID namespace is shared), SIGINT and
// SIGTERM end it. No polling: it uses no CPU while idle.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGCHLD, syscall.SIGINT, syscall.SIGTERM)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
