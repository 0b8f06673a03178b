// Package metrics is what operators graph: the events hearth's processes record (a driver stage's
// duration and fault, a path pushed, an upload that failed, a deploy's result) and the Prometheus
// registry `hearth cache watch` serves them from, beside what it reads when scraped (the queue, the
// rejected entries).
//
// A driver stage is a process that lives for one stage, so it cannot be scraped; every process
// appends its events to a spool beside the job state instead, and the watcher, which lives as long
// as the host, folds the spool into its counters. The watcher's own pushes go through the same
// spool, so there is one way in.
package metrics

import (
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/hearth-ci/hearth/config"
)

// Kinds of Event.
const (
	// KindStage is a driver stage that ended: Stage, Seconds, and Fault when it failed (Reason
	// too, for a prepare).
	KindStage = "stage"
	// KindPushed is one path uploaded to the cache: Backend, Bytes (its NAR's size).
	KindPushed = "pushed"
	// KindPushFailed is one upload, or one question to the cache, that failed: Backend.
	KindPushFailed = "push_failed"
	// KindDeploy is one target's deploy: Target, Result.
	KindDeploy = "deploy"
)

// Faults of a failed stage: whose fault it was, as gitlab-runner is told, or that gitlab-runner
// stopped it (a cancelled job, a timeout), which is nobody's.
const (
	FaultJob       = "job"
	FaultHost      = "host"
	FaultCancelled = "cancelled"
)

// Faults are the values of the fault label.
var Faults = []string{FaultJob, FaultHost, FaultCancelled}

// PrepareReasons are where a prepare can fail, the values of hearth_prepare_failures_total's
// reason label. Anything else is counted as "other".
var PrepareReasons = []string{
	"payload",     // the job payload could not be read
	"policy",      // the job's image or environment is not allowed
	"limits",      // the job asked for more than [jobs] allows
	"config",      // the config does not fit this host (a socket path too long)
	"nix-daemon",  // the tier's nix-daemon is not there
	"containerd",  // containerd refused or did not answer
	"state",       // the job's host dirs could not be made
	"environment", // the environment could not be built, fetched or pulled
	"network",     // the job's network could not be made
	"agent",       // the agent in the container did not start
	"cancelled",   // gitlab-runner stopped the prepare
	"other",
}

// DeployResults are the values of hearth_deploys_total's result label: deploy.Outcome's, and
// "refused" for a request the driver turned down before connecting.
var DeployResults = []string{"deployed", "unchanged", "rolled_back", "failed", "not_started", "refused"}

// Backends are the values of the backend label.
var Backends = config.CacheBackends

// Event is one thing that happened, as a line of the spool.
type Event struct {
	Kind    string  `json:"kind"`
	Stage   string  `json:"stage,omitempty"`
	Seconds float64 `json:"seconds,omitempty"`
	Fault   string  `json:"fault,omitempty"`
	Reason  string  `json:"reason,omitempty"`
	Backend string  `json:"backend,omitempty"`
	Bytes   int64   `json:"bytes,omitempty"`
	Target  string  `json:"target,omitempty"`
	Result  string  `json:"result,omitempty"`
}

// Stage is the event of a driver stage that took took and failed with fault ("" when it
// succeeded) for reason (prepare only).
func Stage(stage string, took time.Duration, fault, reason string) Event {
	return Event{Kind: KindStage, Stage: stage, Seconds: took.Seconds(), Fault: fault, Reason: reason}
}

// SpoolPath is where the events of cfg's host are spooled: beside the job state, which every
// driver stage and the watcher already share.
func SpoolPath(cfg *config.Config) string {
	return filepath.Join(cfg.Jobs.StateDir, "metrics", "events")
}

// stepStage admits gitlab-runner's step_<name> stages, whose names GitLab (not the job) chooses.
var stepStage = regexp.MustCompile(`^step_[a-z0-9_]{1,40}$`)

// driverStages are the stage label values besides step_<name>: the driver's own and the run stages
// gitlab-runner sends (see reference: gitlab-custom-executor, "Stages").
var driverStages = []string{
	"prepare", "cleanup",
	"prepare_script", "get_sources", "clear_worktree", "restore_cache", "download_artifacts",
	"build_script", "after_script", "archive_cache", "archive_cache_on_failure",
	"upload_artifacts_on_success", "upload_artifacts_on_failure", "cleanup_file_variables",
}

// stageLabel bounds the stage label: whatever a future gitlab-runner sends that is neither known
// nor a step is "other", so the number of series stays what the dashboard expects.
func stageLabel(s string) string {
	if slices.Contains(driverStages, s) || stepStage.MatchString(s) {
		return s
	}
	return "other"
}

func oneOf(s string, known []string, otherwise string) string {
	if slices.Contains(known, s) {
		return s
	}
	return otherwise
}
