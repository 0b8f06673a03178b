package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/hearth-ci/hearth/config"
)

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "work with hearth's config file",
		Subcommands: []*cli.Command{{
			Name:      "check",
			Usage:     "validate a config file",
			ArgsUsage: "[PATH]",
			Flags:     []cli.Flag{configFlag()},
			Action: func(c *cli.Context) error {
				path := configPath(c)
				if c.NArg() > 0 {
					path = c.Args().First()
				}
				cfg, errs := config.Check(path)
				if len(errs) > 0 {
					for _, e := range errs[:len(errs)-1] {
						fmt.Fprintf(c.App.ErrWriter, "hearth: %v\n", e)
					}
					return errs[len(errs)-1]
				}
				fmt.Fprintf(c.App.Writer, "%s is valid: %d environments, default %q, network %q, %d deploy targets\n", path, len(cfg.Environments), cfg.Jobs.DefaultEnvironment, cfg.Jobs.Network, len(cfg.Deploy.Targets))
				fmt.Fprintln(c.App.Writer, cfg.Nix.Summary())
				return nil
			},
		}},
	}
}
