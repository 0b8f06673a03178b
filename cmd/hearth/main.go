// Command hearth is a GitLab Runner custom-executor driver that runs each job in a containerd
// container sharing the host's Nix store and daemon.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/driver"
)

// version is set at build time with -ldflags "-X main.version=..."; otherwise it comes from the
// module's build information.
var version = ""

func hearthVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// exitError carries an exit code chosen by a command that is not a driver stage (cache verify
// finding bad paths, a job run by exec failing).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

func main() {
	app := &cli.App{
		Name:    "hearth",
		Usage:   "run GitLab CI jobs in containerd containers that share the host's Nix store",
		Version: hearthVersion(),
		Flags:   []cli.Flag{configFlag()},
		Commands: []*cli.Command{
			driverCommand(),
			execCommand(),
			gcCommand(),
			cacheCommand(),
			configCommand(),
			agentCommand(),
			deployCommand(),
			doctorCommand(),
		},
		// Errors are printed once, below, with the exit code the command chose.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	err := app.RunContext(context.Background(), os.Args)
	if err == nil {
		return
	}
	code, explain := exitCode(err)
	if explain {
		fmt.Fprintf(os.Stderr, "hearth: %v\n", err)
	}
	os.Exit(code)
}

// exitCode is the one place errors become exit codes: a driver stage's failure has the code
// gitlab-runner expects for its kind (the driver has already said why); the rest are 1 unless the
// command chose otherwise.
func exitCode(err error) (code int, explain bool) {
	var f *driver.Failure
	var ee *exitError
	switch {
	case errors.As(err, &f):
		return driver.ParseInvocation(os.Environ()).ExitCode(f.Kind), false
	case errors.As(err, &ee):
		return ee.code, ee.err != nil
	}
	return 1, true
}

// configFlag is accepted before the command and after it: `hearth --config F driver run` and
// `hearth driver run --config F` both work.
func configFlag() cli.Flag {
	return &cli.StringFlag{Name: "config", Usage: "config file (default $HEARTH_CONFIG or " + config.DefaultPath + ")"}
}

// loadConfig reads the file named by --config, $HEARTH_CONFIG or the default path.
func loadConfig(c *cli.Context) (*config.Config, error) {
	return config.Load(configPath(c))
}

func configPath(c *cli.Context) string {
	for _, cc := range c.Lineage() {
		if v := cc.String("config"); v != "" {
			return config.PathFrom(v)
		}
	}
	return config.PathFrom("")
}
