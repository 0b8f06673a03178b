package driver

import (
	"errors"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/deploy"
	"github.com/hearth-ci/hearth/executor"
	"github.com/hearth-ci/hearth/metrics"
)

// Recorder records events for the operators' metrics; metrics.Recorder is one.
type Recorder interface {
	Record(evs ...metrics.Event)
}

// StageEvent is the metrics event of a driver stage that took took and ended with err, as Report
// returned it; cancelled says gitlab-runner stopped it.
func StageEvent(stage string, took time.Duration, err error, cancelled bool) metrics.Event {
	if err == nil {
		return metrics.Stage(stage, took, "", "")
	}
	fault := metrics.FaultHost
	var f *Failure
	switch {
	case cancelled:
		fault = metrics.FaultCancelled
	case errors.As(err, &f) && f.Kind == BuildFailure:
		fault = metrics.FaultJob
	}
	reason := ""
	if stage == "prepare" {
		reason = executor.StepOf(err)
		switch {
		case cancelled:
			reason = "cancelled"
		case reason == "":
			reason = "other"
		}
	}
	return metrics.Stage(stage, took, fault, reason)
}

func (d *Driver) record(evs ...metrics.Event) {
	if d.Metrics != nil {
		d.Metrics.Record(evs...)
	}
}

// recordDeploys counts each target's deploy by its outcome.
func (d *Driver) recordDeploys(results []deploy.Result) {
	var evs []metrics.Event
	for _, r := range results {
		evs = append(evs, metrics.Event{Kind: metrics.KindDeploy, Target: r.Target, Result: strings.ReplaceAll(r.Outcome.String(), " ", "_")})
	}
	d.record(evs...)
}

// recordRefused counts the targets of a request the driver turned down; a request that named none
// (a request dir that is a symlink) is counted once, under no target.
func (d *Driver) recordRefused(targets []string) {
	if len(targets) == 0 {
		targets = []string{""}
	}
	var evs []metrics.Event
	for _, t := range targets {
		evs = append(evs, metrics.Event{Kind: metrics.KindDeploy, Target: t, Result: "refused"})
	}
	d.record(evs...)
}
