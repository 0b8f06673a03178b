package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/defaults"
)

// GC removes what jobs left behind when their cleanup never ran (the runner was killed, the host
// crashed): containers no driver call has touched for longer than olderThan, or that outlived
// their job's timeout by that much; then snapshots, state dirs and builds-dir claims that belong to
// no container. A container with a driver call in progress, within its job's timeout, is never
// touched. It reports each removal to log.
func (e *Executor) GC(ctx context.Context, olderThan time.Duration, log io.Writer) error {
	client, err := e.connect(ctx)
	if err != nil {
		return err
	}
	ctx = e.ctx(ctx)
	now := time.Now()
	ctrs, err := client.Containers(ctx, fmt.Sprintf("labels.%q", LabelJob))
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	live := map[string]bool{}
	for _, c := range ctrs {
		id := c.ID()
		stale, why := e.stale(ctx, c, now, olderThan)
		if !stale {
			live[id] = true
			continue
		}
		if err := e.Cleanup(ctx, id); err != nil {
			return fmt.Errorf("remove orphaned container %s: %w", id, err)
		}
		fmt.Fprintf(log, "removed container %s: %s\n", id, why)
	}

	if err := e.gcSnapshots(ctx, client, live, now, olderThan, log); err != nil {
		return err
	}
	if err := e.gcStateDirs(live, now, olderThan, log); err != nil {
		return err
	}
	if err := e.gcClaims(live, now, olderThan, log); err != nil {
		return err
	}
	if err := e.gcNetworks(ctx, live, now, olderThan, log); err != nil {
		return err
	}
	return e.gcEnvironmentRoots(log)
}

// stale decides whether a job container is an orphan, and says why, from what is on the host: a
// driver call in progress spares it, unless the job has outlived its timeout by more than
// olderThan; otherwise it is an orphan once no driver call has started or ended for olderThan.
// The job's agent is not asked: the job can answer in its place.
func (e *Executor) stale(ctx context.Context, c containerd.Container, now time.Time, olderThan time.Duration) (bool, string) {
	created := time.Time{}
	if labels, err := c.Labels(ctx); err == nil {
		created, _ = time.Parse(time.RFC3339, labels[LabelCreated])
	}
	st, err := e.readState(c.ID())
	if err == nil && created.IsZero() {
		created = st.Created
	}
	if created.IsZero() {
		// Without a creation time hearth cannot judge its age; leave it for a person to look at.
		return false, ""
	}
	if err == nil && st.Timeout > 0 && now.Sub(created) > st.Timeout+olderThan {
		return true, fmt.Sprintf("it was created %s ago, past the job's timeout of %s", now.Sub(created).Round(time.Second), st.Timeout)
	}
	running, last := e.activity(c.ID())
	if running {
		return false, ""
	}
	if last.IsZero() {
		last = created
	}
	idle := now.Sub(last)
	return idle > olderThan, fmt.Sprintf("no driver call for %s", idle.Round(time.Second))
}

func (e *Executor) gcSnapshots(ctx context.Context, client *containerd.Client, live map[string]bool, now time.Time, olderThan time.Duration, log io.Writer) error {
	// Every active snapshot in hearth's namespace is a job's root; one that no container uses is
	// left from a prepare that was interrupted.
	ctrs, err := client.Containers(ctx)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	used := map[string]bool{}
	for _, c := range ctrs {
		info, err := c.Info(ctx, containerd.WithoutRefreshedMetadata)
		if err == nil && info.SnapshotKey != "" {
			used[info.SnapshotKey] = true
		}
	}
	ss := client.SnapshotService(defaults.DefaultSnapshotter)
	var orphans []string
	err = ss.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		// Remap snapshots ("…-remap") live for seconds while an image is first remapped; an old
		// one is what an interrupted remap left, and is in the way of the next.
		if info.Kind == snapshots.KindActive && !used[info.Name] && now.Sub(info.Created) > olderThan {
			orphans = append(orphans, info.Name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	for _, name := range orphans {
		if err := ss.Remove(ctx, name); err != nil {
			return fmt.Errorf("remove orphaned snapshot %s: %w", name, err)
		}
		fmt.Fprintf(log, "removed snapshot %s: no container uses it\n", name)
	}
	return nil
}

func (e *Executor) gcStateDirs(live map[string]bool, now time.Time, olderThan time.Duration, log io.Writer) error {
	entries, err := os.ReadDir(filepath.Join(e.cfg.Jobs.StateDir, "jobs"))
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("list job state: %w", err)
	}
	for _, ent := range entries {
		id := ent.Name()
		if live[id] {
			continue
		}
		fi, err := ent.Info()
		if err != nil || now.Sub(fi.ModTime()) <= olderThan {
			continue
		}
		if err := e.removeJobState(id); err != nil {
			return err
		}
		e.killShim(id)
		fmt.Fprintf(log, "removed state of job %s: it has no container\n", id)
	}
	return nil
}

func (e *Executor) gcClaims(live map[string]bool, now time.Time, olderThan time.Duration, log io.Writer) error {
	claims, err := filepath.Glob(filepath.Join(e.cfg.Jobs.BuildsRoot, "*", "*", "*.claim"))
	if err != nil {
		return err
	}
	for _, claim := range claims {
		b, err := os.ReadFile(claim)
		if err != nil {
			continue
		}
		id := strings.TrimSpace(string(b))
		if live[id] {
			continue
		}
		if _, err := os.Stat(e.jobDir(id)); err == nil {
			continue
		}
		fi, err := os.Stat(claim)
		if err != nil || now.Sub(fi.ModTime()) <= olderThan {
			continue
		}
		if err := releaseClaim(claim, id); err != nil {
			return fmt.Errorf("release %s: %w", claim, err)
		}
		fmt.Fprintf(log, "released builds dir %s: job %s is gone\n", strings.TrimSuffix(claim, ".claim"), id)
	}
	return nil
}

// gcNetworks takes off the bridge, and removes the namespaces of, jobs that have no container: a
// prepare that died between making the namespace and the container leaves them. A namespace
// younger than olderThan may be a prepare's in progress, and is left alone.
func (e *Executor) gcNetworks(ctx context.Context, live map[string]bool, now time.Time, olderThan time.Duration, log io.Writer) error {
	entries, err := os.ReadDir(filepath.Join(e.cfg.Jobs.StateDir, "netns"))
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("list network namespaces: %w", err)
	}
	var failed []error
	for _, ent := range entries {
		id := ent.Name()
		if live[id] {
			continue
		}
		if fi, err := ent.Info(); err != nil || now.Sub(fi.ModTime()) <= olderThan {
			continue
		}
		if err := e.detachBridge(ctx, id); err != nil {
			failed = append(failed, err)
			continue
		}
		fmt.Fprintf(log, "released the network of job %s: it has no container\n", id)
	}
	// One namespace that cannot be released does not keep gc from the others.
	return errors.Join(failed...)
}
