package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hearth-ci/hearth/bytesize"
	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/cache/open"
	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/deploy"
	"github.com/hearth-ci/hearth/metrics"
	"github.com/hearth-ci/hearth/nix/signing"
	"github.com/hearth-ci/hearth/nixstore"
)

func cacheCommand() *cli.Command {
	return &cli.Command{
		Name:  "cache",
		Usage: "push store paths to the binary cache",
		Subcommands: []*cli.Command{
			{
				Name:  "hook",
				Usage: "the nix-daemon's post-build-hook: queue the built paths and return at once",
				Description: "Nix runs the hook with no arguments, so point post-build-hook at a script that runs\n" +
					"`hearth --config FILE cache hook`. It always exits 0: a failing hook stops Nix from\n" +
					"running further builds, and a build must never fail because of the cache.",
				Flags:  []cli.Flag{configFlag()},
				Action: hookAction,
			},
			{
				Name:  "watch",
				Usage: "push queued paths continuously",
				// A second: what a build queued starts up soon after, and an idle queue costs one
				// directory read a second.
				Flags:  []cli.Flag{configFlag(), &cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "how often to look at the queue"}},
				Action: watchAction,
			},
			{
				Name:  "rejected",
				Usage: "list the queued builds that were rejected (a path differs from the store's record), or requeue one",
				Description: "A queued build whose NAR, read from the store, differs from what the store recorded\n" +
					"(a store path rewritten after it was registered) is moved out of the queue rather than\n" +
					"retried for ever. Repair the path (nix-store --repair-path, or delete it), then requeue it.",
				Flags: []cli.Flag{configFlag(), &cli.StringFlag{Name: "requeue", Usage: "put the rejected entries naming `PATH` back in the queue"}},
				Action: func(c *cli.Context) error {
					cfg, err := loadConfig(c)
					if err != nil {
						return err
					}
					q := open.Queue(cfg)
					if p := c.String("requeue"); p != "" {
						n, err := q.Requeue(nixstore.Resolve(p))
						if err != nil {
							return err
						}
						fmt.Fprintf(c.App.Writer, "requeued %d entries; the next push takes them\n", n)
						return nil
					}
					rejected, err := q.Rejected()
					if err != nil {
						return err
					}
					if len(rejected) == 0 {
						fmt.Fprintln(c.App.Writer, "no queued build was rejected")
					}
					for _, r := range rejected {
						what := strings.Join(r.Outputs, " ")
						if r.Drv != "" {
							what = r.Drv
						}
						fmt.Fprintf(c.App.Writer, "%s\n    %s\n", what, r.Why)
					}
					return nil
				},
			},
			{
				Name:      "push",
				Usage:     "push store paths and their closures",
				ArgsUsage: "PATH...",
				Flags:     []cli.Flag{configFlag(), &cli.BoolFlag{Name: "no-closure", Usage: "push only the paths named, not what they reference"}},
				Action:    pushAction,
			},
			{
				Name:      "verify",
				Usage:     "check that every narinfo's NAR exists, sizes and hashes match, and signatures verify",
				ArgsUsage: "[PATH...]",
				Description: "With no paths, every narinfo of a file or s3 cache is checked. An Attic server has no\n" +
					"listing: name the store paths to check.",
				Flags:  []cli.Flag{configFlag(), &cli.StringFlag{Name: "public-key", Usage: "the key signatures must verify with (default: the public half of the signing key, or the Attic cache's key)"}},
				Action: verifyAction,
			},
			{
				Name:  "prune",
				Usage: "remove from the file or S3 cache what was pushed before --older-than and nothing kept needs",
				Description: "Kept, with everything they reference: the paths pushed since, the paths waiting in the queue, and\n" +
					"the system each deploy target runs (asked over SSH; an unreachable target stops the prune). An Attic\n" +
					"server collects its own garbage (its [garbage-collection] settings). A path pushed while the prune runs may\n" +
					"lose a dependency it shares with what the prune removes; the next push of a closure that needs it\n" +
					"puts it back. Run it when pushes are few.",
				Flags: []cli.Flag{configFlag(),
					&cli.StringFlag{Name: "older-than", Required: true, Usage: "remove what was pushed longer ago than this: 90d, 2160h"},
					&cli.BoolFlag{Name: "dry-run", Usage: "say what would go, and remove nothing"},
				},
				Action: pruneAction,
			},
			{
				Name:      "keygen",
				Usage:     "make a signing key pair that Nix accepts",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{&cli.StringFlag{Name: "dir", Value: ".", Usage: "where to write NAME.secret and NAME.public"}},
				Action:    keygenAction,
			},
		},
	}
}

