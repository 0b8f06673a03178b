package runner

import (
	"fmt"
	"strings"
)

// shellQuote quotes s for bash as one word.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// bashScript wraps a stage body the way gitlab-runner's bash shell writer does: exit on SIGTERM,
// errexit and pipefail, the body evaluated in a subshell reading /dev/null, so the script can be
// fed to bash on stdin and a failing command ends it with that command's status.
func bashScript(body string, trace bool) string {
	var b strings.Builder
	b.WriteString("#!/usr/bin/env bash\n\n")
	b.WriteString("trap 'exit 1' TERM\n\n")
	if trace {
		b.WriteString("set -o xtrace\n")
	}
	b.WriteString(`case "$(set -o)" in *"pipefail"*) set -o pipefail;; esac; set -o errexit` + "\n")
	b.WriteString("set +o noclobber\n")
	b.WriteString("( trap 'exit 1' TERM; eval " + shellQuote(body) + " ) < /dev/null\n")
	b.WriteString("exit 0\n")
	return b.String()
}

const (
	ansiBoldGreen  = "\x1b[32;1m"
	ansiBoldYellow = "\x1b[0;33m"
	ansiReset      = "\x1b[0;m"
)

// scriptBuilder writes a stage body.
type scriptBuilder struct {
	strings.Builder
}

func (b *scriptBuilder) line(format string, args ...any) {
	fmt.Fprintf(b, format+"\n", args...)
}

// notice prints a message in the job log the way the runner does (bold green).
func (b *scriptBuilder) notice(msg string) {
	b.line("echo %s", shellQuote(ansiBoldGreen+msg+ansiReset))
}

func (b *scriptBuilder) warning(msg string) {
	b.line("echo %s", shellQuote(ansiBoldYellow+msg+ansiReset))
}

// exports writes the job's variables. File variables become files in the project's .tmp sibling,
// as the runner does, and the variable holds the path.
func (b *scriptBuilder) exports(vars []Variable, tmpDir string) {
	for _, v := range vars {
		if v.File {
			path := tmpDir + "/" + v.Key
			b.line("mkdir -p %s", shellQuote(tmpDir))
			b.line("printf '%%s' %s > %s", shellQuote(v.Value), shellQuote(path))
			b.line("export %s=%s", v.Key, shellQuote(path))
			continue
		}
		b.line("export %s=%s", v.Key, shellQuote(v.Value))
	}
}

// commands echoes each command as "$ command" and then runs it.
func (b *scriptBuilder) commands(cmds []string) {
	for _, c := range cmds {
		shown := c
		if first, _, multi := strings.Cut(strings.TrimSpace(c), "\n"); multi {
			shown = first + " # collapsed multi-line command"
		}
		b.notice("$ " + shown)
		b.line("%s", c)
	}
}
