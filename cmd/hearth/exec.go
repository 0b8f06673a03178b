package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hearth-ci/hearth/runner"
)

func execCommand() *cli.Command {
	return &cli.Command{
		Name:      "exec",
		Usage:     "run one job of a .gitlab-ci.yml locally, through the driver, as gitlab-runner would",
		ArgsUsage: "JOB",
		Description: "The job runs in a job container exactly as it would under gitlab-runner, with\n" +
			"GIT_STRATEGY=none unless the job sets it. Ctrl-C cancels the job gracefully (its\n" +
			"after_script still runs); a second Ctrl-C aborts it.",
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Value: ".gitlab-ci.yml", Usage: "the pipeline file"},
			&cli.Int64Flag{Name: "job-id", Usage: "job id (default: random)"},
			&cli.Int64Flag{Name: "project-id", Value: 1},
			&cli.StringFlag{Name: "project-path", Usage: "group/project (default: local/<current dir>)"},
			&cli.StringFlag{Name: "repo-url", Usage: "repository to fetch when GIT_STRATEGY is fetch or clone"},
			&cli.StringFlag{Name: "ref", Value: "main"},
			&cli.StringFlag{Name: "sha", Value: "0000000000000000000000000000000000000000"},
			&cli.BoolFlag{Name: "protected", Usage: "run as on a protected branch"},
			&cli.DurationFlag{Name: "timeout", Value: time.Hour, Usage: "job timeout"}, // GitLab's default job timeout
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("name one job to run, e.g. `hearth exec build`")
			}
			job, err := runner.LoadJob(c.String("file"), c.Args().First())
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			cfgPath, err := filepath.Abs(configPath(c))
			if err != nil {
				return err
			}
			// Fail here, with the file's own message, rather than inside prepare.
			if _, err := loadConfig(c); err != nil {
				return err
			}
			drv := func(stage string) runner.Command {
				return runner.Command{Exec: self, Args: []string{"--config", cfgPath, "driver", stage}}
			}
			r := runner.New(runner.Options{
				Custom: runner.Custom{
					Config: drv("config"), Prepare: drv("prepare"), Run: drv("run"), Cleanup: drv("cleanup"),
					GracefulKillTimeout: 30 * time.Second, // as gitlab-runner configs usually set it
				},
				Job: job, JobID: c.Int64("job-id"),
				ProjectID: c.Int64("project-id"), ProjectPath: c.String("project-path"), RepoURL: c.String("repo-url"),
				Ref: c.String("ref"), SHA: c.String("sha"), Protected: c.Bool("protected"),
				RunnerToken: "local", Timeout: c.Duration("timeout"),
				Log: os.Stdout, RunnerLog: os.Stderr,
			})
			sig := make(chan os.Signal, 2)
			signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
			defer signal.Stop(sig)
			go func() {
				for range sig {
					if r.Interrupt() {
						fmt.Fprintln(os.Stderr, "Aborting the job: only cleanup runs.")
						return
					}
					fmt.Fprintln(os.Stderr, "Canceling the job: its script is stopped and after_script runs. Interrupt again to abort.")
				}
			}()
			res := r.Run(c.Context)
			if res.State != "success" {
				return &exitError{code: 1}
			}
			return nil
		},
	}
}
