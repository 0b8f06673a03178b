package cachetest

import (
	"fmt"
	"os"
	"testing"

	"github.com/hearth-ci/hearth/internal/testenv"
)

// Main starts a nix-daemon for a backend's tests (no containerd), runs them and stops it. Tests
// need root; `go test -short` skips them.
func Main(m interface{ Run() int }, parts **testenv.Parts) {
	if testing.Short() {
		fmt.Println("SKIPPED (-short): the cache backends' tests on a real nix-daemon did not run")
		os.Exit(0)
	}
	e, err := testenv.Start(testenv.Options{NoContainerd: true})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot start the test environment: %v\n", err)
		os.Exit(1)
	}
	*parts = e
	code := m.Run()
	e.Stop()
	os.Exit(code)
}
