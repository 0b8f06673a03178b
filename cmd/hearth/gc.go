package main

import (
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hearth-ci/hearth/cache/open"
	"github.com/hearth-ci/hearth/deploy"
	"github.com/hearth-ci/hearth/executor"
)

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:  "gc",
		Usage: "remove job containers, snapshots and dirs whose job is gone, and what ended deploys left",
		Description: "A job container is orphaned when no driver call has started or ended for longer than --older-than,\n" +
			"or when it has outlived its job's timeout by that much. hearth judges from what its driver calls leave\n" +
			"on the host, never from the job's agent. A container with a driver call in progress, within its job's\n" +
			"timeout, is never removed.",
		Flags: []cli.Flag{
			configFlag(),
			// A job's stages follow each other within seconds; an hour without one means nobody
			// is driving the job any more, and it is long enough for a runner restart.
			&cli.DurationFlag{Name: "older-than", Value: time.Hour, Usage: "how long a job may sit idle before it counts as orphaned"},
		},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			ex := executor.New(cfg)
			defer ex.Close()
			if err := ex.GC(c.Context, c.Duration("older-than"), os.Stdout); err != nil {
				return err
			}
			removed, err := open.Queue(cfg).GCRoots()
			for _, r := range removed {
				fmt.Fprintf(os.Stdout, "removed the GC roots of queue entry %s: it is no longer queued\n", r)
			}
			if err != nil {
				return err
			}
			// A deploy's lock is held for as long as it runs, so no age applies to deploys.
			return deploy.GC(cfg, func(format string, args ...any) { fmt.Fprintf(os.Stdout, format+"\n", args...) })
		},
	}
}
