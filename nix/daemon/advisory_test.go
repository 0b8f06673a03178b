package daemon

import (
	"slices"
	"testing"
)

func TestVulnerable(t *testing.T) {
	for _, tc := range []struct {
		version string
		want    []string
	}{
		{"2.8.0", []string{"CVE-2024-27297", "CVE-2024-38531", "GHSA-g948"}},
		{"2.3.18", []string{"CVE-2024-38531", "GHSA-g948"}},
		{"2.18.2", []string{"CVE-2024-38531", "GHSA-g948", "CVE-2026-39860"}},
		{"2.24.5", []string{"CVE-2024-45593", "GHSA-g948", "CVE-2026-39860", "CVE-2026-44028"}},
		{"2.26.3", []string{"GHSA-g948", "CVE-2026-39860", "CVE-2026-44028"}},
		{"2.26.4", []string{"CVE-2026-39860", "CVE-2026-44028"}},
		{"2.28.7", nil},
		{"2.31.4", []string{"CVE-2026-44028"}},
		{"2.35.0", nil},
		{"2.35.2pre20260801_abcdef", nil},
		{"3.0.0", nil},
		{"garbage", nil},
	} {
		var got []string
		for _, a := range Vulnerable(tc.version) {
			id := a.ID
			if len(id) > 9 && id[:9] == "GHSA-g948" {
				id = "GHSA-g948"
			}
			got = append(got, id)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("Vulnerable(%q) = %v, want %v", tc.version, got, tc.want)
		}
	}
}
