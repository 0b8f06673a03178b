// Package driver is gitlab-runner's custom-executor contract: the config, prepare, run and cleanup
// stages, the job payload and CUSTOM_ENV_* variables, image policy, and exit codes. It knows
// nothing of containerd; it drives an Executor.
package driver

import (
	"errors"
	"fmt"
)

// Kind says whose fault a failure is, which decides the exit code gitlab-runner sees.
type Kind int

const (
	// BuildFailure is the job's own fault: its script failed, or it asked for something the runner
	// does not allow. The runner does not retry it.
	BuildFailure Kind = iota + 1
	// SystemFailure is the runner host's fault (containerd down, disk full); the runner retries
	// prepare, and reports "runner system failure".
	SystemFailure
)

// Failure is an error with a kind. Errors without one are system failures.
type Failure struct {
	Kind Kind
	Err  error
}

func (f *Failure) Error() string { return f.Err.Error() }
func (f *Failure) Unwrap() error { return f.Err }

func buildFailure(format string, args ...any) error {
	return &Failure{Kind: BuildFailure, Err: fmt.Errorf(format, args...)}
}

// KindOf returns the kind of err: BuildFailure only when something in its chain says so.
func KindOf(err error) Kind {
	var f *Failure
	if errors.As(err, &f) {
		return f.Kind
	}
	return SystemFailure
}
