package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/cache/attic"
	"github.com/hearth-ci/hearth/cache/binarycache"
	"github.com/hearth-ci/hearth/cache/file"
	"github.com/hearth-ci/hearth/cache/s3"
	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/driver"
	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nix/signing"
	"github.com/hearth-ci/hearth/nixstore"
)

// openCache connects to the configured backend. For file and s3 it also returns the public half
// of the signing key, for verify.
func openCache(ctx context.Context, cfg *config.Config) (cache.Backend, *signing.PublicKey, error) {
	c := cfg.Cache
	loadKey := func(path string) (*signing.SecretKey, *signing.PublicKey, error) {
		if path == "" {
			return nil, nil, nil
		}
		k, err := signing.LoadSecretKey(path)
		if err != nil {
			return nil, nil, err
		}
		pub := k.Public()
		return &k, &pub, nil
	}
	switch c.Backend {
	case "file":
		key, pub, err := loadKey(c.File.SigningKeyFile)
		if err != nil {
			return nil, nil, err
		}
		b, err := file.New(c.File.Dir, key)
		return b, pub, err
	case "s3":
		key, pub, err := loadKey(c.S3.SigningKeyFile)
		if err != nil {
			return nil, nil, err
		}
		b, err := s3.New(ctx, s3.Config{Bucket: c.S3.Bucket, Region: c.S3.Region, Endpoint: c.S3.Endpoint, Prefix: c.S3.Prefix,
			AccessKeyIDFile: c.S3.AccessKeyIDFile, SecretAccessKeyFile: c.S3.SecretAccessKeyFile}, key)
		return b, pub, err
	case "attic":
		b, err := attic.New(ctx, attic.Config{Endpoint: c.Attic.Endpoint, Cache: c.Attic.Cache, TokenFile: c.Attic.TokenFile})
		if err != nil {
			return nil, nil, err
		}
		var pub *signing.PublicKey
		if b.PublicKey != "" {
			k, err := signing.ParsePublicKey(b.PublicKey)
			if err != nil {
				return nil, nil, fmt.Errorf("the Attic server's public key: %w", err)
			}
			pub = &k
		}
		return b, pub, nil
	}
	return nil, nil, fmt.Errorf("unknown cache backend %q", c.Backend)
}

func pusher(cfg *config.Config, b cache.Backend) *cache.Pusher {
	return &cache.Pusher{
		Backend: b,
		Store:   nixstore.Daemon(cfg.Nix.DaemonSocket),
		Jobs:    cfg.Cache.Jobs,
		LockDir: filepath.Join(cfg.Cache.QueueDir, ".locks"),
	}
}

// driverCache is how the driver opens the cache when a job's script has succeeded.
func driverCache(cfg *config.Config) func(context.Context) (driver.Flusher, error) {
	return func(ctx context.Context) (driver.Flusher, error) {
		b, _, err := openCache(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return &cache.Flusher{Queue: cache.Queue{Dir: cfg.Cache.QueueDir}, Pusher: pusher(cfg, b)}, nil
	}
}

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
				Name:   "watch",
				Usage:  "push queued paths continuously",
				Flags:  []cli.Flag{configFlag(), &cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "how often to look at the queue"}},
				Action: watchAction,
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
		err = cache.Queue{Dir: cfg.Cache.QueueDir}.Add(strings.Fields(os.Getenv("OUT_PATHS")), os.Getenv("DRV_PATH"))
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
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	q := cache.Queue{Dir: cfg.Cache.QueueDir}
	var p *cache.Pusher
	reported := map[string]bool{}
	for {
		if p == nil {
			b, _, err := openCache(c.Context, cfg)
			if err != nil {
				log.Error("cannot open the binary cache; retrying", "err", err)
			} else {
				p = pusher(cfg, b)
				log.Info("watching the queue", "queue", q.Dir, "cache", b.String())
			}
		}
		if p != nil {
			res, err := cache.Drain(c.Context, q, p, false)
			for _, ce := range res.Corrupt {
				if !reported[ce.Error()] {
					reported[ce.Error()] = true
					log.Error("corrupt queue entry", "err", ce)
				}
			}
			if err != nil {
				log.Error("push failed; the paths stay queued", "err", err)
			} else if res.Entries > 0 {
				log.Info("pushed", "entries", res.Entries, "summary", res.Summary.String())
				continue // there may be more already
			}
		}
		select {
		case <-c.Context.Done():
			return nil
		case <-time.After(c.Duration("interval")):
		}
	}
}

func pushAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return errors.New("name the store paths to push")
	}
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
	b, _, err := openCache(c.Context, cfg)
	if err != nil {
		return err
	}
	p := pusher(cfg, b)
	paths := make([]string, c.NArg())
	for i, a := range c.Args().Slice() {
		// Accept result symlinks and the like, as nix does.
		if resolved, err := filepath.EvalSymlinks(a); err == nil && !strings.HasPrefix(a, nix.StoreDir+"/") {
			a = resolved
		}
		paths[i] = a
	}
	progress := newProgress(os.Stderr)
	p.Progress = progress.update
	fmt.Fprintf(os.Stderr, "pushing to %s\n", b)
	sum, err := p.Push(c.Context, paths, !c.Bool("no-closure"))
	progress.finish()
	fmt.Fprintln(os.Stderr, sum.String())
	return err
}

func verifyAction(c *cli.Context) error {
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
	b, pub, err := openCache(c.Context, cfg)
	if err != nil {
		return err
	}
	if k := c.String("public-key"); k != "" {
		p, err := signing.ParsePublicKey(k)
		if err != nil {
			return err
		}
		pub = &p
	}
	var bc *binarycache.Cache
	switch v := b.(type) {
	case *binarycache.Cache:
		bc = v
	case *attic.Cache:
		if c.NArg() == 0 {
			return errors.New("an Attic server cannot list its paths: name the store paths to verify")
		}
		bc = binarycache.New(v.Substituter(), nil)
	}
	if pub == nil {
		fmt.Fprintln(os.Stderr, "no signing key is configured: signatures are not checked")
	}
	var keys []string
	for _, a := range c.Args().Slice() {
		keys = append(keys, strings.SplitN(filepath.Base(a), "-", 2)[0]+".narinfo")
	}
	n, problems, err := bc.Verify(c.Context, pub, keys)
	if err != nil {
		return err
	}
	for _, p := range problems {
		fmt.Fprintln(os.Stdout, "BAD", p.Error())
	}
	fmt.Fprintf(os.Stdout, "%d narinfos checked in %s, %d bad\n", n, b, len(problems))
	if len(problems) > 0 {
		return &exitError{code: 1}
	}
	return nil
}

func keygenAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return errors.New("name the key, e.g. `hearth cache keygen cache.example.org-1`")
	}
	k, err := signing.Generate(c.Args().First())
	if err != nil {
		return err
	}
	sec := filepath.Join(c.String("dir"), k.Name+".secret")
	pub := filepath.Join(c.String("dir"), k.Name+".public")
	if err := os.WriteFile(sec, []byte(k.String()+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(pub, []byte(k.Public().String()+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s (keep it on the runner host: signing_key_file) and %s (for trusted-public-keys): %s\n", sec, pub, k.Public())
	return nil
}
