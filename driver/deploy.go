package driver

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/deploy"
	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nixstore"
)

// DeployExitCode is what BUILD_EXIT_CODE_FILE says when the job's script succeeded but its deploy
// was refused or failed: the job must not be reported with the script's 0.
const DeployExitCode = 3

// Deployer deploys systems to targets; deploy.Deployer is one.
type Deployer interface {
	Run(ctx context.Context, reqs []deploy.Request) []deploy.Result
}

// Store is the host's Nix store, where a requested system must be valid.
type Store interface {
	Info(ctx context.Context, paths []string) ([]nixstore.PathInfo, error)
}

// repoPath is the repository's path in the project dir, as gitlab-runner makes it from the
// payload's repo_url (not from CI_PROJECT_PATH, which a job's variables can override).
func repoPath(p *Payload) string {
	u, err := url.Parse(p.GitInfo.RepoURL)
	if err != nil || u.Host == "" {
		return "project-" + strconv.FormatInt(p.JobInfo.ProjectID, 10)
	}
	return strings.TrimSuffix(strings.Trim(u.Path, "/"), ".git")
}

// requestsDir is the job's project dir on the host; ok is false for a job without a builds dir.
func (d *Driver) requestsDir(p *Payload) (dir projectDir, ok bool, err error) {
	if d.Exec == nil {
		return projectDir{}, false, nil
	}
	builds, err := d.Exec.BuildsDir(ContainerID(p))
	if err != nil {
		return projectDir{}, false, fmt.Errorf("find the job's builds dir for its deploy requests: %w", err)
	}
	if builds == "" {
		return projectDir{}, false, nil
	}
	return projectDir{Builds: builds, Repo: repoPath(p)}, true, nil
}

// allowedTargets lists the targets this job's project and ref may deploy to.
func allowedTargets(cfg config.Deploy, p *Payload) []string {
	var out []string
	for _, name := range cfg.TargetNames() {
		if refusal(cfg.Targets[name], p) == "" {
			out = append(out, name)
		}
	}
	return out
}

// refusal says why the job may not deploy to t, or "" when it may. It reads the payload only.
func refusal(t config.Target, p *Payload) string {
	if !p.Protected() {
		return fmt.Sprintf("ref %q is not protected", p.GitInfo.Ref)
	}
	id := strconv.FormatInt(p.JobInfo.ProjectID, 10)
	path := repoPath(p)
	allowed := false
	for _, a := range t.Projects {
		if a == id || a == path {
			allowed = true
		}
	}
	if !allowed {
		return fmt.Sprintf("project %s (%s) is not in its projects", path, id)
	}
	if len(t.Refs) > 0 {
		for _, r := range t.Refs {
			if r == p.GitInfo.Ref {
				return ""
			}
		}
		return fmt.Sprintf("ref %q is not in its refs (%s)", p.GitInfo.Ref, strings.Join(t.Refs, ", "))
	}
	return ""
}

// checkSystem checks that path is a NixOS system valid in the host store: a store path with
// nixos-version and an executable bin/switch-to-configuration, each resolving inside the store.
// It only looks; nothing of the path is run here. A refusal is the job's fault; err is the host's
// (a daemon that does not answer).
func (d *Driver) checkSystem(ctx context.Context, path string) (refusal string, err error) {
	if err := nix.CheckStorePath(path); err != nil {
		return fmt.Sprintf("%q is not a store path", path), nil
	}
	if d.Store == nil {
		return "", errors.New("this hearth has no Nix store to check deploy requests against")
	}
	if _, err := d.Store.Info(ctx, []string{path}); err != nil {
		if _, statErr := os.Lstat(path); errors.Is(statErr, os.ErrNotExist) || strings.Contains(err.Error(), "is not valid") {
			return fmt.Sprintf("%s is not a valid path in this host's Nix store", path), nil
		}
		return "", fmt.Errorf("check the deploy request %s: %w", path, err)
	}
	for _, f := range []struct {
		name string
		exec bool
	}{{"nixos-version", false}, {"bin/switch-to-configuration", true}} {
		resolved, err := filepath.EvalSymlinks(filepath.Join(path, f.name))
		if err != nil || !strings.HasPrefix(resolved, nix.StoreDir+"/") {
			return fmt.Sprintf("%s is not a NixOS system: it has no %s", path, f.name), nil
		}
		fi, err := os.Stat(resolved)
		if err != nil || !fi.Mode().IsRegular() || (f.exec && fi.Mode()&0o111 == 0) {
			return fmt.Sprintf("%s is not a NixOS system: its %s is not an executable file", path, f.name), nil
		}
	}
	return "", nil
}

