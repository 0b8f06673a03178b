package executor

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// A prepare killed while containerd creates the task can leave the task's shim running with no
// container behind it (containerd 1.6 does not always stop a shim whose create was abandoned).
// Nothing else would end it: cleanup and gc end the shims of the jobs they remove.

// killShim ends the runc shim of container id in this executor's namespace and containerd, if
// one is left; it is called once the container is gone.
func (e *Executor) killShim(id string) {
	for _, pid := range e.shimsOf(id) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// shimsOf lists the pids of the shims serving container id for this executor's containerd.
func (e *Executor) shimsOf(id string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), "containerd-shim") {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if flag(args, "-namespace") == e.cfg.Containerd.Namespace && flag(args, "-id") == id && flag(args, "-address") == e.cfg.Containerd.Address {
			out = append(out, pid)
		}
	}
	return out
}

func flag(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
