package driver

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Invocation is what gitlab-runner puts in the environment of every driver call.
type Invocation struct {
	JobResponseFile       string
	BuildExitCodeFile     string
	BuildFailureExitCode  int
	SystemFailureExitCode int
	// Custom holds the job's variables, from CUSTOM_ENV_*, without the prefix. They are the job's
	// to set, so nothing that decides policy may read them.
	Custom map[string]string
}

// ParseInvocation reads environ (os.Environ's format).
func ParseInvocation(environ []string) Invocation {
	e := Invocation{Custom: map[string]string{}, BuildFailureExitCode: 1, SystemFailureExitCode: 2}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch {
		case k == "JOB_RESPONSE_FILE":
			e.JobResponseFile = v
		case k == "BUILD_EXIT_CODE_FILE":
			e.BuildExitCodeFile = v
		case k == "BUILD_FAILURE_EXIT_CODE":
			if n, err := strconv.Atoi(v); err == nil {
				e.BuildFailureExitCode = n
			}
		case k == "SYSTEM_FAILURE_EXIT_CODE":
			if n, err := strconv.Atoi(v); err == nil {
				e.SystemFailureExitCode = n
			}
		case strings.HasPrefix(k, "CUSTOM_ENV_"):
			e.Custom[strings.TrimPrefix(k, "CUSTOM_ENV_")] = v
		}
	}
	return e
}

// ExitCode is the exit code gitlab-runner expects for a failure of kind k.
func (e Invocation) ExitCode(k Kind) int {
	if k == BuildFailure {
		return e.BuildFailureExitCode
	}
	return e.SystemFailureExitCode
}

// writeBuildExitCode records the script's real exit status where gitlab-runner reads it. It is
// written on every run call: the file is shared by all stages of a job, so a stale code from an
// earlier stage must never be left for a later one.
func (e Invocation) writeBuildExitCode(code int) error {
	if e.BuildExitCodeFile == "" {
		return nil
	}
	if err := os.WriteFile(e.BuildExitCodeFile, []byte(strconv.Itoa(code)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write BUILD_EXIT_CODE_FILE: %w", err)
	}
	return nil
}
