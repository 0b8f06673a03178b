package deploy

import (
	"bufio"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
)

// TargetScript is hearth-deploy-target, the one program hearth runs on a target: every step that
// changes the target is one of its commands, so a deploy user's sudo rule can name it alone.
//
//go:embed target.sh
var TargetScript []byte

// protocol is the version of TargetScript's commands this hearth speaks.
const protocol = "4"

// TargetCommand is the name an installed hearth-deploy-target is run by, through sudo, when the
// deploy user is not root.
const TargetCommand = "hearth-deploy-target"

// installDir is where hearth keeps its own copy of the script on targets it logs in to as root,
// one file per version of the script, so two hearths of different versions never overwrite the
// one the other runs.
const installDir = "/var/lib/hearth-deploy/bin"

// wrapper runs hearth-deploy-target commands on one target.
type wrapper struct {
	// prefix runs the script: its installed path for root, "sudo -n hearth-deploy-target" else.
	prefix string
	root   bool
}

func newWrapper(user string) wrapper {
	if user == "root" {
		sum := sha256.Sum256(TargetScript)
		return wrapper{prefix: installDir + "/hearth-deploy-target-" + hex.EncodeToString(sum[:8]), root: true}
	}
	return wrapper{prefix: "sudo -n " + TargetCommand}
}

func (w wrapper) command(args ...string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.TrimSpace(w.prefix + " " + strings.Join(q, " "))
}

// facts is what hello reports.
type facts map[string]string

// hello is the first command on a connection. For root it installs the script when this version
// of it is not there yet, in the same round trip.
func (w wrapper) hello(ctx context.Context, c *conn) (facts, error) {
	var out string
	var err error
	if w.root {
		install := fmt.Sprintf(`P=%s; if [ ! -x "$P" ]; then mkdir -p %s && cat > "$P.$$" && chmod 0755 "$P.$$" && mv -f "$P.$$" "$P" || exit 1; else cat >/dev/null; fi; exec "$P" hello`,
			shellQuote(w.prefix), installDir)
		out, err = c.output(ctx, install, strings.NewReader(string(TargetScript)))
	} else {
		out, err = c.output(ctx, w.command("hello"), nil)
	}
	if err != nil {
		if ee, ok := err.(*exitError); ok && !w.root && (ee.Code == 1 || ee.Code == 127) {
			return nil, fmt.Errorf("run %s through sudo: %w. A deploy user that is not root needs hearth-deploy-target installed (`hearth deploy target-script`) and a sudo rule letting it run that alone without a password", TargetCommand, err)
		}
		return nil, fmt.Errorf("start hearth-deploy-target: %w", err)
	}
	f := parseFacts(out)
	if f["protocol"] != protocol {
		return nil, fmt.Errorf("the target's hearth-deploy-target speaks protocol %q, this hearth speaks %q: install this hearth's (`hearth deploy target-script`)", f["protocol"], protocol)
	}
	return f, nil
}

func parseFacts(out string) facts {
	f := facts{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			f[k] = v
		}
	}
	return f
}

// call runs one command and returns its key=value facts.
func (w wrapper) call(ctx context.Context, c *conn, stdin io.Reader, args ...string) (facts, error) {
	out, err := c.output(ctx, w.command(args...), stdin)
	if err != nil {
		return parseFacts(out), err
	}
	return parseFacts(out), nil
}
