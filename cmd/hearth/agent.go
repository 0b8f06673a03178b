package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/hearth-ci/hearth/executor/agent"
)

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:   agent.Subcommand,
		Usage:  "run stages inside a job container (started by prepare, not by people)",
		Hidden: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: agent.FlagSocket, Required: true},
			&cli.DurationFlag{Name: agent.FlagStopTimeout, Required: true},
			&cli.StringFlag{Name: agent.FlagJob, Usage: "the job's container id, for logs and ps"},
		},
		Action: func(c *cli.Context) error {
			// As PID 1 the agent gets no default signal handling: end on SIGTERM explicitly.
			term := make(chan os.Signal, 1)
			signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
			go func() { <-term; os.Exit(0) }()
			log := slog.New(slog.NewTextHandler(agent.CappedLog(os.Stderr, agent.MaxLog), nil)).With("job", c.String(agent.FlagJob))
			s := &agent.Server{Socket: c.String(agent.FlagSocket), StopTimeout: c.Duration(agent.FlagStopTimeout), Log: log}
			return s.Serve()
		},
	}
}
