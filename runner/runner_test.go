package runner

import (
	"os"
	"path/filepath"
	"testing"
)

func TestNewFillsWhatExecLeavesOut(t *testing.T) {
	r := New(Options{Job: &Job{Name: "j"}})
	wd, _ := os.Getwd()
	if r.JobID() <= 0 || r.opts.ProjectPath != "local/"+filepath.Base(wd) || r.opts.RepoURL != "https://gitlab.invalid/local/"+filepath.Base(wd)+".git" {
		t.Fatalf("defaults: id %d, project %q, repo %q", r.JobID(), r.opts.ProjectPath, r.opts.RepoURL)
	}
	r = New(Options{Job: &Job{Name: "j"}, JobID: 7, ProjectPath: "g/p", RepoURL: "file:///srv/p.git"})
	if r.JobID() != 7 || r.opts.ProjectPath != "g/p" || r.opts.RepoURL != "file:///srv/p.git" {
		t.Fatalf("given: %+v", r.opts)
	}
}

// The first interrupt cancels (after_script still runs), the second aborts.
func TestInterrupt(t *testing.T) {
	r := New(Options{Job: &Job{Name: "j"}})
	if r.Interrupt() || !r.canceled() || r.aborted() {
		t.Fatalf("after one interrupt: canceled %v, aborted %v", r.canceled(), r.aborted())
	}
	if !r.Interrupt() || !r.aborted() {
		t.Fatalf("after two: aborted %v", r.aborted())
	}
	if !r.Interrupt() {
		t.Fatal("a third interrupt did not report the abort")
	}
}
