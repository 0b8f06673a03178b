package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/hearth-ci/hearth/driver"
	"github.com/hearth-ci/hearth/executor"
)

func driverCommand() *cli.Command {
	stage := func(name, usage, args string, fn func(ctx context.Context, d *driver.Driver, c *cli.Context) error) *cli.Command {
		return &cli.Command{
			Name:      name,
			Usage:     usage,
			ArgsUsage: args,
			Flags:     []cli.Flag{configFlag()},
			Action: func(c *cli.Context) error {
				env := driver.ParseEnv(os.Environ())
				fail := func(err error) error {
					// Everything a driver prints on stderr reaches the job log (cleanup's reaches
					// the runner's log): say what went wrong in one line.
					fmt.Fprintf(os.Stderr, "ERROR: hearth %s: %v\n", name, err)
					return &exitError{code: env.ExitCode(err)}
				}
				cfg, err := loadConfig(c)
				if err != nil {
					return fail(err)
				}
				ex := executor.New(cfg)
				defer ex.Close()
				d := &driver.Driver{Config: cfg, Exec: ex, Env: env, Stdout: os.Stdout, Stderr: os.Stderr, Version: hearthVersion(), Cache: driverCache(cfg)}
				// SIGTERM from gitlab-runner means "stop this stage", not "tear down".
				ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
				defer stop()
				if err := fn(ctx, d, c); err != nil {
					if driver.KindOf(err) == driver.BuildFailure && name == "run" {
						// The script's own failure: its output already says why.
						return &exitError{code: env.ExitCode(err)}
					}
					return fail(err)
				}
				return nil
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
