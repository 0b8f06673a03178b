package daemon

import (
	"strconv"
	"strings"
)

// Advisory is a published flaw of the Nix daemon that lets a build or an untrusted client change
// what the store holds, and the releases that fixed it.
type Advisory struct {
	ID      string
	Summary string
	// Introduced is the first release with the flaw; "" when every release before the fix has it.
	Introduced string
	// Fixed lists, per release series, the first release with the fix ("2.18.2"); a series
	// newer than every entry is fixed from its start, and a series between entries never got one.
	Fixed []string
}

// Advisories is the table Vulnerable reads, newest last.
var Advisories = []Advisory{
	{
		ID:      "CVE-2024-27297",
		Summary: "a fixed-output build can pass a descriptor of its output out of the sandbox and rewrite the path after it is registered",
		Fixed:   []string{"2.3.18", "2.16.3", "2.17.2", "2.18.2", "2.19.4", "2.20.5"},
	},
	{
		ID:      "CVE-2024-38531",
		Summary: "another local user can interfere with a build's directory",
		Fixed:   []string{"2.18.4", "2.19.5", "2.20.7", "2.21.3", "2.22.2", "2.23.1"},
	},
	{
		ID:         "CVE-2024-45593",
		Summary:    "a crafted NAR makes the daemon write outside the path it unpacks",
		Introduced: "2.24.0",
		Fixed:      []string{"2.24.6"},
	},
	{
		ID:      "GHSA-g948-229j-48j3 (CVE-2025-46415, CVE-2025-46416, CVE-2025-52991, CVE-2025-52992, CVE-2025-52993)",
		Summary: "races and leaked descriptors let a build act outside its sandbox as the daemon",
		Fixed:   []string{"2.24.15", "2.26.4", "2.28.4", "2.29.1"},
	},
	{
		ID:         "CVE-2026-39860",
		Summary:    "a fixed-output build can make the daemon overwrite any file through a symlink",
		Introduced: "2.16.3",
		Fixed:      []string{"2.28.6", "2.29.3", "2.30.4", "2.31.4", "2.32.7", "2.33.4", "2.34.5"},
	},
	{
		ID:         "CVE-2026-44028",
		Summary:    "any client can overflow the daemon's NAR parser and run code as root",
		Introduced: "2.24.4",
		Fixed:      []string{"2.28.7", "2.29.4", "2.30.5", "2.31.5", "2.32.8", "2.33.6", "2.34.7"},
	},
}

// Vulnerable returns the advisories that a daemon of the given Nix version ("2.8.0") predates.
func Vulnerable(version string) []Advisory {
	v, ok := parseVersion(version)
	if !ok {
		return nil
	}
	var out []Advisory
	for _, a := range Advisories {
		if in, ok := parseVersion(a.Introduced); ok && compare(v, in) < 0 {
			continue
		}
		if !fixedIn(v, a.Fixed) {
			out = append(out, a)
		}
	}
	return out
}

// fixedIn reports whether v has the fix: it is at least the fix of its own series, or newer than
// every series listed.
func fixedIn(v [3]int, fixed []string) bool {
	newest := [3]int{}
	for _, f := range fixed {
		fv, ok := parseVersion(f)
		if !ok {
			continue
		}
		if fv[0] == v[0] && fv[1] == v[1] {
			return compare(v, fv) >= 0
		}
		if compare(fv, newest) > 0 {
			newest = fv
		}
	}
	return v[0] > newest[0] || (v[0] == newest[0] && v[1] > newest[1])
}

func compare(a, b [3]int) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}

// parseVersion reads "2.26.3", "2.18.2pre2024…" or "2.8.0" as major, minor and patch.
func parseVersion(s string) ([3]int, bool) {
	var v [3]int
	parts := strings.SplitN(s, ".", 3)
	if len(parts) < 2 {
		return v, false
	}
	for i, p := range parts {
		end := 0
		for end < len(p) && p[end] >= '0' && p[end] <= '9' {
			end++
		}
		n, err := strconv.Atoi(p[:end])
		if err != nil {
			if i < 2 {
				return v, false
			}
			break
		}
		v[i] = n
	}
	return v, true
}

// Describe lists the advisories' ids, for a warning.
func Describe(as []Advisory) string {
	var ids []string
	for _, a := range as {
		ids = append(ids, a.ID)
	}
	return strings.Join(ids, ", ")
}
