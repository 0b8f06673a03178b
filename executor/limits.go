package executor

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hearth-ci/hearth/bytesize"
	"github.com/hearth-ci/hearth/config"
)

// cpuPeriod is the CFS period CPU limits are expressed in: 100 ms, the kernel's default.
const cpuPeriod = 100000

// withLimits bounds the container's memory (without swap: memory+swap is the same bound),
// CPU time and number of tasks in its cgroup, and its open files by rlimit.
func withLimits(l config.Limits) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		if s.Linux.Resources == nil {
			s.Linux.Resources = &specs.LinuxResources{}
		}
		r := s.Linux.Resources
		if l.Memory > 0 {
			m := l.Memory
			r.Memory = &specs.LinuxMemory{Limit: &m, Swap: &m}
		}
		if l.CPUs > 0 {
			quota := int64(l.CPUs * cpuPeriod)
			period := uint64(cpuPeriod)
			if r.CPU == nil {
				r.CPU = &specs.LinuxCPU{}
			}
			r.CPU.Quota, r.CPU.Period = &quota, &period
		}
		if l.Pids > 0 {
			p := l.Pids
			r.Pids = &specs.LinuxPids{Limit: &p}
		}
		if l.Nofile > 0 {
			if s.Process == nil {
				s.Process = &specs.Process{}
			}
			rl := specs.POSIXRlimit{Type: "RLIMIT_NOFILE", Hard: uint64(l.Nofile), Soft: uint64(l.Nofile)}
			replaced := false
			for i := range s.Process.Rlimits {
				if s.Process.Rlimits[i].Type == rl.Type {
					s.Process.Rlimits[i], replaced = rl, true
				}
			}
			if !replaced {
				s.Process.Rlimits = append(s.Process.Rlimits, rl)
			}
		}
		return nil
	}
}

// tmpfsOptions are the mount options of the job's /tmp and /root: a size bound, as the kernel's
// default is half the host's memory for each.
func tmpfsOptions(l config.Limits, mode string) []string {
	opts := []string{"nosuid", "nodev", "mode=" + mode}
	if l.TmpfsSize > 0 {
		opts = append(opts, "size="+strconv.FormatInt(l.TmpfsSize, 10))
	}
	return opts
}

// oomKills is how many times the kernel's OOM killer has killed a process of the job's container
// for reaching its memory limit, as its cgroup counts them; -1 when that cannot be read (no
// memory limit, or a cgroup layout hearth does not know).
func (e *Executor) oomKills(id string) int {
	rel := filepath.Join(e.cfg.Containerd.Namespace, id)
	for _, f := range []struct{ path, key string }{
		{filepath.Join("/sys/fs/cgroup", rel, "memory.events"), "oom_kill"},             // cgroup v2
		{filepath.Join("/sys/fs/cgroup/memory", rel, "memory.oom_control"), "oom_kill"}, // cgroup v1
	} {
		file, err := os.Open(f.path)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(file)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), " ")
			if ok && k == f.key {
				n, err := strconv.Atoi(strings.TrimSpace(v))
				file.Close()
				if err != nil {
					return -1
				}
				return n
			}
		}
		file.Close()
	}
	return -1
}

// memoryLimitError is the job's fault: it used more memory than its limit.
func memoryLimitError(stage string, memory int64) error {
	return &JobError{Err: fmt.Errorf("stage %s reached the job's memory limit of %s and the kernel killed a process of it (out of memory): use less, or ask for more with HEARTH_MEMORY up to [jobs] memory_max", stage, bytesize.Format(memory))}
}
