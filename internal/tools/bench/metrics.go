package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv"
)

// benchMetrics measures what recording metrics costs a job: the whole job with trivial stages with
// [metrics] listen set, while `hearth cache watch` serves them and a scraper asks every 100 ms (a
// Prometheus asks every 15 s or so: this is the worst case for the spool's lock), against the
// same job with metrics off, interleaved.
func benchMetrics(parts *testenv.Parts, runs int) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	off, err := parts.WriteConfig(`network = "host"`, "", "")
	if err != nil {
		return err
	}
	on, err := parts.WriteConfig(`network = "host"`, "", fmt.Sprintf("\n[metrics]\nlisten = %q\n", addr))
	if err != nil {
		return err
	}
	watch := exec.Command(parts.Hearth, "--config", on, "cache", "watch")
	watch.Stderr = os.Stderr
	if err := watch.Start(); err != nil {
		return err
	}
	defer func() { watch.Process.Kill(); watch.Wait() }()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	scrapes := make(chan int, 1) // read only when the jobs all ran
	go func() {
		n := 0
		defer func() { scrapes <- n }()
		client := http.Client{Timeout: 5 * time.Second}
		for ctx.Err() == nil {
			if resp, err := client.Get("http://" + addr + "/metrics"); err == nil {
				resp.Body.Close()
				n++
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	trivial := "job:\n  variables:\n    GIT_STRATEGY: none\n  script: [\"true\"]\n"
	times := map[string][]time.Duration{}
	for i := 0; i <= runs; i++ {
		for _, mode := range []string{"off", "on"} {
			cfg := map[string]string{"off": off, "on": on}[mode]
			d, log, err := runJob(parts, cfg, trivial, nil)
			if err != nil {
				return fmt.Errorf("trivial job (metrics %s): %v\n%s", mode, err, log)
			}
			if i > 0 { // the first of each is a warm-up
				times[mode] = append(times[mode], d)
			}
		}
	}
	stop()
	n := <-scrapes
	o, m := median(times["off"]), median(times["on"])
	fmt.Println()
	fmt.Printf("Whole job, trivial stages, with metrics recorded and scraped every 100 ms against without (interleaved, %d runs):\n", runs)
	fmt.Printf("  metrics off                         %s\n", ms(o))
	fmt.Printf("  metrics on (%d scrapes)             %s\n", n, ms(m))
	fmt.Printf("  ratio                               %.3f\n", float64(m)/float64(o))
	return nil
}
