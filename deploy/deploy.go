// Package deploy puts NixOS systems on servers over SSH: it transfers the closure (the target pulls
// from its caches; what it cannot find is sent), activates it in a transient systemd unit on the
// target, confirms over a new connection, runs the health checks, and leaves a watchdog on the
// target that rolls back when any of that fails or the deployer goes away. It decides nothing
// about who may deploy: the driver does.
package deploy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/filelock"
	"github.com/hearth-ci/hearth/nixstore"
)

// Store is the runner host's Nix store, which holds the systems to deploy.
type Store interface {
	Closure(ctx context.Context, paths []string) ([]nixstore.PathInfo, error)
}

// Origin is where a deployed generation came from; the target keeps it beside the generation.
type Origin struct {
	Job       string    `json:"job,omitempty"`
	Pipeline  string    `json:"pipeline,omitempty"`
	Project   string    `json:"project,omitempty"`
	ProjectID string    `json:"project_id,omitempty"`
	Ref       string    `json:"ref,omitempty"`
	Commit    string    `json:"commit,omitempty"`
	URL       string    `json:"url,omitempty"`
	Runner    string    `json:"runner,omitempty"`
	By        string    `json:"by,omitempty"`
	Time      time.Time `json:"time"`
	Path      string    `json:"path"`
	Action    string    `json:"action"`
}

// Request is one system to deploy to one configured target.
type Request struct {
	Target string
	Path   string
}

// Outcome is how a target's deploy ended.
type Outcome int

const (
	NotStarted Outcome = iota
	Deployed
	Unchanged
	RolledBack
	Failed
)

func (o Outcome) String() string {
	return [...]string{"not started", "deployed", "unchanged", "rolled back", "failed"}[o]
}

// Result is one target's deploy.
type Result struct {
	Target  string
	Path    string
	Outcome Outcome
	// Generation is the system profile generation the target ended on, when known.
	Generation string
	// Warning is set for a deploy that stands with a problem (units failed, kept by policy).
	Warning string
	Err     error
}

// Deployer deploys to the targets of one config.
type Deployer struct {
	Config config.Deploy
	Store  Store
	// LockDir holds this host's per-target locks, so two jobs never deploy to one target at once.
	LockDir string
	// Log receives each target's progress, a line at a time.
	Log func(target, line string)
	// Origin is recorded on each target beside the generation it makes.
	Origin Origin
	// Action, when set, replaces the targets' configured action.
	Action string
	// DryRun connects, inspects and summarises, and changes nothing.
	DryRun bool
	// OnTarget says the systems are already on their targets (an earlier generation, for a
	// rollback) and may be gone from this host's store: nothing is read here or transferred.
	OnTarget bool
}

// New returns the deployer of a host's config: its targets, its Nix daemon, and its per-target
// locks under the jobs' state dir.
func New(cfg *config.Config) *Deployer {
	return &Deployer{Config: cfg.Deploy, Store: nixstore.Daemon(cfg.Nix.Trusted().DaemonSocket), LockDir: lockDir(cfg)}
}

func lockDir(cfg *config.Config) string { return filepath.Join(cfg.Jobs.StateDir, "deploy") }

// Run deploys each request: the canary first and alone, then the others at most Config.Parallel
// at a time. After the first target fails no further target starts. It returns one result per
// request, in order.
func (d *Deployer) Run(ctx context.Context, reqs []Request) []Result {
	results := make([]Result, len(reqs))
	for i, r := range reqs {
		results[i] = Result{Target: r.Target, Path: r.Path, Outcome: NotStarted}
	}
	release, err := d.holdSystems(reqs)
	if err != nil {
		for i := range results {
			results[i].Outcome, results[i].Err = Failed, err
		}
		return results
	}
	defer release()
	var failed sync.Once
	stop := make(chan struct{})
	one := func(i int) {
		select {
		case <-stop:
			return
		default:
		}
		if ctx.Err() != nil {
			return
		}
		results[i] = d.deploy(ctx, reqs[i])
		if o := results[i].Outcome; o != Deployed && o != Unchanged {
			failed.Do(func() { close(stop) })
		}
	}
	rest := make([]int, 0, len(reqs))
	for i, r := range reqs {
		if t, ok := d.Config.Targets[r.Target]; ok && t.Canary && len(reqs) > 1 {
			d.log(r.Target, "canary: deploying here first, alone")
			one(i)
			continue
		}
		rest = append(rest, i)
	}
	var g errgroup.Group
	g.SetLimit(d.Config.Parallel)
	for _, i := range rest {
		g.Go(func() error { one(i); return nil })
	}
	g.Wait()
	for i := range results {
		if results[i].Outcome == NotStarted {
			why := "an earlier target failed"
			if ctx.Err() != nil {
				why = "the job was cancelled"
			}
			results[i].Err = errors.New(why)
		}
	}
	return results
}

func (d *Deployer) log(target, format string, args ...any) {
	if d.Log != nil {
		d.Log(target, fmt.Sprintf(format, args...))
	}
}

// deploy runs one target's deploy under this host's lock for the target.
func (d *Deployer) deploy(ctx context.Context, req Request) Result {
	res := Result{Target: req.Target, Path: req.Path}
	t, ok := d.Config.Targets[req.Target]
	if !ok {
		res.Outcome, res.Err = Failed, fmt.Errorf("no target %q in [deploy.targets]", req.Target)
		return res
	}
	release, err := d.lockTarget(ctx, req.Target)
	if err != nil {
		res.Outcome, res.Err = Failed, err
		return res
	}
	defer release()
	s := &session{d: d, t: t, name: req.Target, path: req.Path, action: t.Action}
	if d.Action != "" {
		s.action = d.Action
	}
	return s.run(ctx)
}

