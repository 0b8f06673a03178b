package nixos

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/metrics"
	"github.com/hearth-ci/hearth/metrics/metricstest"
)

// Every metric the Grafana dashboard queries is one hearth exports, as a fresh cache watch's
// registry has it before anything has happened (the end-to-end metrics test checks the same
// against a real scrape), with label values hearth gives, and the dashboard shows what operators
// look at first.
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	src, err := os.ReadFile("dashboards/hearth.json")
	if err != nil {
		t.Fatal(err)
	}
	queries, err := metricstest.DashboardQueries(src)
	if err != nil {
		t.Fatal(err)
	}
	queried := metricstest.QueriedMetrics(queries)
	exported := exportedMetrics(t)
	for _, name := range queried {
		if !exported.Has(name) {
			t.Errorf("the dashboard queries %s, which hearth does not export", name)
		}
	}
	knownLabelValues(t, "the dashboard's query", queries)
	for _, want := range []string{
		"hearth_cache_queue_entries", "hearth_cache_queue_oldest_seconds", "hearth_cache_rejected_entries",
		"hearth_cache_pushed_paths_total", "hearth_cache_pushed_bytes_total", "hearth_cache_push_failures_total",
		"hearth_stage_duration_seconds_bucket", "hearth_stage_failures_total", "hearth_prepare_failures_total",
		"hearth_deploys_total",
	} {
		if !slices.Contains(queried, want) {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
}

// The alert rules the README suggests query metrics hearth exports, with label values it gives.
func TestReadmeAlertsQueryExportedMetrics(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for line := range strings.Lines(string(readme)) {
		if e, ok := strings.CutPrefix(strings.TrimSpace(line), "expr: "); ok {
			exprs = append(exprs, e)
		}
	}
	queried := metricstest.QueriedMetrics(exprs)
	if len(queried) < 4 {
		t.Fatalf("the README's alerts query %v: the rules were not found", queried)
	}
	exported := exportedMetrics(t)
	for _, name := range queried {
		if !exported.Has(name) {
			t.Errorf("the README's alerts query %s, which hearth does not export", name)
		}
	}
	knownLabelValues(t, "the README's alert", exprs)
}

// knownLabelValues fails t when one of exprs matches a label hearth bounds (fault, result,
// reason, backend) against a value hearth never gives: a query that can never match.
func knownLabelValues(t *testing.T, what string, exprs []string) {
	t.Helper()
	known := map[string][]string{"fault": metrics.Faults, "result": metrics.DeployResults, "reason": metrics.PrepareReasons, "backend": metrics.Backends}
	matcher := regexp.MustCompile(`(\w+)=~?"([^"]*)"`)
	for _, e := range exprs {
		for _, m := range matcher.FindAllStringSubmatch(e, -1) {
			values, ok := known[m[1]]
			if !ok {
				continue
			}
			for _, v := range strings.Split(m[2], "|") {
				if !slices.Contains(values, v) {
					t.Errorf("%s %q matches %s=%q, a value hearth never gives (it gives %v)", what, e, m[1], v, values)
				}
			}
		}
	}
}

// exportedMetrics are the metrics of a fresh cache watch's registry, on a host with a deploy
// target, before anything has happened.
func exportedMetrics(t *testing.T) metricstest.Families {
	t.Helper()
	cfg := config.Default()
	cfg.Jobs.StateDir = t.TempDir()
	cfg.Deploy.Targets = map[string]config.Target{"web": {}}
	r := metrics.New(&cfg, "test", metrics.Sources{
		Queue:    func() ([]time.Time, error) { return nil, nil },
		Rejected: func() (int, error) { return 0, nil },
	})
	fams, err := r.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	return metricstest.FromGathered(fams)
}
