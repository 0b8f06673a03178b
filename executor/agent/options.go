package agent

import "time"

// The agent's command line: the hearth binary's agent subcommand and its flags. Prepare starts
// the agent with Options.Args, and the hearth command parses the same names.
const (
	Subcommand      = "agent"
	FlagSocket      = "socket"
	FlagStopTimeout = "stop-timeout"
	FlagJob         = "job"
)

// Options are what the agent is started with.
type Options struct {
	// Socket is where it listens, inside the container.
	Socket string
	// StopTimeout is how long a stage has between SIGTERM and SIGKILL.
	StopTimeout time.Duration
	// Job names the job container, for logs and ps.
	Job string
}

// Args is the command line that starts the agent from binary.
func (o Options) Args(binary string) []string {
	return []string{binary, Subcommand, "--" + FlagSocket, o.Socket, "--" + FlagStopTimeout, o.StopTimeout.String(), "--" + FlagJob, o.Job}
}
