package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hearth-ci/hearth/cache/open"
	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/deploy"
	"github.com/hearth-ci/hearth/driver"
	"github.com/hearth-ci/hearth/executor"
	"github.com/hearth-ci/hearth/metrics"
	"github.com/hearth-ci/hearth/nixstore"
)

type stageFunc func(ctx context.Context, d *driver.Driver, c *cli.Context) error

func driverCommand() *cli.Command {
	stage := func(name, usage, args string, fn stageFunc) *cli.Command {
		return &cli.Command{
			Name:      name,
			Usage:     usage,
			ArgsUsage: args,
			Flags:     []cli.Flag{configFlag()},
			Action: func(c *cli.Context) error {
				return runStage(c, name, fn)
			},
		}
	}
	return &cli.Command{
		Name:  "driver",
		Usage: "the custom-executor stages gitlab-runner calls",
		Subcommands: []*cli.Command{
			stage("config", "print the JSON config_exec returns", "", func(_ context.Context, d *driver.Driver, _ *cli.Context) error {
				return d.ConfigStage()
			}),
			stage("prepare", "start the job's container", "", func(ctx context.Context, d *driver.Driver, _ *cli.Context) error {
				return d.Prepare(ctx)
			}),
			stage("run", "run one stage's script in the job's container", "SCRIPT STAGE", func(ctx context.Context, d *driver.Driver, c *cli.Context) error {
				if c.NArg() != 2 {
					return fmt.Errorf("run takes the script path and the stage name, got %d arguments", c.NArg())
				}
				return d.Run(ctx, c.Args().Get(0), c.Args().Get(1))
			}),
			stage("cleanup", "remove the job's container", "", func(ctx context.Context, d *driver.Driver, _ *cli.Context) error {
				return d.Cleanup(ctx)
			}),
		},
	}
}

// runStage wires a driver to this host's config, containerd and cache, runs one stage, and records
// how long it took and how it ended. Everything a driver prints on stderr reaches the job log
// (cleanup's reaches the runner's log); the driver decides what it says and whose fault it was.
func runStage(c *cli.Context, name string, fn stageFunc) error {
	start := time.Now()
	cfg, err := loadConfig(c)
	if err != nil {
		return driver.Report(os.Stderr, name, err)
	}
	rec := metrics.RecorderFor(cfg)
	// SIGTERM from gitlab-runner means "stop this stage", not "tear down".
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = driver.Report(os.Stderr, name, driverStage(ctx, cfg, rec, c, fn))
	if name != "config" {
		stage := name
		if name == "run" && c.NArg() == 2 {
			stage = c.Args().Get(1)
		}
		rec.Record(driver.StageEvent(stage, time.Since(start), err, ctx.Err() != nil))
	}
	return err
}

func driverStage(ctx context.Context, cfg *config.Config, rec *metrics.Recorder, c *cli.Context, fn stageFunc) error {
	ex := executor.New(cfg)
	defer ex.Close()
	d := &driver.Driver{
		Config:     cfg,
		Exec:       ex,
		Invocation: driver.ParseInvocation(os.Environ()),
		Stdout:     os.Stdout,
		Version:    hearthVersion(),
		OpenFlusher: func(ctx context.Context) (driver.Flusher, error) {
			f, err := open.Flusher(ctx, cfg)
			if err != nil {
				return nil, err
			}
			return f, nil
		},
		Store: nixstore.Daemon(cfg.Nix.Trusted().DaemonSocket),
		OpenDeployer: func(origin deploy.Origin, log func(target, line string)) driver.Deployer {
			dep := deploy.New(cfg)
			dep.Origin, dep.Log = origin, log
			return dep
		},
		Metrics: rec,
	}
	return fn(ctx, d, c)
}
