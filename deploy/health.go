package deploy

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/hearth-ci/hearth/config"
)

// healthCheckPeriod is how often a failing health check is tried again, and healthCheckTry how
// long one try may take (morph's defaults, 2 s and 5 s).
const (
	healthCheckPeriod = 2 * time.Second
	healthCheckTry    = 5 * time.Second
)

// healthChecks runs the target's checks, each retried until it passes or the target's
// health_timeout ends: commands on the target over c, URLs from this host.
func (s *session) healthChecks(ctx context.Context, c *conn) error {
	if len(s.t.HealthChecks) == 0 {
		return nil
	}
	deadline := time.Now().Add(s.t.HealthTimeout.Std())
	for _, hc := range s.t.HealthChecks {
		what := "`" + hc.Command + "`"
		if hc.URL != "" {
			what = hc.URL
		}
		start := time.Now()
		for try := 1; ; try++ {
			err := s.healthCheck(ctx, c, hc)
			if err == nil {
				s.log("health check %s passed (try %d, %s)", what, try, time.Since(start).Round(time.Millisecond))
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if time.Now().Add(healthCheckPeriod).After(deadline) {
				return fmt.Errorf("health check %s on %s failed for %s: %v", what, s.name, time.Since(start).Round(time.Second), err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(healthCheckPeriod):
			}
		}
	}
	return nil
}

func (s *session) healthCheck(ctx context.Context, c *conn, hc config.HealthCheck) error {
	ctx, cancel := context.WithTimeout(ctx, healthCheckTry)
	defer cancel()
	if hc.Command != "" {
		// As the deploy user: its sudo rule names hearth-deploy-target alone.
		out, err := c.output(ctx, hc.Command, nil)
		if err != nil {
			if l := lastLine(out); l != "" {
				return fmt.Errorf("%v: %s", err, l)
			}
			return err
		}
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, hc.URL, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	switch {
	case hc.Status != 0 && resp.StatusCode != hc.Status:
		return fmt.Errorf("status %d, want %d", resp.StatusCode, hc.Status)
	case hc.Status == 0 && (resp.StatusCode < 200 || resp.StatusCode > 299):
		return fmt.Errorf("status %d, want 2xx", resp.StatusCode)
	}
	return nil
}
