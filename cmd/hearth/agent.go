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
		Name:   "agent",
		Usage:  "run stages inside a job container (started by prepare, not by people)",
		Hidden: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Required: true},
			&cli.DurationFlag{Name: "stop-timeout", Value: 5e9},
			&cli.StringFlag{Name: "job", Usage: "the job's container id, for logs and ps"},
		},
		Action: func(c *cli.Context) error {
			// As PID 1 the agent gets no default signal handling: end on SIGTERM explicitly.
			term := make(chan os.Signal, 1)
			signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
			go func() { <-term; os.Exit(0) }()
			log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("job", c.String("job"))
			s := &agent.Server{Socket: c.String("socket"), StopTimeout: c.Duration("stop-timeout"), Log: log}
			return s.Serve()
		},
	}
}