// lockTarget takes this host's lock for a target, saying so when another deploy holds it.
func (d *Deployer) lockTarget(ctx context.Context, target string) (func(), error) {
	path := filepath.Join(d.LockDir, target+".lock")
	if err := d.makeLockDir(); err != nil {
		return nil, err
	}
	said := false
	start := time.Now()
	for {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open the deploy lock of %s: %w", target, err)
		}
		ok, err := filelock.TryLock(f)
		if err == nil && !ok {
			if !said {
				d.log(target, "waiting for another deploy to %s from this host to finish", target)
				said = true
			}
			err = filelock.Lock(ctx, f)
		}
		if err != nil {
			f.Close()
			return nil, err
		}
		// hearth gc removes lock files nobody holds; a lock taken on a removed file guards nothing.
		if same(f, path) {
			if said {
				d.log(target, "waited %s for the other deploy", time.Since(start).Round(time.Millisecond))
			}
			return func() { f.Close() }, nil
		}
		f.Close()
	}
}

// makeLockDir makes the lock dir. The state dir above it is the jobs' too, which job containers
// must be able to traverse: it is not made private here.
func (d *Deployer) makeLockDir() error {
	if err := os.MkdirAll(filepath.Dir(d.LockDir), 0o755); err != nil {
		return fmt.Errorf("make the state dir: %w", err)
	}
	if err := os.MkdirAll(d.LockDir, 0o700); err != nil {
		return fmt.Errorf("make the deploy lock dir: %w", err)
	}
	return nil
}

// same reports whether f is still the file at path.
func same(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	return err == nil && os.SameFile(a, b)
}

// holdSystems keeps every system of a run alive in this host's store until the run ends, from
// before any target waits for its lock: once the driver has read a job's out-link, these roots
// are all that keeps its system from the garbage collector. They belong to a run lock this
// process holds, so that hearth gc can tell the roots of a dead deployer.
func (d *Deployer) holdSystems(reqs []Request) (release func(), err error) {
	if d.OnTarget {
		return func() {}, nil
	}
	if err := d.makeLockDir(); err != nil {
		return nil, err
	}
	id := newID()
	lock := filepath.Join(d.LockDir, "runs", id+".lock")
	unlock, err := filelock.Acquire(context.Background(), lock)
	if err != nil {
		return nil, fmt.Errorf("take the deploy's run lock: %w", err)
	}
	// hearth gc may have removed the new file before it was locked: its roots would then be
	// nobody's. The id is new each time, so this happens at most once in a while; say so.
	if _, err := os.Stat(lock); err != nil {
		unlock()
		return nil, fmt.Errorf("the deploy's run lock %s went away as it was taken (a hearth gc at that moment): run the deploy again", lock)
	}
	if err := os.MkdirAll(d.Config.GCRootsDir, 0o755); err != nil {
		unlock()
		return nil, fmt.Errorf("make the GC roots dir: %w", err)
	}
	var roots []string
	release = func() {
		for _, r := range roots {
			os.Remove(r)
		}
		os.Remove(filepath.Join(d.LockDir, "runs", id+".lock"))
		unlock()
	}
	for _, r := range reqs {
		root := filepath.Join(d.Config.GCRootsDir, id+"-"+r.Target)
		if err := os.Symlink(r.Path, root); err != nil {
			release()
			return nil, fmt.Errorf("make a GC root for %s: %w", r.Path, err)
		}
		roots = append(roots, root)
	}
	return release, nil
}

// GC removes what deployers that died left on this host: the GC roots of their runs, and lock
// files nobody holds. A running deploy holds its run lock, and is never touched.
func GC(cfg *config.Config, logf func(format string, args ...any)) error {
	var errs []error
	runs, _ := filepath.Glob(filepath.Join(lockDir(cfg), "runs", "*.lock"))
	for _, l := range runs {
		removeIfFree(l, func() {
			id := strings.TrimSuffix(filepath.Base(l), ".lock")
			roots, _ := filepath.Glob(filepath.Join(cfg.Deploy.GCRootsDir, id+"-*"))
			for _, r := range roots {
				if err := os.Remove(r); err != nil {
					errs = append(errs, err)
					continue
				}
				logf("removed the GC root of an ended deploy to %s", strings.TrimPrefix(filepath.Base(r), id+"-"))
			}
		}, &errs)
	}
	targets, _ := filepath.Glob(filepath.Join(lockDir(cfg), "*.lock"))
	for _, l := range targets {
		removeIfFree(l, func() {}, &errs)
	}
	return errors.Join(errs...)
}

// removeIfFree takes the lock at path if nobody holds it, runs then while holding it, and removes
// the file: a deploy that takes it next finds it gone, and opens a new one.
func removeIfFree(path string, then func(), errs *[]error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if ok, err := filelock.TryLock(f); err != nil || !ok || !same(f, path) {
		return
	}
	then()
	if err := os.Remove(path); err != nil {
		*errs = append(*errs, err)
	}
}

func newID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return strconv.FormatInt(time.Now().Unix(), 10) + "-" + hex.EncodeToString(b)
}
