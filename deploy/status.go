package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/config"
)

// Generation is one of a target's system profile generations.
type Generation struct {
	Number  int
	Path    string
	Time    time.Time
	Current bool
	// Origin is what hearth recorded when it made the generation; nil for one it did not make.
	Origin *Origin
}

// Generations lists a target's system profile generations, oldest first.
func (d *Deployer) Generations(ctx context.Context, target string) ([]Generation, error) {
	t, ok := d.Config.Targets[target]
	if !ok {
		return nil, fmt.Errorf("no target %q in [deploy.targets]; configured: %s", target, strings.Join(d.Config.TargetNames(), ", "))
	}
	w := newWrapper(t.User)
	c, err := dial(ctx, endpointOf(target, t))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := w.hello(ctx, c); err != nil {
		return nil, fmt.Errorf("%s: %w", target, err)
	}
	out, err := c.output(ctx, w.command("generations"), nil)
	if err != nil {
		return nil, fmt.Errorf("list the generations of %s: %w", target, err)
	}
	return parseGenerations(out)
}

func parseGenerations(out string) ([]Generation, error) {
	var gens []Generation
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.SplitN(line, "\t", 5)
		if len(f) < 3 {
			return nil, fmt.Errorf("unexpected generation line %q", line)
		}
		n, err := strconv.Atoi(f[0])
		if err != nil {
			return nil, fmt.Errorf("unexpected generation line %q", line)
		}
		for len(f) < 5 {
			f = append(f, "")
		}
		secs, _ := strconv.ParseInt(f[2], 10, 64)
		g := Generation{Number: n, Path: f[1], Time: time.Unix(secs, 0).UTC(), Current: f[3] == "current"}
		if f[4] != "" {
			var o Origin
			if err := json.Unmarshal([]byte(f[4]), &o); err == nil {
				// Some of it came from a job's variables: printable text only.
				for _, p := range []*string{&o.Job, &o.Pipeline, &o.Project, &o.ProjectID, &o.Ref, &o.Commit, &o.URL, &o.Runner, &o.By, &o.Path, &o.Action} {
					*p = firstLine(*p)
				}
				g.Origin = &o
			}
		}
		gens = append(gens, g)
	}
	return gens, nil
}

// Previous returns the generation before the current one: what a rollback goes back to.
func Previous(gens []Generation) (Generation, error) {
	for i, g := range gens {
		if g.Current {
			if i == 0 {
				return Generation{}, fmt.Errorf("generation %d is the oldest: there is nothing to roll back to", g.Number)
			}
			return gens[i-1], nil
		}
	}
	return Generation{}, fmt.Errorf("the system profile has no current generation")
}

// Reach logs in to a target with its pinned host key and runs hearth-deploy-target's hello, as a
// deploy's first step does, and says what the target runs.
func (d *Deployer) Reach(ctx context.Context, target string) (string, error) {
	t, f, err := d.hello(ctx, target)
	if err != nil {
		return "", err
	}
	current := f["current"]
	if current == "" {
		current = "no NixOS system yet"
	}
	return fmt.Sprintf("%s@%s:%d, running %s", t.User, t.Host, t.Port, current), nil
}

// Current is the system a target runs ("" for a host with no NixOS system yet).
func (d *Deployer) Current(ctx context.Context, target string) (string, error) {
	_, f, err := d.hello(ctx, target)
	return f["current"], err
}

func (d *Deployer) hello(ctx context.Context, target string) (config.Target, facts, error) {
	t, ok := d.Config.Targets[target]
	if !ok {
		return t, nil, fmt.Errorf("no target %q in [deploy.targets]; configured: %s", target, strings.Join(d.Config.TargetNames(), ", "))
	}
	w := newWrapper(t.User)
	c, err := dial(ctx, endpointOf(target, t))
	if err != nil {
		return t, nil, err
	}
	defer c.Close()
	f, err := w.hello(ctx, c)
	if err != nil {
		return t, nil, fmt.Errorf("%s: %w", target, err)
	}
	return t, f, nil
}
