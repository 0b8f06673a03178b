package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/hearth-ci/hearth/doctor"
	"github.com/hearth-ci/hearth/nix/daemon"
)

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check this runner host as hearth will use it, one line per check",
		Description: "Probes rather than reads: connects to containerd and to each tier's nix-daemon, builds a tiny\n" +
			"derivation in each tier (to see the sandbox, the post-build-hook and cache watch at work) and\n" +
			"pushes it to the cache (not with --no-push, nor when [cache] push = \"never\"), asks each daemon\n" +
			"as a job's uid whether it trusts it, has a fixed-output build in each tier (a fetcher, with the\n" +
			"daemon's network) try the host's addresses, scrapes cache watch's metrics, logs in to each deploy\n" +
			"target, and puts a network namespace on the jobs' bridge to try the host's addresses from it.\n" +
			"Each line is ✓ or ✗ with what to do; the exit status is 1 when any line is ✗.",
		Flags: []cli.Flag{
			configFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print the checks as JSON, for monitoring"},
			&cli.BoolFlag{Name: "no-push", Usage: "do not push the probe to the cache, only ask the cache what it holds (for checks run often)"},
		},
		Subcommands: []*cli.Command{{
			// The builder of doctor's probe derivation: its pid is 1 only in the sandbox.
			Name:   "sandbox-probe",
			Hidden: true,
			Action: func(c *cli.Context) error {
				return os.WriteFile(os.Getenv("out"), []byte(fmt.Sprintln(os.Getpid())), 0o644)
			},
		}, {
			// The builder of doctor's fixed-output probe, which has the daemon's network whatever
			// the job's: it tries each address, says which it reached, and writes the output whose
			// hash the derivation fixed.
			Name:      "fetch-probe",
			Hidden:    true,
			ArgsUsage: "ADDRESS…",
			Action: func(c *cli.Context) error {
				for _, line := range doctor.FetchProbe(c.Args().Slice()) {
					fmt.Println(line)
				}
				return os.WriteFile(os.Getenv("out"), []byte(doctor.FetchProbeOutput), 0o644)
			},
		}, {
			// Run by doctor itself as a job's uid.
			Name:      "trust-probe",
			Hidden:    true,
			ArgsUsage: "SOCKET",
			Action: func(c *cli.Context) error {
				trusted, err := daemon.Trusted(c.Context, c.Args().First())
				if err != nil {
					return err
				}
				if trusted {
					fmt.Println("trusted")
				} else {
					fmt.Println("untrusted")
				}
				return nil
			},
		}},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			d := &doctor.Doctor{Config: cfg, Exe: exe, Env: os.Environ(), NoPush: c.Bool("no-push"), Version: hearthVersion()}
			results := d.Run(c.Context)
			failed := 0
			for _, r := range results {
				if !r.OK {
					failed++
				}
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(results); err != nil {
					return err
				}
			} else {
				for _, r := range results {
					if r.OK {
						fmt.Printf("✓ %s: %s\n", r.Check, r.Detail)
					} else {
						fmt.Printf("✗ %s: %s\n    → %s\n", r.Check, r.Detail, r.Fix)
					}
				}
			}
			if failed > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d of %d checks failed", failed, len(results))}
			}
			return nil
		},
	}
}