func hookAction(c *cli.Context) error {
	// Whatever happens, the build goes on: report on stderr (it reaches the build log) and exit 0.
	cfg, err := loadConfig(c)
	if err == nil {
		err = open.Queue(cfg).AddHookCall(os.Getenv)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "hearth cache hook: the built paths were not queued for the binary cache: %v\n", err)
	}
	return nil
}

func watchAction(c *cli.Context) error {
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
	// A service manager stops the watcher with SIGTERM: let the round in progress end cleanly.
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if cfg.Metrics.Listen == "" {
		return open.Watcher(cfg, c.Duration("interval"), log).Run(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan struct{})
	go func() {
		defer close(served)
		serveMetrics(ctx, cfg, log)
	}()
	err = open.Watcher(cfg, c.Duration("interval"), log).Run(ctx)
	cancel() // the metrics end with the watcher, however it ended
	<-served
	return err
}

// metricsRetry is how long the watcher waits before it tries the metrics listener again.
const metricsRetry = 30 * time.Second

// serveMetrics serves the metrics until ctx ends. Pushing is the watcher's job and metrics are
// not: a listener that cannot start (its port taken, its address not up yet at boot) is logged and
// tried again, while the pushes go on.
func serveMetrics(ctx context.Context, cfg *config.Config, log *slog.Logger) {
	reg := metricsRegistry(cfg)
	for {
		err := reg.Serve(ctx, cfg.Metrics.Listen, log)
		if ctx.Err() != nil {
			return
		}
		log.Error("cannot serve metrics; pushes go on, and the listener is tried again", "err", err, "in", metricsRetry)
		select {
		case <-ctx.Done():
			return
		case <-time.After(metricsRetry):
		}
		// Meanwhile the stages' events are still counted, so the spool does not fill up.
		if err := reg.DrainSpool(ctx); err != nil && ctx.Err() == nil {
			log.Error("cannot read the metrics spool", "err", err)
		}
	}
}

// metricsRegistry is the registry cache watch serves: the spool's counters, and the queue's and
// the rejected list's gauges read at each scrape.
func metricsRegistry(cfg *config.Config) *metrics.Registry {
	q := open.Queue(cfg)
	return metrics.New(cfg, hearthVersion(), metrics.Sources{
		Queue: func() ([]time.Time, error) {
			waiting, err := q.Pending()
			since := make([]time.Time, len(waiting))
			for i, w := range waiting {
				since[i] = w.Since
			}
			return since, err
		},
		Rejected: func() (int, error) {
			r, err := q.Rejected()
			return len(r), err
		},
	})
}

func pushAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return errors.New("name the store paths to push")
	}
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
	paths := storePathArgs(c)
	b, err := open.Backend(c.Context, cfg)
	if err != nil {
		return err
	}
	p := open.Pusher(cfg, b)
	progress := newProgress(os.Stderr)
	p.Progress = progress.update
	scope := cache.Closures
	if c.Bool("no-closure") {
		scope = cache.PathsOnly
	}
	fmt.Fprintf(os.Stderr, "pushing to %s\n", b)
	sum, err := p.Push(c.Context, paths, scope)
	progress.finish()
	fmt.Fprintln(os.Stderr, sum.String())
	return err
}

func verifyAction(c *cli.Context) error {
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
	var pub *signing.PublicKey
	if k := c.String("public-key"); k != "" {
		p, err := signing.ParsePublicKey(k)
		if err != nil {
			return err
		}
		pub = &p
	}
	b, err := open.Backend(c.Context, cfg)
	if err != nil {
		return err
	}
	v, ok := b.(cache.Verifier)
	if !ok {
		return fmt.Errorf("the %s backend cannot be verified by hearth", cfg.Cache.Backend)
	}
	res, err := v.Verify(c.Context, pub, storePathArgs(c))
	if err != nil {
		return err
	}
	if res.Key == nil {
		fmt.Fprintln(os.Stderr, "no signing key is configured: signatures are not checked")
	}
	for _, p := range res.Problems {
		fmt.Fprintln(os.Stdout, "BAD", p.Error())
	}
	fmt.Fprintf(os.Stdout, "%d narinfos checked in %s, %d bad\n", res.Checked, b, len(res.Problems))
	if len(res.Problems) > 0 {
		return &exitError{code: 1}
	}
	return nil
}

