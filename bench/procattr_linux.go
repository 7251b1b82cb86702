package bench

import "syscall"

// childProcAttr makes the kernel kill a child (mosquitto, a spawned berth)
// when the bench dies without cleaning up (SIGKILL, a crash), so that no
// broker is left holding a port. Pdeathsig follows the thread that started
// the child; the Go runtime only ends threads locked with LockOSThread, which
// the bench never does.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
