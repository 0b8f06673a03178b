// Package driver is gitlab-runner's custom-executor contract: the config, prepare, run and cleanup
// stages, the job payload and CUSTOM_ENV_* variables, image and push policy, the job log's
// sections, and whose fault a failure is. It knows nothing of containerd; it drives an Executor.
package driver

import (
	"errors"
	"fmt"
	"io"

	"github.com/hearth-ci/hearth/executor"
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

// Failure is how a driver stage failed. The driver marks what it knows to be the job's fault (a
// refused image, the script's own exit status) with one; Report makes one of every other error a
// stage returns, deciding its kind from what the executor says.
type Failure struct {
	Kind Kind
	Err  error
	// Logged is set when the job log already says why (the script's own output): nothing more
	// is printed.
	Logged bool
}

func (f *Failure) Error() string { return f.Err.Error() }
func (f *Failure) Unwrap() error { return f.Err }

func buildFailure(format string, args ...any) error {
	return &Failure{Kind: BuildFailure, Err: fmt.Errorf(format, args...)}
}

// Report ends a driver stage that returned err: nil stays nil; anything else becomes a *Failure
// whose kind is decided, and whose one-line sentence is written to log (stderr, which
// gitlab-runner puts in the job log) unless the log already says why.
func Report(log io.Writer, stage string, err error) error {
	if err == nil {
		return nil
	}
	f := classify(err)
	if !f.Logged {
		fmt.Fprintf(log, "ERROR: hearth %s: %v\n", stage, f.Err)
	}
	return f
}

// classify decides whose fault err is: what the driver marked, and what the executor says the
// job caused (an environment the job chose itself), is the job's; anything else is the host's.
func classify(err error) *Failure {
	var f *Failure
	if errors.As(err, &f) {
		return &Failure{Kind: f.Kind, Err: err, Logged: f.Logged}
	}
	var je *executor.JobError
	if errors.As(err, &je) {
		return &Failure{Kind: BuildFailure, Err: err}
	}
	return &Failure{Kind: SystemFailure, Err: err}
}
