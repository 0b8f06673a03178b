package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/nixstore"
)

// session is one target's deploy.
type session struct {
	d          *Deployer
	t          config.Target
	name, path string
	action     string
	w          wrapper
	ep         endpoint
	c          *conn
	id         string
	before     facts
	activated  bool
	// begun is set once the target has answered begin: it knows the deploy.
	begun bool
}

// Exit codes of hearth-deploy-target's rollback: no such deploy, and one already confirmed.
const (
	exitNoDeploy  = 65
	exitConfirmed = 66
)

// followMargin is how long after the target's own deadlines hearth still follows an activation.
const followMargin = 30 * time.Second

// rollbackGrace bounds the last words to a target when the job is cancelled: asking its watchdog to
// roll back now rather than at its deadline. gitlab-runner kills a stage 10 s after SIGTERM.
const rollbackGrace = 3 * time.Second

func (s *session) log(format string, args ...any) { s.d.log(s.name, format, args...) }

func (s *session) run(ctx context.Context) (res Result) {
	res = Result{Target: s.name, Path: s.path}
	s.w = newWrapper(s.t.User)
	s.ep = endpointOf(s.name, s.t)
	defer func() {
		if s.c != nil {
			s.c.Close()
		}
	}()
	fail := func(err error) Result {
		res.Outcome, res.Err = Failed, err
		var gone *unreachableError
		if s.activated && !errors.As(err, &gone) {
			res.Outcome, res.Err = s.rollBack(ctx, err)
		}
		return res
	}
	start := time.Now()
	var err error
	if s.c, err = dial(ctx, s.ep); err != nil {
		return fail(err)
	}
	if s.before, err = s.w.hello(ctx, s.c); err != nil {
		return fail(fmt.Errorf("%s: %w", s.name, err))
	}
	s.log("connected to %s@%s in %s; running %s (generation %s), profile %s", s.t.User, s.ep.addr, time.Since(start).Round(time.Millisecond),
		orNone(s.before["current"]), orNone(s.before["generation"]), orNone(s.before["profile"]))
	// Another runner's deploy that is not confirmed yet may still roll back: the target is what it
	// is only once nobody holds its lock.
	if owner := s.before["lock"]; owner != "" && !s.d.DryRun {
		return fail(fmt.Errorf("%s is being deployed by another runner (deploy %s holds its lock); try again when it has finished", s.name, owner))
	}
	if s.unchanged() {
		s.log("%s is already the %s system: nothing to do", s.path, s.action)
		res.Outcome, res.Generation = Unchanged, s.before["generation"]
		return res
	}
	closure, err := s.closure(ctx)
	if err != nil {
		return fail(err)
	}
	if s.d.DryRun {
		if err := s.summarise(ctx, closure); err != nil {
			return fail(err)
		}
		s.log("dry run: nothing was changed")
		res.Outcome = Unchanged
		return res
	}
	if !s.d.OnTarget {
		if err := s.transfer(ctx, closure); err != nil {
			return fail(err)
		}
	}
	if err := s.summarise(ctx, closure); err != nil {
		return fail(err)
	}
	gen, err := s.begin(ctx)
	if err != nil {
		return fail(err)
	}
	res.Generation = gen
	status, err := s.follow(ctx)
	if err != nil {
		return fail(err)
	}
	switch {
	case status == 0:
	case status == 4 && s.d.Config.OnUnitFailure == "keep":
		res.Warning = "switch-to-configuration exited 4: the new system is active but some units failed; kept, as [deploy] on_unit_failure = \"keep\" says"
		s.log("%s", res.Warning)
	case status == 4:
		return fail(fmt.Errorf("switch-to-configuration on %s exited 4: some units failed (set [deploy] on_unit_failure = \"keep\" to keep such a system)", s.name))
	case status == 124 || status == 137:
		return fail(fmt.Errorf("switch-to-configuration %s on %s did not end within %s ([deploy] activation_timeout) and was stopped", s.action, s.name, s.d.Config.ActivationTimeout.Std()))
	default:
		return fail(fmt.Errorf("switch-to-configuration %s on %s failed with exit code %d", s.action, s.name, status))
	}
	if s.action == "boot" {
		s.log("generation %s is the boot default; it becomes active at the next reboot", gen)
		res.Outcome = Deployed
		return res
	}
	if err := s.confirm(ctx); err != nil {
		return fail(err)
	}
	res.Outcome = Deployed
	return res
}

