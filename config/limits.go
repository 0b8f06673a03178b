package config

import (
	"fmt"
	"strconv"

	"github.com/hearth-ci/hearth/bytesize"
)

// Size is a number of bytes, written as "512MiB" or "4GiB" in the file.
type Size int64

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Size) UnmarshalText(b []byte) error {
	n, err := bytesize.Parse(string(b))
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (s Size) MarshalText() ([]byte, error) { return []byte(strconv.FormatInt(int64(s), 10)), nil }

// Limits bound what one job's container may use. Zero means no bound. They are enforced by the
// container's cgroup (memory, CPU time, processes), its rlimits (open files) and the size of its
// tmpfs mounts; the job's builds run in the nix-daemon, outside them.
type Limits struct {
	Memory    int64
	CPUs      float64
	Pids      int64
	Nofile    int64
	TmpfsSize int64
}

// Limits are a job's limits unless it asks for others.
func (j Jobs) Limits() Limits {
	return Limits{Memory: int64(j.Memory), CPUs: j.CPUs, Pids: j.Pids, Nofile: j.Nofile, TmpfsSize: int64(j.TmpfsSize)}
}

// MaxLimits are the most a job may ask for: each _max key, or the limit itself where it is not
// set (a job may then only ask for less).
func (j Jobs) MaxLimits() Limits {
	l := j.Limits()
	or := func(max, value int64) int64 {
		if max != 0 {
			return max
		}
		return value
	}
	m := Limits{Memory: or(int64(j.MemoryMax), l.Memory), CPUs: j.CPUsMax, Pids: or(j.PidsMax, l.Pids), Nofile: or(j.NofileMax, l.Nofile), TmpfsSize: or(int64(j.TmpfsSizeMax), l.TmpfsSize)}
	if m.CPUs == 0 {
		m.CPUs = l.CPUs
	}
	return m
}

func (j Jobs) validateLimits(at func(key ...string) string) error {
	for _, c := range []struct {
		key        string
		value, max float64
	}{
		{"memory", float64(j.Memory), float64(j.MemoryMax)},
		{"cpus", j.CPUs, j.CPUsMax},
		{"pids", float64(j.Pids), float64(j.PidsMax)},
		{"nofile", float64(j.Nofile), float64(j.NofileMax)},
		{"tmpfs_size", float64(j.TmpfsSize), float64(j.TmpfsSizeMax)},
	} {
		if c.value < 0 {
			return fmt.Errorf("%s = %v: must not be negative (0 means no limit)", at("jobs", c.key), c.value)
		}
		if c.max < 0 {
			return fmt.Errorf("%s = %v: must not be negative", at("jobs", c.key+"_max"), c.max)
		}
		if c.max != 0 && c.value != 0 && c.max < c.value {
			return fmt.Errorf("%s is below %s: a job's default may not be more than it may ask for", at("jobs", c.key+"_max"), c.key)
		}
		if c.max != 0 && c.value == 0 {
			return fmt.Errorf("%s is set but %s is 0 (no limit): set %s to the default jobs get", at("jobs", c.key+"_max"), c.key, c.key)
		}
	}
	if j.Memory != 0 && j.Memory < 16<<20 {
		return fmt.Errorf("%s = %s: below 16 MiB a job cannot even start bash", at("jobs", "memory"), bytesize.Format(int64(j.Memory)))
	}
	if j.Pids != 0 && j.Pids < 16 {
		return fmt.Errorf("%s = %d: a stage needs a few processes; use at least 16", at("jobs", "pids"), j.Pids)
	}
	if j.Nofile != 0 && j.Nofile < 64 {
		return fmt.Errorf("%s = %d: use at least 64", at("jobs", "nofile"), j.Nofile)
	}
	return nil
}
