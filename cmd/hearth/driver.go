package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/hearth-ci/hearth/cache/open"
	"github.com/hearth-ci/hearth/deploy"
	"github.com/hearth-ci/hearth/driver"
	"github.com/hearth-ci/hearth/executor"
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
				// Everything a driver prints on stderr reaches the job log (cleanup's reaches the
				// runner's log); the driver decides what it says and whose fault it was.
				return driver.Report(os.Stderr, name, runStage(c, fn))
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

// runStage wires a driver to this host's config, containerd and cache, and runs one stage.
func runStage(c *cli.Context, fn stageFunc) error {
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
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
	}
	// SIGTERM from gitlab-runner means "stop this stage", not "tear down".
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return fn(ctx, d, c)
}
