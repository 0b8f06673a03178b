package derivation

import (
	"regexp"
	"slices"
	"testing"
)

func TestOutputs(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
		err       string
	}{
		{"one output", `Derive([("out","/nix/store/0yv2bgl9ygg2f6i9zyryfzhj5n7sb93x-hk","","")],[],["/nix/store/x-src"],"x86_64-linux","/bin/sh",[],[])`,
			[]string{"/nix/store/0yv2bgl9ygg2f6i9zyryfzhj5n7sb93x-hk"}, ""},
		{"several, fixed-output", `Derive([("dev","/nix/store/0yv2bgl9ygg2f6i9zyryfzhj5n7sb93x-a-dev","",""),("out","/nix/store/1yv2bgl9ygg2f6i9zyryfzhj5n7sb93x-a","r:sha256","ab\"c")],[],[],"",""`,
			[]string{"/nix/store/0yv2bgl9ygg2f6i9zyryfzhj5n7sb93x-a-dev", "/nix/store/1yv2bgl9ygg2f6i9zyryfzhj5n7sb93x-a"}, ""},
		{"floating content-addressed", `Derive([("out","","r:sha256","")],[]`, nil, ""},
		{"not a derivation", `{"out": 1}`, nil, `does not begin`},
		{"outside the store", `Derive([("out","/etc/passwd","","")],[]`, nil, `output out: .*/etc/passwd`},
		{"cut short", `Derive([("out","/nix/store/0yv2bgl9ygg2f6i9zyryfzhj5n7sb93x-a`, nil, `the end of a string`},
		{"missing comma", `Derive([("out" "x","","")]`, nil, `want ","`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Outputs(tc.src)
			if tc.err != "" {
				if err == nil || !regexp.MustCompile(tc.err).MatchString(err.Error()) {
					t.Fatalf("error %v, want %s", err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("Outputs = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func FuzzOutputs(f *testing.F) {
	f.Add(`Derive([("out","/nix/store/0yv2bgl9ygg2f6i9zyryfzhj5n7sb93x-hk","","")],[]`)
	f.Add(`Derive([("a","","",""),("b","/nix/store/0yv2bgl9ygg2f6i9zyryfzhj5n7sb93x-b","\\","\"")]`)
	f.Fuzz(func(t *testing.T, src string) {
		outs, err := Outputs(src)
		if err != nil && outs != nil {
			t.Fatalf("outputs %v with error %v", outs, err)
		}
	})
}
