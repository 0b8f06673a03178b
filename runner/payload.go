package runner

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// variables are the job's variables as the runner knows them: GitLab's predefined ones (which come
// in the payload), the runner's own, then the file's. Later entries win, as they do for a job.
func (r *Runner) variables(buildsDir string) []Variable {
	o := r.opts
	protected := strconv.FormatBool(o.Protected)
	vars := []Variable{
		{Key: "CI", Value: "true"},
		{Key: "GITLAB_CI", Value: "true"},
		{Key: "CI_JOB_ID", Value: strconv.FormatInt(o.JobID, 10)},
		{Key: "CI_JOB_NAME", Value: o.Job.Name},
		{Key: "CI_JOB_STAGE", Value: o.Job.Stage},
		{Key: "CI_JOB_TOKEN", Value: r.jobToken(), Masked: true},
		{Key: "CI_PROJECT_ID", Value: strconv.FormatInt(o.ProjectID, 10)},
		{Key: "CI_PROJECT_PATH", Value: o.ProjectPath},
		{Key: "CI_PROJECT_NAME", Value: filepath.Base(o.ProjectPath)},
		{Key: "CI_REPOSITORY_URL", Value: o.RepoURL},
		{Key: "CI_COMMIT_SHA", Value: o.SHA},
		{Key: "CI_COMMIT_REF_NAME", Value: o.Ref},
		{Key: "CI_COMMIT_REF_PROTECTED", Value: protected},
		{Key: "CI_PIPELINE_ID", Value: strconv.FormatInt(o.JobID, 10)},
		{Key: "GIT_STRATEGY", Value: "none"},
		// What the runner adds.
		{Key: "CI_BUILDS_DIR", Value: buildsDir},
		{Key: "CI_PROJECT_DIR", Value: r.projectDir},
		{Key: "CI_CONCURRENT_ID", Value: strconv.Itoa(o.ConcurrentID)},
		{Key: "CI_CONCURRENT_PROJECT_ID", Value: strconv.Itoa(o.ConcurrentProjectID)},
		{Key: "CI_SERVER", Value: "yes"},
		{Key: "CI_JOB_STATUS", Value: "running"},
		{Key: "CI_JOB_TIMEOUT", Value: strconv.Itoa(int(o.Timeout.Seconds()))},
		{Key: "CI_RUNNER_SHORT_TOKEN", Value: o.RunnerToken},
		{Key: "CI_SHARED_ENVIRONMENT", Value: "true"},
	}
	if o.Job.Image != "" {
		vars = append(vars, Variable{Key: "CI_JOB_IMAGE", Value: o.Job.Image})
	}
	return append(vars, o.Job.Variables...)
}

func (r *Runner) jobToken() string { return fmt.Sprintf("hearth-exec-%d", r.opts.JobID) }

// environ is the environment of every driver call (gitlab-runner's custom.go prepareCommand).
func (r *Runner) environ() []string {
	env := append([]string{}, r.opts.Environ...)
	env = append(env,
		"TMPDIR="+r.tempDir,
		"BUILD_FAILURE_EXIT_CODE=1",
		"SYSTEM_FAILURE_EXIT_CODE=2",
		"BUILD_EXIT_CODE_FILE="+filepath.Join(r.tempDir, "build_exit_code"),
		"JOB_RESPONSE_FILE="+filepath.Join(r.tempDir, "response.json"),
	)
	for k, v := range r.jobEnv {
		env = append(env, k+"="+v)
	}
	for _, v := range r.vars {
		env = append(env, "CUSTOM_ENV_"+v.Key+"="+v.Value)
	}
	return append(env, "CUSTOM_ENV_CI_JOB_SERVICES=")
}

