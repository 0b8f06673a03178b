package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/metrics/metricstest"
)

func testConfig(t *testing.T) *config.Config {
	cfg := config.Default()
	cfg.Jobs.StateDir = t.TempDir()
	cfg.Cache.Backend = "s3"
	cfg.Deploy.Targets = map[string]config.Target{"web": {}, "db": {}}
	return &cfg
}

func gather(t *testing.T, r *Registry) metricstest.Families {
	t.Helper()
	fams, err := r.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	return metricstest.FromGathered(fams)
}

// Each kind of event lands in its series, with label values bounded: what hearth does not know
// is counted as "other", never as a new series.
func TestRegistryApply(t *testing.T) {
	r := New(testConfig(t), "1.2.3", Sources{})
	for _, e := range []Event{
		Stage("prepare", 300*time.Millisecond, "", ""),
		Stage("prepare", time.Second, FaultJob, "policy"),
		Stage("prepare", 2*time.Second, FaultHost, "containerd"),
		Stage("prepare", time.Second, FaultHost, "made-up"),
		Stage("build_script", 40*time.Second, "", ""),
		Stage("step_release", time.Second, FaultJob, ""),
		Stage("../../etc", time.Second, "", ""),
		{Kind: KindPushed, Backend: "s3", Bytes: 1000},
		{Kind: KindPushed, Backend: "s3", Bytes: 24},
		{Kind: KindPushFailed, Backend: "s3"},
		{Kind: KindDeploy, Target: "web", Result: "deployed"},
		{Kind: KindDeploy, Target: "web", Result: "rolled_back"},
		{Kind: KindDeploy, Target: "nowhere", Result: "deployed"},
		{Kind: "what"},
	} {
		r.Apply(e)
	}
	f := gather(t, r)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"hearth_stage_duration_seconds", []string{"stage", "prepare"}, 4},
		{"hearth_stage_duration_seconds", []string{"stage", "build_script"}, 1},
		{"hearth_stage_duration_seconds", []string{"stage", "step_release"}, 1},
		{"hearth_stage_duration_seconds", []string{"stage", "other"}, 1},
		{"hearth_stage_failures_total", []string{"stage", "prepare", "fault", "job"}, 1},
		{"hearth_stage_failures_total", []string{"stage", "prepare", "fault", "host"}, 2},
		{"hearth_stage_failures_total", []string{"stage", "step_release", "fault", "job"}, 1},
		{"hearth_prepare_failures_total", []string{"reason", "policy"}, 1},
		{"hearth_prepare_failures_total", []string{"reason", "containerd"}, 1},
		{"hearth_prepare_failures_total", []string{"reason", "other"}, 1},
		{"hearth_prepare_failures_total", []string{"reason", "network"}, 0},
		{"hearth_cache_pushed_paths_total", []string{"backend", "s3"}, 2},
		{"hearth_cache_pushed_bytes_total", []string{"backend", "s3"}, 1024},
		{"hearth_cache_push_failures_total", []string{"backend", "s3"}, 1},
		{"hearth_deploys_total", []string{"target", "web", "result", "deployed"}, 1},
		{"hearth_deploys_total", []string{"target", "web", "result", "rolled_back"}, 1},
		{"hearth_deploys_total", []string{"target", "db", "result", "failed"}, 0},
		{"hearth_deploys_total", []string{"target", "other", "result", "deployed"}, 1},
		{"hearth_metrics_spool_bad_lines_total", nil, 1},
		{"hearth_build_info", []string{"version", "1.2.3"}, 1},
	} {
		if got, ok := f.Value(tc.name, tc.labels...); !ok || got != tc.want {
			t.Errorf("%s%v = %v (present: %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	if _, ok := f.Value("hearth_stage_duration_seconds", "stage", "../../etc"); ok {
		t.Error("an unknown stage name became a series of its own")
	}
	if got, _ := f.Value("hearth_stage_failures_total", "stage", "build_script"); got != 0 {
		t.Errorf("a stage that succeeded counted as failed: %v", got)
	}
}

// The queue's and the rejected list's gauges are read at each scrape; one that cannot be read
// does not hide the others.
func TestRegistrySources(t *testing.T) {
	now := time.Now()
	queue := []time.Time{now.Add(-90 * time.Second), now.Add(-10 * time.Second)}
	var rejectedErr error
	r := New(testConfig(t), "v", Sources{
		Queue:    func() ([]time.Time, error) { return queue, nil },
		Rejected: func() (int, error) { return 3, rejectedErr },
	})
	f := gather(t, r)
	if n, _ := f.Value("hearth_cache_queue_entries"); n != 2 {
		t.Errorf("queue entries %v, want 2", n)
	}
	if age, _ := f.Value("hearth_cache_queue_oldest_seconds"); age < 90 || age > 120 {
		t.Errorf("oldest entry's age %v, want about 90 s", age)
	}
	if n, _ := f.Value("hearth_cache_rejected_entries"); n != 3 {
		t.Errorf("rejected %v, want 3", n)
	}
	queue = nil
	f = gather(t, r)
	if age, ok := f.Value("hearth_cache_queue_oldest_seconds"); !ok || age != 0 {
		t.Errorf("an empty queue's oldest age is %v (present %v), want 0", age, ok)
	}

	rejectedErr = errors.New("permission denied")
	srv := httptest.NewServer(r.Handler(slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer srv.Close()
	f = scrape(t, srv.URL)
	if _, ok := f.Value("hearth_cache_rejected_entries"); ok {
		t.Error("a rejected list that cannot be read still has a value")
	}
	if n, _ := f.Value("hearth_cache_queue_entries"); !f.Has("hearth_cache_queue_entries") || n != 0 {
		t.Errorf("the queue's gauge went missing with the rejected list's error: %v", n)
	}
}

func scrape(t *testing.T, url string) metricstest.Families {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	f, err := metricstest.Parse(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// A scrape folds in what was spooled before it, and Serve answers on its address until its
// context ends.
func TestServeDrainsTheSpoolAtEachScrape(t *testing.T) {
	cfg := testConfig(t)
	r := New(cfg, "v", Sources{})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	addr := freeAddr(t)
	go func() { served <- r.Serve(ctx, addr, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	rec := NewRecorder(SpoolPath(cfg))
	rec.Record(Stage("prepare", time.Second, FaultHost, "nix-daemon"), Event{Kind: KindPushed, Backend: "s3", Bytes: 7})
	var f metricstest.Families
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			f, err = metricstest.Parse(resp.Body)
			resp.Body.Close()
		}
		if err == nil || time.Now().After(deadline) {
			if err != nil {
				t.Fatal(err)
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n, _ := f.Value("hearth_prepare_failures_total", "reason", "nix-daemon"); n != 1 {
		t.Errorf("the spooled prepare failure is not counted: %v", n)
	}
	if n, _ := f.Value("hearth_cache_pushed_bytes_total", "backend", "s3"); n != 7 {
		t.Errorf("the spooled push is not counted: %v", n)
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return when its context ended")
	}

	// An address in use is an error naming the key, at once.
	taken := httptest.NewServer(http.NotFoundHandler())
	defer taken.Close()
	err := New(cfg, "v", Sources{}).Serve(context.Background(), taken.Listener.Addr().String(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), "[metrics] listen") {
		t.Fatalf("Serve on a taken address: %v", err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close()
	return addr
}
