package executor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/filelock"
)

// state is what prepare records about a job before it creates anything, so that cleanup and gc
// can find every piece even when prepare was interrupted half-way.
type state struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// Claim is the claim file of the builds dir this job holds, when it holds one.
	Claim string `json:"claim,omitempty"`
	// Timeout is the job's timeout, 0 when the payload gave none.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Memory is the job's memory limit, for the sentence a stage killed by it ends with.
	Memory int64 `json:"memory,omitempty"`
	// DaemonSocket is the job's tier's nix-daemon, watched for a restart during a stage.
	DaemonSocket string `json:"daemon_socket,omitempty"`
}

func (e *Executor) writeState(st state) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	p := filepath.Join(e.jobDir(st.ID), "state.json")
	if err := os.WriteFile(p+".tmp", b, 0o600); err != nil {
		return fmt.Errorf("write job state: %w", err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return fmt.Errorf("write job state: %w", err)
	}
	return nil
}

func (e *Executor) readState(id string) (state, error) {
	var st state
	b, err := os.ReadFile(filepath.Join(e.jobDir(id), "state.json"))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// pathPart makes s safe as one path component.
func pathPart(s string) string {
	s = unsafeChars.ReplaceAllString(s, "_")
	if s == "" || s == "." || s == ".." {
		return "_" + s
	}
	return s
}

// claimBuildsDir takes the lowest free builds dir of a runner's project. Builds dirs persist between
// jobs, so the next job of the project finds the previous checkout and fetches incrementally; two
// jobs running at once never share one. The claim is a file created exclusively, holding the
// job's id; cleanup removes it.
func (e *Executor) claimBuildsDir(id, runner, project string) (dir, claim string, err error) {
	group := filepath.Join(e.cfg.Jobs.BuildsRoot, pathPart(runner), project)
	if err := os.MkdirAll(group, 0o755); err != nil {
		return "", "", fmt.Errorf("make builds dir: %w", err)
	}
	for n := 0; n < 1000; n++ {
		claim = filepath.Join(group, strconv.Itoa(n)+".claim")
		f, err := os.OpenFile(claim, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", "", fmt.Errorf("claim builds dir: %w", err)
		}
		_, werr := f.WriteString(id)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			os.Remove(claim)
			return "", "", fmt.Errorf("claim builds dir: %w", werr)
		}
		return filepath.Join(group, strconv.Itoa(n)), claim, nil
	}
	return "", "", fmt.Errorf("all 1000 builds dirs under %s are claimed: run `hearth gc` to release those of jobs that are gone", group)
}

// projectDir names a project's dirs under builds_root and cache_root: protected refs apart.
func projectDir(job JobSpec) string {
	if job.Protected {
		return pathPart(job.Project) + "-protected"
	}
	return pathPart(job.Project)
}

// releaseClaim removes claim if id still holds it.
func releaseClaim(claim, id string) error {
	b, err := os.ReadFile(claim)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(b)) != id {
		return nil
	}
	if err := os.Remove(claim); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// makeStateDir makes the state dir, world-searchable, before anything is made inside it: runc,
// as a job's root, must reach the skeleton roots under it, and a private subdirectory (the locks,
// the network namespaces) made first with MkdirAll would otherwise make the state dir private too.
func (e *Executor) makeStateDir() error {
	dir := e.cfg.Jobs.StateDir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("make the state dir: %w", err)
	}
	// Whatever the umask, or whoever made it first.
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("the state dir: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o055 != 0o055 {
		if err := os.Chmod(dir, perm|0o755); err != nil {
			return fmt.Errorf("make the state dir %s searchable by job containers: %w", dir, err)
		}
	}
	return nil
}

// lock takes an exclusive lock named name (any string) among hearth processes on this host,
// waiting until ctx ends, and returns its release.
func (e *Executor) lock(ctx context.Context, name string) (func(), error) {
	if err := e.makeStateDir(); err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(name))
	release, err := filelock.Acquire(ctx, filepath.Join(e.cfg.Jobs.StateDir, "locks", hex.EncodeToString(sum[:8])+".lock"))
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return release, nil
}

// ownedDir makes dir (and its parents) and hands it to the container's root user. Only the
// directory itself: what is inside was made by jobs, which may have planted symlinks there, and a
// walk by path as host root could be steered onto host files. Contents made under an earlier
// uid_map_start stay with that range; chown them by hand when the range changes.
func ownedDir(dir string, uid uint32) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if owner, ok := statOwner(fi); ok && owner == uid {
		return nil
	}
	return os.Lchown(dir, int(uid), int(uid))
}

// BuildsDir is the host directory the job's container sees as its builds dir: the one its claim
// names. A job with no state (prepare never ran, or cleanup removed it) has none.
func (e *Executor) BuildsDir(id string) (string, error) {
	st, err := e.readState(id)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read job state: %w", err)
	}
	return st.buildsDir(), nil
}

// buildsDir is the builds dir the job's claim names, or "" when it holds none.
func (st state) buildsDir() string {
	return strings.TrimSuffix(st.Claim, ".claim")
}
