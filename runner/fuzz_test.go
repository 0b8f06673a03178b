package runner

import (
	"reflect"
	"testing"
)

// FuzzParseJob reads arbitrary bytes as a .gitlab-ci.yml. It must never panic, and a job it
// returns has the name asked for, a stage, and at least one script line; parsing is deterministic.
func FuzzParseJob(f *testing.F) {
	f.Add([]byte(pipeline), "build")
	f.Add([]byte(pipeline), "own-image")
	f.Add([]byte(pipeline), ".hidden")
	f.Add([]byte(pipeline), "default")
	f.Add([]byte("a: &x\n  script: [echo a]\nb: *x\n"), "b")
	f.Add([]byte("base: &s [echo one]\njob:\n  script:\n    - *s\n    - [echo two, [echo three]]\n"), "job")
	f.Add([]byte("job:\n  extends: .base\n  script: echo\n"), "job")
	f.Add([]byte("job:\n  image: {name: alpine}\n  variables: {A: {value: v}, B: 1}\n  script: echo\n"), "job")
	f.Add([]byte("a: &a [*a]\n"), "a")
	f.Add([]byte(""), "job")
	f.Add([]byte("- not a mapping\n"), "job")
	f.Fuzz(func(t *testing.T, src []byte, name string) {
		j, err := ParseJob(src, name)
		if err != nil {
			if j != nil {
				t.Fatalf("ParseJob returned a job with error %v", err)
			}
			return
		}
		if j.Name != name || j.Stage == "" || len(j.Script) == 0 {
			t.Fatalf("ParseJob returned an incomplete job %+v", j)
		}
		j2, err := ParseJob(src, name)
		if err != nil || !reflect.DeepEqual(j, j2) {
			t.Fatalf("ParseJob is not deterministic: %+v, then %+v (%v)", j, j2, err)
		}
	})
}