// writePayload writes the job payload (spec.Job) as GitLab would send it.
func (r *Runner) writePayload() error {
	o := r.opts
	type variable struct {
		Key    string `json:"key"`
		Value  string `json:"value"`
		Public bool   `json:"public"`
		Masked bool   `json:"masked"`
		File   bool   `json:"file"`
	}
	type step struct {
		Name         string   `json:"name"`
		Script       []string `json:"script"`
		Timeout      int      `json:"timeout"`
		When         string   `json:"when"`
		AllowFailure bool     `json:"allow_failure"`
	}
	var vars []variable
	for _, v := range r.variables("") {
		if strings.HasPrefix(v.Key, "CI_BUILDS_DIR") || v.Key == "CI_PROJECT_DIR" || strings.HasPrefix(v.Key, "CI_CONCURRENT") {
			continue // the runner's own, not GitLab's
		}
		vars = append(vars, variable{Key: v.Key, Value: v.Value, Public: !v.Masked, Masked: v.Masked, File: v.File})
	}
	timeout := int(o.Timeout.Seconds())
	steps := []step{{Name: "script", Script: append(append([]string{}, o.Job.BeforeScript...), o.Job.Script...), Timeout: timeout, When: "on_success"}}
	if len(o.Job.AfterScript) > 0 {
		steps = append(steps, step{Name: "after_script", Script: o.Job.AfterScript, Timeout: timeout, When: "always", AllowFailure: true})
	}
	creds := []any{}
	for _, c := range o.Credentials {
		creds = append(creds, map[string]string{"type": "registry", "url": c.URL, "username": c.Username, "password": c.Password})
	}
	payload := map[string]any{
		"id":              o.JobID,
		"token":           r.jobToken(),
		"allow_git_fetch": true,
		"job_info":        map[string]any{"name": o.Job.Name, "stage": o.Job.Stage, "project_id": o.ProjectID, "project_name": filepath.Base(o.ProjectPath)},
		"git_info": map[string]any{"repo_url": o.RepoURL, "ref": o.Ref, "sha": o.SHA, "before_sha": strings.Repeat("0", 40),
			"ref_type": "branch", "refspecs": []string{"+refs/heads/" + o.Ref + ":refs/remotes/origin/" + o.Ref}, "depth": 20, "protected": o.Protected},
		"runner_info":  map[string]any{"timeout": timeout},
		"variables":    vars,
		"steps":        steps,
		"image":        map[string]any{"name": o.Job.Image},
		"services":     []any{},
		"artifacts":    []any{},
		"cache":        []any{},
		"credentials":  creds,
		"dependencies": []any{},
		"features": map[string]any{"trace_sections": true,
			"failure_reasons": []string{"script_failure", "runner_system_failure", "job_execution_timeout", "unknown_failure"}},
	}
	b, err := json.Marshal(payload)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(r.tempDir, "response.json"), b, 0o600)
}

func (r *Runner) tmpDir() string { return r.projectDir + ".tmp" }

func (r *Runner) prepareScript() string {
	var b scriptBuilder
	b.line(`echo "Running on $(hostname) via %s..."`, hostName())
	b.line("rm -f %s %s", shellQuote(r.tmpDir()+"/gitlab_runner_env"), shellQuote(r.tmpDir()+"/masking.db"))
	return bashScript(b.String(), r.trace())
}

func (r *Runner) getSourcesScript() string {
	var b scriptBuilder
	b.exports(r.vars, r.tmpDir())
	strategy := "none"
	for _, v := range r.vars {
		if v.Key == "GIT_STRATEGY" {
			strategy = v.Value
		}
	}
	dir := shellQuote(r.projectDir)
	switch strategy {
	case "none", "empty":
		b.notice("Skipping Git repository setup")
		b.line("mkdir -p %s", dir)
	case "clone", "fetch":
		if strategy == "clone" {
			b.line("rm -rf %s", dir)
		}
		b.notice("Fetching changes...")
		b.line("mkdir -p %s && cd %s", dir, dir)
		b.line("if [ ! -d .git ]; then git init -q; fi")
		b.line("git remote remove origin >/dev/null 2>&1 || true")
		b.line("git remote add origin %s", shellQuote(r.opts.RepoURL))
		b.line("git fetch -q --prune origin %s", shellQuote("+refs/heads/"+r.opts.Ref+":refs/remotes/origin/"+r.opts.Ref))
		b.notice("Checking out " + shortSHA(r.opts.SHA) + " as " + r.opts.Ref + "...")
		b.line("git checkout -f -q %s", shellQuote(r.opts.SHA))
		b.line("git clean -ffdx -q")
	default:
		b.line("echo %s >&2", shellQuote("ERROR: unknown GIT_STRATEGY "+strategy))
		b.line("exit 1")
	}
	return bashScript(b.String(), r.trace())
}

func (r *Runner) clearWorktreeScript() string {
	var b scriptBuilder
	b.line("if [ -d %s ]; then cd %s && git clean -ffdx -q && git reset --hard -q; fi", shellQuote(r.projectDir+"/.git"), shellQuote(r.projectDir))
	return bashScript(b.String(), r.trace())
}

func (r *Runner) userScript(cmds []string) string {
	var b scriptBuilder
	b.exports(r.vars, r.tmpDir())
	b.line("cd %s", shellQuote(r.projectDir))
	b.commands(cmds)
	return bashScript(b.String(), r.trace())
}

func (r *Runner) cleanupScript() string {
	var b scriptBuilder
	for _, v := range r.vars {
		if v.File {
			b.line("rm -f %s", shellQuote(r.tmpDir()+"/"+v.Key))
		}
	}
	b.line("rm -f %s", shellQuote(r.tmpDir()+"/gitlab_runner_env"))
	return bashScript(b.String(), r.trace())
}

func (r *Runner) trace() bool {
	for _, v := range r.vars {
		if v.Key == "CI_DEBUG_TRACE" && v.Value == "true" {
			return true
		}
	}
	return false
}

func hostName() string {
	h, _ := os.Hostname()
	return h
}

func shortSHA(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}
