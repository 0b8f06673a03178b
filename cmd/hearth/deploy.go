package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"os/user"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/deploy"
	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nixstore"
)

func deployCommand() *cli.Command {
	return &cli.Command{
		Name:      "deploy",
		Usage:     "deploy NixOS systems to the targets of the config, as a protected job's deploy does",
		ArgsUsage: "TARGET=STORE_PATH...",
		Description: "Runs the same sequence as a job's deploy: transfer, activation in a transient unit, confirmation\n" +
			"over a new connection, health checks, and the target's watchdog. The targets are the config's;\n" +
			"there is no job, so no project or ref check.",
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "action", Usage: "switch, boot or test (default: each target's action)"},
			&cli.BoolFlag{Name: "dry-run", Usage: "connect, inspect and print the closure summary; change nothing"},
			&cli.StringFlag{Name: "rollback", Usage: "switch `TARGET` back to its previous generation"},
		},
		Action: runDeploy,
		Subcommands: []*cli.Command{{
			Name:      "status",
			Usage:     "show a target's current and previous generations, with where each came from",
			ArgsUsage: "TARGET",
			Flags:     []cli.Flag{configFlag()},
			Action:    deployStatus,
		}, {
			Name:  "target-script",
			Usage: "print hearth-deploy-target, the program a deploy user that is not root runs through sudo",
			Action: func(c *cli.Context) error {
				_, err := c.App.Writer.Write(deploy.TargetScript)
				return err
			},
		}},
	}
}

func runDeploy(c *cli.Context) error {
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
	if a := c.String("action"); a != "" && !slices.Contains(config.DeployActions, a) {
		return fmt.Errorf("--action %q: must be one of %s", a, strings.Join(config.DeployActions, ", "))
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d := deploy.New(cfg)
	d.Action, d.DryRun = c.String("action"), c.Bool("dry-run")
	var mu sync.Mutex
	start := time.Now()
	d.Log = func(target, line string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(c.App.Writer, "%6.2fs [%s] %s\n", time.Since(start).Seconds(), target, line)
	}
	by := "hearth deploy"
	if u, err := user.Current(); err == nil {
		by += " by " + u.Username
	}
	host, _ := os.Hostname()
	d.Origin = deploy.Origin{By: by, Runner: host, Time: time.Now().UTC()}
	var reqs []deploy.Request
	if t := c.String("rollback"); t != "" {
		if c.NArg() > 0 {
			return errors.New("--rollback TARGET takes no TARGET=STORE_PATH arguments")
		}
		gens, err := d.Generations(ctx, t)
		if err != nil {
			return err
		}
		prev, err := deploy.Previous(gens)
		if err != nil {
			return fmt.Errorf("roll back %s: %w", t, err)
		}
		fmt.Fprintf(c.App.Writer, "[%s] rolling back to generation %d (%s)\n", t, prev.Number, prev.Path)
		d.Origin.By += ", rolling back to generation " + fmt.Sprint(prev.Number)
		reqs = append(reqs, deploy.Request{Target: t, Path: prev.Path})
		// The earlier generation is on the target, and maybe no longer here; and a rollback lasts:
		// it is a switch (or a boot, for a target that deploys for the next boot).
		d.OnTarget = true
		if d.Action == "" {
			d.Action = "switch"
			if cfg.Deploy.Targets[t].Action == "boot" {
				d.Action = "boot"
			}
		}
	}
	for _, a := range c.Args().Slice() {
		target, path, ok := strings.Cut(a, "=")
		if !ok || target == "" || path == "" {
			return fmt.Errorf("%q: write each deploy as TARGET=STORE_PATH", a)
		}
		if _, known := cfg.Deploy.Targets[target]; !known {
			return fmt.Errorf("%q: no target %q in [deploy.targets]; configured: %s", a, target, strings.Join(cfg.Deploy.TargetNames(), ", "))
		}
		path = nixstore.Resolve(path)
		if err := nix.CheckStorePath(path); err != nil {
			return fmt.Errorf("%q: %w", a, err)
		}
		reqs = append(reqs, deploy.Request{Target: target, Path: path})
	}
	if len(reqs) == 0 {
		return errors.New("name what to deploy: TARGET=STORE_PATH..., or --rollback TARGET")
	}
	var failed []string
	for _, r := range d.Run(ctx, reqs) {
		line := r.Target + ": " + r.Outcome.String()
		if r.Generation != "" && r.Outcome == deploy.Deployed {
			line += " generation " + r.Generation
		}
		if r.Err != nil {
			line += ": " + r.Err.Error()
		}
		if r.Warning != "" {
			line += " (warning: " + r.Warning + ")"
		}
		fmt.Fprintln(c.App.Writer, line)
		if r.Outcome != deploy.Deployed && r.Outcome != deploy.Unchanged {
			failed = append(failed, r.Target)
		}
	}
	if len(failed) > 0 {
		return &exitError{code: 1, err: fmt.Errorf("the deploy to %s did not succeed", strings.Join(failed, ", "))}
	}
	return nil
}

func deployStatus(c *cli.Context) error {
	if c.NArg() != 1 {
		return errors.New("name one target: hearth deploy status TARGET")
	}
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
	gens, err := deploy.New(cfg).Generations(c.Context, c.Args().First())
	if err != nil {
		return err
	}
	if len(gens) == 0 {
		fmt.Fprintf(c.App.Writer, "%s has no system profile generations yet\n", c.Args().First())
		return nil
	}
	for i := len(gens) - 1; i >= 0; i-- {
		g := gens[i]
		mark := "  "
		if g.Current {
			mark = "* "
		}
		fmt.Fprintf(c.App.Writer, "%sgeneration %d  %s  %s\n", mark, g.Number, g.Time.Format(time.RFC3339), g.Path)
		if o := g.Origin; o != nil {
			var parts []string
			for _, kv := range [][2]string{{"job", o.Job}, {"pipeline", o.Pipeline}, {"project", o.Project}, {"ref", o.Ref}, {"commit", o.Commit}, {"from", o.Runner}, {"by", o.By}, {"url", o.URL}} {
				if kv[1] != "" {
					parts = append(parts, kv[0]+" "+kv[1])
				}
			}
			fmt.Fprintf(c.App.Writer, "    %s, %s at %s\n", strings.Join(parts, ", "), o.Action, o.Time.Format(time.RFC3339))
		} else {
			fmt.Fprintln(c.App.Writer, "    not made by hearth")
		}
	}
	return nil
}