// storePathArgs are the command's arguments as store paths, result links followed.
func storePathArgs(c *cli.Context) []string {
	paths := make([]string, c.NArg())
	for i, a := range c.Args().Slice() {
		paths[i] = nixstore.Resolve(a)
	}
	return paths
}

func keygenAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return errors.New("name the key, e.g. `hearth cache keygen cache.example.org-1`")
	}
	k, err := signing.Generate(c.Args().First())
	if err != nil {
		return err
	}
	sec, pub, err := k.WriteFiles(c.String("dir"))
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s (keep it on the runner host: signing_key_file) and %s (for trusted-public-keys): %s\n", sec, pub, k.Public())
	return nil
}

func pruneAction(c *cli.Context) error {
	age, err := parseAge(c.String("older-than"))
	if err != nil {
		return err
	}
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
	if cfg.Cache.Backend == "attic" {
		return fmt.Errorf("an Attic server collects its own garbage: set its [garbage-collection] default-retention-period (hearth's NixOS module: services.hearth-attic.retention)")
	}
	b, err := open.Backend(c.Context, cfg)
	if err != nil {
		return err
	}
	p, ok := b.(cache.Pruner)
	if !ok {
		return fmt.Errorf("%s cannot be pruned by hearth", b)
	}
	keep, err := queuedPaths(c.Context, cfg)
	if err != nil {
		return err
	}
	d := deploy.New(cfg)
	for _, name := range cfg.Deploy.TargetNames() {
		current, err := d.Current(c.Context, name)
		if err != nil {
			return fmt.Errorf("ask %s what it runs, whose closure the prune keeps: %w (fix the target, or take it out of [deploy.targets] if it is gone)", name, err)
		}
		if current != "" {
			keep = append(keep, current)
		}
	}
	sum, err := p.Prune(c.Context, cache.PruneRequest{Before: time.Now().Add(-age), Keep: keep, DryRun: c.Bool("dry-run")})
	verb := "removed"
	if c.Bool("dry-run") {
		verb = "would remove"
	}
	fmt.Printf("%s %d paths and %d NAR files (%s) from %s; %d paths stay\n", verb, sum.Paths, sum.NARs, bytesize.Format(sum.Bytes), b, sum.Kept)
	if cfg.Cache.Backend == "s3" && !c.Bool("dry-run") && sum.Paths+sum.NARs > 0 {
		fmt.Println("On a versioned bucket (every Backblaze B2 bucket is) a deleted file is only hidden: its bytes go, and stop being billed, when the bucket's lifecycle rule removes hidden versions (see the README).")
	}
	return err
}

// queuedPaths are the outputs of the entries waiting in the queue, with their closures in the
// local store: what they reference may be in the cache already, and their push will need it.
func queuedPaths(ctx context.Context, cfg *config.Config) ([]string, error) {
	entries, err := open.Queue(cfg).Pending()
	if err != nil {
		return nil, err
	}
	waiting := make([]cache.Entry, len(entries))
	for i, w := range entries {
		waiting[i] = w.Entry
	}
	store := nixstore.Daemon(cfg.Nix.Trusted().DaemonSocket)
	paths, err := cache.EntryPaths(ctx, store, waiting...)
	if err != nil {
		return nil, err
	}
	var valid []string
	for _, p := range paths {
		if store.Has(p) {
			valid = append(valid, p)
		}
	}
	if len(valid) == 0 {
		return nil, nil
	}
	infos, err := store.Closure(ctx, valid)
	if err != nil {
		return nil, fmt.Errorf("the closures of the queued paths: %w", err)
	}
	var closure []string
	for _, in := range infos {
		closure = append(closure, in.Path)
	}
	return closure, nil
}

// parseAge reads a duration that may be in days ("90d"), as ages of cache entries are, and at least
// a day: a shorter one would remove what a running pipeline pushed a stage ago.
func parseAge(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		n, err = strconv.Atoi(days)
		d = time.Duration(n) * 24 * time.Hour
	}
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--older-than %q is not an age such as 90d or 2160h", s)
	}
	if d < 24*time.Hour {
		return 0, fmt.Errorf("--older-than %s is less than a day: it would remove what a pipeline that is still running pushed a stage ago; give at least 1d", s)
	}
	return d, nil
}
