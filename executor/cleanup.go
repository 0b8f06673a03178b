package executor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/errdefs"
)

// Cleanup removes the job's container, its task and snapshot, releases its builds dir and deletes
// its state. It succeeds when there is nothing to remove, so it can run any number of times, and
// before or after a prepare that failed part-way.
func (e *Executor) Cleanup(ctx context.Context, id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	client, err := e.connect(ctx)
	if err != nil {
		return err
	}
	ctx = e.ctx(ctx)
	if err := removeContainer(ctx, client, id); err != nil {
		return err
	}
	e.killShim(id)
	if err := e.detachBridge(ctx, id); err != nil {
		return err
	}
	return e.removeJobState(id)
}

func removeContainer(ctx context.Context, client *containerd.Client, id string) error {
	ctr, err := client.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return removeSnapshot(ctx, client, id)
	}
	if err != nil {
		return fmt.Errorf("load container %s: %w", id, err)
	}
	task, err := ctr.Task(ctx, nil)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("load task of %s: %w", id, err)
	default:
		// WithProcessKill sends SIGKILL to every process of the container and waits for the init
		// to exit before deleting the task.
		if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete task of %s: %w", id, err)
		}
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	return nil
}

// removeSnapshot removes a snapshot named after the job that no container references, which a
// prepare interrupted between making the snapshot and the container leaves behind.
func removeSnapshot(ctx context.Context, client *containerd.Client, id string) error {
	err := client.SnapshotService(defaults.DefaultSnapshotter).Remove(ctx, id)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove snapshot %s: %w", id, err)
	}
	return nil
}

// removeJobState releases the job's builds dir and deletes its host-side state directory.
func (e *Executor) removeJobState(id string) error {
	st, err := e.readState(id)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		// An unreadable state file cannot name a claim; gc releases claims whose job is gone.
	case st.Claim != "":
		if err := releaseClaim(st.Claim, id); err != nil {
			return fmt.Errorf("release builds dir of %s: %w", id, err)
		}
	}
	if err := os.RemoveAll(e.jobDir(id)); err != nil {
		return fmt.Errorf("remove state of %s: %w", id, err)
	}
	return nil
}