// deploys carries out the deploys the job asked for, after its script succeeded and the push is
// done. No request means nothing to do and nothing in the log.
func (d *Driver) deploys(ctx context.Context, p *Payload) error {
	dir, ok, err := d.requestsDir(p)
	if !ok || err != nil {
		return err
	}
	reqs, err := readRequests(dir)
	if err != nil {
		return err
	}
	if len(reqs) == 0 {
		return nil
	}
	cfg := d.Config.Deploy
	var asked []string
	for _, r := range reqs {
		if r.target != "" {
			asked = append(asked, r.target)
		}
	}
	end := section(d.Stdout, "hearth_deploy", "Deploying to "+strings.Join(asked, ", "))
	var refused []string
	var todo []deploy.Request
	for _, r := range reqs {
		why := r.refused
		if why == "" {
			t, known := cfg.Targets[r.target]
			switch {
			case !known:
				why = "is not a target this runner knows"
			default:
				if no := refusal(t, p); no != "" {
					why = "may not be deployed to by this job: " + no
				} else if bad, err := d.checkSystem(ctx, r.path); err != nil {
					end()
					return err
				} else if bad != "" {
					why = bad
				}
			}
		}
		if why != "" {
			name := r.target
			if name == "" {
				name = requestDir
			} else {
				name = requestDir + "/" + name
			}
			refused = append(refused, name+": "+why)
			continue
		}
		todo = append(todo, deploy.Request{Target: r.target, Path: r.path})
	}
	if len(refused) > 0 {
		d.recordRefused(asked)
		for _, r := range refused {
			fmt.Fprintln(d.Stdout, "refused: "+r)
		}
		end()
		allowed := allowedTargets(cfg, p)
		may := "no target"
		if len(allowed) > 0 {
			may = strings.Join(allowed, ", ")
		}
		return d.deployFailed(fmt.Errorf("deploy refused (%s); nothing was deployed. This project (%s, id %d) on ref %q may deploy to: %s",
			strings.Join(refused, "; "), repoPath(p), p.JobInfo.ProjectID, p.GitInfo.Ref, may))
	}
	if d.OpenDeployer == nil {
		end()
		return d.deployFailed(errors.New("this hearth cannot deploy"))
	}
	var mu sync.Mutex
	logLine := func(target, line string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(d.Stdout, "[%s] %s\n", target, line)
	}
	start := time.Now()
	results := d.OpenDeployer(d.origin(p), logLine).Run(ctx, todo)
	end()
	d.recordDeploys(results)
	return d.reportDeploys(results, time.Since(start))
}

// origin is what each target records beside the generation a job made.
func (d *Driver) origin(p *Payload) deploy.Origin {
	host, _ := os.Hostname()
	o := deploy.Origin{
		Job:       p.JobID(),
		Project:   repoPath(p),
		ProjectID: strconv.FormatInt(p.JobInfo.ProjectID, 10),
		Ref:       p.GitInfo.Ref,
		Commit:    p.GitInfo.Sha,
		Runner:    host,
		Time:      time.Now().UTC(),
	}
	// GitLab lists its predefined variables first; a job's own of the same name come later and
	// are not taken. This is a record, not policy.
	for _, v := range p.Variables {
		switch {
		case v.Key == "CI_PIPELINE_ID" && o.Pipeline == "":
			o.Pipeline = v.Value
		case v.Key == "CI_JOB_URL" && o.URL == "":
			o.URL = v.Value
		}
	}
	return o
}

// reportDeploys ends the job log with one line per target, and fails the job unless every
// target ended deployed or unchanged.
func (d *Driver) reportDeploys(results []deploy.Result, took time.Duration) error {
	var failed []string
	for _, r := range results {
		line := r.Target + ": " + r.Outcome.String()
		switch r.Outcome {
		case deploy.Deployed:
			if r.Generation != "" {
				line += " generation " + r.Generation
			}
			line += " (" + r.Path + ")"
		case deploy.Unchanged:
			line += ", already on " + r.Path
		}
		if r.Err != nil {
			line += ": " + r.Err.Error()
		}
		if r.Outcome != deploy.Deployed && r.Outcome != deploy.Unchanged {
			failed = append(failed, r.Target)
			fmt.Fprintln(d.Stdout, "\x1b[31;1m"+line+"\x1b[0;m")
			continue
		}
		fmt.Fprintln(d.Stdout, line)
		if r.Warning != "" {
			warning(d.Stdout, "%s: %s", r.Target, r.Warning)
		}
	}
	if len(failed) > 0 {
		return d.deployFailed(fmt.Errorf("deploy to %s did not succeed (see above); the job fails", strings.Join(failed, ", ")))
	}
	fmt.Fprintf(d.Stdout, "Deployed to %d target(s) in %s\n", len(results), took.Round(time.Millisecond))
	return nil
}

// deployFailed makes a refused or failed deploy the job's failure, with DeployExitCode in place of
// the script's 0.
func (d *Driver) deployFailed(err error) error {
	if werr := d.Invocation.writeBuildExitCode(DeployExitCode); werr != nil {
		return werr
	}
	return &Failure{Kind: BuildFailure, Err: err}
}
