package config

import (
	"os"
	"reflect"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse. It must never panic, and it must be a function of its
// input: parsing the same bytes twice gives equal configs, or fails twice. A config it accepts
// must satisfy what validate promises its users: the default environment exists and every
// environment's mounts parse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte(minimal + target))
	f.Add([]byte("[jobs]\nnetwork = \"none\"\nstop_timeout = \"2s\"\nallowed_images = [\"docker.io/library/*\"]\n" + minimal))
	f.Add([]byte(minimal + "mounts = [\"/srv/data:/data\"]\n[environments.alpine]\nimage = \"alpine:3\"\n"))
	f.Add([]byte("[cache]\nbackend = \"s3\"\n[cache.s3]\nbucket = \"b\"\nregion = \"r\"\n" + minimal))
	f.Add([]byte("[jobz]\nx = 1\n" + minimal))
	f.Add([]byte(minimal + "notes = \"\"\"\nline\n\"\"\"\n"))
	f.Add([]byte(""))
	f.Add([]byte("["))
	f.Add([]byte("a.\"b.c\".'d' = 1\n"))
	if src, err := os.ReadFile("../config.toml.example"); err == nil {
		f.Add(src)
		f.Add(append(src, minimal...))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		c1, err1 := Parse(src)
		c2, err2 := Parse(src)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("Parse is not deterministic: err %v, then %v", err1, err2)
		}
		if err1 != nil {
			// The error text need not repeat: for a type mismatch inside a table decoded into a
			// map (environments, deploy targets), the TOML decoder reports whichever bad entry its
			// map iteration meets first.
			if c1 != nil {
				t.Fatalf("Parse returned a config with error %v", err1)
			}
			return
		}
		if !reflect.DeepEqual(c1, c2) {
			t.Fatalf("Parse is not deterministic:\n%+v\n%+v", c1, c2)
		}
		if _, ok := c1.Environments[c1.Jobs.DefaultEnvironment]; !ok {
			t.Fatalf("accepted config has no default environment %q", c1.Jobs.DefaultEnvironment)
		}
		for name, e := range c1.Environments {
			if _, err := e.ParsedMounts(); err != nil {
				t.Fatalf("accepted config has environment %q with bad mounts: %v", name, err)
			}
		}
	})
}
