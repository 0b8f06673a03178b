package driver

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzReadPayload decodes arbitrary bytes as a job payload file. It must never panic; an accepted
// payload has a positive job id, and Protected is true exactly when git_info.protected is the JSON
// literal true (absent, null, false, or a decoding error never make a job protected).
func FuzzReadPayload(f *testing.F) {
	f.Add([]byte(`{"id":77,"job_info":{"project_id":7},"git_info":{"repo_url":"https://gitlab.example.com/g/p.git","ref":"main","protected":true}}`))
	f.Add([]byte(`{"id":77,"job_info":{"project_id":7},"git_info":{"repo_url":"https://gitlab.example.com/g/p.git","ref":"main","protected":false}}`))
	f.Add([]byte(`{"id":1,"job_info":{"name":"build","stage":"test","project_id":7,"project_name":"p"},"git_info":{"ref":"v1","sha":"abc","ref_type":"tag","protected":null},"runner_info":{"timeout":3600},"image":{"name":"alpine"},"variables":[{"key":"CI_PIPELINE_ID","value":"9"}],"credentials":[{"type":"registry","url":"r","username":"u","password":"p"}]}`))
	f.Add([]byte(`{"id":2,"git_info":{"protected":"true"}}`))
	f.Add([]byte(`{"id":2,"git_info":{"protected":1}}`))
	f.Add([]byte(`{"id":2,"git_info":{"protected":true,"protected":false}}`))
	f.Add([]byte(`{"id":2,"git_info":{"Protected":true}}`))
	f.Add([]byte(`{"id":0}`))
	f.Add([]byte(`{"id":-1}`))
	f.Add([]byte(`null`))
	f.Add([]byte(``))
	// One file per fuzzing process, rewritten for each input: a directory per input costs more
	// than the decoding.
	path := filepath.Join(f.TempDir(), "response.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := ReadPayload(path)
		if err != nil {
			if p != nil {
				t.Fatalf("ReadPayload returned a payload with error %v", err)
			}
			return
		}
		if p.ID <= 0 {
			t.Fatalf("accepted payload with job id %d", p.ID)
		}
		// The field as raw JSON, found by the same decoder rules (case-insensitive names, the last
		// duplicate wins) as Payload's.
		var raw struct {
			GitInfo struct {
				Protected json.RawMessage `json:"protected"`
			} `json:"git_info"`
		}
		if err := json.Unmarshal(data, &raw); err != nil {
			t.Fatalf("ReadPayload accepted what json.Unmarshal rejects: %v", err)
		}
		isTrue := bytes.Equal(bytes.TrimSpace(raw.GitInfo.Protected), []byte("true"))
		if p.Protected() != isTrue {
			t.Fatalf("Protected() = %v, but git_info.protected is %s", p.Protected(), raw.GitInfo.Protected)
		}
	})
}

// FuzzParseInvocation reads an arbitrary environment (entries separated by NUL). It must never
// panic; Custom is never nil and holds exactly the last value of every CUSTOM_ENV_ entry; the exit
// codes keep their defaults unless a well-formed entry sets them.
func FuzzParseInvocation(f *testing.F) {
	f.Add("JOB_RESPONSE_FILE=/tmp/r.json\x00BUILD_EXIT_CODE_FILE=/tmp/x\x00BUILD_FAILURE_EXIT_CODE=17\x00SYSTEM_FAILURE_EXIT_CODE=18\x00CUSTOM_ENV_CI_JOB_ID=5")
	f.Add("CUSTOM_ENV_A=1\x00CUSTOM_ENV_A=2\x00CUSTOM_ENV_=empty\x00CUSTOM_ENV_B==x=y")
	f.Add("BUILD_FAILURE_EXIT_CODE=nan\x00SYSTEM_FAILURE_EXIT_CODE=99999999999999999999")
	f.Add("PATH=/bin\x00noequals\x00=\x00")
	f.Add("")
	f.Fuzz(func(t *testing.T, env string) {
		environ := strings.Split(env, "\x00")
		inv := ParseInvocation(environ)
		if inv.Custom == nil {
			t.Fatal("Custom is nil")
		}
		want := map[string]string{}
		for _, kv := range environ {
			if k, v, ok := strings.Cut(kv, "="); ok {
				if name, ok := strings.CutPrefix(k, "CUSTOM_ENV_"); ok {
					want[name] = v
				}
			}
		}
		if len(want) != len(inv.Custom) {
			t.Fatalf("Custom = %q, want %q", inv.Custom, want)
		}
		for k, v := range want {
			if got, ok := inv.Custom[k]; !ok || got != v {
				t.Fatalf("Custom[%q] = %q, want %q", k, got, v)
			}
		}
		if !strings.Contains(env, "BUILD_FAILURE_EXIT_CODE=") && inv.BuildFailureExitCode != 1 {
			t.Fatalf("BuildFailureExitCode = %d without the variable", inv.BuildFailureExitCode)
		}
		if !strings.Contains(env, "SYSTEM_FAILURE_EXIT_CODE=") && inv.SystemFailureExitCode != 2 {
			t.Fatalf("SystemFailureExitCode = %d without the variable", inv.SystemFailureExitCode)
		}
	})
}
