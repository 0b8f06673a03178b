package driver

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
)

// Payload is the part of the job payload (gitlab-runner's spec.Job, written to $JOB_RESPONSE_FILE)
// that hearth reads. Policy reads it rather than CUSTOM_ENV_* because job variables can override
// predefined variables, and cannot change this file.
type Payload struct {
	ID      int64 `json:"id"`
	JobInfo struct {
		Name        string `json:"name"`
		Stage       string `json:"stage"`
		ProjectID   int64  `json:"project_id"`
		ProjectName string `json:"project_name"`
	} `json:"job_info"`
	GitInfo struct {
		RepoURL   string `json:"repo_url"`
		Ref       string `json:"ref"`
		Sha       string `json:"sha"`
		RefType   string `json:"ref_type"`
		Protected *bool  `json:"protected"`
	} `json:"git_info"`
	RunnerInfo struct {
		Timeout int `json:"timeout"`
	} `json:"runner_info"`
	Image struct {
		Name string `json:"name"`
	} `json:"image"`
	// Variables are the job's variables as GitLab sent them; a job's own can override predefined
	// ones, so they are read for records (the pipeline id), never for policy.
	Variables []struct {
		Key   string `json:"key"`
		Value string `json:"value"`
	} `json:"variables"`
	Credentials []struct {
		Type     string `json:"type"`
		URL      string `json:"url"`
		Username string `json:"username"`
		Password string `json:"password"`
	} `json:"credentials"`
}

// ReadPayload reads and decodes the job payload at path.
func ReadPayload(path string) (*Payload, error) {
	if path == "" {
		return nil, fmt.Errorf("JOB_RESPONSE_FILE is not set: hearth driver commands must be run by gitlab-runner's custom executor (or hearth exec)")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read job payload: %w", err)
	}
	var p Payload
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("job payload %s is not valid JSON: %w", path, err)
	}
	if p.ID <= 0 {
		return nil, fmt.Errorf("job payload %s has no job id", path)
	}
	return &p, nil
}

// JobID returns the job id as a string.
func (p *Payload) JobID() string { return strconv.FormatInt(p.ID, 10) }

// Protected reports whether the job runs for a protected ref. A payload that does not say counts
// as unprotected.
func (p *Payload) Protected() bool { return p.GitInfo.Protected != nil && *p.GitInfo.Protected }
