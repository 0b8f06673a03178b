package driver

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/hearth-ci/hearth/bytesize"
	"github.com/hearth-ci/hearth/config"
)

// limits are the job's container limits: the runner's, or what the job asks for with HEARTH_*
// variables within the runner's maximums. A variable is only ever a request: the maximum is the
// config's, and a request beyond it fails the job rather than being quietly cut down.
func limits(cfg config.Jobs, vars map[string]string) (config.Limits, error) {
	l, max := cfg.Limits(), cfg.MaxLimits()
	// The kind of each value decides how it is read: a size, a whole number, or a number of CPUs;
	// min is the least that still runs a stage (a request below it would only fail obscurely).
	const (
		size = iota
		whole
		cpus
	)
	for _, r := range []struct {
		variable, key string
		kind          int
		min, max      float64
		set           func(float64)
	}{
		{"HEARTH_MEMORY", "memory_max", size, 16 << 20, float64(max.Memory), func(v float64) { l.Memory = int64(v) }},
		{"HEARTH_CPUS", "cpus_max", cpus, 0.01, max.CPUs, func(v float64) { l.CPUs = v }},
		{"HEARTH_PIDS", "pids_max", whole, 16, float64(max.Pids), func(v float64) { l.Pids = int64(v) }},
		{"HEARTH_NOFILE", "nofile_max", whole, 64, float64(max.Nofile), func(v float64) { l.Nofile = int64(v) }},
		{"HEARTH_TMPFS_SIZE", "tmpfs_size_max", size, 1 << 20, float64(max.TmpfsSize), func(v float64) { l.TmpfsSize = int64(v) }},
	} {
		raw := strings.TrimSpace(vars[r.variable])
		if raw == "" {
			continue
		}
		var v float64
		var err error
		what := map[int]string{size: `a size such as "2GiB"`, whole: "a whole number", cpus: `a number of CPUs such as "2" or "0.5"`}[r.kind]
		switch r.kind {
		case size:
			var n int64
			n, err = bytesize.Parse(raw)
			v = float64(n)
		case whole:
			var n int64
			n, err = strconv.ParseInt(raw, 10, 64)
			v = float64(n)
		case cpus:
			v, err = strconv.ParseFloat(raw, 64)
			if math.IsNaN(v) || math.IsInf(v, 0) {
				err = strconv.ErrSyntax
			}
		}
		if err != nil {
			return l, buildFailure("%s = %q is not a limit: give %s", r.variable, raw, what)
		}
		if v < r.min {
			return l, buildFailure("%s = %q is less than a stage needs: ask for at least %s", r.variable, raw, show(r.min, r.kind == size))
		}
		if r.max != 0 && v > r.max {
			return l, buildFailure("%s = %q is more than this runner allows ([jobs] %s = %s): ask for at most that", r.variable, raw, r.key, show(r.max, r.kind == size))
		}
		r.set(v)
	}
	return l, nil
}

func show(v float64, sized bool) string {
	switch {
	case v == 0:
		return "no limit"
	case sized:
		return bytesize.Format(int64(v))
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// describeLimits is the job-log line that says what the job's container may use.
func describeLimits(l config.Limits) string {
	return fmt.Sprintf("Limits: memory %s, CPUs %s, processes %s, open files %s, /tmp and /root %s each",
		show(float64(l.Memory), true), show(l.CPUs, false), show(float64(l.Pids), false), show(float64(l.Nofile), false), show(float64(l.TmpfsSize), true))
}
