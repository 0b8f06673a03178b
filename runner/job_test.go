package runner

import (
	"reflect"
	"strings"
	"testing"
)

const pipeline = `
variables:
  GLOBAL: g
  OVERRIDDEN: global
default:
  image: nix-env
  before_script:
    - echo default-before
after_script:
  - echo old-style-after
.hidden:
  script: [echo hidden]
build:
  stage: build
  variables:
    OVERRIDDEN: job
    DESCRIBED:
      value: v
      description: a variable with a description
  script:
    - echo one
    - - echo nested
      - echo anchors
    - |
      multi
      line
own-image:
  image:
    name: registry.example.com/ci/tools:1
  before_script: []
  script: echo single
`

func TestParseJob(t *testing.T) {
	j, err := ParseJob([]byte(pipeline), "build")
	if err != nil {
		t.Fatal(err)
	}
	want := &Job{
		Name: "build", Stage: "build", Image: "nix-env",
		Variables:    []Variable{{Key: "GLOBAL", Value: "g"}, {Key: "OVERRIDDEN", Value: "global"}, {Key: "OVERRIDDEN", Value: "job"}, {Key: "DESCRIBED", Value: "v"}},
		BeforeScript: []string{"echo default-before"},
		Script:       []string{"echo one", "echo nested", "echo anchors", "multi\nline\n"},
		AfterScript:  []string{"echo old-style-after"},
	}
	if !reflect.DeepEqual(j, want) {
		t.Fatalf("got  %+v\nwant %+v", j, want)
	}
	j, err = ParseJob([]byte(pipeline), "own-image")
	if err != nil {
		t.Fatal(err)
	}
	if j.Image != "registry.example.com/ci/tools:1" || len(j.BeforeScript) != 0 || !reflect.DeepEqual(j.Script, []string{"echo single"}) || j.Stage != "test" {
		t.Fatalf("own-image: %+v", j)
	}
}

func TestParseJobErrors(t *testing.T) {
	tests := []struct{ src, job, want string }{
		{pipeline, "missing", `no job "missing"; jobs here: build, own-image`},
		{pipeline, ".hidden", `no job ".hidden"`},
		{pipeline, "variables", `no job "variables"`},
		{"j:\n  extends: .base\n  script: [x]\n", "j", "extends:"},
		{"j:\n  stage: test\n", "j", "has no script"},
		{"j:\n  script: {a: b}\n", "j", "line 2: expected a command"},
		{"j: [\n", "j", "not valid YAML"},
	}
	for _, tc := range tests {
		_, err := ParseJob([]byte(tc.src), tc.job)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseJob(%q): error %v, want one containing %q", tc.job, err, tc.want)
		}
	}
}