// closure is the system's closure: from this host's store, or, for a path only the target may
// still have (a rollback to an earlier generation), from the target's.
func (s *session) closure(ctx context.Context) ([]nixstore.PathInfo, error) {
	if !s.d.OnTarget {
		infos, err := s.d.Store.Closure(ctx, []string{s.path})
		if err != nil {
			return nil, fmt.Errorf("read the closure of %s: %w", s.path, err)
		}
		return infos, nil
	}
	out, err := s.c.output(ctx, s.w.command("closure", s.path), nil)
	if err != nil {
		return nil, fmt.Errorf("%s is not on %s any more (%v): deploy it by its store path from a host that has it", s.path, s.name, err)
	}
	return nixstore.ParseJSON([]byte(out))
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// unchanged reports whether the target already is what the deploy would make it.
func (s *session) unchanged() bool {
	switch s.action {
	case "boot":
		return s.before["profile"] == s.path
	case "test":
		return s.before["current"] == s.path
	}
	return s.before["current"] == s.path && s.before["profile"] == s.path
}

// begin takes the target's lock, sets its profile, arms the watchdog and starts the activation.
func (s *session) begin(ctx context.Context) (string, error) {
	s.id = newID()
	origin := s.d.Origin
	origin.Path, origin.Action = s.path, s.action
	if origin.Time.IsZero() {
		origin.Time = time.Now().UTC()
	}
	record, err := json.Marshal(origin)
	if err != nil {
		return "", err
	}
	confirm := s.d.Config.ConfirmTimeout.Std()
	if len(s.t.HealthChecks) > 0 {
		confirm += s.t.HealthTimeout.Std()
	}
	// From here on the target may have begun, even if its answer never comes: a failure asks it
	// to roll back (which a deploy it does not know simply refuses).
	s.activated = true
	f, err := s.w.call(ctx, s.c, bytes.NewReader(record), "begin", s.id, s.action, s.path,
		seconds(confirm), seconds(s.d.Config.ActivationTimeout.Std()))
	if err != nil {
		var ee *exitError
		// It answered, and was not killed: nothing began.
		if errors.As(err, &ee) && ee.Code < 128 {
			s.activated = false
			if ee.Code == 75 {
				return "", fmt.Errorf("%s is being deployed by another runner (deploy %s holds its lock); try again when it has finished", s.name, f["busy"])
			}
		}
		return "", fmt.Errorf("start the activation on %s: %w", s.name, err)
	}
	s.begun = true
	switch s.action {
	case "test":
		s.log("activating %s (test: the profile stays at generation %s); the watchdog rolls back unless confirmed within %s", s.path, orNone(f["previous"]), confirm)
	case "boot":
		s.log("set the system profile to generation %s (previous %s); installing the boot entry", f["generation"], orNone(f["previous"]))
	default:
		s.log("set the system profile to generation %s (previous %s); activating in unit hearth-deploy-%s; the watchdog rolls back unless confirmed within %s", f["generation"], orNone(f["previous"]), s.id, confirm)
	}
	return f["generation"], nil
}

func seconds(d time.Duration) string {
	return strconv.Itoa(int((d + time.Second - 1) / time.Second))
}

// follow copies the activation's output into the log until it ends, reconnecting when the
// connection drops (an activation may well restart the network), and returns its exit status.
func (s *session) follow(ctx context.Context) (int, error) {
	out := &lineWriter{emit: func(line string) { s.log("| %s", line) }}
	deadline := time.Now().Add(s.d.Config.ActivationTimeout.Std() + s.d.Config.ConfirmTimeout.Std())
	// The target stops an activation at activation_timeout; past that and a margin, the target
	// itself has stopped answering for it.
	ctx, cancel := context.WithDeadline(ctx, deadline.Add(followMargin))
	defer cancel()
	for {
		err := s.c.run(ctx, s.w.command("follow", s.id, strconv.FormatInt(out.n, 10)), nil, out)
		if err == nil {
			break
		}
		if !errors.Is(err, errDisconnected) {
			out.Flush()
			if errors.Is(err, context.DeadlineExceeded) {
				return 0, fmt.Errorf("the activation on %s went on %s past [deploy] activation_timeout and confirm_timeout without the target saying how it ended", s.name, followMargin)
			}
			return 0, fmt.Errorf("follow the activation on %s: %w", s.name, err)
		}
		s.log("the connection dropped during the activation; reconnecting")
		if err := s.reconnect(ctx, deadline); err != nil {
			out.Flush()
			return 0, err
		}
	}
	out.Flush()
	f, err := s.w.call(ctx, s.c, nil, "result", s.id)
	if err != nil {
		return 0, fmt.Errorf("read the activation's result on %s: %w", s.name, err)
	}
	if v := f["verdict"]; strings.HasPrefix(v, "rollback") {
		return 0, fmt.Errorf("%s rolled back by itself: %s", s.name, strings.TrimPrefix(v, "rollback:"))
	}
	status, err := strconv.Atoi(f["status"])
	if err != nil {
		return 0, fmt.Errorf("the activation on %s ended without an exit status", s.name)
	}
	return status, nil
}

// reconnect replaces the session's connection, trying until deadline.
func (s *session) reconnect(ctx context.Context, deadline time.Time) error {
	s.c.Close()
	var last error
	for time.Now().Before(deadline) {
		c, err := dial(ctx, s.ep)
		if err == nil {
			s.c = c
			s.log("reconnected")
			return nil
		}
		last = err
		if ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return &unreachableError{fmt.Errorf("could not reach %s again after the connection dropped (%v): its watchdog rolls back what was not confirmed", s.name, last)}
}

// unreachableError is a target lost after its activation started: only its watchdog can act.
type unreachableError struct{ error }

func (e *unreachableError) Unwrap() error { return e.error }

// confirm proves over a new connection that the target is reachable, runs the health checks, and
// tells the watchdog the deploy stands.
func (s *session) confirm(ctx context.Context) error {
	start := time.Now()
	c, err := dial(ctx, s.ep)
	if err != nil {
		return fmt.Errorf("confirm over a new connection: %w", err)
	}
	defer c.Close()
	s.log("reached %s over a new connection after the activation (%s)", s.name, time.Since(start).Round(time.Millisecond))
	if err := s.healthChecks(ctx, c); err != nil {
		return err
	}
	f, err := s.w.call(ctx, c, nil, "confirm", s.id)
	// The confirmation may have arrived and its answer not: ask what was decided, for as long as
	// the watchdog waits.
	for deadline := time.Now().Add(s.d.Config.ConfirmTimeout.Std()); errors.Is(err, errDisconnected) && time.Now().Before(deadline) && ctx.Err() == nil; {
		c2, derr := dial(ctx, s.ep)
		if derr != nil {
			time.Sleep(time.Second)
			continue
		}
		f, err = s.w.call(ctx, c2, nil, "result", s.id)
		if err == nil && f["verdict"] == "" {
			// Not decided yet: the confirmation never arrived. Send it again.
			f, err = s.w.call(ctx, c2, nil, "confirm", s.id)
		} else if err == nil && f["verdict"] != "confirmed" {
			err = errors.New("its watchdog decided first")
		}
		c2.Close()
	}
	if err != nil {
		if v := f["verdict"]; strings.HasPrefix(v, "rollback") {
			return fmt.Errorf("too late to confirm %s: its watchdog decided to roll back (%s)", s.name, strings.TrimPrefix(v, "rollback:"))
		}
		return fmt.Errorf("confirm on %s: %w", s.name, err)
	}
	s.log("confirmed: the watchdog is disarmed")
	return nil
}

// rollBack asks the target to roll back now, and returns the outcome: rolled back, or failed when
// the target could not be told (its watchdog then does it at its deadline).
func (s *session) rollBack(ctx context.Context, cause error) (Outcome, error) {
	rctx := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), rollbackGrace)
		defer cancel()
		s.log("cancelled: asking %s to roll back now", s.name)
	}
	c, err := dial(rctx, s.ep)
	if err != nil {
		return Failed, fmt.Errorf("%w; and %s cannot be reached to roll back (%v): its watchdog rolls back by itself", cause, s.name, err)
	}
	defer c.Close()
	reason := firstLine(cause.Error())
	if ctx.Err() != nil {
		reason = "the job was cancelled"
	}
	var code string
	out := &lineWriter{emit: func(line string) {
		if v, ok := strings.CutPrefix(line, "rolledback="); ok {
			code = v
			return
		}
		s.log("| %s", line)
	}}
	err = c.run(rctx, s.w.command("rollback", s.id, reason), nil, out)
	out.Flush()
	var ee *exitError
	errors.As(err, &ee)
	switch {
	case ee != nil && ee.Code == exitNoDeploy && !s.begun:
		// The target never began it: nothing to roll back.
		return Failed, cause
	case ee != nil && ee.Code == exitNoDeploy:
		return Failed, fmt.Errorf("%w; and %s no longer knows deploy %s (was it rebooted?): see what it runs with hearth deploy status %s", cause, s.name, s.id, s.name)
	case ee != nil && ee.Code == exitConfirmed:
		// The confirmation arrived after all: the deploy stands.
		return Deployed, nil
	case err != nil && ctx.Err() != nil:
		return Failed, fmt.Errorf("%w; %s was told to roll back, and rolls back by itself what nobody confirms", cause, s.name)
	case err != nil:
		return Failed, fmt.Errorf("%w; and the rollback on %s failed: %v", cause, s.name, err)
	case code == "none":
		return Failed, fmt.Errorf("%w; %s keeps the new system: it ran no earlier system to go back to", cause, s.name)
	case code == "4":
		// The previous system is active again; some of its units fail, as they may have before.
		return RolledBack, fmt.Errorf("%w (rolled back; the previous system's switch-to-configuration reports failed units too)", cause)
	case code != "0":
		if code == "" {
			code = "unknown: it did not finish in time"
		}
		return Failed, fmt.Errorf("%w; and the previous system's activation on %s exited %s: check what it runs now (hearth deploy status %s)", cause, s.name, code, s.name)
	}
	return RolledBack, cause
}

// firstLine is the first line of s, short and without control characters: fit to pass as an
// argument and to print.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	line = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, line)
	if len(line) > 200 {
		line = line[:200]
	}
	return strings.ToValidUTF8(line, "?")
}

// lineWriter splits what is written into lines and counts the bytes.
type lineWriter struct {
	emit func(string)
	buf  []byte
	n    int64
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.emit(strings.TrimRight(string(w.buf[:i]), "\r"))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// Flush emits a last line that has no newline.
func (w *lineWriter) Flush() {
	if len(w.buf) > 0 {
		w.emit(string(w.buf))
		w.buf = nil
	}
}
