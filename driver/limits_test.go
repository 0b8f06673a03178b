package driver

import (
	"strings"
	"testing"

	"github.com/hearth-ci/hearth/config"
)

func TestLimitRequests(t *testing.T) {
	jobs := config.Default().Jobs
	jobs.Memory, jobs.MemoryMax = 1<<30, 4<<30
	jobs.CPUs, jobs.CPUsMax = 1, 2
	for _, tc := range []struct {
		vars map[string]string
		want config.Limits
		err  string
	}{
		{nil, config.Limits{Memory: 1 << 30, CPUs: 1, Pids: 4096, Nofile: 1024, TmpfsSize: 1 << 30}, ""},
		{map[string]string{"HEARTH_MEMORY": "2GiB", "HEARTH_CPUS": "0.5", "HEARTH_PIDS": "100", "HEARTH_NOFILE": "256", "HEARTH_TMPFS_SIZE": "64M"},
			config.Limits{Memory: 2 << 30, CPUs: 0.5, Pids: 100, Nofile: 256, TmpfsSize: 64 << 20}, ""},
		{map[string]string{"HEARTH_MEMORY": " "}, config.Limits{Memory: 1 << 30, CPUs: 1, Pids: 4096, Nofile: 1024, TmpfsSize: 1 << 30}, ""},
		{map[string]string{"HEARTH_MEMORY": "8GiB"}, config.Limits{}, `HEARTH_MEMORY = "8GiB" is more than this runner allows ([jobs] memory_max = 4.0 GiB)`},
		{map[string]string{"HEARTH_PIDS": "5000"}, config.Limits{}, `([jobs] pids_max = 4096)`},
		// Requests that would have slipped past the limit as zero or as no number at all.
		{map[string]string{"HEARTH_PIDS": "0.5"}, config.Limits{}, `HEARTH_PIDS = "0.5" is not a limit: give a whole number`},
		{map[string]string{"HEARTH_PIDS": "NaN"}, config.Limits{}, `is not a limit: give a whole number`},
		{map[string]string{"HEARTH_NOFILE": "nan"}, config.Limits{}, `is not a limit`},
		{map[string]string{"HEARTH_CPUS": "NaN"}, config.Limits{}, `HEARTH_CPUS = "NaN" is not a limit`},
		{map[string]string{"HEARTH_CPUS": "+Inf"}, config.Limits{}, `is not a limit`},
		{map[string]string{"HEARTH_CPUS": "0.000001"}, config.Limits{}, `is less than a stage needs: ask for at least 0.01`},
		{map[string]string{"HEARTH_PIDS": "0"}, config.Limits{}, `ask for at least 16`},
		{map[string]string{"HEARTH_PIDS": "-5"}, config.Limits{}, `ask for at least 16`},
		{map[string]string{"HEARTH_MEMORY": "1"}, config.Limits{}, `HEARTH_MEMORY = "1" is less than a stage needs: ask for at least 16.0 MiB`},
		{map[string]string{"HEARTH_MEMORY": "lots"}, config.Limits{}, `give a size such as "2GiB"`},
		{map[string]string{"HEARTH_TMPFS_SIZE": "4GB"}, config.Limits{}, `give a size`},
	} {
		got, err := limits(jobs, tc.vars)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("limits(%v) = %+v, %v; want an error with %q", tc.vars, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("limits(%v) = %+v, %v; want %+v", tc.vars, got, err, tc.want)
		}
	}
}
