// Package open connects to the binary cache a config describes. It is the one place that knows
// every backend, as restic's backend/all does, so that the commands, the watcher and the driver
// open a cache the same way and a new backend is added here and in its own package only.
package open

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/cache/attic"
	"github.com/hearth-ci/hearth/cache/file"
	"github.com/hearth-ci/hearth/cache/s3"
	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/metrics"
	"github.com/hearth-ci/hearth/nix/signing"
	"github.com/hearth-ci/hearth/nixstore"
)

// Backend connects to the backend [cache] backend names, reading its credentials and keys.
func Backend(ctx context.Context, cfg *config.Config) (cache.Backend, error) {
	c := cfg.Cache
	switch c.Backend {
	case "file":
		key, err := signingKey(c.File.SigningKeyFile)
		if err != nil {
			return nil, err
		}
		return file.New(c.File.Dir, key)
	case "s3":
		key, err := signingKey(c.S3.SigningKeyFile)
		if err != nil {
			return nil, err
		}
		return s3.New(ctx, s3.Config{
			Bucket: c.S3.Bucket, Region: c.S3.Region, Endpoint: c.S3.Endpoint, Prefix: c.S3.Prefix,
			AccessKeyIDFile: c.S3.AccessKeyIDFile, SecretAccessKeyFile: c.S3.SecretAccessKeyFile,
		}, key)
	case "attic":
		return attic.New(ctx, attic.Config{Endpoint: c.Attic.Endpoint, Cache: c.Attic.Cache, TokenFile: c.Attic.TokenFile})
	}
	// Config validation admits only the backends above; this is for a config made in code.
	return nil, fmt.Errorf("unknown cache backend %q: set [cache] backend to one of %s", c.Backend, strings.Join(config.CacheBackends, ", "))
}

// signingKey loads the key narinfos are signed with; an empty setting means unsigned narinfos.
func signingKey(path string) (*signing.SecretKey, error) {
	if path == "" {
		return nil, nil
	}
	k, err := signing.LoadSecretKey(path)
	if err != nil {
		return nil, err
	}
	return &k, nil
}

// Pusher pushes to b from the host's store, through its daemon, taking the per-path locks beside
// the queue that every pusher on the host shares.
// What it uploads is counted in the host's metrics, when they are on.
func Pusher(cfg *config.Config, b cache.Backend) *cache.Pusher {
	return &cache.Pusher{
		Backend: b,
		Store:   nixstore.Daemon(cfg.Nix.Trusted().DaemonSocket),
		Uploads: cfg.Cache.Uploads,
		LockDir: filepath.Join(cfg.Cache.QueueDir, ".locks"),
		Meter:   meter{rec: metrics.RecorderFor(cfg), backend: cfg.Cache.Backend},
	}
}

// meter records a Pusher's uploads as metrics events.
type meter struct {
	rec     *metrics.Recorder
	backend string
}

func (m meter) Uploaded(st cache.Stats) {
	m.rec.Record(metrics.Event{Kind: metrics.KindPushed, Backend: m.backend, Bytes: st.NarBytes})
}

func (m meter) Failed(error) {
	m.rec.Record(metrics.Event{Kind: metrics.KindPushFailed, Backend: m.backend})
}

// Flusher opens the cache for the push at the end of a job's script.
func Flusher(ctx context.Context, cfg *config.Config) (*cache.Flusher, error) {
	p, err := openPusher(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &cache.Flusher{Queue: Queue(cfg), Pusher: p}, nil
}

// openPusher opens the backend and returns a Pusher to it.
func openPusher(ctx context.Context, cfg *config.Config) (*cache.Pusher, error) {
	b, err := Backend(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return Pusher(cfg, b), nil
}

// Queue is the queue the post-build-hook fills, which roots what it holds in the trusted tier's
// store: the only store whose builds are queued.
func Queue(cfg *config.Config) cache.Queue {
	return cache.Queue{Dir: cfg.Cache.QueueDir, RootsDir: filepath.Join(cfg.Nix.Trusted().GCRootsDir, "queue")}
}

// Watcher pushes the queue continuously, looking at it every interval.
func Watcher(cfg *config.Config, interval time.Duration, log *slog.Logger) *cache.Watcher {
	return &cache.Watcher{
		Queue:    Queue(cfg),
		Interval: interval,
		Log:      log,
		Open:     func(ctx context.Context) (*cache.Pusher, error) { return openPusher(ctx, cfg) },
	}
}

// SigningKey is the key hearth signs narinfos with for the configured backend: nil for an
// unsigned file or S3 cache, and for Attic, whose server signs what it serves.
func SigningKey(cfg *config.Config) (*signing.SecretKey, error) {
	switch cfg.Cache.Backend {
	case "file":
		return signingKey(cfg.Cache.File.SigningKeyFile)
	case "s3":
		return signingKey(cfg.Cache.S3.SigningKeyFile)
	}
	return nil, nil
}
