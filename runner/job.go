// Package runner is gitlab-runner's side of the custom-executor contract, as far as hearth needs
// it: a job read from .gitlab-ci.yml, the job payload and environment the runner provides, the
// bash scripts it generates for each stage, and the order, retry, exit-code and signal rules by
// which it calls the driver. `hearth exec` and the tests use it.
package runner

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Job is one job of a .gitlab-ci.yml, with the file's defaults applied.
type Job struct {
	Name         string
	Stage        string
	Image        string
	Variables    []Variable
	BeforeScript []string
	Script       []string
	AfterScript  []string
}

// Variable is a CI/CD variable.
type Variable struct {
	Key, Value string
	Masked     bool
	File       bool
}

// keywords that are not jobs at the top level of .gitlab-ci.yml.
var globalKeywords = map[string]bool{
	"default": true, "include": true, "stages": true, "variables": true, "workflow": true,
	"image": true, "services": true, "cache": true, "before_script": true, "after_script": true,
}

// LoadJob reads the job called name from the .gitlab-ci.yml at path.
func LoadJob(path, name string) (*Job, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	j, err := ParseJob(src, name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return j, nil
}

// ParseJob reads the job called name from a .gitlab-ci.yml held in memory.
func ParseJob(src []byte, name string) (*Job, error) {
	var doc map[string]yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	node, ok := doc[name]
	if !ok || globalKeywords[name] || strings.HasPrefix(name, ".") {
		return nil, fmt.Errorf("no job %q; jobs here: %s", name, strings.Join(jobNames(doc), ", "))
	}
	var raw struct {
		Stage        string    `yaml:"stage"`
		Image        yaml.Node `yaml:"image"`
		Variables    yaml.Node `yaml:"variables"`
		BeforeScript yaml.Node `yaml:"before_script"`
		Script       yaml.Node `yaml:"script"`
		AfterScript  yaml.Node `yaml:"after_script"`
		Extends      yaml.Node `yaml:"extends"`
	}
	if err := node.Decode(&raw); err != nil {
		return nil, fmt.Errorf("job %s: %w", name, err)
	}
	if !raw.Extends.IsZero() {
		return nil, fmt.Errorf("job %s uses extends:, which hearth exec does not resolve; write the job out in full", name)
	}
	var def struct {
		Image        yaml.Node `yaml:"image"`
		BeforeScript yaml.Node `yaml:"before_script"`
		AfterScript  yaml.Node `yaml:"after_script"`
	}
	if n, ok := doc["default"]; ok {
		if err := n.Decode(&def); err != nil {
			return nil, fmt.Errorf("default: %w", err)
		}
	}
	// Top-level image/before_script/after_script are the older spelling of default:.
	pick := func(job yaml.Node, key string, fromDefault yaml.Node) yaml.Node {
		if !job.IsZero() {
			return job
		}
		if !fromDefault.IsZero() {
			return fromDefault
		}
		return doc[key]
	}
	j := &Job{Name: name, Stage: raw.Stage}
	if j.Stage == "" {
		j.Stage = "test"
	}
	var err error
	if j.Image, err = imageName(pick(raw.Image, "image", def.Image)); err != nil {
		return nil, fmt.Errorf("job %s: image: %w", name, err)
	}
	for _, s := range []struct {
		dst  *[]string
		node yaml.Node
		key  string
	}{
		{&j.BeforeScript, pick(raw.BeforeScript, "before_script", def.BeforeScript), "before_script"},
		{&j.Script, raw.Script, "script"},
		{&j.AfterScript, pick(raw.AfterScript, "after_script", def.AfterScript), "after_script"},
	} {
		if *s.dst, err = scriptLines(s.node); err != nil {
			return nil, fmt.Errorf("job %s: %s: %w", name, s.key, err)
		}
	}
	if len(j.Script) == 0 {
		return nil, fmt.Errorf("job %s has no script", name)
	}
	global, err := variables(doc["variables"])
	if err != nil {
		return nil, fmt.Errorf("variables: %w", err)
	}
	own, err := variables(raw.Variables)
	if err != nil {
		return nil, fmt.Errorf("job %s: variables: %w", name, err)
	}
	j.Variables = append(global, own...)
	return j, nil
}

func jobNames(doc map[string]yaml.Node) []string {
	var names []string
	for k := range doc {
		if !globalKeywords[k] && !strings.HasPrefix(k, ".") {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	return names
}

func imageName(n yaml.Node) (string, error) {
	switch n.Kind {
	case 0:
		return "", nil
	case yaml.ScalarNode:
		return n.Value, nil
	case yaml.MappingNode:
		var img struct {
			Name string `yaml:"name"`
		}
		if err := n.Decode(&img); err != nil {
			return "", err
		}
		return img.Name, nil
	}
	return "", fmt.Errorf("line %d: expected a name or a mapping with name:", n.Line)
}

// scriptLines flattens a script: a string, or a list of strings and nested lists (YAML anchors
// produce those).
func scriptLines(n yaml.Node) ([]string, error) {
	switch n.Kind {
	case 0:
		return nil, nil
	case yaml.ScalarNode:
		return []string{n.Value}, nil
	case yaml.SequenceNode:
		var out []string
		for _, c := range n.Content {
			lines, err := scriptLines(*c)
			if err != nil {
				return nil, err
			}
			out = append(out, lines...)
		}
		return out, nil
	}
	return nil, fmt.Errorf("line %d: expected a command or a list of commands", n.Line)
}

// variables reads a variables: mapping; values are scalars or {value: ...}.
func variables(n yaml.Node) ([]Variable, error) {
	if n.Kind == 0 {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: expected a mapping of names to values", n.Line)
	}
	var out []Variable
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch v.Kind {
		case yaml.ScalarNode:
			out = append(out, Variable{Key: k.Value, Value: v.Value})
		case yaml.MappingNode:
			var full struct {
				Value string `yaml:"value"`
			}
			if err := v.Decode(&full); err != nil {
				return nil, fmt.Errorf("%s: %w", k.Value, err)
			}
			out = append(out, Variable{Key: k.Value, Value: full.Value})
		default:
			return nil, fmt.Errorf("line %d: %s: expected a value", v.Line, k.Value)
		}
	}
	return out, nil
}
